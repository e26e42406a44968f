"""``clip-jax eval``'s tasks, one module each: its command-line options, what it needs, and how it runs.

A task is an :class:`EvalTask` registered with :func:`register_task` from its own module in this package
(``zeroshot``, ``retrieval``, ``embedmap``); ``clip-jax eval --task NAME`` builds its options and checks
them from the task, and writes what it returns as a CLIP_benchmark record (:mod:`clip_jax.evaluate.run`).
Training runs the same tasks as validation (``train.evals``), with the same options
(:func:`task_arguments`). Adding a task is a module here and its name in :data:`BUILT_IN`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """An evaluation task.

    ``options``: ``(flag, argparse keyword arguments)`` it adds to ``clip-jax eval`` (two tasks may share
    a flag: it is added once); ``needs``: the flags it cannot run without; ``run(model, model_name, args,
    index)`` -> one result record (``index``: the model's position among ``--model``s).
    """

    name: str
    summary: str
    options: tuple[tuple[str, dict[str, Any]], ...]
    needs: tuple[str, ...]
    run: Callable[[Any, str, argparse.Namespace, int], dict[str, Any]]


#: The options every task takes (``clip-jax eval``'s own, besides ``--model``, ``--task`` and ``--output``).
COMMON_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--limit", {"type": int, "default": None, "help": "use at most this many images"}),
    ("--batch_size", {"type": int, "default": 64}),
    (
        "--logit_scale",
        {"type": float, "default": None, "help": "override every model's temperature scale"},
    ),
    (
        "--max_bad_fraction",
        {
            "type": float,
            "default": 0.1,
            "help": "refuse to report metrics if more of the images than this could not be used",
        },
    ),
)

TASKS: dict[str, EvalTask] = {}
#: The task modules of this package, imported by :func:`tasks`.
BUILT_IN = ("zeroshot", "retrieval", "embedmap")


def register_task(task: EvalTask) -> EvalTask:
    """Make ``task`` available as ``clip-jax eval --task NAME``."""
    TASKS[task.name] = task
    return task


def tasks() -> dict[str, EvalTask]:
    """Every registered task, the built-in ones imported."""
    for name in BUILT_IN:
        importlib.import_module(f"{__name__}.{name}")
    return TASKS


def add_options(parser: argparse.ArgumentParser, registered: dict[str, EvalTask]) -> None:
    """Add :data:`COMMON_OPTIONS` and every option of ``registered``'s tasks (a flag two tasks share, once)."""
    added: set[str] = set()
    for flag, kwargs in (*COMMON_OPTIONS, *(o for task in registered.values() for o in task.options)):
        if flag not in added:
            added.add(flag)
            parser.add_argument(flag, **kwargs)


def check_common(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` for a common option out of its range."""
    if not 0 <= args.max_bad_fraction <= 1:
        raise ValueError(f"max_bad_fraction must be between 0 and 1, not {args.max_bad_fraction}")
    if args.batch_size < 1 or (args.limit is not None and args.limit < 1):
        raise ValueError(f"batch_size ({args.batch_size}) and limit ({args.limit}) must be at least 1")


def task_arguments(entry: str, options: dict[str, Any]) -> tuple[EvalTask, argparse.Namespace]:
    """The task ``options["task"]`` names and the arguments it runs with: its options' and
    :data:`COMMON_OPTIONS`' defaults, updated by ``options`` (flag names without dashes), as ``clip-jax eval``
    would parse them. ``ValueError`` naming ``entry`` (where the options come from) for an unknown task, an
    option the task does not take, or one it needs and lacks."""
    registered = tasks()
    name = options.get("task")
    if name not in registered:
        raise ValueError(
            f"{entry}.task={name!r} is not an eval task — use one of {', '.join(map(repr, registered))}"
        )
    task = registered[name]
    parser = argparse.ArgumentParser(add_help=False)
    add_options(parser, {name: task})
    args = parser.parse_args([])
    unknown = sorted(k for k in options if k != "task" and k not in vars(args))
    if unknown:
        raise ValueError(
            f"{entry}.{unknown[0]}: task {name!r} has no option {unknown[0]!r} — its options are "
            f"{', '.join(sorted(vars(args)))}"
        )
    for key, value in options.items():
        if key != "task":
            setattr(args, key, value)
    try:
        check_common(args)
    except ValueError as error:
        raise ValueError(f"{entry}: {error}") from None
    missing = [n for n in task.needs if getattr(args, n) is None]
    if missing:
        raise ValueError(f"{entry}: task {name!r} needs {', '.join(missing)} — set {entry}.{missing[0]}=...")
    return task, args
