"""The offline demo: tiny towers trained on generated Italian captions of coloured shapes.

Runs on a laptop CPU in a few minutes with no network: `python train.py`.
"""

from clip_jax.config import HEAD, base_config, phase


def get_config():
    c = base_config()
    with c.model.ignore_type():  # towers given as configs (random init) instead of checkpoint paths
        c.model.vision = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8)
        c.model.text = dict(model_type="bert", vocab_size="tokenizer", hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    c.model.tokenizer = "shapes"
    c.model.projection_dim = 64
    c.model.max_length = 16
    c.model.text_pooling = "mean"
    c.data.source = "shapes"
    c.train.batch_size = 64
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.checkpoint_every = 100
    c.train.weight_decay = 0.01
    c.phases.warmup = phase(100, HEAD, {"head": 3e-3}, warmup_steps=10)
    c.phases.finetune = phase(300, ".*", {"head": 1e-3, "vision": 1e-3, "text": 1e-3}, warmup_steps=30)
    return c
