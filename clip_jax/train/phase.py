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
from clip_jax.train.objectives import objective_of
from clip_jax.train.optim import make_optimizer
from clip_jax.train.step import TrainState, initial_rng, jit_train_step


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
        weight_decays=p.get("weight_decay", ConfigDict()).to_dict(),
        decay_towards=t.weight_decay_towards,
        layer_decay=float(t.layer_decay),
    )


@dataclasses.dataclass
class PhaseProgram:
    """A phase's program, built without executing anything: its jitted step, the graph, the optimizer's
    schedules, the state's shapes and shardings (``abstract``: ``ShapeDtypeStruct`` leaves with
    ``sharding``, also the restore target of a checkpoint), the batch it takes (``batch``, likewise), and
    ``init``: a jitted ``(params, frozen) -> TrainState`` that places a fresh state on the mesh."""

    step_fn: Callable[[TrainState, dict], tuple[TrainState, dict]]
    graphdef: nnx.GraphDef
    schedules: dict
    abstract: TrainState
    batch: dict[str, jax.ShapeDtypeStruct]
    init: Callable[[nnx.State, nnx.State], TrainState]


@dataclasses.dataclass
class StartedPhase(PhaseProgram):
    """A :class:`PhaseProgram` with its state placed on the mesh (what the training loop runs)."""

    state: TrainState | None = None


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


def phase_program(
    config: ConfigDict, module: nnx.Module, phase: Phase, mesh: Mesh, *, step: int = 0, rng: Any = None
) -> PhaseProgram:
    """``phase``'s program for ``module`` on ``mesh`` (``step``: the global step it starts at; ``rng``: carried
    over from the previous phase). ``module`` may be abstract (``nnx.eval_shape``) and ``mesh`` made of
    compile-only devices (``jax.experimental.topologies``): nothing is computed or placed, so the step can be
    compiled ahead of time for a TPU slice with ``step_fn.trace(abstract, batch).lower(...)``."""
    graphdef, params, frozen = split_trainable(module, phase.trainable)
    if not jax.tree.leaves(params):
        raise ValueError(
            f"Phase {phase.name!r}: trainable regex {phase.trainable!r} matches no parameter — parameter paths "
            f"look like vision.layers.0.mlp.fc1.kernel or text_projection.kernel"
        )
    objective_of(config).check_phase(phase, params)
    tx, schedules = phase_optimizer(config, phase, params)
    seed = config.train.seed

    def make_state(params, frozen):
        return TrainState(
            step=jnp.asarray(step, jnp.int32),
            params=params,
            frozen=frozen,
            opt_state=tx.init(params),
            rng=initial_rng(seed) if rng is None else rng,
        )

    shapes = jax.eval_shape(make_state, params, frozen)
    sharding = state_sharding(config, mesh, shapes)
    step_fn = jit_train_step(
        make_phase_step(config, graphdef, tx, mesh, phase), sharding, batch_sharding(mesh), mesh
    )
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, sharding)
    init = jax.jit(make_state, out_shardings=sharding)
    return PhaseProgram(
        step_fn, graphdef, schedules, abstract, batch_shapes(config, module, phase, mesh), init
    )


def start_phase(
    config: ConfigDict, module: nnx.Module, phase: Phase, mesh: Mesh, *, step: int = 0, rng: Any = None
) -> StartedPhase:
    """:func:`phase_program` with the state of ``module``'s parameters placed on ``mesh``."""
    program = phase_program(config, module, phase, mesh, step=step, rng=rng)
    _, params, frozen = split_trainable(module, phase.trainable)
    state = program.init(params, frozen)
    return StartedPhase(
        **{f.name: getattr(program, f.name) for f in dataclasses.fields(program)}, state=state
    )


def batch_shapes(config: ConfigDict, module: nnx.Module, phase: Phase, mesh: Mesh) -> dict[str, Any]:
    """The global batch ``phase``'s step takes (the run's objective decides), as batch-sharded
    ``ShapeDtypeStruct`` leaves."""
    return objective_of(config).batch_shapes(config, module, phase, mesh)


def make_phase_step(
    config: ConfigDict, graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh, phase: Phase
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The (un-jitted) step of ``phase``, as the run's objective makes it."""
    return objective_of(config).make_step(config, graphdef, tx, mesh, phase)
