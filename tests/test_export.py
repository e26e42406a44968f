"""Export from a training checkpoint to a transformers-loadable directory, model card, and push."""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image
from train_helpers import tiny_config

from clip_jax import CLIPModel, load_model
from clip_jax.export import main as export_main
from clip_jax.train import Trainer
from clip_jax.weights import CheckpointError, flat_params

CAPTIONS = ["due cerchi rossi a sinistra", "un quadrato blu in alto", "tre triangoli verdi in basso"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    config = tiny_config(
        root / "cache", **{"train.phases": ("warmup", "finetune"), "model.text_pooling": "pooler"}
    )
    trainer = Trainer(config, str(root / "run"))
    trainer.run()
    return root, trainer


def pictures(n=3):
    rs = np.random.RandomState(0)
    return [Image.fromarray(rs.randint(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(n)]


def test_checkpoint_restores_the_trained_parameters(trained):
    root, trainer = trained
    restored = load_model(str(root / "run"))
    final = flat_params(trainer.module(trainer.state))
    for path, value in flat_params(restored.module).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(final[path]), err_msg=str(path))


def test_export_loads_in_transformers_with_equal_embeddings(trained, tmp_path):
    root, _ = trained
    results = [
        {
            "dataset": "shapes-val",
            "model": "run",
            "task": "retrieval",
            "language": "it",
            "metrics": {"image_retrieval_recall@5": 0.5},
        }
    ]
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = export_main(
        [
            "--checkpoint",
            str(root / "run"),
            "--out",
            str(tmp_path / "out"),
            "--language",
            "it",
            "--datasets",
            "shapes",
            "--results",
            str(tmp_path / "results.json"),
        ]
    )
    ours = CLIPModel.from_pretrained(out)
    reference = tf.VisionTextDualEncoderModel.from_pretrained(out).eval()
    processor = tf.VisionTextDualEncoderProcessor.from_pretrained(out)
    inputs = processor(text=CAPTIONS, images=pictures(), return_tensors="pt", padding=True)
    with torch.no_grad():
        output = reference(**inputs)
    assert np.abs(output.image_embeds.numpy() - ours.encode_image(pictures())).max() <= 1e-4
    assert np.abs(output.text_embeds.numpy() - ours.encode_text(CAPTIONS)).max() <= 1e-4
    restored = load_model(str(root / "run"))
    for path, value in flat_params(restored.module).items():  # round trip: identical parameters
        np.testing.assert_array_equal(np.asarray(flat_params(ours.module)[path]), np.asarray(value))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "image->text" not in card and "text->image Recall@5 | 0.5000 |" in card
    assert "VisionTextDualEncoderModel.from_pretrained" in card and '"batch_size": 16' in card


def test_model_card_metadata_and_model_index(trained, tmp_path):
    from huggingface_hub import ModelCard

    root, _ = trained
    results = [  # eval.py's records: a zero-shot result, a retrieval one with counts, an embedding map
        {
            "dataset": f"imagefolder:{tmp_path}/data/cifar10/test",
            "model": "arch",
            "pretrained": str(root / "run"),
            "task": "zeroshot_classification",
            "language": "it",
            "metrics": {"acc1": 0.25, "acc5": 0.75, "mean_per_class_recall": 0.3},
        },
        {
            "dataset": "mscoco-it: 2017 val",
            "model": "arch",
            "pretrained": str(root / "run"),
            "task": "zeroshot_retrieval",
            "language": "",
            "metrics": {
                "text_retrieval_recall@5": 0.5,
                "image_retrieval_mrr@1": 0.125,
                "images": 6,
                "texts": 12,
                "skipped": 3,
            },
        },
        {
            "dataset": "imagefolder:/x",
            "model": "arch",
            "pretrained": "m",
            "task": "embedmap",
            "language": "it",
            "metrics": {"files": [str(tmp_path / "map.png")], "images": 6},
        },
    ]
    (tmp_path / "results").mkdir()
    from clip_jax.evaluate.run import write_results

    write_results(results, str(tmp_path / "results") + "/")  # a directory of CLIP_benchmark files
    out = tmp_path / "out"
    export_main(
        [
            "--checkpoint",
            str(root / "run"),
            "--out",
            str(out),
            "--language",
            "it",
            "--datasets",
            "wit",
            "mscoco-it: 2017 train",
            "--results",
            str(tmp_path / "results"),
        ]
    )
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.language == "it" and data.license == "apache-2.0" and data.library_name == "transformers"
    assert data.pipeline_tag == "zero-shot-image-classification" and "clip" in data.tags
    assert data.datasets == ["wit", "mscoco-it: 2017 train"]  # YAML-escaped, read back as strings
    assert data.base_model is None  # the tiny config's towers are random, not hub models
    got = {
        (e.task_type, e.dataset_type, e.dataset_split, e.dataset_config, e.metric_type): e.metric_value
        for e in data.eval_results
    }
    assert got == {
        ("zero-shot-image-classification", "cifar10", "test", "it", "acc1"): 0.25,
        ("zero-shot-image-classification", "cifar10", "test", "it", "acc5"): 0.75,
        ("zero-shot-image-classification", "cifar10", "test", "it", "mean_per_class_recall"): 0.3,
        ("image-text-retrieval", "mscoco-it: 2017 val", None, "it", "text_retrieval_recall@5"): 0.5,
        ("image-text-retrieval", "mscoco-it: 2017 val", None, "it", "image_retrieval_mrr@1"): 0.125,
    }
    text = (out / "README.md").read_text()
    assert str(tmp_path) not in text and str(root) not in text  # no local paths
    assert "| 3 |" not in text and "skipped" not in text  # no skip counts
    assert "hypothesis_template='una foto di {}.'" in text and "['gatto', 'cane']" in text
    assert "truncation=True` cuts texts at 16 tokens" in text


def test_model_card_usage_snippets_run(trained, tmp_path):
    """The card's code blocks, with REPO_ID and photo.jpg filled in, run as written (transformers and clip_jax)."""
    import re

    root, _ = trained
    out = tmp_path / "out"
    export_main(["--checkpoint", str(root / "run"), "--out", str(out), "--language", "it"])
    pictures(1)[0].save(tmp_path / "photo.jpg")
    blocks = re.findall(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S)
    assert len(blocks) == 3
    for block in blocks:
        namespace = {}
        exec(block.replace("REPO_ID", str(out)).replace("photo.jpg", str(tmp_path / "photo.jpg")), namespace)
        if "probs" in namespace:
            assert tuple(namespace["probs"].shape) == (1, 2)
        if "result" in namespace:
            assert [label for label, _ in namespace["result"].top_k[0]] in (
                ["gatto", "cane"],
                ["cane", "gatto"],
            )


def test_save_pretrained_with_card_keeps_only_hub_ids_as_base_models(trained, tmp_path):
    from huggingface_hub import ModelCard

    model = load_model(str(trained[0] / "run"))
    model.save_pretrained(
        tmp_path / "m",
        weights=False,
        card=dict(
            language="it",
            base_models=["openai/clip-vit-base-patch32", str(tmp_path), "./bert", {"model_type": "bert"}],
            repo_id="me/clip-it",
        ),
    )
    card = ModelCard.load(tmp_path / "m" / "README.md")
    assert card.data.base_model == ["openai/clip-vit-base-patch32"] and card.data.eval_results is None
    assert 'pipeline("zero-shot-image-classification", model="me/clip-it")' in card.text
    model.save_pretrained(tmp_path / "plain", weights=False)
    assert not (tmp_path / "plain" / "README.md").exists()  # no card unless asked for


def test_export_embeds_a_long_caption_exactly_as_its_workdir(trained, tmp_path):
    """The training max_length (16 here, the tower allows 32) travels with the export: a caption longer than
    16 tokens is truncated the same way by both."""
    root, _ = trained
    out = export_main(["--checkpoint", str(root / "run"), "--out", str(tmp_path / "out")])
    workdir_model, exported = load_model(str(root / "run")), CLIPModel.from_pretrained(out)
    long = [" ".join(["due cerchi rossi a sinistra e tre quadrati blu in alto"] * 3)]
    assert len(workdir_model.tokenizer(long)["input_ids"][0]) > 16 and workdir_model.max_length == 16
    assert (
        exported.max_length == 16
        and json.loads((tmp_path / "out" / "config.json").read_text())["clip_jax"]["max_length"] == 16
    )
    np.testing.assert_array_equal(exported.encode_text(long), workdir_model.encode_text(long))


def test_push_uploads_a_loadable_folder_and_never_prints_the_token(
    trained, tmp_path, monkeypatch, capsys, caplog
):
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
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/1",
            commit_message="m",
            commit_description="",
            oid="1",
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    export_main(
        [
            "--checkpoint",
            str(root / "run"),
            "--out",
            str(tmp_path / "out"),
            "--push_to_hub",
            "me/clip-it",
            "--private",
            "--revision",
            "v1",
        ]
    )
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][2]["private"] is True and calls[2][2]["revision"] == "v1"
    printed = capsys.readouterr()
    assert secret not in printed.out + printed.err + caplog.text
    assert "https://huggingface.co/me/clip-it/commit/1" in printed.out
    reference = tf.VisionTextDualEncoderModel.from_pretrained(str(remote))
    assert reference.config.projection_dim == 16


def test_a_failed_push_is_one_line_keeps_the_export_and_never_prints_the_token(trained, tmp_path):
    """The real huggingface_hub client against a hub that cannot be reached (a closed port on localhost):
    one error line naming the repo and what to check, exit non-zero, the export written, no token."""
    import os
    import subprocess
    import sys

    root, _ = trained
    secret = "hf_SECRET_token_value_456"
    env = dict(
        os.environ,
        HF_TOKEN=secret,
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_ETAG_TIMEOUT="2",
    )
    out = tmp_path / "out"
    args = ["--checkpoint", str(root / "run"), "--out", str(out), "--push_to_hub", "me/clip-it"]
    result = subprocess.run(
        [sys.executable, "-m", "clip_jax.cli", "export", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "pushing" in errors[0] and "me/clip-it" in errors[0] and "check the network" in errors[0]
    assert f"the export itself is in {out}" in errors[0]
    assert secret not in result.stdout + result.stderr
    assert tf.VisionTextDualEncoderModel.from_pretrained(str(out)).config.projection_dim == 16


def test_export_errors(tmp_path):
    with pytest.raises(CheckpointError, match="neither a clip_jax training workdir"):
        load_model(str(tmp_path))


def test_card_dataset_names_carry_no_local_paths():
    from clip_jax.hub import dataset_entry, hub_ids

    assert dataset_entry("hf:clip-benchmark/wds_mscoco_captions?image=jpg&caption=txt&split=test") == (
        "clip-benchmark/wds_mscoco_captions",
        "test",
    )
    assert dataset_entry("tfds:cifar10") == ("cifar10", "test")
    assert dataset_entry("tfds:imagenet2012:validation?data_dir=/home/me/tfds") == (
        "imagenet2012",
        "validation",
    )
    assert dataset_entry("jsonl:/home/me/data/mscoco-it/val.jsonl") == ("mscoco-it", "val")
    assert dataset_entry("wds:/home/me/shards/wit/train-{00000..00099}.tar") == ("wit", "train")
    assert dataset_entry("imagefolder:/home/me/cifar10/test/") == ("cifar10", "test")
    assert dataset_entry("imagefolder:/home/me/my-photos") == ("my-photos", None)
    assert dataset_entry("mscoco-it: 2017 val") == ("mscoco-it: 2017 val", None)  # a plain name, kept
    assert hub_ids(
        [
            "openai/clip-vit-base-patch32",
            "/abs/dir",
            "../rel",
            "a/b/c",
            {"model_type": "bert"},
            "xlm-roberta-base",
            "openai/clip-vit-base-patch32",
        ]
    ) == ["openai/clip-vit-base-patch32", "xlm-roberta-base"]


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_export_refuses_an_out_in_a_workdir_and_replaces_an_export_only_when_complete(trained, tmp_path):
    """--out inside a workdir is refused before any work; a re-export killed (kill -9) while it writes leaves the
    earlier export whole (never its new config.json beside the old weights), and a complete one replaces it."""
    import signal
    import subprocess
    import sys
    import time

    from train_helpers import subprocess_env

    root, _ = trained
    workdir = root / "run"
    before = {str(p): p.stat().st_mtime_ns for p in workdir.rglob("*")}
    for out in (workdir, workdir / "export"):
        with pytest.raises(ValueError, match="training workdir"):
            export_main(["--checkpoint", str(workdir), "--out", str(out)])
    assert {str(p): p.stat().st_mtime_ns for p in workdir.rglob("*")} == before
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no saved model"):
        export_main(["--checkpoint", str(workdir), "--out", str(tmp_path / "notes")])

    out = tmp_path / "out"
    export_main(["--checkpoint", str(workdir), "--out", str(out), "--step", "4"])
    (out / ".git").mkdir()  # e.g. a clone of the hub repo: hidden entries are carried over
    (out / ".git" / "HEAD").write_text("ref")
    command = [
        sys.executable,
        "-m",
        "clip_jax.cli",
        "export",
        "--checkpoint",
        str(workdir),
        "--out",
        str(out),
    ]
    caught = False
    for _attempt in range(5):  # on a loaded machine the write can finish between two looks: try again
        export_main(["--checkpoint", str(workdir), "--out", str(out), "--step", "4"])
        old = _files(out)
        process = subprocess.Popen(command, env=subprocess_env(1), stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            partial = [p for p in tmp_path.glob(".out.partial-*") if (p / "config.json").exists()]
            if partial:  # the new export is being written beside the old one
                process.send_signal(signal.SIGKILL)
                caught = True
                break
        process.wait()
        if caught:
            break
    assert caught, "the export ended before it could be killed while writing"
    assert _files(out) == old
    step4 = flat_params(load_model(str(workdir), step=4).module)
    for name, value in flat_params(CLIPModel.from_pretrained(str(out)).module).items():  # loads whole: step 4
        np.testing.assert_array_equal(value, step4[name])
    export_main(["--checkpoint", str(workdir), "--out", str(out)])
    new = _files(out)
    assert new["config.json"] == old["config.json"] and new["model.safetensors"] != old["model.safetensors"]
    assert (out / ".git" / "HEAD").read_text() == "ref"
    assert all(
        p.name.startswith(".out.partial-") for p in tmp_path.glob(".*")
    )  # only the killed one's leftover


FULL_DISK = """
import json, os, subprocess, sys
mount, workdir, result = sys.argv[1:4]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount], check=True)
out = os.path.join(mount, "out")
export = [sys.executable, "-m", "clip_jax.cli", "export", "--checkpoint", workdir, "--out", out]
first = subprocess.run(export + ["--step", "4"], capture_output=True, text=True)
files = lambda: {n: open(os.path.join(out, n), "rb").read().hex() for n in sorted(os.listdir(out))}
before = files()
stat = os.statvfs(mount)
with open(os.path.join(mount, "filler"), "wb") as f:  # leave less room than a second export needs
    f.write(b"x" * (stat.f_bavail * stat.f_frsize - 150_000))
second = subprocess.run(export, capture_output=True, text=True)
json.dump({"first": first.returncode, "second": second.returncode, "stderr": second.stderr,
           "same": files() == before, "left": sorted(os.listdir(mount))}, open(result, "w"))
"""


def test_a_re_export_onto_a_full_disk_is_one_line_and_keeps_the_earlier_export(trained, tmp_path):
    """A real full filesystem (a 1 MiB tmpfs, mounted in a private user and mount namespace by ``unshare``)."""
    import shutil
    import subprocess
    import sys

    from train_helpers import subprocess_env

    root, _ = trained
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to mount a small tmpfs")
    (tmp_path / "mnt").mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    ran = subprocess.run(
        [
            "unshare",
            "-rm",
            sys.executable,
            str(script),
            str(tmp_path / "mnt"),
            str(root / "run"),
            str(tmp_path / "r.json"),
        ],
        env=subprocess_env(1),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ran.returncode != 0 and "mount" in ran.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {ran.stderr.strip().splitlines()[-1]}")
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["first"] == 0 and result["second"] == 1, result["stderr"][-3000:]
    errors = [line for line in result["stderr"].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert "No space left on device" in errors[0] and "is as it was" in errors[0], errors[0]
    assert result["same"]  # the earlier export, byte for byte
    assert result["left"] == ["filler", "out"]  # no partial export left behind
