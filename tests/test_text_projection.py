"""The text projection's kinds (``model.text_projection``): one linear map, or open_clip's MLP head
(``hf_proj_type='mlp'``: Linear-GELU-Linear, no biases, hidden width ``(in + out) // 2``). open_clip parity, in and
out, lives in ``tests/test_openclip.py``; here: the module, clip_jax's own format and transformers' refusal, the
config's checks, and a phase on cached features training the head."""

import json
import math

import jax
import numpy as np
import pytest
import transformers as tf
from flax import nnx
from train_helpers import tiny_config

from clip_jax import CLIPModel
from clip_jax.config import check_init_from, validate
from clip_jax.hub import ExportError
from clip_jax.models.dual_encoder import MLPProjection
from clip_jax.weights import flat_params


def test_mlp_head_is_open_clips_linear_gelu_linear():
    head = MLPProjection(48, 16, use_bias=False, kernel_init=nnx.initializers.normal(0.5), rngs=nnx.Rngs(0))
    assert {k: v.shape for k, v in flat_params(head).items()} == {
        ("fc1", "kernel"): (48, 32),  # (48 + 16) // 2
        ("fc2", "kernel"): (32, 16),
    }
    x = np.random.RandomState(0).normal(size=(3, 48)).astype(np.float32)
    hidden = x.astype(np.float64) @ np.asarray(head.fc1.kernel[...], np.float64)
    gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))(hidden)  # exact, as nn.GELU()
    expected = gelu @ np.asarray(head.fc2.kernel[...], np.float64)
    np.testing.assert_allclose(np.asarray(head(x)), expected, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def mlp_model(checkpoints):
    paths = checkpoints["paths"]
    return CLIPModel.from_towers(
        vision=paths["vision"],
        text=paths["bert"],
        projection_dim=16,
        text_projection="mlp",
        max_length=12,
    )


def test_mlp_head_saves_in_clip_jax_format_and_transformers_refuses_it(mlp_model, tmp_path):
    """Pooled by the tower's pooler, as transformers pools, the model is still not transformers': its text head
    is two layers. clip_jax's own format holds it exactly; transformers refuses it with our message."""
    assert mlp_model.module.text_pooling == "pooler"
    out = mlp_model.save_pretrained(tmp_path / "export", card={"language": "it"})
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "clip_jax_dual_encoder" and config["clip_jax"]["text_projection"] == "mlp"
    with pytest.raises(
        Exception, match=r"not loadable in transformers: its text projection is open_clip's 'mlp'"
    ):
        tf.VisionTextDualEncoderModel.from_pretrained(str(out))
    again = CLIPModel.from_pretrained(out)
    assert again.module.text_projection_kind == "mlp"
    texts = ["un gatto nero", "due cani sul prato"]
    np.testing.assert_array_equal(again.encode_text(texts), mlp_model.encode_text(texts))
    card = (out / "README.md").read_text()
    assert "library_name: clip_jax" in card and "MLP text head" in card
    assert "from transformers import pipeline" not in card
    with pytest.raises(ExportError, match=r"its text projection is open_clip's 'mlp' head") as error:
        mlp_model.save_pretrained(tmp_path / "hf", require_transformers=True)
    assert "\n" not in str(error.value) and not (tmp_path / "hf").exists()


def test_config_names_the_text_projection_and_checks_it_against_init_from(tmp_path):
    config = tiny_config(tmp_path)
    config.model.text_projection = "conv"
    with pytest.raises(ValueError, match=r"model\.text_projection"):
        validate(config)
    config.model.text_projection = "linear"
    config.model.init_from = "somewhere"  # a saved model with an MLP head: the run uses its head
    m = config.model
    with pytest.raises(ValueError, match=r"text_projection='mlp'.*--config\.model\.text_projection=mlp"):
        check_init_from(config, m.projection_dim, m.text_pooling, m.max_length, "mlp")
    check_init_from(config, m.projection_dim, m.text_pooling, m.max_length, "linear")


def test_a_phase_on_cached_features_trains_the_mlp_head(tmp_path):
    """The LiT path: cached pooled text features (the head's input width) feed both layers of the MLP head, which
    the phases' head regex trains; the towers stay as they were."""
    from clip_jax.train import Trainer
    from clip_jax.train.objectives import objective_of

    config = tiny_config(tmp_path / "cache", **{"model.text_projection": "mlp", "train.phases": ("warmup",)})
    config.phases.warmup.cache_features = True
    trainer = Trainer(config, str(tmp_path / "run"))
    module = trainer.model.module
    assert isinstance(module.text_projection, MLPProjection)
    shapes = objective_of(config).batch_shapes(config, module, trainer.phases[0], trainer.mesh)
    assert shapes["text_features"].shape[-1] == module.pooled_text_size == 32
    before = {".".join(map(str, k)): np.asarray(v) for k, v in flat_params(module).items()}
    trainer.run()
    after = {
        ".".join(map(str, k)): np.asarray(jax.device_get(v))
        for k, v in flat_params(trainer.module(trainer.state)).items()
    }
    for name in ("text_projection.fc1.kernel", "text_projection.fc2.kernel"):
        assert np.abs(after[name] - before[name]).max() > 0, name
    np.testing.assert_array_equal(
        after["text.layers.0.mlp.fc1.kernel"], before["text.layers.0.mlp.fc1.kernel"]
    )
