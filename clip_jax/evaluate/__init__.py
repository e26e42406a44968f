"""Evaluation: retrieval metrics (and, later, zero-shot classification and embedding maps)."""

from clip_jax.evaluate.retrieval import retrieval_metrics

__all__ = ["retrieval_metrics"]
