"""Exact gradient caching (``train.micro_batch_size``): the same step as the full batch at once, the same
dropout masks in both passes, and tower activations for one micro-batch at a time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_helpers import losses, tiny_config

from clip_jax.config import validate
from clip_jax.sharding import MeshError, batch_sharding, make_mesh
from clip_jax.train import Trainer
from clip_jax.train.step import cached_value_and_grad, merge_micro_batches, split_micro_batches
from clip_jax.weights import flat_params


def random_batch(size, rs):
    """Random pixels and tokens: unlike the tiny model on the shapes data (whose embeddings are nearly
    parallel, so its gradients are ~1e-4 and mostly float noise), these give well-conditioned gradients."""
    return {
        "pixel_values": rs.randn(size, 32, 32, 3).astype(np.float32),
        "input_ids": rs.randint(5, 30, (size, 12)).astype(np.int32),
        "attention_mask": (np.arange(12)[None, :] < rs.randint(4, 13, (size, 1))).astype(np.int32),
    }


@pytest.mark.parametrize(
    "kind,remat,phases", [("softmax", False, (0, 1)), ("sigmoid", False, (0, 1)), ("softmax", True, (1,))]
)
def test_micro_batched_step_equals_full_batch_step_on_8_devices(tmp_path, kind, remat, phases):
    """One phase-1 step and one phase-2 step (FSDP over 2 x data over 4 devices, dropout off): the same
    updated parameters with micro-batches of 8 (1 example per device at a time) as with the batch of 32;
    also with per-layer remat inside each micro-batch."""
    batch = random_batch(32, np.random.RandomState(0))
    for phase_index in phases:
        updated = {}
        for micro in (0, 8):
            config = tiny_config(
                tmp_path / "cache",
                **{
                    "train.batch_size": 32,
                    "train.micro_batch_size": micro,
                    "loss.kind": kind,
                    "model.dropout": False,
                    "model.remat": remat,
                },
            )
            config.mesh.axes = {"data": 4, "fsdp": 2}
            trainer = Trainer(config, str(tmp_path / f"{kind}-{remat}-{phase_index}-{micro}"))
            phase = trainer.phases[phase_index]
            initial = {
                ".".join(map(str, k)): np.asarray(v) for k, v in flat_params(trainer.model.module).items()
            }
            started = trainer.start_phase(phase, trainer.model.module)
            state, metrics = started.step_fn(started.state, trainer.global_batch(batch))
            module = nnx.merge(trainer.graphdef, state.params, state.frozen)
            updated[micro] = (
                float(metrics["loss"]),
                float(metrics["grad_norm"]),
                {
                    ".".join(map(str, k)): np.asarray(jax.device_get(v))
                    for k, v in flat_params(module).items()
                },
            )
        (loss, norm, full), (loss_m, norm_m, micro_params) = updated[0], updated[8]
        assert loss_m == pytest.approx(loss, abs=1e-5) and norm_m == pytest.approx(norm, rel=1e-5)
        for key in full:
            np.testing.assert_allclose(micro_params[key], full[key], atol=1e-5, err_msg=key)
        # The comparison means something: the step moved the parameters far more than the tolerance.
        moved = ["visual_projection.kernel"] + (
            ["vision.layers.0.mlp.fc1.kernel", "text.layers.1.mlp.fc2.kernel"] if phase_index else []
        )
        for key in moved:
            assert np.abs(full[key] - initial[key]).max() > 1e-4, key
        if phase_index == 0:
            np.testing.assert_array_equal(
                micro_params["vision.layers.0.mlp.fc1.kernel"], initial["vision.layers.0.mlp.fc1.kernel"]
            )


def test_training_with_micro_batches_logs_the_same_losses(tmp_path):
    """The trainer wiring: a run with micro-batches logs the same losses as one without (2 + 2 steps,
    8 devices, the shapes data), also with the loss's ring exchange (``loss.exchange``)."""
    runs = {}
    for name, micro, exchange in (("full", 0, "all_gather"), ("micro", 8, "all_gather"), ("ring", 8, "ring")):
        config = tiny_config(
            tmp_path / "cache",
            **{
                "train.batch_size": 32,
                "train.micro_batch_size": micro,
                "model.dropout": False,
                "loss.exchange": exchange,
            },
        )
        config.phases.warmup.steps = config.phases.finetune.steps = 2
        Trainer(config, str(tmp_path / name)).run()
        runs[name] = losses(tmp_path / name)
    assert sorted(runs["micro"]) == sorted(runs["ring"]) == [1, 2, 3, 4]
    for step in runs["full"]:
        assert runs["micro"][step] == pytest.approx(runs["full"][step], abs=1e-5)
        assert runs["ring"][step] == pytest.approx(runs["full"][step], abs=1e-5)


def test_bfloat16_training_with_micro_batches(tmp_path):
    config = tiny_config(tmp_path / "cache", **{"train.micro_batch_size": 8, "model.dtype": "bfloat16"})
    config.phases.warmup.steps = 1
    assert Trainer(config, str(tmp_path / "run")).run()["step"] == 4
    recorded = losses(tmp_path / "run")
    assert sorted(recorded) == [1, 2, 3, 4] and all(np.isfinite(v) for v in recorded.values())


def test_split_and_merge_keep_every_row_on_its_device():
    mesh = make_mesh({"data": -1})
    x = jax.device_put(jnp.arange(32 * 3).reshape(32, 3), batch_sharding(mesh))
    parts = jax.jit(lambda x: split_micro_batches(x, 2, mesh))(x)
    assert parts.shape == (2, 16, 3)
    # device d holds rows 4d..4d+3; micro-batch k takes its rows 4d+2k, 4d+2k+1
    np.testing.assert_array_equal(np.asarray(parts[1, 2:4, 0]), [6 * 3, 7 * 3])
    for shard in parts.addressable_shards:  # every device's slice of each micro-batch came from its own rows
        own = next(s for s in x.addressable_shards if s.device == shard.device)
        np.testing.assert_array_equal(
            np.sort(np.asarray(shard.data).reshape(-1, 3), axis=0), np.sort(np.asarray(own.data), axis=0)
        )
    np.testing.assert_array_equal(
        np.asarray(jax.jit(lambda p: merge_micro_batches(p, mesh))(parts)), np.asarray(x)
    )


def _tiny_dual_encoder(tmp_path):
    config = tiny_config(tmp_path / "cache", **{"model.dropout": True})
    config.model.text.update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    config.model.vision["attention_dropout"] = 0.1
    from clip_jax.train.model import build_model

    return build_model(config)


def test_dropout_masks_are_the_same_in_both_passes(tmp_path):
    """With dropout on, the cached gradient is the exact gradient of the loss whose embeddings the first
    pass computed: micro-batch k uses the key fold_in(rng, k) in the embedding pass and in the re-run."""
    model = _tiny_dual_encoder(tmp_path)
    graphdef, params = nnx.split(model.module)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    rs = np.random.RandomState(0)
    batch = {
        "pixel_values": jnp.asarray(rs.randn(16, 32, 32, 3), jnp.float32),
        "input_ids": jnp.asarray(rs.randint(5, 30, (16, 12)), jnp.int32),
        "attention_mask": jnp.ones((16, 12), jnp.int32),
    }
    from clip_jax.loss import contrastive_loss

    def embed(p, b, key):
        out = nnx.merge(graphdef, p)(
            b["pixel_values"],
            b["input_ids"],
            b["attention_mask"],
            deterministic=False,
            rngs=nnx.Rngs(dropout=key),
        )
        return out.image_embeds, out.text_embeds

    def loss_of_embeds(p, img, txt):
        return contrastive_loss(img, txt, nnx.merge(graphdef, p).scale(), mesh=mesh)

    rng = jax.random.key(3)
    (loss, _), grads = jax.jit(
        lambda p: cached_value_and_grad(embed, loss_of_embeds, p, batch, rng, micro_batch_size=4, mesh=mesh)
    )(params)

    def reference(p, keys):  # the whole graph at once: the first pass's embeddings, differentiated directly
        parts = [
            embed(p, jax.tree.map(lambda x, k=k: x[4 * k : 4 * k + 4], batch), keys[k]) for k in range(4)
        ]
        return loss_of_embeds(
            p, jnp.concatenate([a for a, _ in parts]), jnp.concatenate([b for _, b in parts])
        )[0]

    same = [jax.random.fold_in(rng, k) for k in range(4)]
    ref_loss, ref_grads = jax.value_and_grad(reference)(params, same)
    assert float(loss) == pytest.approx(float(ref_loss), abs=1e-5)
    flat, ref_flat = dict(nnx.to_flat_state(grads)), dict(nnx.to_flat_state(ref_grads))
    for key in ref_flat:
        np.testing.assert_allclose(
            np.asarray(flat[key][...]), np.asarray(ref_flat[key][...]), atol=2e-5, err_msg=str(key)
        )
    # Dropout really acts: other masks give another loss (so a re-run with other keys would be caught above).
    other = [jax.random.fold_in(rng, k + 100) for k in range(4)]
    assert abs(float(reference(params, other)) - float(ref_loss)) > 1e-3


def test_micro_batch_size_errors_say_what_fits(tmp_path):
    config = tiny_config(tmp_path / "cache", **{"train.micro_batch_size": 12})
    with pytest.raises(
        ValueError, match="micro_batch_size=12 is invalid: it must be 0 .* divisor of train.batch_size=16"
    ):
        validate(config)
    config = tiny_config(tmp_path / "cache", **{"train.micro_batch_size": 4})
    with pytest.raises(MeshError, match="micro_batch_size 4 is not divisible by the 8 data-parallel devices"):
        Trainer(config, str(tmp_path / "a"))


def compiled_temp_bytes(model, batch_size, micro_batch_size, mesh):
    """XLA's compiled temporary memory (per device) of a phase-2 step; nothing is run."""
    import optax

    from clip_jax.models.freezing import split_trainable
    from clip_jax.train.step import TrainState, initial_rng, make_train_step

    graphdef, params, frozen = split_trainable(model.module, ".*")
    tx = optax.adamw(1e-3)
    step = make_train_step(
        graphdef, tx, mesh, loss_kind="softmax", dropout=True, micro_batch_size=micro_batch_size
    )
    state = jax.eval_shape(
        lambda: TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            frozen=frozen,
            opt_state=tx.init(params),
            rng=initial_rng(0),
        )
    )
    batch = {
        k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype, sharding=batch_sharding(mesh))
        for k, v in random_batch(1, np.random.RandomState(0)).items()
    }
    compiled = jax.jit(step, donate_argnums=(0,)).lower(state, batch).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_activation_memory_is_one_micro_batch(tmp_path):
    """XLA's compiled memory analysis: with micro-batches, temporary memory stays flat as the global batch
    grows 4x; without, it grows with the batch."""
    model = _tiny_dual_encoder(tmp_path)
    mesh = make_mesh({"data": 1}, jax.devices()[:1])
    full_64, full_256 = (compiled_temp_bytes(model, b, 0, mesh) for b in (64, 256))
    micro_64, micro_256 = (compiled_temp_bytes(model, b, 16, mesh) for b in (64, 256))
    print(f"temp bytes: full {full_64} -> {full_256}, micro 16: {micro_64} -> {micro_256}")
    assert full_256 > 3 * full_64  # activations scale with the batch...
    assert micro_256 < 1.3 * micro_64  # ...but with micro-batches only the [B, d] embeddings and inputs do
    assert micro_256 < full_256 / 3
