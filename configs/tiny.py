"""The tiny recipe; it lives in the package (clip_jax/configs/tiny.py) so that
`clip-jax train --config tiny` works after pip install. This file keeps `--config configs/tiny.py` working."""

from clip_jax.configs.tiny import get_config  # noqa: F401
