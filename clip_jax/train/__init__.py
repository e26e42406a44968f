"""Two-phase sharded training."""

from clip_jax.train.trainer import Trainer, TrainingDiverged, build_model, model_from_checkpoint, train

__all__ = ["Trainer", "TrainingDiverged", "build_model", "model_from_checkpoint", "train"]
