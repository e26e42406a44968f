"""The legacy side of ``bench/vs_legacy_flax.py``, run inside the legacy virtualenv.

The recipe is the one of transformers' community script ``research_projects/jax-projects/hybrid_clip``
(which CLIP-Italian extended): a transformers 4.x ``FlaxVisionTextDualEncoderModel``, the train step
``jax.pmap``-ed over the local devices, **each device's contrastive loss computed on its own examples only**
(so an example is contrasted with the ``b - 1`` others on its device), gradients averaged with
``lax.pmean``, optax AdamW. Frozen backbones (phase 1) zero their updates with
``optax.multi_transform(..., set_to_zero())``, as CLIP-Italian did: gradients are still asked for.

    python bench/_legacy_flax_worker.py '{"data": "batch.npz", "vision": {...}, "text": {...}}'

then one JSON command per stdin line, one ``LEGACY_JSON {...}`` answer per command on stdout:
``{"cmd": "phase", "phase": 1, "warmup": 2}`` builds, compiles and runs the warm-up steps; ``{"cmd": "step"}`` times
one step; ``{"cmd": "quit"}``. Everything else the libraries print goes to stderr.

Importing this module needs only jax (the parent uses :func:`per_device_clip_loss` for the negatives
count); transformers, flax and optax are imported by :func:`main`.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

PREFIX = "LEGACY_JSON "


def clip_loss(logits: jax.Array) -> jax.Array:
    """The hybrid-CLIP script's loss on one device's ``b x b`` logits: mean of both cross-entropies."""

    def cross_entropy(axis):
        return -jnp.mean(jnp.diag(jax.nn.log_softmax(logits, axis=axis)))

    return (cross_entropy(0) + cross_entropy(1)) / 2


def per_device_clip_loss(image_embeds: jax.Array, text_embeds: jax.Array, scale: jax.Array) -> jax.Array:
    """The same loss from one device's normalised embeddings (what the model's ``logits_per_image`` holds)."""
    return clip_loss(scale * image_embeds @ text_embeds.T)


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("transformers", "jax", "jaxlib", "flax", "optax", "numpy")}


def _build(args: dict):
    import transformers as tf

    config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(
        tf.CLIPVisionConfig(**args["vision"]),
        tf.BertConfig(**args["text"]),
        projection_dim=args["projection_dim"],
    )
    size = args["vision"].get("image_size", 224)
    model = tf.FlaxVisionTextDualEncoderModel(
        config, input_shape=((1, 1), (1, size, size, 3)), seed=0, dtype=jnp.float32
    )
    data = dict(np.load(args["data"]))
    data["pixel_values"] = np.ascontiguousarray(
        data["pixel_values"].transpose(0, 3, 1, 2)
    )  # HF Flax CLIP: NCHW
    n = jax.local_device_count()
    per_device = {k: v.reshape(n, v.shape[0] // n, *v.shape[1:]) for k, v in data.items()}
    batch = jax.pmap(lambda x: x)(per_device)  # placed on the devices once, like clip_jax's side
    return model, batch, n


def _phase(model, n: int, phase: int):
    """State replicated over the devices and the pmapped step for ``phase`` (1: heads only, 2: all)."""
    import flax
    import flax.jax_utils
    import optax
    from flax.training import train_state

    class TrainState(train_state.TrainState):
        dropout_rng: jax.Array

    # a copy: the step donates its state, and the next phase starts again from the model's own weights
    params = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), flax.core.unfreeze(model.params))
    lr = 1e-3 if phase == 1 else 1e-5
    adamw = optax.adamw(optax.linear_schedule(lr, 0.0, 1000), b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2)
    if phase == 1:
        labels = {
            k: jax.tree_util.tree_map(
                lambda _, k=k: "frozen" if k in ("vision_model", "text_model") else "train", v
            )
            for k, v in params.items()
        }
        tx = optax.multi_transform({"train": adamw, "frozen": optax.set_to_zero()}, labels)
    else:
        tx = adamw
    state = TrainState.create(
        apply_fn=model.__call__, params=params, tx=tx, dropout_rng=jax.random.PRNGKey(0)
    )
    state = flax.jax_utils.replicate(state)
    state = state.replace(dropout_rng=jax.random.split(jax.random.PRNGKey(1), n))

    def train_step(state, batch):
        dropout_rng, new_dropout_rng = jax.random.split(state.dropout_rng)

        def compute_loss(params):
            logits = state.apply_fn(**batch, params=params, dropout_rng=dropout_rng, train=True)[0]
            return clip_loss(logits)  # this device's examples only

        loss, grads = jax.value_and_grad(compute_loss)(state.params)
        grads = jax.lax.pmean(grads, "batch")
        state = state.apply_gradients(grads=grads, dropout_rng=new_dropout_rng)
        return state, jax.lax.pmean({"loss": loss}, "batch")

    return state, jax.pmap(train_step, "batch", donate_argnums=(0,))


def main() -> None:
    args = json.loads(sys.argv[1])
    out, sys.stdout = sys.stdout, sys.stderr  # library chatter must not mix with the answers

    def answer(obj: dict) -> None:
        out.write(PREFIX + json.dumps(obj) + "\n")
        out.flush()

    model, batch, n = _build(args)
    answer({"ready": True, "devices": n, "versions": _versions()})
    holder = {}
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "phase":
            holder.clear()  # free the previous phase's state first
            state, step = _phase(model, n, command["phase"])
            warmup = []
            for _ in range(
                command.get("warmup", 2)
            ):  # newer jax compiles pmap twice: for the fresh state, then
                start = time.perf_counter()  # for the state the step returns
                state, metrics = step(state, batch)
                jax.block_until_ready(metrics)
                warmup.append(time.perf_counter() - start)
            holder.update(state=state, step=step)
            answer({"warmup_s": warmup, "loss": float(metrics["loss"][0])})
        elif command["cmd"] == "step":
            start = time.perf_counter()
            holder["state"], metrics = holder["step"](holder["state"], batch)
            jax.block_until_ready(metrics)
            seconds = time.perf_counter() - start
            answer({"step_s": seconds, "loss": float(metrics["loss"][0])})
        else:
            raise ValueError(f"unknown command {command}")


if __name__ == "__main__":
    main()
