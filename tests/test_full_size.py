"""Full-size configurations build (abstractly, no weights) with the same parameter counts as transformers."""

import jax
import numpy as np
import pytest
import torch
import transformers as tf
from flax import nnx

from clip_jax.models.registry import tower_builder, tower_config

# The vision_config of each OpenAI checkpoint's config.json (fields that differ from the defaults).
OPENAI_VISION = {
    "openai/clip-vit-base-patch32": dict(patch_size=32),
    "openai/clip-vit-base-patch16": dict(patch_size=16),
    "openai/clip-vit-large-patch14": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=24,
        patch_size=14,
        projection_dim=768,
    ),
    "openai/clip-vit-large-patch14-336": dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_attention_heads=16,
        num_hidden_layers=24,
        patch_size=14,
        image_size=336,
        projection_dim=768,
    ),
}
TEXT = {
    "bert-base-uncased": ("bert", tf.BertConfig, dict()),
    "dbmdz/bert-base-italian-xxl-cased": ("bert", tf.BertConfig, dict(vocab_size=32102)),
    "bert-base-multilingual-cased": ("bert", tf.BertConfig, dict(vocab_size=119547)),
    "xlm-roberta-base": (
        "xlm-roberta",
        tf.XLMRobertaConfig,
        dict(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1),
    ),
    "openai/clip-vit-base-patch32 (text)": ("clip_text_model", tf.CLIPTextConfig, dict()),
}


def count_ours(hf_dict, kind):
    arch, config, _ = tower_config(hf_dict, kind)
    abstract = nnx.eval_shape(tower_builder(arch, config))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def count_torch(model_cls, config):
    with torch.device("meta"):
        model = model_cls(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(OPENAI_VISION))
def test_openai_vision_parameter_counts(name):
    config = tf.CLIPVisionConfig(**OPENAI_VISION[name])
    hf = {
        "model_type": "clip",
        "vision_config": config.to_dict(),
        "text_config": {},
    }  # as in the full config.json
    assert count_ours(hf, "vision") == count_torch(tf.CLIPVisionModel, config)


@pytest.mark.parametrize("name", sorted(TEXT))
def test_text_parameter_counts(name):
    model_type, config_cls, fields = TEXT[name]
    config = config_cls(**fields)
    model_cls = tf.CLIPTextModel if model_type == "clip_text_model" else tf.AutoModel.from_config
    assert count_ours(config.to_dict(), "text") == count_torch(model_cls, config)
