"""The demo's pretrained stand-ins: the MLM head against transformers, random initialisation as
transformers does it, building and caching the stand-ins, loading them like hub checkpoints, and a
phase 1 on them that learns."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from conftest import SMALL_ENGLISH
from flax import nnx

from clip_jax.clip_model import CLIPModel
from clip_jax.demo import standins
from clip_jax.models.bert import BertConfig, BertForMaskedLM
from clip_jax.models.registry import build_tower
from clip_jax.weights.params import flat_params


def test_masked_lm_checkpoint_matches_transformers(tmp_path):
    config = BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=24,
    )
    model = BertForMaskedLM(config, rngs=nnx.Rngs(0))
    for name in ("bias",):  # non-zero so that the comparison covers the output bias
        getattr(model, name).set_value(jax.random.normal(jax.random.key(1), (60,)) * 0.1)
    model.transform_norm.bias.set_value(jax.random.normal(jax.random.key(2), (32,)) * 0.1)
    standins.save_masked_lm(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    rs = np.random.RandomState(0)
    ids = rs.randint(5, 60, (3, 10))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    reference = tf.BertForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_masking_follows_bert():
    rs = np.random.RandomState(0)
    ids = rs.randint(5, 100, (400, 20))
    ids[:, 0], ids[:, -1] = 2, 3  # [CLS] ... [SEP]
    attention = np.ones_like(ids)
    corrupted, labels = standins.mask_tokens(ids, attention, rs, vocab_size=100)
    targets = labels >= 0
    assert not targets[:, 0].any() and not targets[:, -1].any()  # special tokens are never targets
    assert abs(targets[:, 1:-1].mean() - 0.15) < 0.01
    assert (labels[targets] == ids[targets]).all()
    masked = corrupted[targets] == 4
    kept = corrupted[targets] == ids[targets]
    assert abs(masked.mean() - 0.8) < 0.03 and abs(kept.mean() - 0.1 - 0.1 * 0.01) < 0.03
    assert (corrupted[~targets] == ids[~targets]).all()


def _std_by_name(named: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.std(v)) for k, v in named.items()}


@pytest.mark.parametrize(
    "kind,config",
    [
        (
            "text",
            tf.BertConfig(
                vocab_size=300,
                hidden_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                intermediate_size=128,
                max_position_embeddings=64,
                initializer_range=0.05,
            ),
        ),
        (
            "vision",
            tf.CLIPVisionConfig(
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=3,
                num_attention_heads=4,
                image_size=32,
                patch_size=4,
                initializer_factor=2.0,
            ),
        ),
        (
            "text",
            tf.CLIPTextConfig(
                vocab_size=300,
                hidden_size=64,
                intermediate_size=256,
                num_hidden_layers=3,
                num_attention_heads=4,
                max_position_embeddings=32,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            ),
        ),
    ],
)
def test_random_init_follows_transformers(kind, config):
    """Every parameter's spread equals that of transformers' own initialisation (within sampling error);
    biases start at zero and LayerNorms at one, as there."""
    from clip_jax.models.registry import architecture_of

    torch.manual_seed(0)
    model_cls = {
        "bert": tf.BertModel,
        "clip_vision_model": tf.CLIPVisionModel,
        "clip_text_model": tf.CLIPTextModel,
    }
    reference = model_cls[config.model_type](config)
    expected = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    tower = build_tower(config, kind, seed=0).module
    key_map = architecture_of(tower).key_map
    ours = key_map.export({p: np.asarray(v) for p, v in flat_params(tower).items()})
    assert set(ours) <= set(expected)
    for name, array in ours.items():
        ref = expected[name]
        if np.all(ref == 0) or np.all(ref == 1):  # biases, LayerNorms
            np.testing.assert_array_equal(array, ref, err_msg=name)
            continue
        ref_std, our_std = float(np.std(ref)), float(np.std(array))
        assert abs(our_std - ref_std) < 0.15 * ref_std, (name, our_std, ref_std)
    if config.model_type == "bert":
        assert np.all(ours["embeddings.word_embeddings.weight"][config.pad_token_id] == 0)


def test_random_towers_are_not_collapsed():
    """Different pictures give measurably different pooled outputs. (The former fixed normal(0.02) init gave a
    mean cosine of 0.99997 between these eight pictures; transformers' own init gives about 0.992.)"""
    from clip_jax.data.preprocess import ImageProcessorConfig, preprocess_images
    from clip_jax.data.shapes import ShapesSpec, generate

    vision = build_tower(
        dict(
            model_type="clip_vision_model",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        ),
        "vision",
    ).module
    images = generate(ShapesSpec(num_train=8, num_val=8, holdout=""))["train"]["images"]
    pooled = np.asarray(
        vision(preprocess_images(list(images), ImageProcessorConfig.for_image_size(64))).pooler_output
    )
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    cosines = (unit @ unit.T)[np.triu_indices(8, 1)]
    assert np.mean(1 - cosines) > 1e-3


def test_standins_are_built_and_cached(small_standins, tmp_path):
    cache, english, italian = small_standins
    info = json.loads((italian / "standin.json").read_text())
    history = info["mlm_history"]
    assert history[-1][1] < 0.7 * history[0][1]  # masked-LM loss fell
    info = json.loads((english / "standin.json").read_text())
    assert info["train_loss"][-1][1] < 0.7 * info["train_loss"][0][1]
    # A second call reuses the cache; other settings are another stand-in.
    stamp = (english / "model.safetensors").stat().st_mtime_ns
    assert standins.english_clip(cache, SMALL_ENGLISH, log=pytest.fail) == english
    assert (english / "model.safetensors").stat().st_mtime_ns == stamp
    assert standins.standin_dir("english-clip", SMALL_ENGLISH, cache) != standins.standin_dir(
        "english-clip", standins.EnglishCLIPSettings(), cache
    )
    # demo:english-clip names the stand-in of the default settings (marked built here: building it takes minutes)
    default = standins.standin_dir("english-clip", standins.EnglishCLIPSettings(), str(tmp_path))
    default.mkdir(parents=True)
    (default / "standin.json").write_text("{}")
    assert standins.resolve("demo:english-clip", str(tmp_path), log=pytest.fail) == str(default)
    assert standins.resolve("openai/clip-vit-base-patch32", cache) == "openai/clip-vit-base-patch32"
    with pytest.raises(ValueError, match="demo:english-clip"):
        standins.resolve("demo:nope", cache)


def test_standins_load_like_hub_checkpoints(small_standins):
    _, english, italian = small_standins
    clip = tf.VisionTextDualEncoderModel.from_pretrained(english)
    assert clip.config.vision_config.model_type == "clip_vision_model"
    mlm = tf.BertForMaskedLM.from_pretrained(italian)
    tokenizer = tf.AutoTokenizer.from_pretrained(italian)
    assert tokenizer.tokenize("due cerchi rossi a sinistra") == ["due", "cerchi", "rossi", "a", "sinistra"]
    assert mlm.config.vocab_size == len(tokenizer)
    model = CLIPModel.from_towers(vision=str(english), text=str(italian), projection_dim=16)
    assert model.encode_text(["tre quadrati verdi in alto"]).shape == (1, 16)
    # The transferred vision tower is the English CLIP's, weight for weight.
    reference = CLIPModel.from_pretrained(english)
    np.testing.assert_array_equal(
        np.asarray(model.module.vision.position_embedding[...]),
        np.asarray(reference.module.vision.position_embedding[...]),
    )


def test_phase_one_on_standins_lowers_the_loss(small_standins, tmp_path):
    from clip_jax.config import HEAD, phase
    from clip_jax.demo import demo_config
    from clip_jax.train import Trainer

    cache, english, italian = small_standins
    c = demo_config()
    c.model.vision, c.model.text = str(english), str(italian)
    c.model.projection_dim = 16
    c.data.cache_dir = cache
    c.data.shapes.update(num_train=256, num_val=32, image_size=32)
    c.train.update(batch_size=32, log_every=1, eval_every=0, checkpoint_every=1000, async_checkpoints=False)
    c.train.phases = ("warmup",)
    c.phases.warmup = phase(60, HEAD, {"head": 1e-2}, warmup_steps=5)
    Trainer(c, str(tmp_path)).run()
    losses = [
        json.loads(line)["train/loss"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in line
    ]
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 0.3
