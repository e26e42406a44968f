"""Run checkpoints with orbax: the train state (sharded arrays, written collectively by all
processes) plus JSON metadata (phase, data-iterator position). Async, keep-last-K, resumable."""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints``; local paths are made absolute (orbax needs that), ``gs://`` kept as is."""
    if "://" in workdir:
        return workdir.rstrip("/") + "/checkpoints"
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


class Checkpointer:
    """Save and restore ``(TrainState, metadata)`` pairs by step."""

    def __init__(self, workdir: str, *, keep: int = 3, use_async: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=use_async)
        self.manager = ocp.CheckpointManager(checkpoint_dir(workdir), options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps that have a checkpoint, in increasing order."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save ``step`` (asynchronously if configured); a step already saved is left as it is."""
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore_meta(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """The state at ``step``, placed as ``abstract_state``'s shardings say."""
        return self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
