"""Input data: image preprocessing (and, later, readers and the input pipeline)."""

from clip_jax.data.preprocess import ImageProcessorConfig, load_image, preprocess_images

__all__ = ["ImageProcessorConfig", "load_image", "preprocess_images"]
