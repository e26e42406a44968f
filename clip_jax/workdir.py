"""Training workdirs on local disk or on any fsspec filesystem (``gs://`` buckets on TPU VMs).

Checkpoints go through orbax (which reaches ``gs://`` itself); the small files next to them
(``config.json``, ``model/``, ``metrics.jsonl``, ``summary.json``, the feature cache) go through
these helpers, so a run, its resumption, export and evaluation work the same on both.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def is_remote(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URL (``gs://``, ``s3://``, ``memory://``...) rather than a local path."""
    return "://" in str(path)


def join(workdir: str | os.PathLike, *parts: str) -> str:
    """``workdir/part/...`` for local paths and URLs alike."""
    if is_remote(workdir):
        return "/".join([str(workdir).rstrip("/"), *parts])
    return os.path.join(os.path.expanduser(str(workdir)), *parts)


def _fs(path: str):
    import fsspec

    from clip_jax.extras import require_protocol

    require_protocol(path)
    fs, _, (resolved,) = fsspec.get_fs_token_paths(path)
    return fs, resolved


def exists(path: str | os.PathLike) -> bool:
    if not is_remote(path):
        return os.path.exists(os.path.expanduser(str(path)))
    fs, resolved = _fs(str(path))
    return fs.exists(resolved)


def read_text(path: str | os.PathLike) -> str:
    if not is_remote(path):
        return Path(path).expanduser().read_text()
    fs, resolved = _fs(str(path))
    return fs.cat_file(resolved).decode("utf-8")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path``, creating local parent directories."""
    if not is_remote(path):
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return
    fs, resolved = _fs(str(path))
    fs.pipe_file(resolved, text.encode("utf-8"))


def create_text(path: str, text: str) -> None:
    """Write ``text`` to a remote ``path`` only if no object is there (``FileExistsError`` otherwise), as one
    request: on GCS a precondition (``ifGenerationMatch=0``) makes this atomic between concurrent writers."""
    fs, resolved = _fs(str(path))
    fs.pipe_file(resolved, text.encode("utf-8"), mode="create")


def upload_file(local: str | os.PathLike, remote: str) -> None:
    fs, resolved = _fs(remote)
    fs.put_file(str(local), resolved)


def upload_dir(local: str | os.PathLike, remote: str) -> None:
    """Copy every file under the local directory ``local`` to ``remote`` (same relative paths)."""
    for file in sorted(Path(local).rglob("*")):
        if file.is_file():
            upload_file(file, join(remote, *file.relative_to(local).parts))


def is_training_workdir(spec: str | os.PathLike) -> bool:
    """Whether ``spec`` is a clip_jax training workdir (it holds ``checkpoints/``)."""
    if not is_remote(spec):
        return (Path(spec).expanduser() / "checkpoints").is_dir()
    from clip_jax.extras import MissingExtra

    try:
        return exists(join(spec, "checkpoints"))
    except MissingExtra:  # gs://... without gcsfs: say which extra, not "no such checkpoint directory"
        raise
    except (ImportError, ValueError):  # no fsspec implementation for this protocol: not ours to open
        return False


@contextlib.contextmanager
def local_copy(path: str | os.PathLike) -> Iterator[Path]:
    """A local directory with the contents of the directory ``path`` (downloaded if remote)."""
    if not is_remote(path):
        yield Path(path).expanduser()
        return
    fs, resolved = _fs(str(path))
    with tempfile.TemporaryDirectory(prefix="clip_jax-") as directory:
        for remote_file in fs.find(resolved):
            relative = remote_file[len(resolved) :].lstrip("/")
            target = Path(directory, *relative.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote_file, str(target))
        yield Path(directory)


class WorkdirInUse(RuntimeError):
    """Another run holds the workdir's lock."""


def check_writable(workdir: str | os.PathLike) -> None:
    """Raise ``ValueError`` with the fix if a local ``workdir`` is a file or cannot be written."""
    if is_remote(workdir):
        return
    path = Path(workdir).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ValueError(
            f"workdir {workdir}: {existing} is a file, not a directory — choose another --workdir"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise ValueError(
            f"workdir {workdir} cannot be written ({error.strerror or error}) — choose a directory "
            "you can write to with --workdir"
        ) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    """``<workdir>/lock``: one training run per workdir.

    The file holds the holder's host, pid and start time. A lock left by a process that no longer
    exists on this host is stale and taken over; a lock held by a live process, or by another host
    (which cannot be checked from here), makes :meth:`acquire` raise :class:`WorkdirInUse` saying who
    holds it. Local workdirs are locked atomically (``O_EXCL``), and ``gs://`` ones too (a create-only write,
    ``ifGenerationMatch=0``). In a multi-process run only process 0 takes the lock.
    """

    def __init__(self, workdir: str | os.PathLike):
        self.workdir, self.path = str(workdir), join(workdir, "lock")
        self.held = False

    def _holder(self) -> dict:
        import json

        try:
            return json.loads(read_text(self.path))
        except (OSError, ValueError):
            return {}

    def _record(self) -> str:
        import json
        import socket
        import time

        return (
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            )
            + "\n"
        )

    def _refuse(self, holder: dict) -> None:
        raise WorkdirInUse(
            f"workdir {self.workdir} is in use by another run (pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')}, since {holder.get('since', '?')}) — wait for it to finish, or use another "
            f"--workdir; if that run is gone, delete {self.path}"
        )

    def acquire(self) -> WorkdirLock:
        import socket

        if is_remote(self.workdir):
            if exists(self.path):  # (for stores without write preconditions)
                self._refuse(self._holder())
            try:
                create_text(self.path, self._record())  # atomic on GCS: of two racing runs, one gets it
            except FileExistsError:
                self._refuse(self._holder())
            self.held = True
            return self
        os.makedirs(os.path.expanduser(self.workdir), exist_ok=True)
        path = os.path.expanduser(self.path)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                same_host = holder.get("host") == socket.gethostname()
                pid = holder.get("pid")
                # Stale (its process is gone), or left by this very process (a Trainer that was never run).
                if same_host and isinstance(pid, int) and (pid == os.getpid() or not _pid_alive(pid)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    continue
                self._refuse(holder)
            with os.fdopen(fd, "w") as f:
                f.write(self._record())
            self.held = True
            return self
        self._refuse(self._holder())
        return self

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if is_remote(self.path):
            fs, resolved = _fs(self.path)
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(resolved)
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.expanduser(self.path))

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
