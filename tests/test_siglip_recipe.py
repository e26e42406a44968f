"""The siglip_italian recipe end to end on tiny random towers of its architectures: a SigLIP checkpoint's
vision half (SigLIP 2's fixed-resolution checkpoints are published in the ``siglip`` layout) and a BERT."""

import json
import re

import numpy as np
from conftest import save_torch_model
from test_siglip import TINY_SIGLIP_TEXT, TINY_SIGLIP_VISION, randomise, write_siglip_files
from train_helpers import numpy_params, shrunk_recipe


def test_siglip_italian_recipe_trains_end_to_end(checkpoints, tmp_path):
    import transformers as tf

    from clip_jax import load_model
    from clip_jax.configs.siglip_italian import get_config
    from clip_jax.train import Trainer

    siglip = tf.SiglipModel(
        tf.SiglipConfig(vision_config=dict(image_size=32, **TINY_SIGLIP_VISION), text_config=TINY_SIGLIP_TEXT)
    )
    vision_dir = write_siglip_files(save_torch_model(randomise(siglip), tmp_path / "siglip2-tiny"))
    config = get_config()
    assert config.loss.kind == "sigmoid" and list(config.train.phases) == ["warmup", "finetune"]
    config = shrunk_recipe(
        config,
        tmp_path,
        **{
            "model.vision": str(vision_dir),
            "model.text": str(checkpoints["paths"]["bert"]),
            "model.projection_dim": 16,
            "model.max_length": 16,
        },
    )
    trainer = Trainer(config, str(tmp_path / "run"))
    model = trainer.model
    assert type(model.module.vision.config).__name__ == "SiglipVisionConfig"
    assert model.image_processor.resize_to_crop  # SigLIP's preprocessing came with the tower
    initial = numpy_params(model.module)
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(train_losses) == 4 and all(np.isfinite(train_losses))
    after = numpy_params(trainer.module(trainer.state))
    head = "vision.head.in_proj.kernel"  # the attention-pooling head trains in phase 2
    assert np.abs(after[head] - initial[head]).max() > 0
    assert re.fullmatch(config.phases.warmup.trainable, "logit_bias")
    trained = load_model(str(tmp_path / "run"))
    assert trained.module.logit_bias is not None
    assert float(trained.module.logit_bias[...]) != config.loss.sigmoid_bias_init
    embeddings = trained.encode_text(["una foto di un gatto"])
    assert embeddings.shape == (1, 16) and np.isfinite(embeddings).all()
