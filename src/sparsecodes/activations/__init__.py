"""Sources of activation batches: in-memory tensors, on-disk stores, live models."""

from sparsecodes.activations.cache import CacheResult, cache_activations, store_path
from sparsecodes.activations.reader import StoreSource
from sparsecodes.activations.source import ActivationSource, TensorSource
from sparsecodes.activations.store import (
    CorruptShardError,
    Manifest,
    StoreError,
    StoreMismatchError,
    StoreWriter,
    read_manifest,
    verify_store,
)

__all__ = [
    "ActivationSource",
    "CacheResult",
    "CorruptShardError",
    "Manifest",
    "StoreError",
    "StoreMismatchError",
    "StoreSource",
    "StoreWriter",
    "TensorSource",
    "cache_activations",
    "read_manifest",
    "store_path",
    "verify_store",
]
