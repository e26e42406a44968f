"""``clip-jax eval``'s tasks, one module each: its command-line options, what it needs, and how it runs.

A task is an :class:`EvalTask` registered with :func:`register_task` from its own module in this package
(``zeroshot``, ``retrieval``, ``embedmap``); ``clip-jax eval --task NAME`` builds its options and checks
them from the task, and writes what it returns as a CLIP_benchmark record (:mod:`clip_jax.evaluate.run`).
Adding a task is a module here and its name in :data:`BUILT_IN`.
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
