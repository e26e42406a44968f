"""The distill_demo recipe; it lives in the package (clip_jax/configs/distill_demo.py) so that
`clip-jax train --config distill_demo` works after pip install. This file keeps `--config configs/distill_demo.py` working."""

from clip_jax.configs.distill_demo import get_config  # noqa: F401
