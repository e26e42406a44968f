"""LiT-style feature caching in a frozen-towers phase: the cache holds the towers' real outputs, a step
on cached features equals a full step, backbones stay bit-identical, and a run interrupted mid-phase
resumes (reusing the cache) with the losses of an uninterrupted one."""

import json
import os
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from train_helpers import losses, tiny_config

from clip_jax.config import HEAD
from clip_jax.models.dual_encoder import pool_text
from clip_jax.models.freezing import split_trainable
from clip_jax.train import Trainer, phase_optimizer
from clip_jax.train.features import FeatureStore, feature_cache_path, make_feature_train_step
from clip_jax.train.step import jit_train_step, make_train_step
from clip_jax.weights import flat_params


def cached_config(tmp_path, **overrides):
    config = tiny_config(tmp_path / "cache", **overrides)
    config.phases.warmup.cache_features = True
    config.phases.warmup.steps = 6
    config.model.dropout = False  # so the full step is deterministic, like the cached features
    return config


def test_cache_holds_tower_outputs_and_a_cached_step_equals_a_full_step(tmp_path):
    config = cached_config(tmp_path, **{"train.phases": ("warmup",)})
    config.train.eps = 1e-3  # Adam's first step ~ lr * g / eps: comparable between the two paths
    trainer = Trainer(config, str(tmp_path / "run"))
    phase = trainer.phases[0]
    started = trainer.start_phase(phase, trainer.model.module)
    store = trainer.batches(phase, started.state).store
    data = trainer.train_iter
    assert store.image.shape == (64, 32) and len(store.text) == sum(len(c) for c in data.dataset.captions)
    assert Path(feature_cache_path(str(tmp_path / "run"), "warmup", 0)).is_file()

    module = trainer.model.module
    rows = np.arange(8, 24)
    pixels = np.concatenate([chunk for chunk, _ in data.examples(64)])  # eval-preprocessed, in row order
    pooled = np.asarray(module.vision(pixels[rows]).pooler_output)
    np.testing.assert_allclose(store.image[rows], pooled, atol=1e-5)
    caption_rows = np.array([np.flatnonzero(store.owner == r)[-1] for r in rows])  # each image's last caption
    texts = [data.dataset.captions[r][-1] for r in rows]
    tokens = trainer.tokenize(texts)
    pooled_text = np.asarray(
        pool_text(
            module.text(tokens["input_ids"], tokens["attention_mask"]),
            tokens["attention_mask"],
            module.text_pooling,
        )
    )
    np.testing.assert_allclose(store.text[caption_rows], pooled_text, atol=1e-5)

    # One step from the same state: on cached features vs. through both towers.
    graphdef, params, _frozen = split_trainable(module, phase.trainable)
    tx, _ = phase_optimizer(trainer.config, phase, params)
    sharding = jax.tree.map(lambda a: a.sharding, started.abstract)
    results = []
    for step, batch in (
        (
            make_feature_train_step(graphdef, tx, trainer.mesh, loss_kind="softmax"),
            {"image_features": store.image[rows], "text_features": store.text[caption_rows]},
        ),
        (
            make_train_step(graphdef, tx, trainer.mesh, loss_kind="softmax", dropout=False),
            {"pixel_values": pixels[rows], **tokens},
        ),
    ):
        state = trainer.start_phase(phase, module).state
        new_state, metrics = jit_train_step(step, sharding, trainer.batch_sharding, trainer.mesh)(
            state, trainer.global_batch(batch)
        )
        results.append((float(metrics["loss"]), jax.device_get(nnx.to_pure_dict(new_state.params))))
    (loss_cached, params_cached), (loss_full, params_full) = results
    assert loss_cached == pytest.approx(loss_full, abs=1e-5)
    for a, b in zip(jax.tree.leaves(params_cached), jax.tree.leaves(params_full)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_cached_phase_keeps_backbones_identical_then_phase_two_trains_them(tmp_path):
    config = cached_config(tmp_path)
    trainer = Trainer(config, str(tmp_path / "run"))
    initial = {".".join(map(str, k)): np.asarray(v) for k, v in flat_params(trainer.model.module).items()}
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    phase_one = [r["train/loss"] for r in records if r.get("phase") == 0]
    assert len(phase_one) == 6 and all(np.isfinite(phase_one))
    assert any(k.startswith("val/") for r in records for k in r)  # validation runs through the full model
    after = {
        ".".join(map(str, k)): np.asarray(jax.device_get(v))
        for k, v in flat_params(trainer.module(trainer.state)).items()
    }
    assert (
        np.abs(after["vision.layers.0.mlp.fc1.kernel"] - initial["vision.layers.0.mlp.fc1.kernel"]).max() > 0
    )


def test_phase_training_a_tower_cannot_cache(tmp_path):
    config = cached_config(tmp_path, **{"train.phases": ("warmup",)})
    config.phases.warmup.trainable = r"(text\.layers\.1\..*|" + HEAD + ")"
    trainer = Trainer(config, str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"cache_features needs the towers frozen.*text\.layers\.1\."):
        trainer.run()


def test_interrupted_cached_phase_resumes_with_identical_losses(tmp_path):
    reference = Trainer(cached_config(tmp_path), str(tmp_path / "reference"))
    reference.run()

    workdir = str(tmp_path / "interrupted")
    first = Trainer(cached_config(tmp_path), workdir)
    write = first.logger.write

    def write_then_preempt(step, metrics):  # a real SIGTERM in the middle of the cached phase
        write(step, metrics)
        if step == 3 and "train/loss" in metrics:
            os.kill(os.getpid(), signal.SIGTERM)

    first.logger.write = write_then_preempt
    assert first.run()["preempted"]
    cache = Path(feature_cache_path(workdir, "warmup", 0))
    written = cache.stat().st_mtime_ns
    second = Trainer(cached_config(tmp_path), workdir)
    summary = second.run()
    assert summary["step"] == 9 and not summary["preempted"]
    assert cache.stat().st_mtime_ns == written  # the cache was reused, not recomputed
    expected, got = losses(tmp_path / "reference"), losses(workdir)
    assert sorted(got) == sorted(expected) == list(range(1, 10))
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=1e-6), step


def test_feature_store_rejects_inconsistent_arrays(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        FeatureStore(np.zeros((0, 4)), np.zeros((0, 4)), np.zeros(0, int))
    with pytest.raises(ValueError, match="some image has no caption"):
        FeatureStore(np.zeros((2, 4)), np.zeros((2, 4)), np.zeros(2, int))
    store = FeatureStore(np.ones((2, 4)), np.ones((3, 4)), np.array([0, 1, 1]))
    store.save(str(tmp_path / "f.npz"))
    loaded = FeatureStore.load(str(tmp_path / "f.npz"))
    np.testing.assert_array_equal(loaded.owner, store.owner)
    assert FeatureStore.load(str(tmp_path / "missing.npz")) is None


def test_two_processes_each_cache_their_half_in_lock_step(tmp_path):
    """A real 2-process run (jax.distributed, gloo, 4 CPU devices each): each process caches the features of
    its own examples, the same rows a 1-process run computes for them, and trains on them."""

    from train_helpers import launch_two_processes, run, subprocess_env, train_command

    extra = [
        "--config.phases.warmup.steps=2",
        "--config.phases.finetune.steps=1",
        "--config.phases.warmup.cache_features=True",
        "--config.model.dropout=False",
    ]
    run(train_command(tmp_path / "single", tmp_path / "cache", *extra), subprocess_env(8))
    for status, err in launch_two_processes(tmp_path / "multi", tmp_path / "cache", *extra):
        assert status == 0, err[-3000:]
    single = FeatureStore.load(feature_cache_path(str(tmp_path / "single"), "warmup", 0))
    for process in range(2):
        part = FeatureStore.load(feature_cache_path(str(tmp_path / "multi"), "warmup", process, 2))
        assert len(part.image) == 32  # the 64 demo images, every other one
        np.testing.assert_allclose(part.image, single.image[process::2], atol=1e-4)
    assert sorted(losses(tmp_path / "multi")) == [1, 2, 3]
    assert all(np.isfinite(list(losses(tmp_path / "multi").values())))
