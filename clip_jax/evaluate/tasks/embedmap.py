"""``--task embedmap``: 2-D maps of image and class embeddings (UMAP or PCA; per vision layer with
``--layers``), written as PNG files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from clip_jax.evaluate.run import result_record
from clip_jax.evaluate.tasks import EvalTask, register_task
from clip_jax.evaluate.tasks.labelled import LABELLED_OPTIONS, labelled_data, language_of
from clip_jax.prompts import class_embeddings, fill


def run_embedmap(
    model,
    model_name: str,
    dataset: str,
    classnames: str,
    templates: str,
    out: str,
    *,
    layers: bool = False,
    limit: int | None = None,
    method: str = "umap",
    batch_size: int = 64,
    max_bad_fraction: float | None = 0.1,
) -> dict[str, Any]:
    from clip_jax.evaluate.embedmap import write_embedding_map

    images, labels, names, prompts, _ = labelled_data(dataset, classnames, templates, limit, max_bad_fraction)
    image_embeds = model.encode_image(images, batch_size=batch_size)
    single = model.encode_text([fill(prompts[0], c) for c in names])
    mean = class_embeddings(model, names, prompts)
    features = list(model.encode_image_layers(images, batch_size=batch_size)) if layers else []
    files = write_embedding_map(
        image_embeds,
        labels,
        names,
        single,
        mean,
        out,
        layer_features=features,
        method=method,
        title=f"{Path(model_name).name}: {Path(dataset.partition(':')[2] or dataset).name}",
    )
    return result_record(
        model,
        model_name,
        dataset,
        "embedmap",
        language_of(templates),
        {"files": [str(f) for f in files], "images": len(images)},
    )


def _run(model: Any, model_name: str, args: argparse.Namespace, index: int) -> dict[str, Any]:
    out = Path(args.map_out)
    if len(args.model) > 1:  # one map per model
        out = out.with_name(f"{out.stem}-{index}{out.suffix}")
    return run_embedmap(
        model,
        model_name,
        args.dataset,
        args.classnames,
        args.templates,
        str(out),
        layers=args.layers,
        limit=args.limit,
        method=args.projection,
        batch_size=args.batch_size,
        max_bad_fraction=args.max_bad_fraction,
    )


TASK = register_task(
    EvalTask(
        "embedmap",
        "embedding maps of images and class prompts (PNG)",
        (
            *LABELLED_OPTIONS,
            ("--layers", {"action": "store_true", "help": "also one map per vision layer"}),
            ("--projection", {"default": "umap", "choices": ["umap", "pca"]}),
            ("--map_out", {"default": "embedding_map.png"}),
        ),
        ("dataset", "classnames", "templates"),
        _run,
    )
)
