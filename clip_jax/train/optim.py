"""Optimizers for one training phase: parameter groups with their own learning-rate schedules and weight
decay (only on matrices; towards zero, or towards the phase's starting weights: L2-SP), optional layer-wise
learning-rate decay in the towers, optional gradient clipping, and nothing for frozen parameters (the
optimizer is initialised on the trainable parameters alone).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
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


class DecayTowardsStartState(NamedTuple):
    """The weights the parameters are decayed towards: their values when the optimizer was initialised."""

    start: Any


def decay_towards_start(weight_decay: float, mask: Any = None) -> optax.GradientTransformation:
    """Adds ``weight_decay * (params - start)`` to the updates, ``start`` being the parameters the optimizer
    was initialised on (L2-SP, Li et al. 2018: keep fine-tuned weights near the pretrained ones, not near zero).
    ``mask``: as :func:`optax.add_decayed_weights` (only masked parameters keep a copy of their start)."""

    def init(params: Any) -> DecayTowardsStartState:
        return DecayTowardsStartState(start=jax.tree.map(jnp.array, params))

    def update(updates: Any, state: DecayTowardsStartState, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError("decay_towards_start needs the parameters — pass params to update()")
        updates = jax.tree.map(lambda g, p, s: g + weight_decay * (p - s), updates, params, state.start)
        return updates, state

    transform = optax.GradientTransformation(init, update)
    return transform if mask is None else optax.masked(transform, mask)


#: Where weight decay pulls the weights: ``zero`` (plain weight decay) or ``start`` (L2-SP).
DECAY_TARGETS = ("zero", "start")


def _base_optimizer(
    name: str,
    schedule: optax.Schedule,
    settings: Mapping[str, Any],
    mask: Any,
    weight_decay: float,
    towards: str = "zero",
) -> optax.GradientTransformation:
    b1, b2, eps, wd = settings["b1"], settings["b2"], settings["eps"], weight_decay
    if towards not in DECAY_TARGETS:
        raise ValueError(f"Unknown weight-decay target {towards!r} — choose one of {list(DECAY_TARGETS)}")
    decayed = (
        (optax.add_decayed_weights(wd, mask) if towards == "zero" else decay_towards_start(wd, mask))
        if wd
        else None
    )
    if name == "adamw":
        if towards == "zero":
            return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask)
        # optax.adamw's own chain, with the decay pulling towards the start instead of zero
        stages = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps), decayed, optax.scale_by_learning_rate(schedule)]
        return optax.chain(*[s for s in stages if s is not None])
    if name == "adabelief":  # CLIP-Italian's choice, with adaptive gradient clipping (set agc_clip)
        chain = [optax.adabelief(schedule, b1=b1, b2=b2, eps=eps)]
        if decayed is not None:
            chain.insert(0, decayed)
        return optax.chain(*chain)
    raise ValueError(f"Unknown optimizer {name!r} — choose adamw or adabelief")


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_scales(paths: Sequence[str], decay: float) -> dict[str, float]:
    """Each parameter's learning-rate factor under layer-wise decay (BEiT, open_clip's ``layer_decay``):
    ``decay ** (depth + 1 - layer_id)`` within a tower (``vision.``/``text.`` paths with ``layers.N``), where
    the embeddings (and the pre-layer norm) are layer 0, ``layers.N`` is layer N + 1, and what follows the
    layers (final norm, pooler) is layer depth + 1 (factor 1); parameters outside the towers get 1."""
    depths: dict[str, int] = {}
    for path in paths:
        found = _LAYER.search(path)
        if found:
            tower = path.split(".")[0]
            depths[tower] = max(depths.get(tower, 0), int(found.group(1)) + 1)
    scales = {}
    for path in paths:
        tower, found = path.split(".")[0], _LAYER.search(path)
        if tower not in depths:
            scales[path] = 1.0
            continue
        depth = depths[tower]
        if found:
            layer_id = int(found.group(1)) + 1
        elif "embed" in path or "pre_layernorm" in path or "pre_layrnorm" in path:
            layer_id = 0
        else:
            layer_id = depth + 1
        scales[path] = float(decay ** (depth + 1 - layer_id))
    return scales


def scale_by_layer(scales: Any) -> optax.GradientTransformation:
    """Multiplies each update by its fixed factor in ``scales`` (a tree like the parameters)."""

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return jax.tree.map(lambda u, f: u * jnp.asarray(f, u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


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
    weight_decays: Mapping[str, float] | None = None,
    decay_towards: str = "zero",
    layer_decay: float = 1.0,
) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The phase's optimizer over ``params`` (trainable only) and each used group's schedule.

    ``weight_decays``: per-group weight decay (groups left out use ``settings['weight_decay']``);
    ``decay_towards``: ``zero`` or ``start`` (L2-SP: towards the weights the phase starts from);
    ``layer_decay`` < 1: the towers' layer-wise learning-rate decay (:func:`layer_scales`; the schedules
    returned are then those of each group's top: the final norm and pooler)."""
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
    decays = {g: float((weight_decays or {}).get(g, settings["weight_decay"])) for g in used}
    transforms = {
        g: _base_optimizer(optimizer, schedules[g], settings, decay_mask, decays[g], decay_towards)
        for g in used
    }
    chain = []
    if settings.get("agc_clip"):
        chain.append(optax.adaptive_grad_clip(float(settings["agc_clip"])))
    if settings.get("grad_clip_norm"):
        chain.append(optax.clip_by_global_norm(float(settings["grad_clip_norm"])))
    chain.append(optax.multi_transform(transforms, labels))
    if layer_decay != 1.0:
        paths = jax.tree_util.tree_map_with_path(lambda p, _: path_string(p), params)
        factors = layer_scales(jax.tree.leaves(paths), layer_decay)
        chain.append(scale_by_layer(jax.tree.map(lambda p: factors[p], paths)))
    return optax.chain(*chain), schedules


def learning_rates_at(schedules: Mapping[str, Callable[[int], Any]], phase_step: int) -> dict[str, float]:
    """Each group's learning rate at ``phase_step`` steps into the phase."""
    return {g: float(s(phase_step)) for g, s in schedules.items()}
