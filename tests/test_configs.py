"""Every shipped config is valid, and the reference recipe says what the README promises."""

import math
import re
import sys
from pathlib import Path

import pytest

from clip_jax.config import validate

CONFIGS = sorted(p.stem for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid(name):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    module = __import__(f"configs.{name}", fromlist=["get_config"])
    validate(module.get_config())


def test_recipes_ship_in_the_package_and_the_checkout_re_exports_them():
    import importlib

    from clip_jax import configs

    assert configs.names() == CONFIGS == ["clip_italian", "demo", "distill_demo", "distill_italian", "tiny"]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for name in configs.names():
        packaged = importlib.import_module(f"clip_jax.configs.{name}").get_config()
        validate(packaged)
        assert packaged == importlib.import_module(f"configs.{name}").get_config()
        assert configs.resolve(name).endswith(f"clip_jax/configs/{name}.py")
    with pytest.raises(
        ValueError,
        match="no built-in recipe 'nope' — choose one of clip_italian, demo, distill_demo, distill_italian, tiny",
    ):
        configs.resolve("nope")


def test_clip_italian_recipe():
    from configs.clip_italian import get_config

    c = get_config()
    assert (c.model.vision, c.model.text) == (
        "openai/clip-vit-base-patch32",
        "dbmdz/bert-base-italian-xxl-uncased",
    )
    assert c.model.projection_dim == 512 and math.exp(c.model.logit_scale_init) == pytest.approx(20.0)
    warmup, finetune = (c.phases[n] for n in c.train.phases)
    for path in ("vision.layers.0.mlp.fc1.kernel", "text.word_embeddings.embedding", "logit_scale"):
        assert not re.fullmatch(warmup.trainable, path)
    assert re.fullmatch(warmup.trainable, "visual_projection.kernel")
    assert re.fullmatch(finetune.trainable, "vision.layers.0.mlp.fc1.kernel")
    assert not re.fullmatch(finetune.trainable, "logit_scale")  # the temperature stays fixed at 20
