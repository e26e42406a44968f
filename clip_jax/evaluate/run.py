"""Result records of ``clip-jax eval``'s tasks (:mod:`clip_jax.evaluate.tasks`) in CLIP_benchmark's format:
written, merged, read back and tabulated.

A record is ``{"dataset", "model", "pretrained", "task", "metrics", "language"}`` as CLIP_benchmark writes
them: ``model`` names the architecture, ``pretrained`` the weights (the ``--model`` given to eval.py: a
workdir, a directory or a hub id), metric names are CLIP_benchmark's (``acc1``, ``acc5``,
``mean_per_class_recall``, ``text_retrieval_recall@5``, ...). ``clip_benchmark build`` reads them when
written one per file (:func:`write_results` with a directory).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any


def architecture_name(model) -> str:
    """A short name of a model's architecture, e.g. ``clip_vision_model-12L-768d-p32-224px+bert-12L-768d``
    (CLIP_benchmark's ``model`` field; the weights go in ``pretrained``)."""
    v, t = model.module.vision.config, model.module.text.config
    return (
        f"{v.to_hf()['model_type']}-{v.num_hidden_layers}L-{v.hidden_size}d-p{v.patch_size}-{v.image_size}px"
        f"+{t.to_hf()['model_type']}-{t.num_hidden_layers}L-{t.hidden_size}d"
    )


def result_record(
    model, model_name: str, dataset: str, task: str, language: str, metrics: dict[str, Any]
) -> dict[str, Any]:
    """One result in CLIP_benchmark's format (its key order)."""
    return {
        "dataset": dataset,
        "model": architecture_name(model),
        "pretrained": model_name,
        "task": task,
        "metrics": metrics,
        "language": language,
    }


def _is_directory_output(output: str) -> bool:
    return output.endswith(("/", os.sep)) or Path(output).is_dir()


def _record_key(record: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(record.get(k)) for k in ("dataset", "pretrained", "model", "language", "task"))


def check_output(output: str | os.PathLike) -> None:
    """Raise before any evaluation if ``output`` cannot take the results: a file that exists but is not eval's
    results (it would be overwritten), or a place that cannot be written."""
    output = str(output)
    target = Path(output).expanduser()
    if _is_directory_output(output):
        parent = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    else:
        if target.exists():
            try:
                read_results(target)
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"--output {output} exists and is not eval's results ({str(error).splitlines()[0]}) — "
                    "choose another file; results are added to an existing results file"
                ) from None
        parent = next((p for p in target.parents if p.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"--output {output} cannot be written ({parent} is not a writable directory)")


def write_results(results: list[dict[str, Any]], output: str | os.PathLike) -> list[Path]:
    """Write result records: into an existing directory (or a path ending in ``/``) one
    ``{dataset}_{pretrained}_{model}_{language}_{task}.json`` per record, as CLIP_benchmark does (what
    ``clip_benchmark build`` reads); otherwise as one JSON list in the file ``output``, merged with the records
    already there (a record of the same dataset, model, language and task is replaced). Each file is replaced
    atomically, and the merge happens under a lock, so evaluations writing to one file at once all land."""
    from clip_jax import workdir as workdirs

    output = str(output)
    if _is_directory_output(output):
        directory = Path(output)
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for r in results:
            name = "_".join(str(r[k]) for k in ("dataset", "pretrained", "model", "language", "task"))
            path = directory / (re.sub(r"[^\w.@+-]+", "-", name).strip("-")[:200] + ".json")
            workdirs.write_text(path, json.dumps(r, indent=2) + "\n")
            paths.append(path)
        return paths
    import fcntl

    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        new = {_record_key(r) for r in results}
        kept = [r for r in (read_results(path) if path.exists() else []) if _record_key(r) not in new]
        workdirs.write_text(path, json.dumps(kept + list(results), indent=2) + "\n")
    return [path]


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Result records written by :func:`write_results` (a JSON list, one record, or a directory of
    CLIP_benchmark result files, which may come from CLIP_benchmark itself)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"No .json result files in {path}.")
        return [json.loads(f.read_text()) for f in files]
    if not path.is_file():
        raise FileNotFoundError(f"No results file {path}: pass the --output of eval.py.")
    data = json.loads(path.read_text())
    records = data if isinstance(data, list) else [data]
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict) or "metrics" not in r]
    if bad:
        raise ValueError(f"{path} is not eval.py's --output: records {bad[:5]} have no 'metrics'.")
    return records


def format_table(results: list[dict[str, Any]]) -> str:
    """A plain-text comparison table: one row per (model, task, dataset), one column per metric."""
    metrics = sorted({m for r in results for m, v in r["metrics"].items() if isinstance(v, float)})
    header = ["model", "task", "dataset", *metrics]
    rows = [
        [r["pretrained"], r["task"], r["dataset"]]
        + [f"{r['metrics'][m]:.4f}" if m in r["metrics"] else "" for m in metrics]
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])
