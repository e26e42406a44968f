"""A missing optional dependency names the extra that installs it (the package is made unimportable with
sys.modules[name] = None, which is what Python does for a module that is not installed)."""

import numpy as np
import pytest

from clip_jax.extras import MissingExtra


@pytest.fixture()
def without(monkeypatch):
    def hide(*modules):
        for module in modules:
            monkeypatch.setitem(__import__("sys").modules, module, None)

    return hide


def test_wandb(without, tmp_path):
    from clip_jax.train.metrics_logger import MetricsLogger

    without("wandb")
    with pytest.raises(
        MissingExtra, match=r'train.wandb_project: needs wandb.*pip install "clip_jax\[wandb\]"'
    ):
        MetricsLogger(str(tmp_path), enabled=True, wandb_project="p")


def test_gcs_workdir_says_gcs_not_no_such_directory(without):
    from clip_jax import load_model

    without("gcsfs")
    with pytest.raises(MissingExtra, match=r"gs:// paths: needs gcsfs.*clip_jax\[gcs\]"):
        load_model("gs://bucket/runs/it")


def test_hf_and_tfds_data_sets(without):
    from clip_jax.data.benchmarks import load_labelled
    from clip_jax.data.sources import parse_source

    without("datasets", "tensorflow_datasets")
    with pytest.raises(MissingExtra, match=r"clip_jax\[hf\]"):
        load_labelled("hf:someone/data?image=img&label=y")
    with pytest.raises(MissingExtra, match=r"clip_jax\[hf\]"):
        parse_source("hf:someone/data")
    with pytest.raises(MissingExtra, match=r"clip_jax\[tfds\]"):
        load_labelled("tfds:cifar10")


def test_embedding_maps(without, tmp_path):
    from clip_jax.evaluate.embedmap import project_2d

    without("umap")
    with pytest.raises(MissingExtra, match=r"clip_jax\[viz\].*umap-learn"):
        project_2d(np.random.RandomState(0).randn(10, 4))
    assert project_2d(np.random.RandomState(0).randn(10, 4), method="pca").shape == (10, 2)  # needs no extra


def test_cli_prints_the_extra_in_one_line(without, tmp_path, capsys):
    from clip_jax.cli import main

    without("gcsfs")
    assert main(["eval", "--model", "gs://bucket/run", "--task", "retrieval", "--data", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: gs:// paths: needs gcsfs")
        and "clip_jax[gcs]" in err
        and "Traceback" not in err
    )
