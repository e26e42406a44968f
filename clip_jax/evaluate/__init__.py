"""Evaluation (eval.py, ``clip-jax eval``): zero-shot classification with prompt ensembles, image–text retrieval
and embedding maps, on image folders, listings, Hugging Face / TFDS data sets and the standard benchmarks
(CLIP_benchmark's result format)."""

from clip_jax.evaluate.retrieval import retrieval_metrics

__all__ = ["retrieval_metrics"]
