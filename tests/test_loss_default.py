"""``loss.kind='auto'`` (the default): the sigmoid loss for a run that continues from a model trained with it
(a whole SigLIP checkpoint, a clip_jax model or workdir trained with sigmoid), the softmax loss otherwise; the
choice is written into the workdir's config.json, so a resumed run sees the same loss."""

import json

import pytest
from conftest import save_torch_model
from test_siglip import TINY_SIGLIP_TEXT, TINY_SIGLIP_VISION, randomise, write_siglip_files
from train_helpers import tiny_config

from clip_jax.config import AUTO, base_config, override, validate


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    import transformers as tf

    siglip = tf.SiglipModel(
        tf.SiglipConfig(vision_config=dict(image_size=32, **TINY_SIGLIP_VISION), text_config=TINY_SIGLIP_TEXT)
    )
    return write_siglip_files(save_torch_model(randomise(siglip), tmp_path_factory.mktemp("siglip") / "m"))


def test_auto_is_the_default_and_resolves_from_init_from(siglip_dir, tmp_path):
    assert base_config().loss.kind == AUTO
    assert validate(base_config()).loss.kind == "softmax"  # no init_from: CLIP's loss
    resolved = validate(override(base_config(), **{"model.init_from": str(siglip_dir)}))
    assert resolved.loss.kind == "sigmoid"
    explicit = override(base_config(), **{"model.init_from": str(siglip_dir), "loss.kind": "softmax"})
    assert validate(explicit).loss.kind == "softmax"  # set by the user: kept


def test_auto_refuses_an_init_from_whose_config_it_cannot_read(tmp_path):
    config = override(base_config(), **{"model.init_from": "nobody/not-in-the-cache"})  # offline in tests
    with pytest.raises(
        ValueError, match=r"loss.kind='auto' cannot tell .*set --config.loss.kind=softmax or sigmoid"
    ):
        validate(config)


def test_a_siglip_init_from_trains_with_sigmoid_and_resumes_with_it(siglip_dir, tmp_path):
    from clip_jax.train import Trainer

    def config():
        c = tiny_config(
            tmp_path / "cache",
            **{"model.init_from": str(siglip_dir), "model.projection_dim": 32, "model.max_length": 12},
        )
        c.phases.warmup.steps = c.phases.finetune.steps = 1
        c.loss.kind = AUTO  # the default (tiny_config resolved it already, for tests that skip validate)
        return c

    first = config()
    trainer = Trainer(first, str(tmp_path / "run"))
    assert trainer.config.loss.kind == "sigmoid"
    assert trainer.model.module.logit_bias is not None  # SigLIP's bias came with the model, and trains
    trainer.run()
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["loss"]["kind"] == "sigmoid"
    # a resume with the same (default) settings sees the same loss: check_resume accepts it
    again = Trainer(config(), str(tmp_path / "run"))
    assert again.config.loss.kind == "sigmoid"
    again.lock.release()
    # and a run starting from that workdir keeps the loss it was trained with
    assert validate(override(config(), **{"model.init_from": str(tmp_path / "run")})).loss.kind == "sigmoid"
