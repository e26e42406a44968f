"""The offline demo: teach a pretrained (stand-in) English CLIP Italian, in CLIP-Italian's two phases.

`clip-jax train` (or `python train.py`) builds the stand-ins on first use (an English CLIP trained on English captions of
coloured shapes; an Italian BERT pretrained on Italian text only), cached in ~/.cache/clip_jax, then
trains projections on the frozen towers (phase 1) and everything (phase 2) on Italian captions, and
reports zero-shot and retrieval after each phase. The settings live in clip_jax.demo.demo_config
(the notebooks use them too).
"""

from clip_jax.demo import demo_config


def get_config():
    return demo_config()
