"""The siglip_italian recipe end to end on tiny random towers of its architectures: a SigLIP checkpoint's
vision half (SigLIP 2's fixed-resolution checkpoints are published in the ``siglip`` layout) and a BERT."""

import json
import re

import jax
import numpy as np
from conftest import save_torch_model
from test_siglip import TINY_SIGLIP_TEXT, TINY_SIGLIP_VISION, randomise, write_siglip_files

from clip_jax.config import override
from clip_jax.weights.params import flat_params


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
    config = override(
        config,
        **{
            "model.vision": str(vision_dir),
            "model.text": str(checkpoints["paths"]["bert"]),
            "model.projection_dim": 16,
            "model.max_length": 16,
            "data.source": "shapes",
            "data.cache_dir": str(tmp_path / "cache"),
            "data.worker_processes": 0,
            "train.batch_size": 16,
            "train.eval_batch_size": 16,
            "train.log_every": 1,
            "train.checkpoint_every": 2,
            "train.eval_every": 2,
            "train.async_checkpoints": False,
            "phases.warmup.steps": 2,
            "phases.finetune.steps": 2,
            "mesh.fsdp_min_size": 0,
        },
    )
    config.data.shapes.update(num_train=64, num_val=16, image_size=32)
    trainer = Trainer(config, str(tmp_path / "run"))
    model = trainer.model
    assert type(model.module.vision.config).__name__ == "SiglipVisionConfig"
    assert model.image_processor.resize_to_crop  # SigLIP's preprocessing came with the tower
    initial = {".".join(map(str, k)): np.asarray(v) for k, v in flat_params(model.module).items()}
    trainer.run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(train_losses) == 4 and all(np.isfinite(train_losses))
    module = trainer.module(trainer.state)
    after = {".".join(map(str, k)): np.asarray(jax.device_get(v)) for k, v in flat_params(module).items()}
    head = "vision.head.in_proj.kernel"  # the attention-pooling head trains in phase 2
    assert np.abs(after[head] - initial[head]).max() > 0
    assert re.fullmatch(config.phases.warmup.trainable, "logit_bias")
    trained = load_model(str(tmp_path / "run"))
    assert trained.module.logit_bias is not None
    assert float(trained.module.logit_bias[...]) != config.loss.sigmoid_bias_init
    embeddings = trained.encode_text(["una foto di un gatto"])
    assert embeddings.shape == (1, 16) and np.isfinite(embeddings).all()
