"""Interpreting trained codes: per-latent statistics, a static feature browser, live inspection.

- :func:`~sparsecodes.interp.stats.collect`: one streamed pass over held-out windows ->
  :class:`~sparsecodes.interp.stats.FeatureStats` (top contexts, quantile samples, histograms,
  density, max activation, logit-lens effects), with bounded memory per latent.
- :func:`~sparsecodes.interp.site.write_site`: a static site that works from ``file://``.
- :func:`~sparsecodes.interp.annotate.annotate`: which latents fire on which tokens of any text
  (used by ``sparsecodes serve`` and ``sparsecodes inspect``).
- :func:`~sparsecodes.interp.explanations.read_explanations`: latent explanations saved with a
  coder (load the coder itself with :func:`sparsecodes.load`).
"""

from sparsecodes.interp.annotate import Annotation, annotate
from sparsecodes.interp.explanations import find_explanations, read_explanations
from sparsecodes.interp.stats import FeatureStats, TopKBuffer, collect, logit_lens

__all__ = [
    "Annotation",
    "FeatureStats",
    "TopKBuffer",
    "annotate",
    "collect",
    "find_explanations",
    "logit_lens",
    "read_explanations",
]
