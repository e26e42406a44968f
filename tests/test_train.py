"""Two-phase sharded training: equivalence across meshes, freezing, NaN, bfloat16, the sigmoid loss, and clear
errors for configs that do not fit (the runs as processes — kill -9, SIGTERM, Ctrl-C, 2 processes — are in
test_train_processes.py)."""

import json
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest
from train_helpers import losses, subprocess_env, tensorboard_scalars, tiny_config, train_command

from clip_jax.config import validate
from clip_jax.sharding import MeshError
from clip_jax.train import Trainer, TrainingDiverged
from clip_jax.weights import flat_params


def params_of(trainer):
    module = trainer.module(trainer.state)
    return {".".join(map(str, k)): np.asarray(jax.device_get(v)) for k, v in flat_params(module).items()}


def test_one_step_on_8_devices_equals_1_device(tmp_path):
    results = []
    for name, axes, devices in (
        ("one", {"data": 1, "fsdp": 1}, jax.devices()[:1]),
        ("eight", {"data": 4, "fsdp": 2}, jax.devices()),
    ):
        config = tiny_config(tmp_path / "cache", **{"train.phases": ("finetune",)})
        config.mesh.axes = axes
        config.phases.finetune.steps = 1
        # Adam's first step is lr * sign(g): for parameters whose gradient is ~0, float rounding noise
        # would flip the sign. A larger eps makes the update proportional to g, so the comparison is meaningful.
        config.train.eps = 1e-3
        trainer = Trainer(config, str(tmp_path / name), devices=devices)
        summary = trainer.run()
        assert summary["step"] == 1
        results.append((losses(tmp_path / name)[1], params_of(trainer), trainer))
    (loss_1, params_1, _), (loss_8, params_8, trainer_8) = results
    assert loss_8 == pytest.approx(loss_1, abs=1e-5)
    assert params_1.keys() == params_8.keys()
    for key in params_1:
        np.testing.assert_allclose(params_8[key], params_1[key], atol=1e-5, err_msg=key)
    # FSDP really splits parameters on the 8-device mesh.
    kernel = trainer_8.state.params["vision"]["layers"][0]["mlp"]["fc1"]["kernel"].get_value()
    assert "fsdp" in str(kernel.sharding.spec)


def test_phase_one_freezes_backbones_and_phase_two_unfreezes(tmp_path):
    config = tiny_config(tmp_path / "cache", **{"train.phases": ("warmup",)})
    trainer = Trainer(config, str(tmp_path / "run"))
    initial = {".".join(map(str, k)): np.asarray(v) for k, v in flat_params(trainer.model.module).items()}
    trainer.run()
    after = params_of(trainer)
    for key, value in initial.items():
        if key.startswith(("vision.", "text.")):
            np.testing.assert_array_equal(after[key], value, err_msg=key)  # bit-identical
    assert np.abs(after["visual_projection.kernel"] - initial["visual_projection.kernel"]).max() > 0
    assert after["logit_scale"] != initial["logit_scale"]
    # No optimizer state for frozen weights: every Adam moment belongs to a projection or the scale.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(trainer.state.opt_state)]
    assert paths and not any("vision" in p or "'text'" in p for p in paths)
    assert any("visual_projection" in p for p in paths)

    config = tiny_config(tmp_path / "cache")  # warmup then finetune
    trainer = Trainer(config, str(tmp_path / "run2"))
    summary = trainer.run()
    after = params_of(trainer)
    assert (
        np.abs(after["vision.layers.0.mlp.fc1.kernel"] - initial["vision.layers.0.mlp.fc1.kernel"]).max() > 0
    )
    assert (
        np.abs(
            after["text.layers.0.attention.query.kernel"] - initial["text.layers.0.attention.query.kernel"]
        ).max()
        > 0
    )
    records = [
        json.loads(line) for line in Path(tmp_path / "run2" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["phase"] for r in records if "phase" in r] == [0, 0, 0, 1, 1, 1]
    assert {"lr/head", "train/i2t_accuracy", "train/logit_scale", "train/grad_norm"} <= set(
        records[-1]
    ) | set(records[-2])
    # one vocabulary: validation metrics under CLIP_benchmark's names in metrics.jsonl, TensorBoard and the summary
    val = {"val/loss"} | {f"val/{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5)}
    assert set(summary["val"]) == val
    assert {k for r in records for k in r if k.startswith("val/")} == val
    scalars = tensorboard_scalars(tmp_path / "run2" / "tensorboard")
    assert {k for k in scalars if k.startswith("val/")} == val
    last = max(r["step"] for r in records if "val/loss" in r)
    assert all(scalars[k][last] == pytest.approx(summary["val"][k]) for k in val)


def test_lit_config_keeps_vision_locked_in_phase_two(tmp_path):
    config = tiny_config(tmp_path / "cache", **{"train.phases": ("finetune",)})
    config.phases.finetune.trainable = r"(text|visual_projection|text_projection|logit_scale)(\..*)?"
    trainer = Trainer(config, str(tmp_path / "run"))
    initial = {".".join(map(str, k)): np.asarray(v) for k, v in flat_params(trainer.model.module).items()}
    trainer.run()
    after = params_of(trainer)
    np.testing.assert_array_equal(
        after["vision.layers.1.mlp.fc2.kernel"], initial["vision.layers.1.mlp.fc2.kernel"]
    )
    assert np.abs(after["text.layers.1.mlp.fc2.kernel"] - initial["text.layers.1.mlp.fc2.kernel"]).max() > 0


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = tiny_config(tmp_path / "cache")
    config.phases.finetune.learning_rates = {"head": 1e38, "vision": 1e38, "text": 1e38}
    config.train.grad_clip_norm = 0.0
    trainer = Trainer(config, str(tmp_path / "run"))
    with pytest.raises(TrainingDiverged, match=r"at step 4 \(phase 'finetune'\).*checkpoint \(step 3\)"):
        trainer.run()
    assert (tmp_path / "run" / "checkpoints" / "3").exists()
    assert not (tmp_path / "run" / "checkpoints" / "4").exists()  # diverged parameters are never saved


def test_batch_and_mesh_errors_say_what_fits(tmp_path):
    config = tiny_config(tmp_path / "cache", **{"train.batch_size": 12})
    with pytest.raises(MeshError, match="not divisible by the 8 data-parallel devices.*e.g. 8 or 16"):
        Trainer(config, str(tmp_path / "a"))
    config = tiny_config(tmp_path / "cache")
    config.mesh.axes = {"data": 3, "fsdp": 1}
    with pytest.raises(MeshError, match="does not fit 8 devices"):
        Trainer(config, str(tmp_path / "b"))


def test_unknown_config_keys_are_errors_listing_valid_keys(tmp_path):
    config = tiny_config(tmp_path / "cache")
    config.unlock()
    config.train.bach_size = 3
    with pytest.raises(ValueError, match=r"Unknown config key\(s\) \['train.bach_size'\].*'batch_size'"):
        validate(config)
    result = subprocess.run(
        train_command(tmp_path / "w", tmp_path / "cache", "--config.train.bach_size=3"),
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "bach_size" in result.stderr and "batch_size" in result.stderr


def test_bfloat16_compute_trains(tmp_path):
    config = tiny_config(tmp_path / "cache", **{"model.dtype": "bfloat16"})
    summary = Trainer(config, str(tmp_path / "run")).run()
    recorded = losses(tmp_path / "run")
    assert summary["step"] == 6 and all(np.isfinite(v) for v in recorded.values())


def test_sigmoid_loss_trains_and_validates_with_the_sigmoid_loss(tmp_path):
    """SigLIP's loss end to end: the model gets a learned bias, and val/loss is the sigmoid loss of the
    validation pairs, recomputed here in NumPy from the trained model's embeddings."""
    from clip_jax import load_model

    config = tiny_config(tmp_path / "cache", **{"loss.kind": "sigmoid", "model.dropout": False})
    trainer = Trainer(config, str(tmp_path / "run"))
    summary = trainer.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(train_losses) == 6 and all(np.isfinite(train_losses))
    assert all("train/logit_bias" in r for r in records if "train/loss" in r)

    model = load_model(str(tmp_path / "run"))
    image = model.encode_image(trainer.val.pixels)
    text = model.encode_text([captions[0] for captions in trainer.val.captions])
    logits = model.logit_multiplier * image @ text.T + float(model.module.logit_bias[...])
    signs = 2 * np.eye(len(image)) - 1
    expected = np.logaddexp(0, -signs * logits).sum() / len(image)  # -sum(log_sigmoid(signs * logits)) / n
    assert summary["val"]["val/loss"] == pytest.approx(expected, rel=1e-4)
    softmax = (np.log(np.exp(logits).sum(1)) - np.diag(logits)).mean()  # what the old evaluator reported
    assert abs(softmax - expected) > 1e-2
