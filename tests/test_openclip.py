"""open_clip's hub layout in and out (``clip_jax/openclip_layout.py``).

Against the real open_clip (3.3.0, in its own environment: ``bash tests/reference/openclip_env.sh``; the tests
that need it skip without it, naming the script): a random open_clip model saved in its hub layout loads into
clip_jax with equal embeddings and scale, and clip_jax's open_clip export loads into open_clip with equal
embeddings. Always, with no open_clip: the round trip clip_jax -> open_clip layout -> clip_jax, and the refusals.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_BERT, write_bert_tokenizer
from train_helpers import tiny_xlmr_mlp_model

from clip_jax import CLIPModel
from clip_jax.hub import ExportError
from clip_jax.weights.readers import CheckpointError

REPO = Path(__file__).resolve().parent.parent
ENV_SCRIPT = "tests/reference/openclip_env.sh"
WORKER = REPO / "tests" / "reference" / "openclip_worker.py"
TOL = 1e-4
TEXTS = ["una foto di un gatto", "un cane rosso a sinistra", "tre cerchi blu"]
TINY_OPENCLIP_VISION = dict(image_size=32, patch_size=8, width=32, layers=2, head_width=8, mlp_ratio=2.0)


def reference_python() -> str | None:
    """The open_clip reference environment's python: $CLIP_JAX_OPENCLIP_PYTHON or ./.venv-openclip."""
    python = os.environ.get("CLIP_JAX_OPENCLIP_PYTHON") or str(REPO / ".venv-openclip" / "bin" / "python")
    return python if Path(python).is_file() else None


@pytest.fixture(scope="module")
def open_clip_python():
    python = reference_python()
    if python is None:
        pytest.skip(f"the open_clip reference environment is missing — create it with `bash {ENV_SCRIPT}`")
    return python


def worker(python: str, command: str, **payload) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    result = subprocess.run(
        [python, str(WORKER), command, json.dumps(payload)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def pixels(n=3, size=32, seed=0):
    return np.random.RandomState(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def hf_text_dir(root: Path, kind: str) -> Path:
    """A tiny random Hugging Face text tower (config, weights, a WordPiece tokenizer) saved locally."""
    import transformers as tf

    directory = root / f"hf-{kind}"
    if kind == "bert":
        model = tf.BertModel(tf.BertConfig(**TINY_BERT))
    else:
        model = tf.XLMRobertaModel(
            tf.XLMRobertaConfig(
                **dict(TINY_BERT, pad_token_id=1, type_vocab_size=1, max_position_embeddings=42)
            )
        )
    model.save_pretrained(directory)
    write_bert_tokenizer(directory)
    return directory


def token_ids(pad: int, length: int = 12, vocab: int = TINY_BERT["vocab_size"]) -> np.ndarray:
    """Three rows of ids of different lengths, padded with ``pad`` (open_clip masks exactly the pad ids)."""
    rs = np.random.RandomState(3)
    ids = np.full((3, length), pad, np.int64)
    for row, n in enumerate((length, 7, 4)):
        ids[row, :n] = rs.randint(5, vocab, n)
        ids[row, 0] = 2
    return ids


def clip_jax_embeddings(model, pixel_values, ids, pad):
    import jax.numpy as jnp

    out = model.module(
        jnp.asarray(pixel_values.transpose(0, 2, 3, 1)),
        jnp.asarray(ids),
        jnp.asarray((ids != pad).astype(np.int32)),
    )
    return out


# -------------------------------------------------------------------------------- against the real open_clip
#: name -> (text tower, hf_pooler_type, hf_proj_type (None: left out, open_clip's default mlp), pad id)
HF_CASES = {
    "xlmr-mean-linear": ("xlm-roberta", "mean_pooler", "linear", 1),
    "xlmr-mean-mlp": ("xlm-roberta", "mean_pooler", "mlp", 1),
    "xlmr-mean-default_proj": ("xlm-roberta", "mean_pooler", None, 1),
    "bert-cls_pooler-mlp": ("bert", "cls_pooler", "mlp", 0),
    "bert-cls_pooler-linear": ("bert", "cls_pooler", "linear", 0),
    "bert-cls_last_hidden_state-linear": ("bert", "cls_last_hidden_state_pooler", "linear", 0),
}


@pytest.mark.parametrize("case", sorted(HF_CASES))
def test_open_clip_checkpoint_with_hf_text_tower_loads_with_equal_embeddings(
    open_clip_python, tmp_path, case
):
    kind, pooler, proj, pad = HF_CASES[case]
    text_dir = hf_text_dir(tmp_path, kind)
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": TINY_OPENCLIP_VISION,
        "text_cfg": {
            "hf_model_name": str(text_dir),
            "hf_tokenizer_name": str(text_dir),
            "hf_pooler_type": pooler,
            **({"hf_proj_type": proj} if proj else {}),
        },
    }
    directory = tmp_path / "open_clip"
    keys = worker(open_clip_python, "build", dir=str(directory), model_cfg=model_cfg, seed=1)["keys"]
    mlp = proj in ("mlp", None)
    assert ("text.proj.2.weight" in keys) == mlp  # open_clip built the head the case names
    ids, x = token_ids(pad), pixels()
    np.savez(tmp_path / "in.npz", pixel_values=x, input_ids=ids)
    worker(
        open_clip_python,
        "embed",
        model=f"local-dir:{directory}",
        inputs=str(tmp_path / "in.npz"),
        out=str(tmp_path / "out.npz"),
    )
    reference = np.load(tmp_path / "out.npz")
    model = CLIPModel.from_pretrained(directory)
    assert model.module.text_pooling == {"mean_pooler": "mean", "cls_pooler": "pooler"}.get(pooler, "cls")
    assert model.module.text_projection_kind == ("mlp" if mlp else "linear")
    ours = clip_jax_embeddings(model, x, ids, pad)
    assert np.abs(np.asarray(ours.image_embeds) - reference["image_embeds"]).max() <= TOL
    assert np.abs(np.asarray(ours.text_embeds) - reference["text_embeds"]).max() <= TOL
    assert abs(float(ours.logit_scale) - float(reference["logit_scale"])) <= TOL
    assert np.abs(model.encode_image(x) - reference["image_embeds"]).max() <= TOL  # the public API too


def test_open_clip_builtin_text_tower_and_sigmoid_bias_load_with_equal_embeddings(open_clip_python, tmp_path):
    model_cfg = {
        "embed_dim": 16,
        "quick_gelu": True,
        "init_logit_bias": -10.0,
        "vision_cfg": TINY_OPENCLIP_VISION,
        "text_cfg": {"context_length": 12, "vocab_size": 99, "width": 32, "heads": 4, "layers": 2},
    }
    directory = tmp_path / "open_clip"
    worker(open_clip_python, "build", dir=str(directory), model_cfg=model_cfg, seed=2)
    rs = np.random.RandomState(4)
    ids = rs.randint(1, 90, (3, 12))
    ids[:, 5] = 98  # the highest id: open_clip's argmax pooling takes it
    x = pixels()
    np.savez(tmp_path / "in.npz", pixel_values=x, input_ids=ids)
    worker(
        open_clip_python,
        "embed",
        model=f"local-dir:{directory}",
        inputs=str(tmp_path / "in.npz"),
        out=str(tmp_path / "out.npz"),
    )
    reference = np.load(tmp_path / "out.npz")
    model = CLIPModel.from_pretrained(directory)
    assert type(model.module.text.config).__name__ == "CLIPTextConfig"
    import jax.numpy as jnp

    ours = model.module(
        jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32)
    )
    assert np.abs(np.asarray(ours.image_embeds) - reference["image_embeds"]).max() <= TOL
    assert np.abs(np.asarray(ours.text_embeds) - reference["text_embeds"]).max() <= TOL
    assert abs(float(ours.logit_scale) - float(reference["logit_scale"])) <= TOL
    assert abs(float(ours.logit_bias) - float(reference["logit_bias"])) <= TOL
    assert model.module.logit_scale_max is None  # SigLIP-style: no ceiling on the scale
    from clip_jax.config import saved_model_loss

    assert saved_model_loss(str(directory)) == "sigmoid"  # loss.kind='auto' continues it with sigmoid


@pytest.mark.parametrize(
    "text,pooling,projection",
    [
        ("bert", "mean", "linear"),
        ("bert", "pooler", "linear"),
        ("bert", "cls", "linear"),
        ("bert", "pooler", "mlp"),
        ("xlm-roberta", "mean", "mlp"),  # the published xlm-roberta-base-ViT-B-32's architecture
    ],
)
def test_clip_jax_export_in_open_clip_layout_loads_in_open_clip(
    open_clip_python, checkpoints, tmp_path, text, pooling, projection
):
    paths = checkpoints["paths"]
    model = CLIPModel.from_towers(
        vision=paths["vision"],
        text=paths[text],
        tokenizer=paths["bert"],
        projection_dim=16,
        text_pooling=pooling,
        text_projection=projection,
        max_length=12,
    )
    if projection == "mlp":  # a trained head, not the small fresh one: the GELU between its layers matters
        rs = np.random.RandomState(5)
        for layer in (model.module.text_projection.fc1, model.module.text_projection.fc2):
            layer.kernel[...] = rs.normal(0, 0.3, layer.kernel.shape).astype(np.float32)
    out = model.save_pretrained(tmp_path / "export", format="open_clip")
    saved = json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]
    assert saved["hf_proj_type"] == projection
    pad = 0 if text == "bert" else 1
    ids, x = token_ids(pad), pixels()
    np.savez(tmp_path / "in.npz", pixel_values=x, input_ids=ids)
    info = worker(
        open_clip_python,
        "embed",
        model=f"local-dir:{out}",
        inputs=str(tmp_path / "in.npz"),
        out=str(tmp_path / "out.npz"),
        texts=TEXTS,
    )
    assert info["class"] == "CustomTextCLIP"
    reference = np.load(tmp_path / "out.npz")
    ours = clip_jax_embeddings(model, x, ids, pad)
    assert np.abs(np.asarray(ours.image_embeds) - reference["image_embeds"]).max() <= TOL
    assert np.abs(np.asarray(ours.text_embeds) - reference["text_embeds"]).max() <= TOL
    assert abs(float(ours.logit_scale) - float(reference["logit_scale"])) <= TOL
    if (
        text == "bert"
    ):  # (the WordPiece tokenizer pads with 0, which open_clip does not mask for XLM-R's pad 1)
        # open_clip's own tokenizer (from the export's tokenizer files) gives the texts clip_jax's encode_text does
        assert np.abs(model.encode_text(TEXTS) - reference["own_tokenizer_text_embeds"]).max() <= TOL


def test_demo_mean_pooled_model_exports_in_open_clip_layout(open_clip_python, request, tmp_path):
    """The demo's transfer (English CLIP stand-in + Italian BERT, mean pooling): its open_clip export runs in
    open_clip with the embeddings clip_jax computes."""
    # asked for here, not as an argument: session fixtures are set up first, so the stand-ins were built even
    # when open_clip_python then skipped the test
    _, english, italian = request.getfixturevalue("small_standins")
    model = CLIPModel.from_towers(
        vision=english, text=italian, projection_dim=16, text_pooling="mean", max_length=16
    )
    out = model.save_pretrained(tmp_path / "export", format="open_clip")
    x = pixels(size=model.module.vision.config.image_size)
    np.savez(tmp_path / "in.npz", pixel_values=x)
    worker(
        open_clip_python,
        "embed",
        model=f"local-dir:{out}",
        inputs=str(tmp_path / "in.npz"),
        out=str(tmp_path / "out.npz"),
        texts=TEXTS,
    )
    reference = np.load(tmp_path / "out.npz")
    assert np.abs(model.encode_image(x) - reference["image_embeds"]).max() <= TOL
    assert np.abs(model.encode_text(TEXTS) - reference["own_tokenizer_text_embeds"]).max() <= TOL


def test_open_clip_export_model_card_usage_runs_in_open_clip(open_clip_python, checkpoints, tmp_path):
    """The model card of an open_clip export: open_clip's metadata, and a usage snippet that runs as written in
    open_clip (the directory in place of PATH) and gives the probabilities clip_jax's classify gives."""
    from PIL import Image

    paths = checkpoints["paths"]
    model = CLIPModel.from_towers(
        vision=paths["vision"],
        text=paths["bert"],
        projection_dim=16,
        text_pooling="mean",
        text_projection="mlp",
        max_length=12,
    )
    out = model.save_pretrained(tmp_path / "export", format="open_clip", card={"language": "it"})
    card = (out / "README.md").read_text()
    assert "library_name: open_clip" in card and "- open_clip" in card and "MLP text head" in card
    assert "VisionTextDualEncoderModel" not in card and str(tmp_path) not in card  # no local paths
    snippet = card.split("```python\n")[1].split("```")[0]
    assert "open_clip.create_model_and_transforms" in snippet
    # at the model's own size: no resize, whose interpolation differs between the libraries (not checked here)
    photo = np.random.RandomState(0).randint(0, 255, (32, 32, 3), np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    code = snippet.replace("local-dir:PATH", f"local-dir:{out}").replace("photo.jpg", "photo.png")
    code += "\nprint(json.dumps(probs.tolist()))"
    result = subprocess.run(
        [open_clip_python, "-c", "import json\n" + code],
        cwd=tmp_path,
        env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=""),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    probs = np.asarray(json.loads(result.stdout.strip().splitlines()[-1]))[0]
    import ast

    line = next(line for line in snippet.splitlines() if line.startswith("text = tokenizer("))
    texts = ast.literal_eval(
        line[len("text = tokenizer(") : -1]
    )  # the card's prompts (CIFAR-10's cat and dog)
    assert len(probs) == len(texts) == 2
    image = model.encode_image([Image.open(tmp_path / "photo.png")])
    logits = float(model.module.scale()) * image @ model.encode_text(texts).T
    ours = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    assert np.abs(probs - ours).max() <= 1e-4


# ------------------------------------------------------------------------------------ always (no open_clip)
@pytest.mark.parametrize(
    "text,pooling", [("bert", "mean"), ("xlm-roberta", "pooler"), ("bert", "cls"), ("clip_text", "pooler")]
)
def test_round_trip_through_the_open_clip_layout(checkpoints, tmp_path, text, pooling):
    paths = checkpoints["paths"]
    max_length = 24 if text == "clip_text" else 12  # open_clip's built-in text tower takes all its positions
    model = CLIPModel.from_towers(
        vision=paths["vision"],
        text=paths[text],
        tokenizer=paths["bert"],
        projection_dim=16,
        text_pooling=pooling,
        max_length=max_length,
    )
    out = model.save_pretrained(tmp_path / "export", format="open_clip")
    saved = json.loads((out / "open_clip_config.json").read_text())
    assert (out / "open_clip_model.safetensors").is_file() and "visual.proj" in _keys(out)
    if text != "clip_text":
        assert saved["model_cfg"]["text_cfg"]["hf_model_name"] == str(out.resolve())
        assert json.loads((out / "config.json").read_text())["model_type"] == text
    again = CLIPModel.from_pretrained(out)
    assert again.module.text_pooling == pooling and again.max_length == max_length
    x = pixels()
    assert np.abs(again.encode_image(x) - model.encode_image(x)).max() <= 1e-5
    ids = token_ids(0 if text == "bert" else 1, length=max_length, vocab=90)
    a = clip_jax_embeddings(model, x, ids, 0 if text == "bert" else 1)
    b = clip_jax_embeddings(again, x, ids, 0 if text == "bert" else 1)
    assert np.abs(np.asarray(a.text_embeds) - np.asarray(b.text_embeds)).max() <= 1e-5
    assert float(a.logit_scale) == pytest.approx(float(b.logit_scale))


def _keys(directory):
    from safetensors import safe_open

    with safe_open(str(directory / "open_clip_model.safetensors"), "np") as f:
        return set(f.keys())


@pytest.fixture
def exported(checkpoints, tmp_path):
    paths = checkpoints["paths"]
    model = CLIPModel.from_towers(
        vision=paths["vision"], text=paths["bert"], projection_dim=16, text_pooling="mean", max_length=12
    )
    return model.save_pretrained(tmp_path / "export", format="open_clip")


def _rewrite(directory, tmp_path, change):
    copy = tmp_path / "changed"
    shutil.copytree(directory, copy)
    config = json.loads((copy / "open_clip_config.json").read_text())
    change(config["model_cfg"])
    (copy / "open_clip_config.json").write_text(json.dumps(config))
    return copy


def test_unknown_text_projection_is_refused_in_one_line(exported, tmp_path):
    copy = _rewrite(exported, tmp_path, lambda cfg: cfg["text_cfg"].update(hf_proj_type="attention"))
    with pytest.raises(
        CheckpointError, match=r"hf_proj_type='attention' is none of open_clip's mlp or linear"
    ) as error:
        CLIPModel.from_pretrained(copy)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda cfg: cfg["vision_cfg"].update(ls_init_value=0.1),
            r"vision_cfg\.ls_init_value=0\.1 has no counterpart",
        ),
        (
            lambda cfg: cfg["vision_cfg"].update(block_type="cross"),
            r"vision_cfg\.block_type='cross' has no counterpart",
        ),
        (
            lambda cfg: cfg["vision_cfg"].update(pool_type="avg"),
            r"vision_cfg\.pool_type='avg' has no counterpart",
        ),
        (
            lambda cfg: cfg["vision_cfg"].update(timm_model_name="convnext_base"),
            r"a timm model \(convnext_base\)",
        ),
        (lambda cfg: cfg["vision_cfg"].update(layers=[3, 4, 6, 3]), r"a ModifiedResNet"),
    ],
)
def test_an_image_tower_clip_cannot_express_is_refused_on_load(exported, tmp_path, change, message):
    copy = _rewrite(exported, tmp_path, change)
    with pytest.raises(CheckpointError, match=message) as error:
        CLIPModel.from_pretrained(copy)
    assert "\n" not in str(error.value)


def test_open_clip_options_at_their_defaults_load(exported, tmp_path):
    """Options spelled out at open_clip's defaults (block_type 'default', ls_init_value None) are not refused."""
    copy = _rewrite(
        exported, tmp_path, lambda cfg: cfg["vision_cfg"].update(block_type="default", ls_init_value=None)
    )
    loaded, original = CLIPModel.from_pretrained(copy).module, CLIPModel.from_pretrained(exported).module
    np.testing.assert_array_equal(
        np.asarray(loaded.visual_projection.kernel[...]), np.asarray(original.visual_projection.kernel[...])
    )


def test_mlp_config_over_linear_weights_is_refused(exported, tmp_path):
    """A config left out hf_proj_type (open_clip's default: mlp) but the weights hold one linear head: the
    missing MLP weights are reported, not left random."""
    copy = _rewrite(exported, tmp_path, lambda cfg: cfg["text_cfg"].pop("hf_proj_type"))
    with pytest.raises(CheckpointError, match=r"text_projection\.fc1"):
        CLIPModel.from_pretrained(copy)


def test_text_tower_architecture_unknown_offline_is_refused_in_one_line(exported, tmp_path):
    copy = _rewrite(
        exported, tmp_path, lambda cfg: cfg["text_cfg"].update(hf_model_name="nobody/tiny-text-tower")
    )
    (copy / "config.json").unlink()  # nothing beside the weights either
    with pytest.raises(
        CheckpointError,
        match=r"hf_model_name='nobody/tiny-text-tower' is not known offline .*huggingface-cli download nobody",
    ) as error:
        CLIPModel.from_pretrained(copy)
    assert "\n" not in str(error.value)


def test_what_open_clip_cannot_express_is_refused_on_export(checkpoints, tmp_path):
    paths = checkpoints["paths"]
    eos = CLIPModel.from_towers(
        vision=paths["vision"], text=paths["bert"], projection_dim=16, text_pooling="eos", max_length=12
    )
    with pytest.raises(ExportError, match=r"open_clip's layout: it pools text with 'eos'"):
        eos.save_pretrained(tmp_path / "eos", format="open_clip")
    assert not (tmp_path / "eos").exists()  # nothing written
    camembert = CLIPModel.from_towers(
        vision=paths["vision"],
        text=paths["camembert"],
        tokenizer=paths["bert"],
        projection_dim=16,
        text_pooling="mean",
        max_length=12,
    )
    with pytest.raises(ExportError, match="camembert"):
        camembert.save_pretrained(tmp_path / "camembert", format="open_clip")


def test_export_command_writes_open_clip_layout(exported, tmp_path):
    from clip_jax.export import main

    out = main(
        [
            "--checkpoint",
            str(exported),
            "--out",
            str(tmp_path / "again"),
            "--format",
            "open_clip",
            "--hf_model_name",
            "user/repo",
        ]
    )
    config = json.loads((Path(out) / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == "user/repo"
    assert _keys(Path(out)) == _keys(exported)
    card = (Path(out) / "README.md").read_text()  # a model card, as the other formats have
    assert "library_name: open_clip" in card and 'create_model_and_transforms("local-dir:PATH")' in card


def test_eval_takes_an_open_clip_directory(exported, tmp_path):
    """`clip-jax eval --model` on a directory in open_clip's layout: a retrieval row whose recall is the ranking of
    that model's own embeddings (a baseline beside a fine-tuned model)."""
    from PIL import Image

    import eval as eval_cli

    images = []
    for i, colour in enumerate([(220, 30, 30), (30, 170, 40), (30, 60, 220)]):
        images.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 36), colour).save(images[-1])
    rows = [{"image_path": str(p), "captions": [TEXTS[i]]} for i, p in enumerate(images)]
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = eval_cli.main(
        ["--model", str(exported), "--task", "retrieval", "--data", str(tmp_path / "val.jsonl")]
    )
    metrics = result[0]["metrics"]
    model = CLIPModel.from_pretrained(exported)
    ranks = (model.encode_image([Image.open(p) for p in images]) @ model.encode_text(TEXTS).T).argsort(
        axis=1
    )[:, ::-1]
    assert metrics["images"] == 3
    assert metrics["text_retrieval_recall@1"] == pytest.approx(float(np.mean(ranks[:, 0] == np.arange(3))))


def test_plan_builds_an_open_clip_start_from_its_configs_alone(checkpoints, tmp_path):
    """`clip-jax plan` with model.init_from an open_clip directory (the openclip_xlmr_italian recipe's start, with
    its MLP text head): the abstract model comes from open_clip_config.json and the text tower's config.json only —
    the weights file is gone — and has the shapes the loaded model has; its steps compile, and the analytic FLOPs
    (which count the MLP head's two matrices) agree with the compiled program's."""
    from train_helpers import shrunk_recipe

    from clip_jax.configs.openclip_xlmr_italian import get_config
    from clip_jax.plan import plan, target
    from clip_jax.train.model import build_model
    from clip_jax.weights.params import flat_params

    paths = checkpoints["paths"]
    start = tiny_xlmr_mlp_model(paths).save_pretrained(tmp_path / "open_clip", format="open_clip")
    loaded = CLIPModel.from_pretrained(start).module
    (start / "open_clip_model.safetensors").unlink()  # planning must not need the weights
    config = shrunk_recipe(
        get_config(),
        tmp_path,
        **{"model.init_from": str(start), "model.projection_dim": 16, "model.max_length": 12},
    )
    abstract = build_model(config, abstract=True).module
    assert abstract.text_projection_kind == "mlp"
    shapes = lambda module: {k: tuple(v.shape) for k, v in flat_params(module).items()}
    assert shapes(abstract) == shapes(loaded)
    assert shapes(abstract)[("text_projection", "fc1", "kernel")] == (32, 24)  # (32 + 16) // 2 hidden
    plans = plan(config, target("cpu:2"), steps=["warmup", "finetune"], search=False, log=lambda _: None)
    for p in plans:
        assert p.flops_xla == pytest.approx(p.flops_analytic, rel=0.1), (
            p.step,
            p.flops_xla,
            p.flops_analytic,
        )


def test_open_clip_pytorch_bin_weights_load_like_safetensors(checkpoints, tmp_path):
    """open_clip's older hub repos hold open_clip_pytorch_model.bin (torch.save of the state dict), read only with
    torch.load(weights_only=True): the same model as from safetensors; a .bin that needs unpickling is refused
    without running it."""
    import torch
    from safetensors.numpy import load_file

    paths = checkpoints["paths"]
    model = tiny_xlmr_mlp_model(paths)
    out = model.save_pretrained(tmp_path / "export", format="open_clip")
    state = {k: torch.from_numpy(v) for k, v in load_file(str(out / "open_clip_model.safetensors")).items()}
    (out / "open_clip_model.safetensors").unlink()
    torch.save(state, out / "open_clip_pytorch_model.bin")
    again = CLIPModel.from_pretrained(out)
    assert again.module.text_projection_kind == "mlp"
    x = pixels()
    np.testing.assert_array_equal(again.encode_image(x), model.encode_image(x))
    np.testing.assert_array_equal(again.encode_text(TEXTS), model.encode_text(TEXTS))

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"visual.proj": Payload()}, out / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"weights_only=True") as error:
        CLIPModel.from_pretrained(out)
    assert "open_clip_pytorch_model.bin" in str(error.value) and not marker.exists()
