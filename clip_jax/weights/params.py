"""A model's parameters: flattened by path, and filled from a PyTorch-named state dict, with a full report of what did not fit."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_jax.weights.keymap import KeyMap, Path, path_to_str
from clip_jax.weights.readers import CheckpointError

logger = logging.getLogger(__name__)

#: ``adapt(path, array, target_shape)`` may return an array reshaped to fit (e.g. interpolated
#: position embeddings) or None to let the shape check fail.
Adapter = Callable[[Path, np.ndarray, tuple[int, ...]], "np.ndarray | None"]


def flat_params(module: nnx.Module) -> dict[Path, jax.Array]:
    """A module's parameters by path, e.g. ``('layers', 0, 'mlp', 'fc1', 'kernel')``."""
    return {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def _matches(patterns: Iterable[str], name: str) -> bool:
    return any(re.fullmatch(p, name) for p in patterns)


def load_params(
    build: Callable[[], nnx.Module],
    state_dict: Mapping[str, np.ndarray],
    key_map: KeyMap,
    *,
    prefix: str = "",
    ignore: Iterable[str] = (),
    allow_missing: Iterable[str] = (),
    adapt: Adapter | None = None,
    source: str = "checkpoint",
) -> nnx.Module:
    """Build the module returned by ``build`` with its parameters taken from ``state_dict``.

    Only keys that start with ``prefix`` are considered (the rest belong to other parts of
    the checkpoint). Keys matching a regex in ``ignore`` are skipped; parameters matching a
    regex in ``allow_missing`` keep their random initialisation if absent (with a warning).
    Anything else that is missing, unexpected or of the wrong shape raises
    :class:`CheckpointError` naming every offending key. Arrays are cast to the dtype the
    module declares for each parameter.
    """
    abstract = nnx.eval_shape(build)
    graphdef, abstract_state = nnx.split(abstract)
    targets = {path: var for path, var in nnx.to_flat_state(abstract_state)}
    loaded: dict[Path, np.ndarray] = {}
    unexpected, mismatched = [], []
    for name, array in state_dict.items():
        if not name.startswith(prefix):
            continue
        local = name[len(prefix) :]
        hit = key_map.to_ours(local)
        if hit is None or hit[0] not in targets:
            if not _matches(ignore, local):
                unexpected.append(name)
            continue
        path, transform = hit
        target_shape = tuple(targets[path].get_value().shape)
        array = transform.forward(np.asarray(array), target_shape)
        if array.shape != target_shape and adapt is not None:
            adapted = adapt(path, array, target_shape)
            array = array if adapted is None else adapted
        if array.shape != target_shape:
            mismatched.append((name, path, array.shape, target_shape))
            continue
        loaded[path] = array
    wrong_shape = {path for _, path, _, _ in mismatched}
    missing = [path for path in targets if path not in loaded and path not in wrong_shape]
    fatal_missing = [p for p in missing if not _matches(allow_missing, path_to_str(p))]
    problems = []
    if mismatched:
        problems.append(
            "shape mismatches (checkpoint -> model):\n"
            + "\n".join(
                f"  {name}: {src} does not fit {path_to_str(path)} {dst}"
                for name, path, src, dst in mismatched
            )
            + "\n  Likely cause: config.json does not describe these weights (hidden_size, num_attention_heads, "
            "intermediate_size, vocab_size, image_size/patch_size), or config and weights come from different "
            "models."
        )
    if fatal_missing:
        problems.append(
            "missing from the checkpoint: "
            + ", ".join(prefix + key_map.to_torch(p)[0] for p in fatal_missing)
        )
    if unexpected:
        problems.append(
            "unexpected keys (not used by the model): "
            + ", ".join(sorted(unexpected))
            + "\n  Pass ignore=[regex, ...] if they are expected (e.g. a task head)."
        )
    if problems:
        raise CheckpointError(f"Cannot load {source}:\n- " + "\n- ".join(problems))
    if missing:
        logger.warning(
            "Not in %s, randomly initialised: %s", source, ", ".join(path_to_str(p) for p in missing)
        )
        concrete_state = nnx.state(build())
        for path, var in nnx.to_flat_state(concrete_state):
            if path in targets and path not in loaded:
                loaded[path] = np.asarray(var.get_value())
    flat = [
        (path, var.replace(jnp.asarray(loaded[path], dtype=var.get_value().dtype)))
        for path, var in targets.items()
    ]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))
