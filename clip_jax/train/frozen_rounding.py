"""Frozen weights rounded to the compute dtype once, not at every step (CPU).

With ``model.dtype=bfloat16`` the weights are kept in float32 (the optimizer, checkpoints and the next phase
need them) and each product rounds its kernel to bfloat16 inside the step. For a trained weight that rounding
is part of the step; for a frozen one it makes the same bfloat16 copy at every step (on CPU, with the page
faults of its fresh output, 23% of a ViT-B/32 + BERT-base bfloat16 phase-1 step's thread time in a profile).
:class:`FrozenRoundedStep` makes them once and passes them to the step beside the state, which keeps its
float32 frozen weights unchanged: that step ran 1.03-1.07x faster (``docs/benchmarks.md``, "Frozen weights
rounded once").

Which frozen weights qualify is read from the step's own program (its jaxpr), not from names: a weight
qualifies when every use of it rounds it to one narrower dtype, possibly after moving its elements
(reshape, transpose, slicing, gathering rows). Rounding commutes with moving elements, so the step computes
on exactly the values it computed on before; a weight used at full precision anywhere (a LayerNorm scale
in float32 arithmetic) is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core

#: Whether :func:`clip_jax.train.step.jit_train_step` rounds frozen weights once on CPU; a switch so that
#: ``bench/speed_changes.py`` can measure the step without it. Read at a step's first call.
ROUND_FROZEN_ONCE = True

#: Primitives that only move or select elements: rounding their operand equals rounding their result.
_MOVES = frozenset(
    {"reshape", "transpose", "squeeze", "expand_dims", "broadcast_in_dim", "slice", "dynamic_slice",
     "gather", "rev", "copy", "copy_p", "sharding_constraint", "concatenate"}
)  # fmt: skip


def _rounded_to(jaxpr: core.Jaxpr, var: core.Var) -> set | None:
    """The dtypes ``var`` is rounded to, when rounding is all that is done with it (after moving its elements
    at most); ``None`` when any use needs its own precision or cannot be followed."""
    if any(v is var for v in jaxpr.outvars):
        return None
    targets: set = set()
    for eqn in jaxpr.eqns:
        positions = [i for i, v in enumerate(eqn.invars) if v is var]
        if not positions:
            continue
        name = eqn.primitive.name
        if name == "convert_element_type":
            found = {jnp.dtype(eqn.params["new_dtype"])}
        elif name in _MOVES and (positions == [0] or name == "concatenate"):
            found = _rounded_to(jaxpr, eqn.outvars[0])
        else:
            found = _inner_uses(eqn, positions)
        if found is None:
            return None
        targets |= found
    return targets


def _inner_uses(eqn: core.JaxprEqn, positions: list[int]) -> set | None:
    """:func:`_rounded_to` through a primitive that calls a program of its own (jit, remat, shard_map,
    custom derivatives, scan over its constants and sliced inputs, conditionals)."""
    params, name = eqn.params, eqn.primitive.name
    if name == "cond":
        if 0 in positions:
            return None
        bodies, offset = params["branches"], 1
    elif name == "scan":
        carried = range(params["num_consts"], params["num_consts"] + params["num_carry"])
        if any(p in carried for p in positions):
            return None
        bodies, offset = [params["jaxpr"]], 0
    else:
        body = params.get("jaxpr", params.get("call_jaxpr"))
        if body is None:
            return None
        bodies, offset = [body], 0
    targets: set = set()
    for body in bodies:
        inner = body.jaxpr if hasattr(body, "jaxpr") else body
        if len(inner.invars) != len(eqn.invars) - offset:
            return None
        for p in positions:
            found = _rounded_to(inner, inner.invars[p - offset])
            if found is None:
                return None
            targets |= found
    return targets


def rounded_leaves(step: Callable, state: Any, batch: Any) -> dict[int, jnp.dtype]:
    """``{index of a leaf of state.frozen: dtype}`` for the frozen weights that ``step(state, batch)`` only
    ever uses rounded to that (narrower) dtype; ``state`` and ``batch`` may be abstract."""

    def without_frozen(frozen_leaves, state, batch):
        frozen = jax.tree.unflatten(jax.tree.structure(state.frozen), frozen_leaves)
        new_state, metrics = step(state.replace(frozen=frozen), batch)
        return new_state.replace(frozen=None), metrics

    shape = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
    leaves = [shape(x) for x in jax.tree.leaves(state.frozen)]
    jaxpr = jax.make_jaxpr(without_frozen)(leaves, jax.tree.map(shape, state), jax.tree.map(shape, batch))
    found = {}
    for index, (leaf, var) in enumerate(zip(leaves, jaxpr.jaxpr.invars[: len(leaves)])):
        targets = _rounded_to(jaxpr.jaxpr, var)
        if targets and len(targets) == 1:
            (dtype,) = targets
            if jnp.issubdtype(leaf.dtype, jnp.floating) and dtype.itemsize < leaf.dtype.itemsize:
                found[index] = dtype
    return found


class FrozenRoundedStep:
    """A jitted train step ``(state, batch) -> (state, metrics)`` (state donated) that rounds the frozen
    weights qualifying by :func:`rounded_leaves` once and reuses the rounded copies while the state it is
    given is the one it returned (frozen weights pass through a step unchanged); any other state (a restored
    checkpoint, another run) is rounded afresh. Everything else (``trace``, ``lower``: what ``clip-jax plan``
    compiles) is the plain jitted step's (``plain``), which rounds inside; ``unjitted`` is the step function."""

    def __init__(
        self, step: Callable, plain: Any, state_sharding: Any, batch_sharding: Any, out_shardings: Any
    ):
        self.plain = plain
        self.unjitted = step
        self._shardings = (state_sharding, batch_sharding, out_shardings)
        self._rounded: dict[int, jnp.dtype] | None = None
        self._fused = self._round = None
        self._copies: tuple = ()
        self._source: list = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.plain, name)

    @property
    def rounded(self) -> dict[int, jnp.dtype] | None:
        """The frozen leaves rounded once (by index, with their dtype); ``None`` before the first call."""
        return self._rounded

    def __call__(self, state: Any, batch: Any) -> tuple[Any, dict]:
        if self._rounded is None:
            self._rounded = rounded_leaves(self.unjitted, state, batch) if ROUND_FROZEN_ONCE else {}
            if self._rounded:
                self._build(state)
        if not self._rounded:
            return self.plain(state, batch)
        leaves = jax.tree.leaves(state.frozen)
        if len(leaves) != len(self._source) or any(a is not b for a, b in zip(leaves, self._source)):
            self._copies = self._round(tuple(leaves[i] for i in self._rounded))
        new_state, metrics = self._fused(state, batch, self._copies)
        self._source = jax.tree.leaves(new_state.frozen)
        return new_state, metrics

    def _build(self, state: Any) -> None:
        state_sharding, batch_sharding, out_shardings = self._shardings
        indices, dtypes = list(self._rounded), list(self._rounded.values())
        frozen_sharding = getattr(state_sharding, "frozen", None)
        if frozen_sharding is not None:
            every = jax.tree.leaves(frozen_sharding)
            copy_sharding = tuple(every[i] for i in indices)
        else:  # one sharding for the whole state
            copy_sharding = tuple(state_sharding for _ in indices)
        step = self.unjitted

        def fused(state, batch, copies: Sequence[jax.Array]):
            leaves, tree = jax.tree.flatten(state.frozen)
            for i, copy in zip(indices, copies):
                leaves[i] = copy
            new_state, metrics = step(state.replace(frozen=jax.tree.unflatten(tree, leaves)), batch)
            return new_state.replace(frozen=state.frozen), metrics

        self._fused = jax.jit(
            fused,
            in_shardings=(state_sharding, batch_sharding, copy_sharding),
            out_shardings=out_shardings,
            donate_argnums=(0,),
        )
        self._round = jax.jit(
            lambda xs: tuple(x.astype(d) for x, d in zip(xs, dtypes)), out_shardings=copy_sharding
        )
