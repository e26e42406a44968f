"""The open_clip XLM-R ViT-B/32 -> Italian recipe; it lives in the package (clip_jax/configs/openclip_xlmr_italian.py)
so that `clip-jax train --config openclip_xlmr_italian` works after pip install. This file keeps
`--config configs/openclip_xlmr_italian.py` working."""

from clip_jax.configs.openclip_xlmr_italian import get_config  # noqa: F401
