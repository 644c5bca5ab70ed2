"""Interpreting trained codes: per-latent statistics, a static feature browser, live inspection.

- :func:`~sparsecodes.interp.stats.collect`: one streamed pass over held-out windows ->
  :class:`~sparsecodes.interp.stats.FeatureStats` (top contexts, quantile samples, histograms,
  density, max activation, logit-lens effects), with bounded memory per latent.
- :func:`~sparsecodes.interp.site.write_site`: a static site that works from ``file://``.
- :func:`~sparsecodes.interp.annotate.annotate`: which latents fire on which tokens of any text
  (used by ``sparsecodes serve`` and ``sparsecodes inspect``).
- :func:`~sparsecodes.interp.loading.load_sae_dir`: a coder and where its activations came from.
"""

from sparsecodes.interp.annotate import Annotation, annotate
from sparsecodes.interp.loading import LoadedSAE, load_sae_dir
from sparsecodes.interp.stats import FeatureStats, TopKBuffer, collect, logit_lens

__all__ = [
    "Annotation",
    "FeatureStats",
    "LoadedSAE",
    "TopKBuffer",
    "annotate",
    "collect",
    "load_sae_dir",
    "logit_lens",
]
