"""Export from a training checkpoint to a transformers-loadable directory, model card, and push."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from clip_jax import CLIPModel
from clip_jax.export import main as export_main
from clip_jax.train import Trainer, model_from_checkpoint
from clip_jax.weights import flat_params

from train_helpers import tiny_config

CAPTIONS = ["due cerchi rossi a sinistra", "un quadrato blu in alto", "tre triangoli verdi in basso"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    config = tiny_config(root / "cache", **{"train.phases": ("warmup", "finetune"), "model.text_pooling": "pooler"})
    trainer = Trainer(config, str(root / "run"))
    trainer.run()
    return root, trainer


def pictures(n=3):
    rs = np.random.RandomState(0)
    return [Image.fromarray(rs.randint(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(n)]


def test_checkpoint_restores_the_trained_parameters(trained):
    root, trainer = trained
    restored = model_from_checkpoint(str(root / "run"))
    final = flat_params(trainer._module(trainer.state))
    for path, value in flat_params(restored.module).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(final[path]), err_msg=str(path))


def test_export_loads_in_transformers_with_equal_embeddings(trained, tmp_path):
    root, _ = trained
    results = [{"dataset": "shapes-val", "model": "run", "task": "retrieval", "language": "it",
                "metrics": {"image_retrieval_recall@5": 0.5}}]
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = export_main(["--checkpoint", str(root / "run"), "--out", str(tmp_path / "out"), "--language", "it",
                       "--datasets", "shapes", "--results", str(tmp_path / "results.json")])
    ours = CLIPModel.from_pretrained(out)
    reference = tf.VisionTextDualEncoderModel.from_pretrained(out).eval()
    processor = tf.VisionTextDualEncoderProcessor.from_pretrained(out)
    inputs = processor(text=CAPTIONS, images=pictures(), return_tensors="pt", padding=True)
    with torch.no_grad():
        output = reference(**inputs)
    assert np.abs(output.image_embeds.numpy() - ours.encode_image(pictures())).max() <= 1e-4
    assert np.abs(output.text_embeds.numpy() - ours.encode_text(CAPTIONS)).max() <= 1e-4
    restored = model_from_checkpoint(str(root / "run"))
    for path, value in flat_params(restored.module).items():  # round trip: identical parameters
        np.testing.assert_array_equal(np.asarray(flat_params(ours.module)[path]), np.asarray(value))
    card = (tmp_path / "out" / "README.md").read_text()
    assert card.startswith("---\nlanguage: it\nlicense: apache-2.0\nlibrary_name: transformers")
    assert "- shapes" in card and "| shapes-val | retrieval | it | image_retrieval_recall@5 | 0.5000 |" in card
    assert "VisionTextDualEncoderModel.from_pretrained" in card and '"batch_size": 16' in card


def test_export_embeds_a_long_caption_exactly_as_its_workdir(trained, tmp_path):
    """The training max_length (16 here, the tower allows 32) travels with the export: a caption longer than
    16 tokens is truncated the same way by both."""
    root, _ = trained
    out = export_main(["--checkpoint", str(root / "run"), "--out", str(tmp_path / "out")])
    workdir_model, exported = model_from_checkpoint(str(root / "run")), CLIPModel.from_pretrained(out)
    long = [" ".join(["due cerchi rossi a sinistra e tre quadrati blu in alto"] * 3)]
    assert len(workdir_model.tokenizer(long)["input_ids"][0]) > 16 and workdir_model.max_length == 16
    assert exported.max_length == 16 and json.loads((tmp_path / "out" / "config.json").read_text())[
        "clip_jax"]["max_length"] == 16
    np.testing.assert_array_equal(exported.encode_text(long), workdir_model.encode_text(long))


def test_push_uploads_a_loadable_folder_and_never_prints_the_token(trained, tmp_path, monkeypatch, capsys, caplog):
    import huggingface_hub

    root, _ = trained
    secret = "hf_SECRET_token_value_123"
    monkeypatch.setenv("HF_TOKEN", secret)
    calls = []
    remote = tmp_path / "remote"

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        calls.append(("upload_folder", repo_id, kwargs))
        shutil.copytree(folder_path, remote)
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/1", commit_message="m",
                                          commit_description="", oid="1")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    export_main(["--checkpoint", str(root / "run"), "--out", str(tmp_path / "out"), "--push_to_hub", "me/clip-it",
                 "--private", "--revision", "v1"])
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][2]["private"] is True and calls[2][2]["revision"] == "v1"
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err + caplog.text
    assert "https://huggingface.co/me/clip-it/commit/1" in printed.out
    reference = tf.VisionTextDualEncoderModel.from_pretrained(str(remote))
    assert reference.config.projection_dim == 16


def test_export_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a clip_jax training workdir"):
        model_from_checkpoint(str(tmp_path))
