"""Labelled image data sets for the zero-shot tasks: images, labels, class names and templates, checked
against each other."""

from __future__ import annotations

from typing import Any

from clip_jax.data.benchmarks import load_labelled
from clip_jax.prompts import load_resource


def language_of(spec: str | None) -> str:
    """The language code of a built-in ``LANG:NAME`` spec (``it:cifar10`` -> ``it``); '' for a file."""
    return spec.partition(":")[0] if spec and ":" in spec and len(spec.partition(":")[0]) == 2 else ""


def check_classnames(
    names: list[str], dataset_classes: list[str], labels, classnames: str, dataset: str
) -> None:
    """Raise ``ValueError`` unless the class names fit the data set: as many as its class folders/labels (when
    it names them), and more than its largest label."""
    if dataset_classes and len(dataset_classes) != len(names):
        show = lambda xs: ", ".join(xs[:8]) + (f", ... ({len(xs)} in all)" if len(xs) > 8 else "")
        raise ValueError(
            f"--classnames {classnames} has {len(names)} class names ({show(names)}) but {dataset} has "
            f"{len(dataset_classes)} classes ({show(list(dataset_classes))}) — pass the class names of "
            "this data set, in the order of its classes"
        )
    if len(labels) and int(max(labels)) >= len(names):
        raise ValueError(
            f"{dataset} has labels up to {int(max(labels))} but --classnames {classnames} has only "
            f"{len(names)} names — pass the class names of this data set"
        )


def labelled_data(
    dataset: str, classnames: str, templates: str, limit: int | None, max_bad_fraction: float | None
):
    """Images, labels, class names and templates of a zero-shot data set, checked against each other."""
    from clip_jax.data.pipeline import check_bad_fraction

    skipped: dict = {}
    images, labels, dataset_classes = load_labelled(dataset, limit=limit, skipped=skipped)
    check_bad_fraction(dataset, skipped, len(images), max_bad_fraction)
    if not images:
        raise ValueError(f"No usable image in {dataset} (skipped: {skipped}) — check the images and the path")
    names, prompts = load_resource(classnames, "classnames"), load_resource(templates, "templates")
    check_classnames(names, dataset_classes, labels, classnames, dataset)
    return images, labels, names, prompts, skipped


#: The options the zero-shot tasks share.
LABELLED_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--dataset", {"help": "imagefolder:PATH | hf:NAME?image=..&label=.. | tfds:NAME"}),
    ("--classnames", {"help": "it:cifar10, en:cifar100, ... or a JSON / text file"}),
    ("--templates", {"help": "it:cifar10, en:cifar10, ... or a JSON / text file (with {} for the name)"}),
)
