"""Contrastive losses over the global batch, computed without any device holding B x B logits.

Each device holds ``b = B / n`` rows of image and text embeddings. It all-gathers the other
modality's embeddings (``[B, d]``, cheap: ``d`` is the projection size) and computes only its own
``b x B`` block of logits: memory per device grows as ``B^2 / n`` instead of ``B^2``. The
all-gather is differentiated exactly — its transpose is a reduce-scatter that returns to every
device the gradient its embeddings received as negatives elsewhere (open_clip's
``gather_with_grad`` + ``local_loss``). Every example is contrasted with all ``B`` candidates,
unlike a per-device loss (CLIP-Italian's), where each saw only ``b - 1`` negatives.

``exchange='ring'`` computes the same loss without gathering: the text rows travel around the devices in
``n - 1`` collective-permutes while each device accumulates its rows' sums (the texts' own sums travel with
them), and the gradient travels back the same way, so every device receives only its own rows' gradient.
Numbers sent per device and step, in units of ``(n-1)/n B d``: the ring 2 for either loss; the all-gather
softmax 4 (two gathers, two reduce-scatters) and sigmoid 2 — 6 and 3 on TPU, whose compiler turns the
reduce-scatter into a whole-array all-reduce (docs/benchmarks.md). Memory is alike: the ring keeps the
visiting rows for the backward pass as the gather keeps the gathered ones. The ring's ``n - 1`` steps run one
after another, so on many devices with small per-device batches its latency can outweigh the bytes saved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

Metrics = dict[str, jax.Array]


def _block_softmax(
    img: jax.Array,
    txt: jax.Array,
    all_img: jax.Array,
    all_txt: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    offset: jax.Array,
) -> jax.Array:
    """CLIP's symmetric cross-entropy for a device's rows: ``[half the summed loss, correct i2t, correct t2i]``."""
    labels = offset + jnp.arange(img.shape[0])
    logits_i2t = scale * img @ all_txt.T
    logits_t2i = scale * txt @ all_img.T

    def cross_entropy(logits):
        picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
        return jnp.sum(jax.nn.logsumexp(logits, axis=1) - picked)

    correct_i2t = jnp.sum(jnp.argmax(logits_i2t, axis=1) == labels).astype(jnp.float32)
    correct_t2i = jnp.sum(jnp.argmax(logits_t2i, axis=1) == labels).astype(jnp.float32)
    return jnp.stack([(cross_entropy(logits_i2t) + cross_entropy(logits_t2i)) / 2, correct_i2t, correct_t2i])


def _dense_softmax(logits: jax.Array) -> jax.Array:
    labels = jnp.arange(logits.shape[0])
    i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[labels, labels])
    t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - logits[labels, labels])
    return (i2t + t2i) / 2


def _block_sigmoid(
    img: jax.Array,
    txt: jax.Array,
    all_img: jax.Array,
    all_txt: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    offset: jax.Array,
) -> jax.Array:
    """SigLIP's pairwise log-sigmoid losses of a device's images against all texts: ``[summed loss]``."""
    logits = scale * img @ all_txt.T + bias
    positives = (offset + jnp.arange(img.shape[0]))[:, None] == jnp.arange(all_txt.shape[0])[None, :]
    signs = jnp.where(positives, 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits))[None]


def _dense_sigmoid(logits: jax.Array) -> jax.Array:
    signs = 2.0 * jnp.eye(logits.shape[0]) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / logits.shape[0]


def _ring_softmax(
    logits: jax.Array, positives: jax.Array | None, carry: dict | None, travel: dict | None
) -> tuple[dict, dict]:
    """One ring step of CLIP's loss: fold a ``[b, b]`` block (this device's images x a visiting text chunk) into
    the images' running sums (``carry``) and the visiting texts' ones (``travel``, which move with the texts).
    ``positives`` (the block's diagonal) is given on the texts' home device only, where the sums start."""
    row_lse, col_lse = jax.nn.logsumexp(logits, axis=1), jax.nn.logsumexp(logits, axis=0)
    row_max, col_max = jnp.max(logits, axis=1), jnp.max(logits, axis=0)
    if positives is not None:  # the first step: the block of the device's own pairs
        return (
            {"lse": row_lse, "max": row_max, "positive": positives},
            {"lse": col_lse, "max": col_max, "positive": positives},
        )
    fold = lambda acc, lse, mx: {
        **acc,
        "lse": jnp.logaddexp(acc["lse"], lse),
        "max": jnp.maximum(acc["max"], mx),
    }
    return fold(carry, row_lse, row_max), fold(travel, col_lse, col_max)


def _ring_softmax_sums(carry: dict, travel: dict) -> jax.Array:
    """``[half the summed loss, correct i2t, correct t2i]`` of a device's rows from their finished ring sums."""
    correct = lambda acc: jnp.sum(acc["positive"] >= acc["max"]).astype(jnp.float32)
    loss = jnp.sum(carry["lse"] - carry["positive"]) + jnp.sum(travel["lse"] - travel["positive"])
    return jnp.stack([loss / 2, correct(carry), correct(travel)])


def _ring_sigmoid(
    logits: jax.Array, positives: jax.Array | None, carry: dict | None, travel: dict | None
) -> tuple[dict, dict]:
    """One ring step of SigLIP's loss: add a block's pairwise log-sigmoid losses to the images' running sum."""
    if positives is None:
        return {"loss": carry["loss"] - jnp.sum(jax.nn.log_sigmoid(-logits))}, travel
    signs = 2.0 * jnp.eye(logits.shape[0], dtype=logits.dtype) - 1.0
    return {"loss": -jnp.sum(jax.nn.log_sigmoid(signs * logits))}, {}


def _ring_sigmoid_sums(carry: dict, travel: dict) -> jax.Array:
    return carry["loss"][None]


@dataclass(frozen=True)
class LossKind:
    """One contrastive loss: how a device computes its rows' share, and the same loss from full logits.

    ``block(img, txt, all_img, all_txt, scale, bias, offset)`` returns per-device sums whose first entry is
    the summed loss and the rest the counts named by ``counts`` (each divided by the global batch into a
    metric). ``dense(logits)`` is the reference from the ``B x B`` logits (bias already added) — the loss's
    test checks ``block`` against it, and the in-training evaluator uses it. ``uses_bias``: the model needs a
    learned logit bias (built with ``loss.sigmoid_bias_init``). ``ring_step`` / ``ring_sums``: the same sums
    accumulated block by block as the text rows travel around the devices (``exchange='ring'``).
    """

    block: Callable[..., jax.Array]
    dense: Callable[[jax.Array], jax.Array]
    ring_step: Callable[..., tuple[dict, dict]]
    ring_sums: Callable[[dict, dict], jax.Array]
    counts: tuple[str, ...] = ()
    uses_bias: bool = False


#: The losses ``loss.kind`` may name. Adding one: its block and dense functions, one entry, one test.
LOSSES: dict[str, LossKind] = {
    "softmax": LossKind(
        _block_softmax,
        _dense_softmax,
        _ring_softmax,
        _ring_softmax_sums,
        counts=("i2t_accuracy", "t2i_accuracy"),
    ),
    "sigmoid": LossKind(_block_sigmoid, _dense_sigmoid, _ring_sigmoid, _ring_sigmoid_sums, uses_bias=True),
}

#: How devices exchange embeddings for global negatives (``loss.exchange``).
EXCHANGES = ("all_gather", "ring")


def loss_kind(name: str) -> LossKind:
    """The registered loss ``name``; ``ValueError`` listing the registered ones otherwise."""
    if name not in LOSSES:
        raise ValueError(f"Unknown loss kind {name!r}; choose one of {sorted(LOSSES)}.")
    return LOSSES[name]


def contrastive_loss(
    image_embeds: jax.Array,
    text_embeds: jax.Array,
    logit_scale: jax.Array,
    *,
    mesh: Mesh | None = None,
    batch_axes: Sequence[str] = ("data", "fsdp"),
    kind: str = "softmax",
    logit_bias: jax.Array | None = None,
    negatives: str = "global",
    exchange: str = "all_gather",
) -> tuple[jax.Array, Metrics]:
    """A loss of :data:`LOSSES` over the global batch: CLIP's symmetric softmax loss (``kind='softmax'``) or
    SigLIP's sigmoid loss (``'sigmoid'``).

    ``negatives='global'`` (the default, and the point of this function): every example is contrasted
    with the whole global batch. ``'local'``: only with the examples on its own device, as CLIP-Italian's
    per-device loss did (kept to measure what that costs; see bench/recipe.py). ``exchange`` (global negatives
    on several devices): ``'all_gather'`` the other rows, or pass the text rows around a ``'ring'`` — the same
    values and gradients, different collectives (module docstring).

    ``image_embeds``/``text_embeds`` are L2-normalised ``[B, d]`` arrays sharded over
    ``batch_axes`` of ``mesh`` (``mesh=None``: one device); ``logit_scale`` is the multiplier
    (already exponentiated). Returns the loss and metrics: in-batch image->text and
    text->image top-1 accuracy (softmax only) and the logit scale.
    """
    loss = loss_kind(kind)
    if negatives not in ("global", "local"):
        raise ValueError(f"negatives must be 'global' or 'local', not {negatives!r}.")
    if exchange not in EXCHANGES:
        raise ValueError(f"exchange must be one of {EXCHANGES}, not {exchange!r}.")
    if loss.uses_bias and logit_bias is None:
        raise ValueError(f"The {kind} loss needs a logit_bias (build the model with logit_bias_init=...).")
    global_batch = image_embeds.shape[0]
    axes = tuple(a for a in batch_axes if mesh is not None and a in mesh.axis_names)
    bias = jnp.zeros((), jnp.float32) if logit_bias is None else logit_bias

    def local(img, txt, scale, bias):
        if axes and negatives == "global":
            all_img = jax.lax.all_gather(img, axes, tiled=True)
            all_txt = jax.lax.all_gather(txt, axes, tiled=True)
            offset = jax.lax.axis_index(axes) * img.shape[0]
        else:
            all_img, all_txt, offset = img, txt, jnp.zeros((), jnp.int32)
        sums = loss.block(img, txt, all_img, all_txt, scale, bias, offset)
        return jax.lax.psum(sums, axes) if axes else sums

    def ring(img, txt, scale, bias):
        n = math.prod(mesh.shape[a] for a in axes)
        forward = [(i, (i + 1) % n) for i in range(n)]
        block = lambda texts: scale * img @ texts.T + (bias if loss.uses_bias else 0.0)
        logits = block(txt)
        carry, travel = loss.ring_step(logits, jnp.diagonal(logits), None, None)
        # recomputed in the backward pass: only the visiting rows are kept per step, not their b x b logits
        fold = jax.checkpoint(lambda texts, carry, travel: loss.ring_step(block(texts), None, carry, travel))

        def visit(state, _):
            carry, visiting = state
            texts, travel = jax.lax.ppermute(visiting, axes, forward)  # the images' sums stay
            carry, travel = fold(texts, carry, travel)
            return (carry, (texts, travel)), None

        (carry, (_, travel)), _ = jax.lax.scan(visit, (carry, (txt, travel)), None, length=n - 1)
        travel = jax.lax.ppermute(travel, axes, forward)  # the texts' sums come home
        return jax.lax.psum(loss.ring_sums(carry, travel), axes)

    img, txt = image_embeds.astype(jnp.float32), text_embeds.astype(jnp.float32)
    scale = logit_scale.astype(jnp.float32)
    if axes:
        if negatives == "global" and exchange == "ring":
            local = ring
        local = jax.shard_map(local, mesh=mesh, in_specs=(P(axes), P(axes), P(), P()), out_specs=P())
    sums = local(img, txt, scale, bias)
    metrics = {"loss": sums[0] / global_batch, "logit_scale": scale}
    metrics.update({name: sums[1 + i] / global_batch for i, name in enumerate(loss.counts)})
    if loss.uses_bias:
        metrics["logit_bias"] = bias
    return metrics["loss"], metrics


def dense_contrastive_loss(
    image_embeds: jax.Array,
    text_embeds: jax.Array,
    logit_scale: jax.Array,
    kind: str = "softmax",
    logit_bias: jax.Array | None = None,
) -> jax.Array:
    """The same losses from the full ``B x B`` logits on one device (the naive version, for comparison)."""
    logits = logit_scale * image_embeds.astype(jnp.float32) @ text_embeds.astype(jnp.float32).T
    loss = loss_kind(kind)
    if loss.uses_bias:
        logits = logits + logit_bias
    return loss.dense(logits)
