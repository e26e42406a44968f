"""Phases: which parameters train, with which optimizer, and the state and jitted step of one phase.

A phase (``config.phases[name]``) trains the parameters matching its regex; the rest are frozen. Between
phases the parameters are handed over and a fresh optimizer starts, as in CLIP-Italian's recipe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clip_jax.models.freezing import split_trainable
from clip_jax.sharding import batch_sharding, replicated, shard_params
from clip_jax.train import distill
from clip_jax.train import features as feature_cache
from clip_jax.train.optim import make_optimizer
from clip_jax.train.state import TrainState, initial_rng, jit_train_step, make_train_step


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a run: its name, position and global step range, and its ``config.phases`` entry."""

    name: str
    index: int
    start: int  # global step at which it begins
    steps: int
    trainable: str
    settings: ConfigDict

    @property
    def end(self) -> int:
        return self.start + self.steps

    @property
    def cache_features(self) -> bool:
        return bool(self.settings.get("cache_features", False))


def phases_of(config: ConfigDict) -> list[Phase]:
    """The phases ``config.train.phases`` lists, in order, with their global step ranges."""
    phases, start = [], 0
    for index, name in enumerate(config.train.phases):
        p = config.phases[name]
        phases.append(Phase(name, index, start, int(p.steps), p.trainable, p))
        start += int(p.steps)
    return phases


def phase_optimizer(
    config: ConfigDict, phase: Phase, params: Any
) -> tuple[optax.GradientTransformation, dict]:
    """The optimizer of ``phase`` over its trainable ``params``, and each parameter group's schedule."""
    t, p = config.train, phase.settings
    return make_optimizer(
        params,
        groups=[tuple(g) for g in t.param_groups],
        learning_rates=p.learning_rates.to_dict(),
        steps=int(p.steps),
        warmup_steps=p.warmup_steps,
        decay=p.decay,
        end_factor=p.end_factor,
        optimizer=t.optimizer,
        settings=dict(
            b1=t.b1,
            b2=t.b2,
            eps=t.eps,
            weight_decay=t.weight_decay,
            grad_clip_norm=t.grad_clip_norm,
            agc_clip=t.agc_clip,
        ),
    )


@dataclasses.dataclass
class PhaseState:
    """What running a phase needs: the placed state, its jitted step, the graph, the optimizer's schedules,
    and the state's shardings (``abstract`` with ``sharding``: the restore target of a checkpoint)."""

    state: TrainState
    step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]]
    graphdef: nnx.GraphDef
    schedules: dict
    abstract: TrainState


def state_sharding(config: ConfigDict, mesh: Mesh, abstract: TrainState) -> TrainState:
    """Where each part of a train state lives: parameters and optimizer state by ``config.mesh.rules``."""
    rules = [tuple(r) for r in config.mesh.rules]
    place = lambda tree: shard_params(tree, mesh, rules, config.mesh.fsdp_min_size)
    return TrainState(
        step=replicated(mesh),
        params=place(abstract.params),
        frozen=place(abstract.frozen),
        opt_state=place(abstract.opt_state),
        rng=replicated(mesh),
    )


def create_train_state(
    config: ConfigDict, module: nnx.Module, phase: Phase, mesh: Mesh, *, step: int = 0, rng: Any = None
) -> PhaseState:
    """Split ``module`` for ``phase``, build its optimizer and jitted step, and place the state on ``mesh``
    (``step``: the global step it starts at; ``rng``: carried over from the previous phase)."""
    graphdef, params, frozen = split_trainable(module, phase.trainable)
    if not jax.tree.leaves(params):
        raise ValueError(f"Phase {phase.name!r}: trainable regex {phase.trainable!r} matches no parameter.")
    if phase.cache_features:
        feature_cache.check_cacheable(phase.name, params)
    tx, schedules = phase_optimizer(config, phase, params)
    rng = initial_rng(config.train.seed) if rng is None else rng

    def make_state(params, frozen):
        return TrainState(
            step=jnp.asarray(step, jnp.int32),
            params=params,
            frozen=frozen,
            opt_state=tx.init(params),
            rng=rng,
        )

    abstract = jax.eval_shape(make_state, params, frozen)
    sharding = state_sharding(config, mesh, abstract)
    state = jax.jit(make_state, out_shardings=sharding)(params, frozen)
    step_fn = jit_train_step(
        make_phase_step(config, graphdef, tx, mesh, phase), sharding, batch_sharding(mesh), mesh
    )
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, sharding
    )
    return PhaseState(state, step_fn, graphdef, schedules, abstract)


def make_phase_step(
    config: ConfigDict, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh, phase: Phase
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The (un-jitted) step of ``phase``: distillation, projections on cached features, or the towers'."""
    if config.train.objective == "distill":
        return distill.make_distill_step(
            graphdef, tx, mesh, loss_kind=config.distill.loss, dropout=config.model.dropout
        )
    if phase.cache_features:  # projections on cached features: no tower activations, no micro-batches needed
        return feature_cache.make_feature_train_step(
            graphdef, tx, mesh, loss_kind=config.loss.kind, negatives=config.loss.negatives
        )
    return make_train_step(
        graphdef,
        tx,
        mesh,
        loss_kind=config.loss.kind,
        negatives=config.loss.negatives,
        dropout=config.model.dropout,
        micro_batch_size=config.train.micro_batch_size,
    )
