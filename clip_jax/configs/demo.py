"""The offline demo: tiny towers trained on generated Italian captions of coloured shapes.

Runs on a laptop CPU in about 1.5 minutes with no network: `clip-jax train` (or `python train.py`). The settings live in
clip_jax.demo.demo_config (the notebooks use them too).
"""

from clip_jax.demo import demo_config


def get_config():
    return demo_config()
