"""The offline demo (fewer steps): training lowers the loss, retrieval ends well above chance,
held-out combinations are classified above chance, and the export loads in transformers."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import transformers as tf

from clip_jax.demo import report
from clip_jax.train import Trainer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    sys.path.insert(0, str(REPO))
    from configs.demo import get_config

    root = tmp_path_factory.mktemp("demo")
    config = get_config()
    config.data.cache_dir = str(root / "cache")
    config.data.shapes.update(num_train=2048, num_val=128)
    config.phases.warmup.steps = 50
    config.phases.finetune.steps = 350
    config.train.checkpoint_every = 1000
    Trainer(config, str(root / "run")).run()
    return config, root / "run", report(config, str(root / "run"))


def test_training_lowers_the_loss(demo_run):
    _, workdir, _ = demo_run
    losses = [json.loads(l)["train/loss"] for l in (workdir / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in l]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_retrieval_and_zero_shot_beat_chance(demo_run):
    _, _, summary = demo_run
    retrieval = summary["val_retrieval"]
    assert retrieval["i2t_R@5"] > 10 * retrieval["i2t_chance@1"]  # R@5 of chance would be 5x chance@1
    heldout = summary["heldout_zero_shot"]
    assert heldout["colour"]["acc1"] > 2 * heldout["colour"]["chance"]
    assert heldout["colour+shape"]["acc1"] > 2 * heldout["colour+shape"]["chance"]


def test_demo_export_loads_in_transformers(demo_run):
    _, _, summary = demo_run
    model = tf.VisionTextDualEncoderModel.from_pretrained(summary["exported"])
    assert model.config.projection_dim == 64


@pytest.mark.parametrize("name", ["zero_shot", "text_to_image_search", "embedding_map"])
def test_notebook_runs(demo_run, name, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    _, workdir, _ = demo_run
    monkeypatch.setenv("CLIP_JAX_DEMO_WORKDIR", str(workdir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") in ("stream", "execute_result", "display_data") for o in outputs)
