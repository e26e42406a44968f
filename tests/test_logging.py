"""Training logs: metrics.jsonl and TensorBoard events locally, and a Weights & Biases run (offline mode:
the real client writing its run file in the workdir, nothing sent anywhere)."""

import json
import time

import pytest
from train_helpers import tensorboard_scalars

from clip_jax.train.metrics_logger import MetricsLogger


def test_metrics_go_to_jsonl_tensorboard_and_wandb(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="train.wandb_project needs wandb (the [wandb] extra)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = MetricsLogger(
        str(tmp_path), enabled=True, wandb_project="clip-jax-test", config={"train": {"batch_size": 16}}
    )
    logger.write(1, {"train/loss": 2.5, "lr/head": 1e-3})
    logger.write(2, {"train/loss": 2.25, "val/text_retrieval_recall@1": 0.5, "train/grad_norm": float("nan")})
    logger.close()

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"step": 1, "train/loss": 2.5, "lr/head": 1e-3}
    assert records[1]["val/text_retrieval_recall@1"] == 0.5
    # TensorBoard: the same names (no '@' rewriting), non-finite values left out
    assert tensorboard_scalars(tmp_path / "tensorboard") == {
        "train/loss": {1: 2.5, 2: 2.25},
        "lr/head": {1: pytest.approx(1e-3)},
        "val/text_retrieval_recall@1": {2: 0.5},
    }

    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    # The run's protobuf record log (keys and config stored as strings). wandb's own service process writes
    # it and may still be flushing after finish() returns on a loaded machine: wait for it, up to a minute.
    keys = (b"train/loss", b"lr/head", b"val/text_retrieval_recall@1", b"batch_size")
    deadline = time.monotonic() + 60
    while not all(key in runs[0].read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    log = runs[0].read_bytes()
    for key in keys:
        assert key in log, key


def test_only_process_zero_writes(tmp_path):
    logger = MetricsLogger(str(tmp_path / "other"), enabled=False)
    logger.write(1, {"train/loss": 1.0})
    logger.close()
    assert not (tmp_path / "other").exists()


def test_metrics_jsonl_is_strict_json(tmp_path):
    """NaN and infinities are written as null: Python's NaN/Infinity tokens are not JSON (jq, JS, Go refuse them)."""
    logger = MetricsLogger(str(tmp_path), enabled=True)
    logger.write(3, {"train/loss": float("nan"), "train/grad_norm": float("inf"), "lr/head": 1e-3})
    logger.close()

    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line, parse_constant=refuse) == {
        "step": 3,
        "train/loss": None,
        "train/grad_norm": None,
        "lr/head": 1e-3,
    }
