"""Other tools' on-disk formats: SAELens (read and write) and EleutherAI sparsify (read).

Neither package is needed to read or write these files; they only define the layouts.
See ``docs/formats.md`` for the mapping of architectures and how input scaling is stored.
"""

from sparsecodes.formats._common import read_json
from sparsecodes.formats.saelens import load_saelens, save_saelens
from sparsecodes.formats.saelens_transcoder import (
    is_saelens_transcoder,
    load_saelens_transcoder,
    save_saelens_transcoder,
)
from sparsecodes.formats.sparsify import load_sparsify

__all__ = [
    "is_saelens_transcoder",
    "load_saelens",
    "load_saelens_transcoder",
    "load_sparsify",
    "read_json",
    "save_saelens",
    "save_saelens_transcoder",
]
