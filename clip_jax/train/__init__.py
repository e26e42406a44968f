"""Two-phase sharded training."""

from clip_jax.train.trainer import Trainer, TrainingDiverged, build_model, train

__all__ = ["Trainer", "TrainingDiverged", "build_model", "train"]
