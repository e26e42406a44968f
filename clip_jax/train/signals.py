"""SIGTERM and Ctrl-C (SIGINT) during training: the first asks the run to checkpoint and stop at the end of the
current step; a second Ctrl-C ends the process at once (exit status 130), without saving.

Python runs signal handlers in the main thread only between bytecodes, so during a long compile (XLA holds the
main thread) a handler would wait for the compile to end. The signals are therefore also watched from a
thread, through :func:`signal.set_wakeup_fd`: the interpreter's C-level handler writes each signal's number to
a pipe at once, and the watcher acts on it while the main thread is still compiling. No exception is ever
raised into the main thread (a ``KeyboardInterrupt`` unwinding through JAX at a phase switch once ended in a
segfault).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable


class StopSignals:
    """While entered, SIGTERM and SIGINT call ``request_stop(name)`` (once); a second SIGINT exits the process
    with status 130 at once. Outside the main thread it does nothing (signals cannot be handled there)."""

    def __init__(self, request_stop: Callable[[str], None]):
        self.request_stop = request_stop
        self.received: str | None = None
        self._lock = threading.Lock()
        self._previous: dict[int, object] = {}
        self._pipe: tuple[int, int] | None = None
        self._previous_fd = -1

    def _signal(self, signum: int) -> None:
        with self._lock:
            name = signal.Signals(signum).name
            if self.received is None:
                self.received = name
                if signum == signal.SIGINT:
                    print(
                        "\nCtrl-C: saving a checkpoint at the end of this step, then stopping "
                        "(press Ctrl-C again to stop at once, without saving).",
                        file=sys.stderr,
                        flush=True,
                    )
                self.request_stop(name)
            elif signum == signal.SIGINT:
                print("\nCtrl-C again: stopping at once, without saving.", file=sys.stderr, flush=True)
                os._exit(130)

    def _python_handler(self, signum, frame) -> None:
        if self._pipe is None:  # no watcher thread: act here (later, if the main thread was busy)
            self._signal(signum)

    def _watch(self, read_fd: int) -> None:
        try:
            while data := os.read(read_fd, 64):
                for signum in data:
                    if signum in (signal.SIGINT, signal.SIGTERM):
                        self._signal(signum)
        except OSError:
            pass
        finally:
            os.close(read_fd)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._python_handler)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        try:
            self._previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        except (ValueError, OSError):
            os.close(read_fd)
            os.close(write_fd)
            return self
        self._pipe = (read_fd, write_fd)
        threading.Thread(target=self._watch, args=(read_fd,), name="clip_jax-signals", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        if self._pipe is not None:
            signal.set_wakeup_fd(self._previous_fd)
            os.close(self._pipe[1])  # the watcher reads end-of-file and returns
            self._pipe = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
