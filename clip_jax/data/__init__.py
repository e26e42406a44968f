"""Input data: where examples come from (:mod:`~clip_jax.data.sources`, one registry of source kinds and one
spec parser), decoding, augmentation and batching (:mod:`~clip_jax.data.pipeline`, :mod:`~clip_jax.data.memory`),
CLIP's image preprocessing (:mod:`~clip_jax.data.preprocess`), parallel sentences for distillation
(:mod:`~clip_jax.data.parallel`), the offline demo's synthetic scenes (:mod:`~clip_jax.data.shapes`), and what
a training config asks for (:mod:`~clip_jax.data.build`)."""

from clip_jax.data.build import EvalSet, build_training_data, cache_examples
from clip_jax.data.pipeline import ExampleTransform
from clip_jax.data.preprocess import ImageProcessorConfig, load_image, preprocess_images
from clip_jax.data.sources import SOURCES, SourceKind, parse_source, register_source, source_label, split_spec

__all__ = [
    "SOURCES",
    "EvalSet",
    "ExampleTransform",
    "ImageProcessorConfig",
    "SourceKind",
    "build_training_data",
    "cache_examples",
    "load_image",
    "parse_source",
    "preprocess_images",
    "register_source",
    "source_label",
    "split_spec",
]
