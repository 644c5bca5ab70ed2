"""Encoders: amortised (own parameters) and iterative (inference on a fixed dictionary).

Importing this package registers every built-in encoder.
"""

# Built-in encoders register themselves on import.
from sparsecodes.encoders import builtin as _builtin  # noqa: F401
from sparsecodes.encoders.base import (
    AmortisedEncoder,
    Encoder,
    EncoderConfig,
    IterativeEncoder,
    TrainStepInput,
    TrainStepOutput,
)
from sparsecodes.encoders.registry import (
    available_encoders,
    get_encoder_class,
    make_config,
    make_encoder,
    register,
)

__all__ = [
    "AmortisedEncoder",
    "Encoder",
    "EncoderConfig",
    "IterativeEncoder",
    "TrainStepInput",
    "TrainStepOutput",
    "available_encoders",
    "get_encoder_class",
    "make_config",
    "make_encoder",
    "register",
]
