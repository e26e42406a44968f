"""The offline demo recipe; it lives in the package (clip_jax/configs/demo.py) so that
`clip-jax train --config demo` works after pip install. This file keeps `--config configs/demo.py` working."""

from clip_jax.configs.demo import get_config  # noqa: F401
