"""Run checkpoints with orbax: the train state (sharded arrays, written collectively by all
processes) plus JSON metadata (phase, data-iterator position). Async, keep-last-K, resumable."""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
    """``<workdir>/checkpoints``; local paths are made absolute (orbax needs that), ``gs://`` kept as is."""
    if "://" in workdir:
        return workdir.rstrip("/") + "/checkpoints"
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, permissions, quota...); earlier checkpoints are intact."""


class Checkpointer:
    """Save and restore ``(TrainState, metadata)`` pairs by step.

    A save that fails (disk full, a write error) raises :class:`CheckpointWriteError` naming the step, the
    cause and the last complete checkpoint: at the save itself when synchronous, and for an asynchronous
    save at the first :meth:`check` (every training step), :meth:`save`, :meth:`wait` or :meth:`close` after
    the background write failed. Orbax writes into a temporary directory and renames it when complete, so a
    failed save never touches the checkpoints before it."""

    def __init__(self, workdir: str, *, keep: int = 3, use_async: bool = True):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=use_async
        )
        self.directory = checkpoint_dir(workdir)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self._pending: int | None = None  # the step of a save not yet known to be complete
        self._failed = False
        # Orbax logs (and swallows) some background write errors itself: keep their text for our message.
        self._orbax_errors = _OrbaxErrors()
        logging.getLogger("absl").addHandler(self._orbax_errors)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps that have a checkpoint, in increasing order."""
        return sorted(self.manager.all_steps())

    def _write_error(self, error: BaseException, step: int | None) -> CheckpointWriteError:
        self._failed = True
        try:
            self.manager.reload()
            complete = [s for s in self.manager.all_steps() if s != step]
        except Exception:
            complete = []
        cause = _root_cause(error, self._orbax_errors.messages)
        last = f"step {max(complete)}" if complete else "none yet"
        return CheckpointWriteError(
            f"could not write the checkpoint of step {step} in {self.directory}: {cause} — free disk space (or fix "
            f"the permissions / quota) and run again: training resumes from the last complete checkpoint ({last})"
        )

    def _guarded(self, fn, step: int | None):
        if self._failed:
            return None
        try:
            return fn()
        except Exception as error:  # orbax and tensorstore raise ValueError, OSError, RuntimeError...
            raise self._write_error(error, step) from error

    def check(self) -> None:
        """Raise :class:`CheckpointWriteError` if an asynchronous save has failed (cheap: no waiting)."""
        if self._pending is None or self._failed:
            return
        if self.manager.is_saving_in_progress():  # errors are only known once the background write ends
            return
        self._guarded(self.manager.check_for_errors, self._pending)
        self.manager.reload()  # finished: the step must now be on disk (orbax may have swallowed its error)
        if self._pending not in self.manager.all_steps():
            raise self._write_error(RuntimeError("the write did not complete"), self._pending)
        self._pending = None

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Save ``step`` (asynchronously if configured); a step already saved is left as it is."""
        self.check()
        if step in self.manager.all_steps():
            return
        self._guarded(
            lambda: self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                force=True,
            ),
            self._pending or step,
        )
        self._pending = step

    def restore_meta(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_state(self, step: int, abstract_state: Any) -> Any:
        """The state at ``step``, placed as ``abstract_state``'s shardings say."""
        return self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        )["state"]

    def restore_subtrees(self, step: int, abstract: dict[str, Any]) -> dict[str, Any]:
        """Only the named top-level fields of the state at ``step`` (e.g. ``params`` and ``frozen``, not the
        optimizer state), placed as ``abstract``'s shardings say: orbax reads nothing else from disk."""
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), abstract)
        return self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=abstract, restore_args=restore_args, partial_restore=True)
            ),
        )["state"]

    def wait(self) -> None:
        """Wait for pending writes; raise :class:`CheckpointWriteError` if one failed."""
        self._guarded(self.manager.wait_until_finished, self._pending)
        self.check()

    def close(self) -> None:
        """Finish pending writes (raising :class:`CheckpointWriteError` if one failed) and release orbax."""
        try:
            self.wait()
        finally:
            logging.getLogger("absl").removeHandler(self._orbax_errors)
            if not self._failed:
                self.manager.close()


class _OrbaxErrors(logging.Handler):
    """Collects the messages of orbax's ERROR log records."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "orbax" in record.pathname:
            self.messages.append(record.getMessage())
            if record.exc_info and record.exc_info[1] is not None:
                self.messages.extend(_chain(record.exc_info[1]))


def _chain(error: BaseException) -> list[str]:
    """The messages of ``error`` and of the exceptions it was raised from, outermost first."""
    out, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        out.append(f"{error}")
        error = error.__cause__ or error.__context__
    return out


#: Words of an operating-system cause (disk full, permissions...), as orbax/tensorstore word them.
_OS_CAUSES = (
    "os_error_code",
    "Errno",
    "No space",
    "space left",
    "Permission denied",
    "File too large",
    "Quota",
    "Read-only",
)


def _root_cause(error: BaseException, logged: list[str]) -> str:
    """One line saying why a write failed: the operating-system error if one is in the exception chain or
    in orbax's logged errors, else the error's own first line."""
    for text in _chain(error) + logged[::-1]:
        for line in text.splitlines():
            if any(word in line for word in _OS_CAUSES):
                return line.strip()
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
