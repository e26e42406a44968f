"""Image–text retrieval metrics with several captions per image.

Recall@k (CLIP-style): a query is a hit if any correct item is among its top k. MRR@k
(CLIP-Italian's metric): the mean over queries of 1/rank of the first correct item, 0 beyond k.
Ties are broken pessimistically: an item scoring the same as the correct one counts as ranked above it.
An item is an image with all its captions: listings with one row per caption (open_clip's CSV) are
grouped by image when read (:func:`clip_jax.data.pipeline.load_eval_examples`), so a repeated image is one
candidate, not several.

Reported names are CLIP_benchmark's, everywhere (TensorBoard, ``metrics.jsonl``, ``summary.json``,
``eval.py --output``): ``text_retrieval_recall@k`` / ``text_retrieval_mrr@k`` rank the captions for each
image (image->text), ``image_retrieval_recall@k`` / ``image_retrieval_mrr@k`` the images for each caption
(text->image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _first_correct_rank(scores: np.ndarray, correct: np.ndarray) -> np.ndarray:
    """1-based rank of the best-scoring correct candidate for each query row (ties count against it)."""
    best_correct = np.where(correct, scores, -np.inf).max(axis=1, keepdims=True)
    return (np.where(correct, -np.inf, scores) >= best_correct).sum(axis=1) + 1


def benchmark_names(metrics: dict[str, float]) -> dict[str, float]:
    """:func:`retrieval_metrics`' ``i2t_R@k`` / ``t2i_MRR@k`` keys renamed as CLIP_benchmark names them
    (``text_retrieval_recall@k``, ``image_retrieval_mrr@k``): the names clip_jax reports everywhere."""
    renamed = {}
    for key, value in metrics.items():
        direction, metric = key.split("_", 1)
        name, k = metric.split("@")
        prefix = "image_retrieval" if direction == "t2i" else "text_retrieval"
        renamed[f"{prefix}_{'mrr' if name == 'MRR' else 'recall'}@{k}"] = value
    return renamed


def retrieval_metrics(
    image_embeds: np.ndarray,
    text_embeds: np.ndarray,
    text_image: Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Image->text and text->image Recall@k and MRR@k.

    ``text_image[j]`` is the index of the image that caption ``j`` describes.
    """
    text_image = np.asarray(text_image)
    if len(text_image) != len(text_embeds):
        raise ValueError(f"{len(text_embeds)} texts but {len(text_image)} text->image indices.")
    scores = np.asarray(image_embeds, np.float64) @ np.asarray(text_embeds, np.float64).T  # [images, texts]
    correct = text_image[None, :] == np.arange(len(image_embeds))[:, None]
    if not correct.any(axis=1).all():
        raise ValueError("Every image needs at least one caption for image->text retrieval.")
    ranks = {"i2t": _first_correct_rank(scores, correct), "t2i": _first_correct_rank(scores.T, correct.T)}
    out = {}
    for direction, rank in ranks.items():
        for k in ks:
            out[f"{direction}_R@{k}"] = float(np.mean(rank <= k))
            out[f"{direction}_MRR@{k}"] = float(np.mean(np.where(rank <= k, 1.0 / rank, 0.0)))
    return out
