"""CLIPModel: building from towers, embedding, saving and loading, against transformers' dual encoders."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from PIL import Image

from clip_jax import CLIPModel
from clip_jax.models.dual_encoder import pool_text
from clip_jax.models.layers import TowerOutput
from clip_jax.weights import CheckpointError, flat_params

from conftest import TINY_BERT, TINY_VISION

CAPTIONS = ["una foto di un gatto", "due cerchi rossi a sinistra", "il cane blu", "tre quadrati verdi in alto"]


def photos(n=5, seed=0):
    rs = np.random.RandomState(seed)
    return [Image.fromarray(rs.randint(0, 256, (40 + 7 * i, 70 - 5 * i, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def model(checkpoints):
    return CLIPModel.from_towers(vision=checkpoints["paths"]["vision"], text=checkpoints["paths"]["bert"],
                                 projection_dim=16)


def test_from_towers_keeps_pretrained_weights_and_adds_fresh_projections(model, checkpoints):
    torch_bert = checkpoints["models"]["bert"].state_dict()
    np.testing.assert_array_equal(np.asarray(model.module.text.word_embeddings.embedding.get_value()),
                                  torch_bert["embeddings.word_embeddings.weight"].numpy())
    kernel = np.asarray(model.module.visual_projection.kernel.get_value())
    assert kernel.shape == (TINY_VISION["hidden_size"], 16)
    assert 0.01 < kernel.std() < 0.03  # normal(0.02) initialisation
    assert model.module.text_projection.bias is None and model.module.visual_projection.bias is None
    assert model.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)


def test_embeddings_are_normalised_and_independent_of_batching(model):
    images = photos()
    full = model.encode_image(images)
    assert full.shape == (5, 16) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.encode_image(images, batch_size=2), full, atol=1e-5)
    preprocessed = np.stack([np.asarray(model.encode_image([im])) for im in images])[:, 0]
    np.testing.assert_allclose(preprocessed, full, atol=1e-5)
    texts = model.encode_text(CAPTIONS)
    np.testing.assert_allclose(model.encode_text(CAPTIONS[::-1], batch_size=3)[::-1], texts, atol=1e-5)
    assert np.abs(texts[0] - texts[1]).max() > 1e-3


def test_image_input_forms_agree(model):
    arrays = np.stack([np.asarray(im.resize((64, 48))) for im in photos(3)])
    from_arrays = model.encode_image(arrays)
    np.testing.assert_allclose(model.encode_image([Image.fromarray(a) for a in arrays]), from_arrays, atol=1e-6)
    from clip_jax.data import preprocess_images

    floats = preprocess_images(list(arrays), model.image_processor)
    np.testing.assert_allclose(model.encode_image(floats), from_arrays, atol=1e-6)
    with pytest.raises(ValueError, match=r"float \[N, 32, 32, 3\]"):
        model.encode_image(np.zeros((2, 3, 32, 32), np.float32))


def test_saved_model_loads_in_transformers_with_equal_embeddings(model, tmp_path):
    model.save_pretrained(tmp_path)
    reference = tf.VisionTextDualEncoderModel.from_pretrained(str(tmp_path)).eval()
    processor = tf.VisionTextDualEncoderProcessor.from_pretrained(str(tmp_path))
    images = photos(4)
    inputs = processor(text=CAPTIONS, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = reference(**inputs)
    assert np.abs(out.image_embeds.numpy() - model.encode_image(images)).max() <= 1e-4
    assert np.abs(out.text_embeds.numpy() - model.encode_text(CAPTIONS)).max() <= 1e-4
    assert float(reference.logit_scale.detach().exp()) == pytest.approx(model.logit_scale, rel=1e-6)


def test_save_and_load_round_trip_is_exact(checkpoints, tmp_path):
    original = CLIPModel.from_towers(vision=checkpoints["paths"]["vision"], text=checkpoints["paths"]["bert"],
                                     projection_dim=8, text_pooling="mean", logit_bias_init=-10.0, seed=3)
    original.save_pretrained(tmp_path)
    loaded = CLIPModel.from_pretrained(tmp_path)
    assert loaded.module.text_pooling == "mean"
    before, after = flat_params(original.module), flat_params(loaded.module)
    assert before.keys() == after.keys()
    for path in before:
        np.testing.assert_array_equal(np.asarray(after[path]), np.asarray(before[path]), err_msg=str(path))
    np.testing.assert_array_equal(loaded.encode_text(CAPTIONS), original.encode_text(CAPTIONS))


def test_loads_a_transformers_dual_encoder(checkpoints, tmp_path):
    config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(
        tf.CLIPVisionConfig(**TINY_VISION), tf.BertConfig(**TINY_BERT), projection_dim=12)
    torch.manual_seed(1)
    reference = tf.VisionTextDualEncoderModel(config).eval()
    reference.save_pretrained(tmp_path)
    ours = CLIPModel.from_pretrained(tmp_path, max_length=16)
    x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
    ids = np.random.RandomState(1).randint(5, TINY_BERT["vocab_size"], (2, 7))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    with torch.no_grad():
        image = reference.get_image_features(pixel_values=torch.tensor(x)).pooler_output.numpy()
        text = reference.get_text_features(input_ids=torch.tensor(ids),
                                           attention_mask=torch.tensor(mask)).pooler_output.numpy()
    assert np.abs(np.asarray(ours.module.image_features(jnp.asarray(x.transpose(0, 2, 3, 1)))) - image).max() <= 1e-4
    assert np.abs(np.asarray(ours.module.text_features(jnp.asarray(ids), jnp.asarray(mask))) - text).max() <= 1e-4


def test_loads_an_openai_style_clip_checkpoint(checkpoints):
    reference = checkpoints["models"]["clip"]
    ours = CLIPModel.from_pretrained(checkpoints["paths"]["clip"])
    x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
    ids = np.random.RandomState(1).randint(5, 90, (2, 9))
    ids[:, -1] = reference.config.text_config.eos_token_id
    with torch.no_grad():
        image = reference.get_image_features(pixel_values=torch.tensor(x)).pooler_output.numpy()
        text = reference.get_text_features(input_ids=torch.tensor(ids)).pooler_output.numpy()
    assert np.abs(np.asarray(ours.module.image_features(jnp.asarray(x.transpose(0, 2, 3, 1)))) - image).max() <= 1e-4
    assert np.abs(np.asarray(ours.module.text_features(jnp.asarray(ids))) - text).max() <= 1e-4
    assert ours.logit_scale == pytest.approx(float(reference.logit_scale.detach().exp()), rel=1e-6)


def test_logit_scale_override_on_load(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert CLIPModel.from_pretrained(tmp_path, logit_scale=20.0).logit_scale == pytest.approx(20.0, rel=1e-6)
    with pytest.raises(ValueError, match="positive"):
        CLIPModel.from_pretrained(tmp_path, logit_scale=0.0)


def test_logit_scale_is_clamped_at_100(model):
    module = model.module
    saved = module.logit_scale.get_value()
    module.logit_scale.set_value(jnp.asarray(10.0))
    try:
        assert float(module.scale()) == pytest.approx(100.0, rel=1e-6)
    finally:
        module.logit_scale.set_value(saved)


def test_pooling_methods_against_numpy():
    rs = np.random.RandomState(0)
    hidden = rs.randn(3, 5, 4).astype(np.float32)
    pooled = rs.randn(3, 4).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    output = TowerOutput(jnp.asarray(hidden), jnp.asarray(pooled))
    expected = {
        "pooler": pooled,
        "cls": hidden[:, 0],
        "mean": np.stack([hidden[i, :m.sum()].mean(0) for i, m in enumerate(mask)]),
        "eos": np.stack([hidden[i, m.sum() - 1] for i, m in enumerate(mask)]),
    }
    for method, value in expected.items():
        np.testing.assert_allclose(np.asarray(pool_text(output, jnp.asarray(mask), method)), value, atol=1e-6)
    with pytest.raises(ValueError, match="Unknown text_pooling"):
        pool_text(output, jnp.asarray(mask), "max")


def test_random_towers_from_configs(checkpoints):
    model = CLIPModel.from_towers(vision=tf.CLIPVisionConfig(**TINY_VISION), text=dict(TINY_BERT, model_type="bert"),
                                  projection_dim=8, tokenizer=checkpoints["paths"]["bert"], text_pooling="cls")
    assert model.encode_text(CAPTIONS[:2]).shape == (2, 8)
    assert model.encode_image(photos(2)).shape == (2, 8)


def test_bad_inputs_have_clear_errors(checkpoints, model):
    with pytest.raises(CheckpointError, match="not a dual encoder.*from_towers"):
        CLIPModel.from_pretrained(checkpoints["paths"]["bert"])
    with pytest.raises(TypeError, match="list of strings"):
        model.encode_text("una foto")
    with pytest.raises(TypeError, match=r"items \[1\] are not"):
        model.encode_text(["una foto", 3])
    no_tokenizer = CLIPModel.from_towers(vision=checkpoints["paths"]["vision"], text=checkpoints["paths"]["roberta"],
                                         projection_dim=8)
    with pytest.raises(ValueError, match="no tokenizer"):
        no_tokenizer.encode_text(["x"])
    with pytest.raises(ValueError, match="No tokenizer files"):
        CLIPModel.from_towers(vision=checkpoints["paths"]["vision"], text=checkpoints["paths"]["bert"],
                              tokenizer=checkpoints["paths"]["roberta"])
    with pytest.raises(ValueError, match="Unknown text_pooling"):
        CLIPModel.from_towers(vision=checkpoints["paths"]["vision"], text=checkpoints["paths"]["bert"],
                              text_pooling="max")


def test_encode_compiles_once_per_bucket(model):
    """Different batch sizes inside one power-of-two bucket reuse one compiled function."""
    model.encode_text(CAPTIONS[:3])
    fn = model._compiled("text")
    compiled_before = fn._cache_size()
    model.encode_text(CAPTIONS[:4])
    assert fn._cache_size() == compiled_before
    jax.clear_caches()


def test_loads_clip_italian_legacy_flax_hybrid_clip(checkpoints, tmp_path):
    """CLIP-Italian's earlier format: model_type hybrid-clip, flax_model.msgpack, a full CLIP config as vision config."""
    import json

    from flax import serialization

    from test_weights import _torch_to_flax_tree

    config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(
        tf.CLIPVisionConfig(**TINY_VISION), tf.BertConfig(**TINY_BERT), projection_dim=12)
    torch.manual_seed(2)
    reference = tf.VisionTextDualEncoderModel(config).eval()
    state = {}
    for key, value in reference.state_dict().items():
        if key.endswith("position_ids"):
            continue
        # FlaxCLIPVisionModule nests the transformer under a second "vision_model".
        state[key.replace("vision_model.", "vision_model.vision_model.", 1) if key.startswith("vision_model.")
              else key] = value
    (tmp_path / "flax_model.msgpack").write_bytes(serialization.msgpack_serialize(_torch_to_flax_tree(state)))
    clip_config = tf.CLIPConfig(vision_config=TINY_VISION, text_config={}).to_dict()
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "hybrid-clip", "projection_dim": 12, "text_config": tf.BertConfig(**TINY_BERT).to_dict(),
        "vision_config": clip_config}))
    ours = CLIPModel.from_pretrained(tmp_path, logit_scale=20.0)
    assert ours.logit_scale == pytest.approx(20.0)
    x = np.random.RandomState(0).randn(2, 3, 32, 32).astype(np.float32)
    ids = np.random.RandomState(1).randint(5, TINY_BERT["vocab_size"], (2, 7))
    with torch.no_grad():
        image = reference.get_image_features(pixel_values=torch.tensor(x)).pooler_output.numpy()
        text = reference.get_text_features(input_ids=torch.tensor(ids)).pooler_output.numpy()
    assert np.abs(np.asarray(ours.module.image_features(jnp.asarray(x.transpose(0, 2, 3, 1)))) - image).max() <= 1e-4
    assert np.abs(np.asarray(ours.module.text_features(jnp.asarray(ids))) - text).max() <= 1e-4


def test_non_pooler_text_pooling_is_never_exported_as_a_transformers_model(checkpoints, tmp_path):
    from clip_jax.hub import ExportError

    model = CLIPModel.from_towers(vision=checkpoints["paths"]["vision"], text=checkpoints["paths"]["bert"],
                                  projection_dim=8, text_pooling="mean")
    model.save_pretrained(tmp_path)
    with pytest.raises((ValueError, KeyError), match="clip_jax_dual_encoder"):
        tf.AutoModel.from_pretrained(str(tmp_path))  # transformers refuses rather than computing other embeddings
    assert CLIPModel.from_pretrained(tmp_path).module.text_pooling == "mean"
    with pytest.raises(ExportError, match="pools text with 'mean'.*pooler_output"):
        model.save_pretrained(tmp_path / "hf", require_transformers=True)


def test_sharded_export_loads_in_transformers(model, tmp_path):
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    reference = tf.VisionTextDualEncoderModel.from_pretrained(str(tmp_path)).eval()
    images = photos(2)
    processor = tf.VisionTextDualEncoderProcessor.from_pretrained(str(tmp_path))
    with torch.no_grad():
        embeds = reference.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
    embeds = torch.nn.functional.normalize(embeds, dim=-1).numpy()
    assert np.abs(embeds - model.encode_image(images)).max() <= 1e-4
    again = CLIPModel.from_pretrained(tmp_path)
    np.testing.assert_array_equal(again.encode_image(images), model.encode_image(images))


def test_embedding_batches_are_split_over_the_local_devices(model):
    assert model.mesh.size == jax.device_count() == 8  # conftest: 8 fake CPU devices
    assert [model._bucket(n, 64) for n in (1, 5, 9, 64, 70)] == [8, 8, 16, 64, 72]
    from clip_jax.data import preprocess_images

    single = model.module.image_features(jnp.asarray(preprocess_images(photos(3), model.image_processor)))
    single = np.asarray(single) / np.linalg.norm(np.asarray(single), axis=1, keepdims=True)
    np.testing.assert_allclose(model.encode_image(photos(3)), single, atol=1e-5)
