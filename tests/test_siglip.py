"""SigLIP / SigLIP 2 towers and whole models: parity with transformers' PyTorch models (float32, <= 1e-4)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import save_torch_model

from clip_jax.models import load_text_tower, load_vision_tower
from clip_jax.weights.readers import CheckpointError

TOL = 1e-4
TINY_SIGLIP_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    patch_size=8,
)
TINY_SIGLIP_TEXT = dict(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=12,
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
)


def max_diff(reference, ours):
    return float(np.abs(reference.detach().numpy() - np.asarray(ours, np.float32)).max())


def randomise(model):
    """transformers initialises biases, LayerNorms and the logit bias to constants; random values make the
    parity tests see every parameter."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("logit_scale"):
                param.copy_(torch.tensor([2.0]))  # exp(2) = 7.4: below CLIP's clamp at 100
            else:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def siglip2_patches(pixels, patch):
    """transformers' Siglip2ImageProcessor patch layout: [N, C, H, W] -> [N, grid*grid, p*p*C] (row, col, channel)."""
    n, c, h, w = pixels.shape
    x = pixels.reshape(n, c, h // patch, patch, w // patch, patch).transpose(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


@pytest.fixture(scope="module")
def siglip_models(tmp_path_factory):
    import transformers as tf

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("siglip")
    models = {
        "siglip_vision": tf.SiglipVisionModel(tf.SiglipVisionConfig(image_size=32, **TINY_SIGLIP_VISION)),
        "siglip2_vision": tf.Siglip2VisionModel(tf.Siglip2VisionConfig(num_patches=16, **TINY_SIGLIP_VISION)),
        "siglip_text": tf.SiglipTextModel(tf.SiglipTextConfig(**TINY_SIGLIP_TEXT)),
        "siglip2_text": tf.Siglip2TextModel(tf.Siglip2TextConfig(**TINY_SIGLIP_TEXT, projection_size=24)),
        "siglip": tf.SiglipModel(
            tf.SiglipConfig(
                vision_config=dict(image_size=32, **TINY_SIGLIP_VISION), text_config=TINY_SIGLIP_TEXT
            )
        ),
        "siglip2": tf.Siglip2Model(
            tf.Siglip2Config(
                vision_config=dict(num_patches=16, **TINY_SIGLIP_VISION), text_config=TINY_SIGLIP_TEXT
            )
        ),
    }
    paths = {name: save_torch_model(randomise(model), root / name) for name, model in models.items()}
    return models, paths


def pixels(batch=3, size=32, seed=0):
    return np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)


def reference_vision(model, x):
    with torch.no_grad():
        if "Siglip2" in type(model).__name__:
            patches = torch.tensor(siglip2_patches(x, model.config.patch_size))
            mask = torch.ones(patches.shape[:2], dtype=torch.long)
            grid = int(model.config.num_patches**0.5)
            shapes = torch.tensor([[grid, grid]] * len(x))
            return model(patches, pixel_attention_mask=mask, spatial_shapes=shapes, output_hidden_states=True)
        return model(torch.tensor(x), output_hidden_states=True)


@pytest.mark.parametrize("name", ["siglip_vision", "siglip2_vision"])
def test_siglip_vision_towers_match_transformers(siglip_models, name):
    models, paths = siglip_models
    tower = load_vision_tower(paths[name])
    assert tower.config.image_size == 32
    x = pixels()
    ref = reference_vision(models[name], x)
    out = tower(jnp.asarray(x.transpose(0, 2, 3, 1)), output_hidden_states=True)
    assert max_diff(ref.last_hidden_state, out.last_hidden_state) <= TOL
    assert max_diff(ref.pooler_output, out.pooler_output) <= TOL
    assert float(np.abs(np.asarray(out.pooler_output)).max()) > 0.1  # not a trivially small output
    assert len(out.hidden_states) == TINY_SIGLIP_VISION["num_hidden_layers"] + 1
    for r, o in zip(ref.hidden_states, out.hidden_states):  # transformers: embeddings, then each layer
        assert max_diff(r, o) <= TOL


def test_siglip_vision_tower_refuses_another_size(siglip_models):
    tower = load_vision_tower(siglip_models[1]["siglip_vision"])
    with pytest.raises(ValueError, match="fixed resolution"):
        tower(jnp.zeros((1, 48, 48, 3)))


@pytest.mark.parametrize("name", ["siglip_text", "siglip2_text"])
def test_siglip_text_towers_match_transformers(siglip_models, name):
    """Padded to the fixed length, pooled at the last position, then the head (24 wide for SigLIP 2 here)."""
    models, paths = siglip_models
    tower = load_text_tower(paths[name])
    rs = np.random.RandomState(2)
    length = TINY_SIGLIP_TEXT["max_position_embeddings"]
    ids = rs.randint(3, TINY_SIGLIP_TEXT["vocab_size"], (3, length))
    mask = np.ones_like(ids)
    ids[1, 7:], mask[1, 7:] = 0, 0
    with torch.no_grad():
        ref = models[name](torch.tensor(ids), output_hidden_states=True)  # as SigLIP runs: no mask
        ref_masked = models[name](torch.tensor(ids), attention_mask=torch.tensor(mask))
    out = tower(jnp.asarray(ids), output_hidden_states=True)
    masked = tower(jnp.asarray(ids), jnp.asarray(mask))
    assert out.pooler_output.shape == (3, tower.config.pooled_size)
    assert tower.config.pooled_size == (24 if name == "siglip2_text" else 32)
    assert max_diff(ref.last_hidden_state, out.last_hidden_state) <= TOL
    assert max_diff(ref.pooler_output, out.pooler_output) <= TOL
    assert max_diff(ref_masked.last_hidden_state, masked.last_hidden_state) <= TOL
    assert max_diff(ref_masked.pooler_output, masked.pooler_output) <= TOL
    for r, o in zip(ref.hidden_states, out.hidden_states):
        assert max_diff(r, o) <= TOL


@pytest.mark.parametrize("name", ["siglip", "siglip2"])
def test_both_halves_of_a_whole_siglip_checkpoint(siglip_models, name):
    models, paths = siglip_models
    model = models[name]
    vision, text = load_vision_tower(paths[name]), load_text_tower(paths[name])
    x = pixels()
    ids = np.random.RandomState(3).randint(3, 64, (2, 12))
    ref_v = reference_vision(model.vision_model, x)
    with torch.no_grad():
        ref_t = model.text_model(torch.tensor(ids))
    assert max_diff(ref_v.pooler_output, vision(jnp.asarray(x.transpose(0, 2, 3, 1))).pooler_output) <= TOL
    assert max_diff(ref_t.pooler_output, text(jnp.asarray(ids)).pooler_output) <= TOL


def test_headless_siglip_vision_tower_is_refused(tmp_path):
    import transformers as tf

    model = tf.SiglipVisionModel(
        tf.SiglipVisionConfig(image_size=32, vision_use_head=False, **TINY_SIGLIP_VISION)
    )
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="vision_use_head=False"):
        load_vision_tower(tmp_path)


def test_siglip_preprocessing_equals_transformers_siglip_image_processor(tmp_path):
    """A non-square image resized straight to 32x32 (no crop), mean and std 0.5, as SiglipImageProcessor."""
    from PIL import Image
    from transformers import (
        SiglipImageProcessorPil as SiglipImageProcessor,  # the backend without torchvision
    )

    from clip_jax.data.preprocess import ImageProcessorConfig, preprocess_images

    reference = SiglipImageProcessor(size={"height": 32, "width": 32})
    reference.save_pretrained(tmp_path)
    ours = ImageProcessorConfig.from_pretrained(tmp_path)
    assert ours.resize_to_crop and (ours.crop_height, ours.crop_width) == (32, 32)
    image = Image.fromarray(np.random.RandomState(0).randint(0, 256, (50, 70, 3), np.uint8))
    expected = reference(images=[image], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(preprocess_images([image], ours), expected, atol=1e-5)
    (tmp_path / "again").mkdir()
    ours.save_pretrained(tmp_path / "again")  # written back as a SigLIP processor that transformers reads
    again = SiglipImageProcessor.from_pretrained(tmp_path / "again")
    np.testing.assert_allclose(
        again(images=[image], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1), expected, atol=1e-6
    )
