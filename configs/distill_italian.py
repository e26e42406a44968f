"""The distill_italian recipe; it lives in the package (clip_jax/configs/distill_italian.py) so that
`clip-jax train --config distill_italian` works after pip install. This file keeps `--config configs/distill_italian.py` working."""

from clip_jax.configs.distill_italian import get_config  # noqa: F401
