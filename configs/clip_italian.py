"""CLIP-Italian's recipe; it lives in the package (clip_jax/configs/clip_italian.py) so that
`clip-jax train --config clip_italian` works after pip install. This file keeps `--config configs/clip_italian.py` working."""

from clip_jax.configs.clip_italian import get_config  # noqa: F401
