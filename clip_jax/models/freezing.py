"""Freezing by splitting the state: a phase's trainable parameters are those whose dotted path matches its
regex; the rest are frozen (constants in the step: no gradients, no optimizer state)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flax import nnx


def trainable_filter(pattern: str) -> Callable[[tuple, Any], bool]:
    """An nnx filter selecting parameters whose dotted path fully matches ``pattern``."""
    regex = re.compile(pattern)
    return lambda path, _: regex.fullmatch(".".join(str(p) for p in path)) is not None


def split_trainable(module: nnx.Module, pattern: str) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, trainable, frozen)`` for a phase whose trainable parameters match ``pattern``."""
    return nnx.split(module, trainable_filter(pattern), ...)
