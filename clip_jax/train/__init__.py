"""Two-phase sharded training: :func:`train` runs a config in a workdir (see :mod:`clip_jax.train.trainer`)."""

from clip_jax.train.model import build_model
from clip_jax.train.phase import Phase, phase_optimizer, phases_of, start_phase
from clip_jax.train.trainer import Trainer, TrainingDiverged, train

__all__ = [
    "Phase",
    "Trainer",
    "TrainingDiverged",
    "build_model",
    "phase_optimizer",
    "phases_of",
    "start_phase",
    "train",
]
