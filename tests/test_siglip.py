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


def write_siglip_files(directory, image_size=32):
    """What a SigLIP checkpoint ships beside its weights, built offline: SigLIP 2's Gemma-style tokenizer (BPE
    over characters, lower-cased; SigLIP 1's sentencepiece tokenizer needs the sentencepiece package) and
    SiglipImageProcessor's config."""
    from transformers import Siglip2Tokenizer, SiglipImageProcessorPil

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    vocab = {token: i for i, token in enumerate(specials + list("▁abcdefghijklmnopqrstuvwxyz"))}
    Siglip2Tokenizer(vocab=vocab, merges=[], model_max_length=12).save_pretrained(directory)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(directory)
    return directory


TEXTS = ["una foto di un gatto", "un cane rosso", "tre cerchi blu"]


def reference_embeddings(model, directory, images):
    """transformers' SigLIP embeddings and logits, inputs from the directory's own processor and tokenizer."""
    from transformers import AutoTokenizer, SiglipImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(directory)
    ids = tokenizer(TEXTS, padding="max_length", max_length=12, truncation=True, return_tensors="pt")[
        "input_ids"
    ]
    pixel_values = SiglipImageProcessorPil.from_pretrained(directory)(images=images, return_tensors="pt")
    pixel_values = pixel_values["pixel_values"]
    with torch.no_grad():
        if "Siglip2" in type(model).__name__:
            patches = torch.tensor(
                siglip2_patches(pixel_values.numpy(), model.config.vision_config.patch_size)
            )
            grid = int(model.config.vision_config.num_patches**0.5)
            out = model(
                input_ids=ids,
                pixel_values=patches,
                pixel_attention_mask=torch.ones(patches.shape[:2], dtype=torch.long),
                spatial_shapes=torch.tensor([[grid, grid]] * len(images)),
            )
        else:
            out = model(input_ids=ids, pixel_values=pixel_values)
    return out.image_embeds.numpy(), out.text_embeds.numpy(), out.logits_per_image.numpy()


def some_images(n=2):
    from PIL import Image

    rs = np.random.RandomState(5)
    return [Image.fromarray(rs.randint(0, 256, (40 + 9 * i, 48, 3), np.uint8)) for i in range(n)]


@pytest.mark.parametrize("name", ["siglip", "siglip2"])
def test_whole_siglip_model_in_and_out(siglip_models, tmp_path, name):
    """SiglipModel / Siglip2Model -> CLIPModel: transformers' embeddings and logits (a scale above CLIP's ceiling
    of 100, and the bias); save_pretrained writes SigLIP's layout back, which transformers loads with equal
    embeddings and logits, also after the text projection changed (folded into the text head)."""
    import transformers as tf

    from clip_jax import CLIPModel

    model = siglip_models[0][name]
    with torch.no_grad():
        model.logit_scale.fill_(4.9)  # exp(4.9) = 134 > 100
    source = write_siglip_files(save_torch_model(model, tmp_path / "source"))
    images = some_images()
    ref_image, ref_text, ref_logits = reference_embeddings(model, source, images)

    ours = CLIPModel.from_pretrained(source)
    assert ours.module.logit_bias is not None and ours.max_length == 12
    np.testing.assert_allclose(ours.encode_image(images), ref_image, atol=TOL)
    np.testing.assert_allclose(ours.encode_text(TEXTS), ref_text, atol=TOL)
    np.testing.assert_allclose(ours.similarity(images, TEXTS), ref_logits, atol=1e-3)
    assert ours.logit_multiplier == pytest.approx(np.exp(4.9), rel=1e-5)

    rs = np.random.RandomState(7)
    kernel = ours.module.text_projection.kernel
    kernel.set_value(kernel.get_value() + 0.1 * rs.randn(*kernel.get_value().shape).astype(np.float32))
    expected_image, expected_text = ours.encode_image(images), ours.encode_text(TEXTS)
    expected_logits = ours.similarity(images, TEXTS)
    ours.save_pretrained(tmp_path / "out")
    saved = __import__("json").loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == name and "visual_projection.weight" not in saved
    back = (tf.SiglipModel if name == "siglip" else tf.Siglip2Model).from_pretrained(tmp_path / "out").eval()
    image, text, logits = reference_embeddings(back, tmp_path / "out", images)
    np.testing.assert_allclose(image, expected_image, atol=TOL)
    np.testing.assert_allclose(text, expected_text, atol=TOL)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-3)
    again = CLIPModel.from_pretrained(tmp_path / "out")  # and clip_jax reads its own SigLIP export
    np.testing.assert_allclose(again.encode_text(TEXTS), expected_text, atol=TOL)


def test_siglip_model_with_a_trained_vision_projection_is_written_in_clip_jax_layout(siglip_models, tmp_path):
    """SigLIP's layout has no vision projection, and transformers cannot build a SigLIP text tower inside a
    VisionTextDualEncoderModel: once its vision projection is trained, the model is written in clip_jax's own
    layout (transformers refuses it with the reason) and clip_jax reloads it with equal logits."""
    import transformers as tf

    from clip_jax import CLIPModel
    from clip_jax.hub import ExportError

    source = write_siglip_files(save_torch_model(siglip_models[0]["siglip"], tmp_path / "source"))
    ours = CLIPModel.from_pretrained(source)
    kernel = ours.module.visual_projection.kernel
    kernel.set_value(kernel.get_value() * 1.5)
    with pytest.raises(ExportError, match="siglip_text_model"):
        ours.save_pretrained(tmp_path / "strict", require_transformers=True)
    ours.save_pretrained(tmp_path / "out")
    with pytest.raises(Exception, match="not loadable in transformers"):
        tf.VisionTextDualEncoderModel.from_pretrained(tmp_path / "out")
    images = some_images()
    again = CLIPModel.from_pretrained(tmp_path / "out")
    assert again.module.logit_scale_max is None and again.module.logit_bias is not None
    np.testing.assert_allclose(again.similarity(images, TEXTS), ours.similarity(images, TEXTS), atol=1e-4)


def test_eval_takes_a_siglip_model_directory(siglip_models, tmp_path):
    """`clip-jax eval --model` on a transformers SigLIP directory: a retrieval row whose recall matches the
    ranking of transformers' own embeddings (a baseline next to a fine-tuned model)."""
    import json

    from PIL import Image

    import eval as eval_cli

    model = siglip_models[0]["siglip"]
    source = write_siglip_files(save_torch_model(model, tmp_path / "siglip"))
    images = []
    for i, colour in enumerate([(220, 30, 30), (30, 170, 40), (30, 60, 220)]):
        images.append(tmp_path / f"{i}.png")
        Image.new("RGB", (40, 36), colour).save(images[-1])
    rows = [{"image_path": str(p), "captions": [TEXTS[i]]} for i, p in enumerate(images)]
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    result = eval_cli.main(
        ["--model", str(source), "--task", "retrieval", "--data", str(tmp_path / "val.jsonl")]
    )
    metrics = result[0]["metrics"]
    ref_image, ref_text, _ = reference_embeddings(model, source, [Image.open(p) for p in images])
    ranks = (ref_image @ ref_text.T).argsort(axis=1)[:, ::-1]
    expected = float(np.mean(ranks[:, 0] == np.arange(3)))  # each image's own caption ranked first
    assert metrics["images"] == 3 and metrics["text_retrieval_recall@1"] == pytest.approx(expected)
