"""Training objectives (clip_jax/train/objectives.py): the registry, their own config checks, and a new
objective added from outside the package with no other change."""

import json
from pathlib import Path

import numpy as np
import pytest

from clip_jax.train import Trainer
from clip_jax.train.objectives import OBJECTIVES, Contrastive, objective_of, register_objective
from tests.train_helpers import tiny_config


def test_the_shipped_objectives_are_registered_and_unknown_names_are_refused(tmp_path):
    assert {"contrastive", "distill"} <= set(OBJECTIVES)
    config = tiny_config(tmp_path / "cache", **{"train.objective": "captioning"})
    with pytest.raises(ValueError) as error:
        objective_of(config)
    message = str(error.value)
    assert "train.objective='captioning' is invalid: it must be one of 'contrastive', 'distill'" in message
    assert " — fix it" in message
    with pytest.raises(ValueError, match="train.objective='captioning'"):
        Trainer(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "config.json").exists()


def test_the_distill_objective_checks_its_own_settings(tmp_path):
    config = tiny_config(tmp_path / "cache", **{"train.objective": "distill", "distill.loss": "l1"})
    with pytest.raises(
        ValueError, match="distill.loss='l1' is invalid: it must be one of 'mse', 'cosine' — "
    ):
        objective_of(config)
    config = tiny_config(
        tmp_path / "cache", **{"train.objective": "distill", "phases.warmup.cache_features": True}
    )
    with pytest.raises(ValueError, match="phases.warmup.cache_features is for contrastive phases"):
        objective_of(config)
    assert objective_of(tiny_config(tmp_path / "cache")).name == "contrastive"


class _WithEmbeddingNorms(Contrastive):
    """A third objective, as a user would add one: contrastive training that also reports the mean norm of
    the validation images' unnormalised embeddings and a per-step count of the examples it saw."""

    name = "contrastive_with_norms"
    summary = "contrastive, plus embedding norms"

    def make_step(self, config, graphdef, tx, mesh, phase):
        step = super().make_step(config, graphdef, tx, mesh, phase)

        def counted(state, batch):
            state, metrics = step(state, batch)
            return state, {**metrics, "examples": next(iter(batch.values())).shape[0]}

        return counted

    def val_metrics(self, model, val, config, batch_size):
        images = model.encode_image(val.pixels, batch_size=batch_size, normalize=False)
        return {"val/image_norm": float(np.linalg.norm(images, axis=1).mean())}


@pytest.fixture
def third_objective():
    objective = register_objective(_WithEmbeddingNorms())
    yield objective
    del OBJECTIVES[objective.name]


def test_a_new_objective_is_one_registration(tmp_path, third_objective):
    config = tiny_config(
        tmp_path / "cache", **{"train.objective": third_objective.name, "train.phases": ("warmup",)}
    )
    summary = Trainer(config, str(tmp_path / "run")).run()
    records = [json.loads(line) for line in Path(tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert len(steps) == 3 and all(r["train/examples"] == 16 for r in steps)
    assert set(summary["val"]) == {"val/image_norm"}
    # unnormalised embeddings: their norms are not all 1 (the contrastive objective's would be)
    assert abs(summary["val"]["val/image_norm"] - 1.0) > 1e-3
    assert (
        json.loads((tmp_path / "run" / "config.json").read_text())["train"]["objective"]
        == third_objective.name
    )
