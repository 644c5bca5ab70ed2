"""Sources of activation batches: in-memory tensors, on-disk stores, live models."""

from sparsecodes.activations.source import ActivationSource, TensorSource

__all__ = ["ActivationSource", "TensorSource"]
