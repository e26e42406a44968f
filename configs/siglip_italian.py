"""The SigLIP 2 + Italian BERT recipe; it lives in the package (clip_jax/configs/siglip_italian.py) so that
`clip-jax train --config siglip_italian` works after pip install. This file keeps `--config configs/siglip_italian.py` working."""

from clip_jax.configs.siglip_italian import get_config  # noqa: F401
