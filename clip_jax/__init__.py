from clip_jax.models import load_text_tower, load_vision_tower
