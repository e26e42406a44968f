"""Tower architectures (CLIP ViT, BERT family, CLIP text) and their registry."""

from clip_jax.models.layers import TowerOutput
from clip_jax.models.registry import (
    ARCHITECTURES,
    POOLINGS,
    Architecture,
    build_tower,
    load_text_tower,
    load_tower,
    load_vision_tower,
)

__all__ = [
    "ARCHITECTURES",
    "POOLINGS",
    "Architecture",
    "TowerOutput",
    "build_tower",
    "load_text_tower",
    "load_tower",
    "load_vision_tower",
]
