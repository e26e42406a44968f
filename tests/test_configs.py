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

    assert (
        configs.names()
        == CONFIGS
        == [
            "clip_italian",
            "demo",
            "distill_demo",
            "distill_italian",
            "openclip_xlmr_italian",
            "siglip_italian",
            "tiny",
        ]
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    for name in configs.names():
        packaged = importlib.import_module(f"clip_jax.configs.{name}").get_config()
        assert packaged == importlib.import_module(f"configs.{name}").get_config()
        validate(packaged)  # (in place: it resolves loss.kind='auto')
        assert configs.resolve(name).endswith(f"clip_jax/configs/{name}.py")
    with pytest.raises(
        ValueError,
        match="no built-in recipe 'nope' — choose one of clip_italian, demo, distill_demo, distill_italian, openclip_xlmr_italian, siglip_italian, tiny",
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


def test_every_config_value_has_a_rule():
    """Issue 23: up-front validation covers every key of the schema (a new key needs its rule)."""
    from clip_jax.config import RULES, _flat_keys, base_config

    c = base_config()
    keys = set(_flat_keys(c))
    keys = {k for k in keys if not k.startswith("phases.")} | {f"phases.*.{k}" for k in c.phases.warmup}
    covered = {k for k in keys if k in RULES or k.rsplit(".", 1)[0] in RULES}  # mesh.axes.data: mesh.axes
    assert covered == keys, sorted(keys - covered)
    assert set(RULES) <= keys | {"mesh.axes"}, sorted(set(RULES) - keys)


@pytest.mark.parametrize(
    "key, value, needle",
    [
        ("train.b2", 1.5, "train.b2=1.5 is invalid: it must be a number in [0, 1)"),
        ("train.b1", -0.1, "train.b1=-0.1"),
        ("train.eps", 0.0, "train.eps=0.0 is invalid: it must be a finite number > 0"),
        ("model.image_size", -1, "model.image_size=-1"),
        ("model.projection_dim", -3, "model.projection_dim=-3 is invalid: it must be a whole number >= 1"),
        ("model.projection_dim", 0, "model.projection_dim=0"),
        ("model.text_pooling", "max", "model.text_pooling='max' is invalid: it must be one of 'pooler'"),
        (
            "model.logit_scale_init",
            float("nan"),
            "model.logit_scale_init=nan is invalid: it must be a finite",
        ),
        ("model.max_length", 1, "model.max_length=1"),
        ("model.dtype", "float16", "model.dtype='float16'"),
        ("loss.kind", "hinge", "loss.kind='hinge' is invalid: it must be one of 'sigmoid', 'softmax'"),
        ("loss.sigmoid_bias_init", float("inf"), "loss.sigmoid_bias_init=inf"),
        ("data.source", "tfrecords", "data.source='tfrecords'"),
        ("data.shapes.num_train", 0, "data.shapes.num_train=0 is invalid: it must be a whole number >= 1"),
        ("data.shapes.image_size", 4, "data.shapes.image_size=4"),
        ("data.shapes.holdout", "rosso", "data.shapes.holdout='rosso'"),
        (
            "data.crop_scale",
            ("a", "b", "c"),
            "data.crop_scale=('a', 'b', 'c') is invalid: it must be (low, high)",
        ),
        ("data.crop_scale", (0.9, 0.5), "data.crop_scale=(0.9, 0.5)"),
        ("data.cache_dir", "", "data.cache_dir='' is invalid: it must be a non-empty string"),
        (
            "train.phases",
            ("warmup", "warmup"),
            "train.phases=('warmup', 'warmup') is invalid: it must be a non-empty list of distinct",
        ),
        ("train.phases", (), "train.phases=() is invalid"),
        ("train.param_groups", (("head", "x"), ("head", "y")), "train.param_groups="),
        ("train.optimizer", "sgd", "train.optimizer='sgd'"),
        ("train.micro_batch_size", 3, "train.micro_batch_size=3 is invalid: it must be 0 (off) or a divisor"),
        ("train.seed", -1, "train.seed=-1"),
        (
            "phases.warmup.end_factor",
            5.0,
            "phases.warmup.end_factor=5.0 is invalid: it must be a number in [0, 1]",
        ),
        ("phases.warmup.decay", "step", "phases.warmup.decay='step'"),
        (
            "phases.warmup.trainable",
            "(head",
            "phases.warmup.trainable='(head' is invalid: it must be a valid regular",
        ),
        ("phases.finetune.learning_rates.text", float("nan"), "phases.finetune.learning_rates.text=nan"),
        ("distill.teacher_column", "", "distill.teacher_column=''"),
        ("mesh.axes.data", 0, "mesh.axes={'data': 0, 'fsdp': 1} is invalid"),
        ("mesh.fsdp_min_size", -1, "mesh.fsdp_min_size=-1"),
    ],
)
def test_values_out_of_range_are_refused_naming_key_value_and_fix(key, value, needle):
    """Issue 23: every value with a type and a range is checked before any work, in one line with the fix."""
    from ml_collections import ConfigDict

    from clip_jax.config import base_config, override

    c = ConfigDict(base_config().to_dict(), type_safe=False)  # values of any type, as a config file may set
    override(c, **{key: value})
    with pytest.raises(ValueError) as error:
        validate(c)
    message = str(error.value)
    assert needle in message and " — " in message, message
    assert "\n" not in message


def test_learning_rates_name_parameter_groups():
    from clip_jax.config import base_config

    c = base_config()
    c.phases.warmup.learning_rates = {"heads": 1e-3}
    with pytest.raises(
        ValueError, match=r"phases.warmup.learning_rates.heads: 'heads' is not a parameter group .* — "
    ):
        validate(c)
