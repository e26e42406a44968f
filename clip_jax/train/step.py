"""The training state and the jitted train step.

Only the phase's trainable parameters are differentiated; the rest (``frozen``) enter the
forward pass as constants, so XLA builds no backward pass for them and the optimizer keeps
no state for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clip_jax.loss import contrastive_loss
from clip_jax.models.dual_encoder import DualEncoderOutput
from clip_jax.sharding import batch_axes, data_parallel_size, replicated
from clip_jax.train.frozen_rounding import FrozenRoundedStep


@struct.dataclass
class TrainState:
    """Everything a step changes: step counter, trainable and frozen parameters, optimizer state, RNG."""

    step: jax.Array
    params: nnx.State
    frozen: nnx.State
    opt_state: Any
    rng: jax.Array


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    loss_kind: str,
    dropout: bool,
    micro_batch_size: int = 0,
    negatives: str = "global",
    exchange: str = "all_gather",
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The (un-jitted) step: forward, global contrastive loss, gradients of trainable params, update.

    ``micro_batch_size`` (0: off): exact gradient caching (:func:`cached_value_and_grad`), with tower
    activations for only that many examples of the global batch live at once.
    """

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def embed(params, batch, rng):
            # copy: fresh Variables at the current trace level (in a scan body, remat writes back into them)
            model = nnx.merge(graphdef, params, state.frozen, copy=True)
            out = model(
                batch["pixel_values"],
                batch["input_ids"],
                batch["attention_mask"],
                deterministic=not dropout,
                rngs=nnx.Rngs(dropout=rng),
            )
            return out.image_embeds, out.text_embeds

        def loss_of_embeds(params, image_embeds, text_embeds):
            model = nnx.merge(graphdef, params, state.frozen)
            bias = model.logit_bias[...] if model.logit_bias is not None else None
            out = DualEncoderOutput(image_embeds, text_embeds, model.scale(), bias)
            return output_loss(out, mesh, kind=loss_kind, negatives=negatives, exchange=exchange)

        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if micro_batch_size and micro_batch_size < batch["input_ids"].shape[0]:
            (_loss, metrics), grads = cached_value_and_grad(
                embed, loss_of_embeds, state.params, batch, rng, micro_batch_size=micro_batch_size, mesh=mesh
            )
        else:

            def loss_fn(params):
                return loss_of_embeds(params, *embed(params, batch, rng))

            (_loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(state, tx, grads, metrics)

    return step


def output_loss(
    out: DualEncoderOutput, mesh: Mesh, *, kind: str, negatives: str = "global", exchange: str = "all_gather"
) -> tuple[jax.Array, dict]:
    """The configured contrastive loss of a dual encoder's output over the global batch, with its metrics."""
    return contrastive_loss(
        out.image_embeds,
        out.text_embeds,
        out.logit_scale,
        mesh=mesh,
        batch_axes=batch_axes(mesh),
        kind=kind,
        logit_bias=out.logit_bias,
        negatives=negatives,
        exchange=exchange,
    )


def apply_gradients(
    state: TrainState, tx: optax.GradientTransformation, grads: nnx.State, metrics: dict
) -> tuple[TrainState, dict]:
    """The update tail every train step shares: optimizer update, gradient and parameter norms, step + 1."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics["param_norm"] = optax.tree.norm(params)  # non-finite => diverged: never checkpointed
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def split_micro_batches(x: jax.Array, count: int, mesh: Mesh) -> jax.Array:
    """``[B, ...]`` batch-sharded -> ``[count, B / count, ...]``, micro-batch ``k`` holding the ``k``-th slice
    of every device's own rows (so no example changes device), each micro-batch batch-sharded."""
    devices = data_parallel_size(mesh)
    rows = x.shape[0] // (count * devices)
    x = (
        x.reshape(devices, count, rows, *x.shape[1:])
        .swapaxes(0, 1)
        .reshape(count, devices * rows, *x.shape[1:])
    )
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, batch_axes(mesh))))


def merge_micro_batches(x: jax.Array, mesh: Mesh) -> jax.Array:
    """The inverse of :func:`split_micro_batches`: ``[count, B / count, ...]`` -> ``[B, ...]`` in batch order."""
    devices, count = data_parallel_size(mesh), x.shape[0]
    rows = x.shape[1] // devices
    x = (
        x.reshape(count, devices, rows, *x.shape[2:])
        .swapaxes(0, 1)
        .reshape(count * devices * rows, *x.shape[2:])
    )
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(batch_axes(mesh))))


def cached_value_and_grad(
    embed: Callable,
    loss_of_embeds: Callable,
    params: nnx.State,
    batch: dict,
    rng: jax.Array,
    *,
    micro_batch_size: int,
    mesh: Mesh,
) -> tuple[tuple[jax.Array, dict], nnx.State]:
    """``((loss, metrics), grads)`` of the full-batch loss, exactly, with one micro-batch's activations live.

    Gradient caching (Gao et al. 2021): (1) embed the global batch micro-batch by micro-batch, keeping
    only the embeddings; (2) the global loss and its gradient with respect to the embeddings (and to the
    parameters it reads directly: logit scale and bias); (3) re-run each micro-batch's towers and pull
    that embedding gradient back through them (a VJP), summing parameter gradients. Both loops are
    ``lax.scan``s, so XLA keeps one micro-batch of activations; the price is a second forward pass.

    ``embed(params, micro_batch, rng) -> (image_embeds, text_embeds)`` runs the towers; micro-batch ``k``
    gets the dropout key ``fold_in(rng, k)`` in both passes, so the re-run sees the same masks.
    ``loss_of_embeds(params, image_embeds, text_embeds) -> (loss, metrics)``.
    """
    global_batch = jax.tree.leaves(batch)[0].shape[0]
    devices = data_parallel_size(mesh)
    if micro_batch_size % devices or global_batch % micro_batch_size:
        raise ValueError(
            f"micro_batch_size {micro_batch_size} must be a multiple of the {devices} data-parallel "
            f"devices and divide the global batch {global_batch}."
        )
    count = global_batch // micro_batch_size
    micro = jax.tree.map(lambda x: split_micro_batches(x, count, mesh), batch)
    keys = jax.vmap(lambda k: jax.random.fold_in(rng, k))(jnp.arange(count))

    def forward(_, xs):
        key, mb = xs
        return None, embed(params, mb, key)

    _, (image, text) = jax.lax.scan(forward, None, (keys, micro))
    image, text = merge_micro_batches(image, mesh), merge_micro_batches(text, mesh)
    (loss, metrics), (grads, d_image, d_text) = jax.value_and_grad(
        loss_of_embeds, argnums=(0, 1, 2), has_aux=True
    )(params, image, text)
    cotangents = (split_micro_batches(d_image, count, mesh), split_micro_batches(d_text, count, mesh))

    def backward(total, xs):
        key, mb, d_img, d_txt = xs
        _, pull = jax.vjp(lambda p: embed(p, mb, key), params)
        (g,) = pull((d_img, d_txt))
        return jax.tree.map(lambda t, x: t + x.astype(jnp.float32), total, g), None

    total = jax.tree.map(lambda g: g.astype(jnp.float32), grads)  # summed in float32 whatever the param dtype
    total, _ = jax.lax.scan(backward, total, (keys, micro, *cotangents))
    grads = jax.tree.map(lambda t, g: t.astype(g.dtype), total, grads)
    return (loss, metrics), grads


def jit_train_step(
    step: Callable, state_sharding: Any, batch_sharding: NamedSharding, mesh: Mesh
) -> Callable:
    """``step`` compiled with explicit in/out shardings and the state donated (updated in place). On CPU,
    frozen weights that the step only uses rounded to the compute dtype are rounded once
    (:class:`~clip_jax.train.frozen_rounding.FrozenRoundedStep`), not at every step."""
    out_shardings = (state_sharding, replicated(mesh))
    plain = jax.jit(
        step,
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=out_shardings,
        donate_argnums=(0,),
    )
    if mesh.devices.flat[0].platform != "cpu":
        return plain
    return FrozenRoundedStep(step, plain, state_sharding, batch_sharding, out_shardings)


def initial_rng(seed: int) -> jax.Array:
    return jax.random.key_data(jax.random.key(seed)).astype(jnp.uint32)
