"""Training: the Trainer loop, its config, schedules."""

from sparsecodes.training.trainer import TrainConfig, Trainer

__all__ = ["TrainConfig", "Trainer"]
