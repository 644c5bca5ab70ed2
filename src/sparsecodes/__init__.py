"""sparsecodes: sparse, interpretable codes for neural-network activations.

The dictionary and the inference procedure are separate, swappable parts: train with any encoder,
infer with any other on the same dictionary, and measure the gap.
"""

from sparsecodes import encoders, metrics, synthetic, worlds
from sparsecodes.codes import SparseCodes
from sparsecodes.dictionary import Dictionary
from sparsecodes.loading import load
from sparsecodes.provenance import CoderSource
from sparsecodes.sparse_coder import SparseCoder
from sparsecodes.transcoder import Transcoder

__version__ = "0.1.0"

__all__ = [
    "CoderSource",
    "Dictionary",
    "SparseCoder",
    "SparseCodes",
    "Transcoder",
    "__version__",
    "encoders",
    "load",
    "metrics",
    "synthetic",
    "worlds",
]
