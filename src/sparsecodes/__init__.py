"""sparsecodes: sparse, interpretable codes for neural-network activations.

The dictionary and the inference procedure are separate, swappable parts: train with any encoder,
infer with any other on the same dictionary, and measure the gap.
"""

import os as _os
import sys as _sys

# Command-line runs (`sparsecodes ...`, `python -m sparsecodes ...`, also under torchrun): idle
# OpenMP threads sleep instead of spinning, so they do not take the cores from the next op's
# threads (docs/training.md, "CPU speed"). Read once when torch loads, hence here, before it;
# an OMP_WAIT_POLICY already in the environment wins.
if (
    "torch" not in _sys.modules
    and _sys.argv
    and (_sys.argv[0] == "-m" or _os.path.basename(_sys.argv[0]) == "sparsecodes")
):
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
