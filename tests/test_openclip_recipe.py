"""The openclip_xlmr_italian recipe end to end on a tiny random model of its architecture in open_clip's hub
layout (open_clip's ViT with GELU, an XLM-R text tower mean-pooled, open_clip's MLP text head), as the published
xlm-roberta-base-ViT-B-32 is built."""

import json

import numpy as np
import transformers as tf
from conftest import TINY_VISION, save_torch_model
from train_helpers import numpy_params, shrunk_recipe, tiny_xlmr_mlp_model

from clip_jax import CLIPModel


def test_openclip_xlmr_italian_recipe_trains_end_to_end(checkpoints, tmp_path):
    from clip_jax import load_model
    from clip_jax.configs.openclip_xlmr_italian import CHECKPOINT, get_config
    from clip_jax.train import Trainer

    paths = checkpoints["paths"]
    vision = save_torch_model(
        tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY_VISION, hidden_act="gelu")).eval(),
        tmp_path / "vit-gelu",
    )
    start = tiny_xlmr_mlp_model(paths, vision).save_pretrained(
        tmp_path / "open_clip-tiny", format="open_clip"
    )
    saved = json.loads((start / "open_clip_config.json").read_text())["model_cfg"]
    assert saved["text_cfg"]["hf_pooler_type"] == "mean_pooler" and not saved["quick_gelu"]
    assert saved["text_cfg"]["hf_proj_type"] == "mlp"

    config = get_config()
    assert config.model.init_from == CHECKPOINT and config.loss.kind == "softmax"
    assert config.model.text_projection == "mlp"
    config = shrunk_recipe(
        config,
        tmp_path,
        **{"model.init_from": str(start), "model.projection_dim": 16, "model.max_length": 12},
    )
    trainer = Trainer(config, str(tmp_path / "run"))
    assert trainer.model.module.text_pooling == "mean"
    assert trainer.model.module.text_projection_kind == "mlp"
    assert trainer.model.module.text.config.to_hf()["model_type"] == "xlm-roberta"
    initial = numpy_params(trainer.model.module)
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    after = numpy_params(trainer.module(trainer.state))
    trained_names = (
        "text_projection.fc1.kernel",  # the phases' head regex reaches both layers of the MLP head
        "text_projection.fc2.kernel",
        "vision.layers.0.mlp.fc1.kernel",
        "text.layers.0.mlp.fc1.kernel",
    )
    for name in trained_names:
        assert np.abs(after[name] - initial[name]).max() > 0, name
    # the fine-tuned model goes back out in open_clip's layout, and reads back equal
    trained = load_model(str(tmp_path / "run"))
    out = trained.save_pretrained(tmp_path / "export", format="open_clip")
    assert (
        json.loads((out / "open_clip_config.json").read_text())["model_cfg"]["text_cfg"]["hf_proj_type"]
        == "mlp"
    )
    again = CLIPModel.from_pretrained(out)
    assert again.module.text_projection_kind == "mlp"
    texts = ["una foto di un gatto", "tre cerchi blu"]
    np.testing.assert_allclose(again.encode_text(texts), trained.encode_text(texts), atol=1e-5)


def test_openclip_xlmr_italian_start_is_known_offline_for_plan(tmp_path, monkeypatch):
    """`clip-jax plan --config openclip_xlmr_italian` needs the start's architecture with no download: clip_jax ships
    open_clip's config of the published checkpoint (no weights), which builds the abstract model at its sizes —
    the MLP text head 768 -> 640 -> 512 among them."""
    import huggingface_hub

    from clip_jax.configs.openclip_xlmr_italian import get_config
    from clip_jax.train.model import build_model
    from clip_jax.weights.params import flat_params

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    module = build_model(get_config(), abstract=True).module
    shapes = {".".join(map(str, k)): tuple(v.shape) for k, v in flat_params(module).items()}
    assert shapes["text_projection.fc1.kernel"] == (768, 640)
    assert shapes["text_projection.fc2.kernel"] == (640, 512)
    assert shapes["visual_projection.kernel"] == (768, 512)
    assert shapes["vision.patch_embedding.kernel"] == (32, 32, 3, 768)
    assert shapes["text.word_embeddings.embedding"][0] == 250002  # XLM-R base's vocabulary
    assert module.text_pooling == "mean" and module.vision.config.to_hf()["hidden_act"] == "gelu"
