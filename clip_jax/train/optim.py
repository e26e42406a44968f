"""Optimizers for one training phase: parameter groups with their own learning-rate schedules,
weight decay only on matrices, optional gradient clipping, and nothing for frozen parameters
(the optimizer is initialised on the trainable parameters alone).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import optax

from clip_jax.sharding import path_string


def param_group(path: str, groups: Sequence[tuple[str, str]]) -> str:
    """The name of the first group whose regex fully matches ``path``."""
    for name, pattern in groups:
        if re.fullmatch(pattern, path):
            return name
    raise ValueError(
        f"Parameter {path} matches no group in train.param_groups {[n for n, _ in groups]} "
        "— add a catch-all group."
    )


def make_schedule(
    peak: float, steps: int, warmup_steps: int = 0, decay: str = "cosine", end_factor: float = 0.0
) -> optax.Schedule:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then ``cosine``/``linear`` decay to
    ``end_factor * peak`` at ``steps``, or ``constant``."""
    warmup_steps = min(warmup_steps, steps)
    rest = max(steps - warmup_steps, 1)
    if decay == "cosine":
        after = optax.cosine_decay_schedule(peak, rest, alpha=end_factor)
    elif decay == "linear":
        after = optax.linear_schedule(peak, peak * end_factor, rest)
    elif decay == "constant":
        after = optax.constant_schedule(peak)
    else:
        raise ValueError(f"Unknown learning-rate decay {decay!r} — choose cosine, linear or constant")
    if warmup_steps == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps), after], [warmup_steps])


def decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: matrices, not biases, norms, scalars (open_clip's rule)."""
    return jax.tree.map(lambda x: getattr(x, "ndim", 0) >= 2, params)


def _base_optimizer(
    name: str, schedule: optax.Schedule, settings: Mapping[str, Any], mask: Any
) -> optax.GradientTransformation:
    b1, b2, eps, wd = settings["b1"], settings["b2"], settings["eps"], settings["weight_decay"]
    if name == "adamw":
        return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask)
    if name == "adabelief":  # CLIP-Italian's choice, with adaptive gradient clipping (set agc_clip)
        chain = [optax.adabelief(schedule, b1=b1, b2=b2, eps=eps)]
        if wd:
            chain.insert(0, optax.add_decayed_weights(wd, mask))
        return optax.chain(*chain)
    raise ValueError(f"Unknown optimizer {name!r} — choose adamw or adabelief")


def make_optimizer(
    params: Any,
    *,
    groups: Sequence[tuple[str, str]],
    learning_rates: Mapping[str, float],
    steps: int,
    warmup_steps: int,
    decay: str,
    end_factor: float,
    optimizer: str,
    settings: Mapping[str, Any],
) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The phase's optimizer over ``params`` (trainable only) and each used group's schedule."""
    labels = jax.tree_util.tree_map_with_path(lambda p, _: param_group(path_string(p), groups), params)
    used = sorted(set(jax.tree.leaves(labels)))
    missing = [g for g in used if g not in learning_rates]
    if missing:
        raise ValueError(
            f"Trainable parameter groups {missing} have no learning rate in this phase's "
            f"learning_rates {dict(learning_rates)} — give each group a rate"
        )
    schedules = {
        g: make_schedule(float(learning_rates[g]), steps, warmup_steps, decay, end_factor) for g in used
    }
    transforms = {g: _base_optimizer(optimizer, schedules[g], settings, decay_mask) for g in used}
    chain = []
    if settings.get("agc_clip"):
        chain.append(optax.adaptive_grad_clip(float(settings["agc_clip"])))
    if settings.get("grad_clip_norm"):
        chain.append(optax.clip_by_global_norm(float(settings["grad_clip_norm"])))
    chain.append(optax.multi_transform(transforms, labels))
    return optax.chain(*chain), schedules


def learning_rates_at(schedules: Mapping[str, Callable[[int], Any]], phase_step: int) -> dict[str, float]:
    """Each group's learning rate at ``phase_step`` steps into the phase."""
    return {g: float(s(phase_step)) for g, s in schedules.items()}
