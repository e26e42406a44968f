"""``--task retrieval``: image-text retrieval recall@1/5/10 with each image grouped with all its captions
(CLIP_benchmark's ``zeroshot_retrieval``)."""

from __future__ import annotations

import argparse
from typing import Any

from clip_jax.data.benchmarks import CAPTION_BENCHMARKS, spec_options
from clip_jax.evaluate.retrieval import benchmark_names, retrieval_metrics
from clip_jax.evaluate.run import result_record
from clip_jax.evaluate.tasks import EvalTask, register_task


def run_retrieval(
    model,
    model_name: str,
    data: str,
    *,
    limit: int | None = None,
    batch_size: int = 64,
    max_bad_fraction: float | None = 0.1,
) -> dict[str, Any]:
    from clip_jax.data.pipeline import load_eval_examples

    pixels, captions, skipped = load_eval_examples(
        data, model.image_processor, limit=limit, max_bad_fraction=max_bad_fraction
    )
    texts = [c for caps in captions for c in caps]
    text_image = [i for i, caps in enumerate(captions) for _ in caps]
    metrics = retrieval_metrics(
        model.encode_image(pixels, batch_size=batch_size),
        model.encode_text(texts, batch_size=4 * batch_size),
        text_image,
        ks=(1, 5, 10),
    )
    renamed = benchmark_names(metrics)
    language = (
        spec_options(data)[1].get("language", "") if data.partition(":")[0] in CAPTION_BENCHMARKS else ""
    )
    return result_record(
        model,
        model_name,
        data,
        "zeroshot_retrieval",
        language,
        {**renamed, "images": len(pixels), "texts": len(texts), "skipped": int(sum(skipped.values()))},
    )


def _run(model: Any, model_name: str, args: argparse.Namespace, index: int) -> dict[str, Any]:
    return run_retrieval(
        model,
        model_name,
        args.data,
        limit=args.limit,
        batch_size=args.batch_size,
        max_bad_fraction=args.max_bad_fraction,
    )


TASK = register_task(
    EvalTask(
        "retrieval",
        "image-text retrieval (recall@1/5/10 both ways)",
        (("--data", {"help": "jsonl:/csv:/wds:/hf:/xm3600:/xtd10:/multi30k: source with captions"}),),
        ("data",),
        _run,
    )
)
