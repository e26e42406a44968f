"""``clip-jax plan``: compile a recipe's steps for a TPU slice (or CPU devices) before renting it, and report
per-chip memory, fit, FLOPs, collectives and a step-time bound (see :mod:`~clip_jax.plan.planner`)."""

from clip_jax.plan.chips import CHIPS, Chip, Target, TopologyError, target
from clip_jax.plan.planner import StepPlan, compile_step, find_fit, plan

__all__ = [
    "CHIPS",
    "Chip",
    "StepPlan",
    "Target",
    "TopologyError",
    "compile_step",
    "find_fit",
    "plan",
    "target",
]
