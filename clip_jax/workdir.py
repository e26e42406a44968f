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
    """Write ``text`` to ``path`` atomically (readers see the old file or the whole new one, also after a crash),
    creating local parent directories."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: locally a temporary sibling, fsynced, renamed over ``path``; an object
    store's single upload is atomic by itself."""
    if is_remote(path):
        fs, resolved = _fs(str(path))
        fs.pipe_file(resolved, data)
        return
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_dir(target.parent)


def _fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: str, b: str) -> bool:
    """Swap the paths ``a`` and ``b`` in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or filesystem cannot."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


@contextlib.contextmanager
def replace_directory(target: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary sibling of the local directory ``target`` to fill; when the block ends without error its
    files are fsynced and it takes ``target``'s place in one rename, and the old ``target`` is deleted. Until
    then ``target`` is untouched (a crash, ``kill -9`` or a full disk leave it as it was, and at most a
    ``.<name>.partial-*`` sibling behind); on an error the sibling is removed. Hidden entries of the old
    directory (``.git``, ``.gitattributes``...) are carried over, hard-linked where possible."""
    import shutil

    target = Path(target).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.partial-"))
    try:
        yield new
        if target.is_dir():
            for entry in target.iterdir():
                if entry.name.startswith(".") and not (new / entry.name).exists():
                    _copy_linked(entry, new / entry.name)
        os.chmod(new, 0o755)
        for file in [new, *new.rglob("*")]:
            if file.is_file() and not file.is_symlink():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
            elif file.is_dir():
                _fsync_dir(file)
        if target.exists() and _exchange(str(new), str(target)):
            _fsync_dir(target.parent)
            shutil.rmtree(new, ignore_errors=True)  # (``new`` now holds the old directory)
            return
        old = None
        if target.exists():  # no atomic swap here: the old one steps aside for the two renames
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.rename(target, old / "dir")
        os.rename(new, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def _copy_linked(source: Path, destination: Path) -> None:
    import shutil

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True, copy_function=link)
    else:
        link(source, destination)


def move(source: str, destination: str) -> None:
    """Move the file or directory ``source`` to ``destination`` (local, or within one fsspec filesystem)."""
    if not is_remote(source):
        Path(destination).expanduser().parent.mkdir(parents=True, exist_ok=True)
        os.rename(os.path.expanduser(source), os.path.expanduser(destination))
        return
    fs, resolved = _fs(source)
    fs.mv(resolved, _fs(destination)[1], recursive=True)


def check_replaceable(directory: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless the local ``directory`` may be replaced by a saved model: it must not exist, be
    empty (hidden entries aside), or hold an earlier saved model (``config.json``) — never a training workdir."""
    path = Path(directory).expanduser()
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{directory} is a file — choose a directory to write the model to")
    if (path / "checkpoints").is_dir() or (path / "lock").is_file():
        raise ValueError(
            f"{directory} is a training workdir; a saved model written there would replace it — choose another "
            "directory"
        )
    visible = [p.name for p in path.iterdir() if not p.name.startswith(".")]
    if visible and "config.json" not in visible and "open_clip_config.json" not in visible:
        shown = ", ".join(sorted(visible)[:5]) + (", ..." if len(visible) > 5 else "")
        raise ValueError(
            f"{directory} is not empty ({shown}) and holds no saved model (no config.json); writing a model "
            "there would replace its contents — choose a new or empty directory"
        )


def enclosing_workdir(path: str | os.PathLike) -> Path | None:
    """The training workdir that the local ``path`` is, or lies inside (a directory with ``checkpoints/`` or a
    run's ``lock``), or None."""
    if is_remote(path):
        return None
    path = Path(path).expanduser().resolve()
    for directory in (path, *path.parents):
        if (directory / "checkpoints").is_dir() or (directory / "lock").is_file():
            return directory
    return None


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
