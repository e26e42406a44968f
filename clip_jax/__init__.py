"""clip_jax: teach CLIP a new language — pretrained vision and text towers, contrastive fine-tuning in JAX."""

from clip_jax.clip_model import CLIPModel
from clip_jax.loading import load_model
from clip_jax.models import load_text_tower, load_vision_tower

__version__ = "0.1.0"
__all__ = ["CLIPModel", "__version__", "load_model", "load_text_tower", "load_vision_tower"]
