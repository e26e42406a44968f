"""The training state and the jitted train step.

Only the phase's trainable parameters are differentiated; the rest (``frozen``) enter the
forward pass as constants, so XLA builds no backward pass for them and the optimizer keeps
no state for them.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from clip_jax.loss import contrastive_loss
from clip_jax.sharding import batch_axes


@struct.dataclass
class TrainState:
    """Everything a step changes: step counter, trainable and frozen parameters, optimizer state, RNG."""

    step: jax.Array
    params: nnx.State
    frozen: nnx.State
    opt_state: Any
    rng: jax.Array


def trainable_filter(pattern: str) -> Callable[[tuple, Any], bool]:
    """An nnx filter selecting parameters whose dotted path fully matches ``pattern``."""
    regex = re.compile(pattern)
    return lambda path, _: regex.fullmatch(".".join(str(p) for p in path)) is not None


def split_trainable(module: nnx.Module, pattern: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, trainable, frozen)`` for a phase whose trainable parameters match ``pattern``."""
    return nnx.split(module, trainable_filter(pattern), ...)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh, *, loss_kind: str,
                    dropout: bool, negatives: str = "global") -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The (un-jitted) step: forward, global contrastive loss, gradients of trainable params, update."""
    axes = batch_axes(mesh)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.frozen)
            out = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"],
                        deterministic=not dropout, rngs=nnx.Rngs(dropout=rng))
            return contrastive_loss(out.image_embeds, out.text_embeds, out.logit_scale, mesh=mesh,
                                    batch_axes=axes, kind=loss_kind, logit_bias=out.logit_bias, negatives=negatives)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["param_norm"] = optax.tree.norm(params)  # non-finite => diverged: never checkpointed
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return step


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def jit_train_step(step: Callable, state_sharding: Any, batch_sharding: NamedSharding, mesh: Mesh) -> Callable:
    """``step`` compiled with explicit in/out shardings and the state donated (updated in place)."""
    return jax.jit(step, in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding,
                   replicated(mesh)), donate_argnums=(0,))


def initial_rng(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)
