"""``--task zeroshot``: zero-shot classification with prompt ensembles (CLIP_benchmark's
``zeroshot_classification``)."""

from __future__ import annotations

import argparse
from typing import Any

from clip_jax.evaluate.run import result_record
from clip_jax.evaluate.tasks import EvalTask, register_task
from clip_jax.evaluate.tasks.labelled import LABELLED_OPTIONS, labelled_data, language_of
from clip_jax.evaluate.zeroshot import ClassEmbeddingCache, zero_shot


def run_zeroshot(
    model,
    model_name: str,
    dataset: str,
    classnames: str,
    templates: str,
    *,
    cache: ClassEmbeddingCache,
    limit: int | None = None,
    batch_size: int = 64,
    max_bad_fraction: float | None = 0.1,
) -> dict[str, Any]:
    """Zero-shot metrics of one model; unusable images are skipped and counted (``skipped`` in the record)."""
    images, labels, names, prompts, skipped = labelled_data(
        dataset, classnames, templates, limit, max_bad_fraction
    )
    metrics = zero_shot(
        model, images, labels, names, prompts, cache=cache, model_id=model_name, batch_size=batch_size
    )
    return {
        **result_record(
            model, model_name, dataset, "zeroshot_classification", language_of(templates), metrics
        ),
        "images": len(images),
        "skipped": skipped,
    }


def _run(model: Any, model_name: str, args: argparse.Namespace, index: int) -> dict[str, Any]:
    # in-training validation keeps one cache for the run (``class_cache``): the reference's classes are
    # embedded once
    cache = getattr(args, "class_cache", None) or ClassEmbeddingCache(args.cache_dir)
    return run_zeroshot(
        model,
        model_name,
        args.dataset,
        args.classnames,
        args.templates,
        cache=cache,
        limit=args.limit,
        batch_size=args.batch_size,
        max_bad_fraction=args.max_bad_fraction,
    )


TASK = register_task(
    EvalTask(
        "zeroshot",
        "zero-shot classification of labelled images (acc1, acc5, mean per-class recall)",
        (
            *LABELLED_OPTIONS,
            (
                "--cache_dir",
                {"default": "~/.cache/clip_jax/class_embeddings", "help": "class-embedding cache"},
            ),
            (
                "--reference",
                {
                    "default": None,
                    "help": "forgetting: evaluate this original model, and it with each --model's vision "
                    "tower (classnames and templates in its language)",
                },
            ),
        ),
        ("dataset", "classnames", "templates"),
        _run,
    )
)
