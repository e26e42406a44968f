"""What a resumed run may change: its config against the one its workdir was trained with.

Before a run writes anything into a workdir that already holds checkpoints, :func:`check_resume` compares the
new config with ``<workdir>/config.json``, key by key, under :data:`RESUME_RULES`. A change that the
checkpoint cannot be restored under (the towers' shapes, which parameters a phase trains, the optimizer's
structure) is refused; a change that restores but alters what the rest of the run computes (learning rates,
steps, evaluation cadence...) needs ``train.allow_config_change`` and is then recorded in the workdir's
``config_history.jsonl``; operational settings (decoding threads, logging, the mesh) may change freely.
"""

from __future__ import annotations

import fnmatch
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from clip_jax import workdir as workdirs
from clip_jax.checkpoint import Checkpointer
from clip_jax.config import base_config, phase
from clip_jax.data.memory import DataPositionError
from clip_jax.weights.readers import CheckpointError

#: A checkpoint written under the old value cannot be restored under the new one.
BREAKING = "breaking"
#: Restores, but changes what the rest of the run computes: needs ``train.allow_config_change``.
ALLOWED = "allowed"
#: Changes nothing the run computes (or only how): always accepted.
FREE = "free"
#: Like ``ALLOWED``, but ``BREAKING`` when the value switches between zero and non-zero (a stage of the
#: optimizer chain, with its state, appears or disappears).
SWITCH = "breaking when switched on or off"

#: (key pattern, kind, why), first match wins. Keys are dotted config keys (``phases.<name>.<key>`` for the phases
#: the run uses, ``model.vision.<key>`` for a dict tower).
RESUME_RULES: tuple[tuple[str, str, str], ...] = (
    ("train.allow_config_change", FREE, "this switch itself"),
    ("model.remat", FREE, "recomputes the same values"),
    ("loss.exchange", FREE, "the same loss and gradients through other collectives"),
    ("model.dropout", ALLOWED, "changes the training forward pass"),
    ("model.*", BREAKING, "the towers, projections and their dtypes are the checkpoint's parameters"),
    ("loss.kind", BREAKING, "the sigmoid loss has a learned bias the softmax loss lacks"),
    ("train.objective", BREAKING, "contrastive and distillation runs hold different states"),
    ("train.phases", BREAKING, "the checkpoint records its phase by position in train.phases"),
    ("train.param_groups", BREAKING, "the optimizer keeps its state per parameter group"),
    ("train.optimizer", BREAKING, "each optimizer keeps a state of its own shape"),
    ("phases.*.trainable", BREAKING, "the checkpoint holds the trained and frozen parameters apart"),
    ("train.agc_clip", SWITCH, "the clipping stage of the optimizer"),
    ("train.grad_clip_norm", SWITCH, "the clipping stage of the optimizer"),
    ("train.weight_decay", SWITCH, "adabelief's weight-decay stage"),
    ("phases.*.weight_decay*", SWITCH, "the weight-decay stage of the group's optimizer"),
    ("train.weight_decay_towards", BREAKING, "L2-SP keeps the start weights in the optimizer state"),
    ("train.layer_decay", BREAKING, "the layer-wise learning-rate stage of the optimizer"),
    ("mesh.*", FREE, "checkpoints restore onto any mesh"),
    ("data.workers", FREE, "decoding threads"),
    ("data.worker_processes", FREE, "decoding processes"),
    ("data.cache_dir", FREE, "where downloads are cached"),
    ("train.micro_batch_size", FREE, "exact gradient caching gives the same gradient"),
    ("train.log_every", FREE, "logging"),
    ("train.keep_checkpoints", FREE, "how many checkpoints are kept"),
    ("train.async_checkpoints", FREE, "how checkpoints are written"),
    ("train.wandb_project", FREE, "logging"),
    ("train.eval_batch_size", FREE, "validation batching"),
    ("train.evals*", FREE, "what is evaluated, not what is trained"),
    ("*", ALLOWED, "changes what the rest of the run computes"),
)


class ConfigMismatch(ValueError):
    """A resumed run's config differs from its workdir's in a way it may not."""


def _rule(key: str) -> tuple[str, str]:
    for pattern, kind, why in RESUME_RULES:
        if fnmatch.fnmatchcase(key, pattern):
            return kind, why
    raise AssertionError("RESUME_RULES ends with '*'")


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            _flatten(child, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def _plain(config: ConfigDict | dict) -> dict[str, Any]:
    """Flat ``{dotted key: JSON value}`` of a config (tuples as lists, as ``config.json`` holds them), with only
    the phases that ``train.phases`` names."""
    data = config.to_dict() if isinstance(config, ConfigDict) else config
    data = json.loads(json.dumps(data, default=list))
    used = set(data.get("train", {}).get("phases", []))
    data["phases"] = {k: v for k, v in data.get("phases", {}).items() if k in used}
    out: dict[str, Any] = {}
    _flatten(data, "", out)
    return out


def config_changes(old: dict | ConfigDict, new: ConfigDict) -> list[tuple[str, Any, Any, str, str]]:
    """``(key, old value, new value, kind, why)`` for every key whose value differs. A key the old config lacks
    (added to clip_jax since) counts as its default."""
    before, after = _plain(old), _plain(new)
    defaults = _plain(base_config())
    phase_defaults = _plain(phase(1, "", {}))
    missing = object()

    def default(key: str) -> Any:
        parts = key.split(".")
        if parts[0] == "phases" and len(parts) == 3:
            return phase_defaults.get(parts[2], missing)
        return defaults.get(key, missing)

    empty = lambda v: isinstance(v, dict) and not v
    changes = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, default(key)), after.get(key, missing)
        if a == b or (empty(a) and b is missing) or (a is missing and empty(b)):
            continue  # an empty dict (a phase's weight_decay) on one side, its filled keys on the other
        kind, why = _rule(key)
        if kind == SWITCH:
            kind = BREAKING if bool(a) != bool(b) else ALLOWED
        show = lambda v: "(absent)" if v is missing else v
        changes.append((key, show(a), show(b), kind, why))
    return changes


def check_resume(config: ConfigDict, workdir: str) -> list[tuple[str, Any, Any, str, str]]:
    """The changes of ``config`` from the config of the run in ``workdir`` (none for a fresh workdir); raise
    :class:`ConfigMismatch`, one line naming the keys with old → new values and the ways out, for a change that
    cannot be restored, or one that needs ``train.allow_config_change`` when it is off. Writes nothing."""
    path = workdirs.join(workdir, "config.json")
    if not workdirs.is_training_workdir(workdir) or not workdirs.exists(path):
        return []
    try:
        old = json.loads(workdirs.read_text(path))
    except (OSError, ValueError) as error:
        raise ConfigMismatch(
            f"{path} cannot be read ({error}), so this run cannot be checked against the checkpoints in "
            f"{workdir} — use another --workdir"
        ) from None
    changes = config_changes(old, config)
    listed = lambda kinds: "; ".join(f"{k}: {a!r} → {b!r}" for k, a, b, kind, _ in changes if kind in kinds)
    if any(kind == BREAKING for *_, kind, _ in changes):
        whys = sorted({why for *_, kind, why in changes if kind == BREAKING})
        raise ConfigMismatch(
            f"cannot resume {workdir} with this config: {listed({BREAKING})} ({'; '.join(whys)}) — train in another "
            f"--workdir (model.init_from={workdir} starts from this run's model), or drop these overrides to resume; "
            "the workdir was not changed"
        )
    if any(kind == ALLOWED for *_, kind, _ in changes) and not config.train.allow_config_change:
        raise ConfigMismatch(
            f"this config changes the run in {workdir}: {listed({ALLOWED})} — add "
            "--config.train.allow_config_change=True to resume with the change (recorded in "
            f"{workdirs.join(workdir, 'config_history.jsonl')}), or train in another --workdir; the workdir was not "
            "changed"
        )
    return changes


def record_changes(workdir: str, step: int, changes: list[tuple[str, Any, Any, str, str]]) -> None:
    """Append one line ``{"time", "step", "changes": {key: [old, new]}}`` to ``<workdir>/config_history.jsonl``."""
    if not changes:
        return
    path = workdirs.join(workdir, "config_history.jsonl")
    before = workdirs.read_text(path) if workdirs.exists(path) else ""
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_at_step": step,
        "changes": {key: [a, b] for key, a, b, *_ in changes},
    }
    workdirs.write_text(path, before + json.dumps(entry, default=str) + "\n")


def resume_step(checkpointer: Checkpointer, workdir: str, requested: int | None) -> int | None:
    """The step to resume from: ``requested`` (which must have a checkpoint), else the latest, else None."""
    if requested is None:
        return checkpointer.latest_step()
    steps = checkpointer.all_steps()
    if requested not in steps:
        raise ValueError(
            f"--step {requested}: {workdir} has no checkpoint of that step"
            + (f" — choose one of {steps}" if steps else " (it has none) — leave --step out to start afresh")
        )
    return requested


def read_checkpoint(checkpointer: Checkpointer, workdir: str, step: int, read: Callable[[int], Any]) -> Any:
    """``read(step)``; a checkpoint that cannot be read becomes one :class:`CheckpointError` naming the cause
    and the other steps to resume from (nothing in the workdir has been written yet)."""
    try:
        return read(step)
    except Exception as error:  # orbax / tensorstore raise many types for a damaged checkpoint
        others = [s for s in checkpointer.all_steps() if s != step]
        cause = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        way_out = (
            f"resume from an earlier one with --step {max(others)} (this workdir has {others}; the later ones are "
            f"then moved to {workdirs.join(workdir, 'set_aside')})"
            if others
            else "train in another --workdir"
        )
        raise CheckpointError(
            f"checkpoint {step} in {checkpointer.directory} could not be read ({type(error).__name__}: {cause}) — if "
            f"it is incomplete or damaged, {way_out}; the workdir was not changed"
        ) from error


def set_aside_later(checkpointer: Checkpointer, workdir: str, step: int, log: Callable[[str], None]) -> None:
    """Move the checkpoints after ``step`` (a run resumed from an earlier one) to ``<workdir>/set_aside/``, so that
    the run's own later checkpoints take their steps and a later resume finds those."""
    later = [s for s in checkpointer.all_steps() if s > step]
    if not later:
        return
    if jax.process_index() == 0:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for s in later:
            target = workdirs.join(workdir, "set_aside", f"checkpoint-{s}-{stamp}")
            workdirs.move(workdirs.join(checkpointer.directory, str(s)), target)
            log(f"Moved checkpoint {s} to {target} (resuming from step {step}).")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("clip_jax set_aside_later")
    checkpointer.manager.reload()


def gather_states(state: dict) -> list[dict]:
    """Every process's ``state`` (a JSON-able data position), in process order. All processes call it together
    (two all-gathers when there are several)."""
    if jax.process_count() == 1:
        return [state]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(state).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(data)] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:size])) for row, size in zip(rows, sizes)]


def carried_state(
    states: list[dict], carry: Callable[[list[dict]], dict], what: str, step: int, workdir: str
) -> dict:
    """This process's data position from the ``states`` the processes saved at ``step`` (one each): its own when
    the process count is the same, else ``carry(states)``; a position that cannot carry over is one
    :class:`DataPositionError` naming ``what`` it is, why, and the ways out."""
    if len(states) == jax.process_count():
        return states[jax.process_index()]
    try:
        return carry(states)
    except DataPositionError as error:
        raise DataPositionError(
            f"cannot resume {workdir} at step {step} on {jax.process_count()} process(es): the position of {what} "
            f"was saved by {len(states)} and cannot carry over ({error}) — resume on {len(states)} process(es), "
            f"or from a checkpoint where it is not needed (--step), or train in another --workdir with "
            f"model.init_from={workdir}; the workdir was not changed"
        ) from None
