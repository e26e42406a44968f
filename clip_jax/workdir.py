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
    try:
        return exists(join(spec, "checkpoints"))
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
            relative = remote_file[len(resolved):].lstrip("/")
            target = Path(directory, *relative.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(remote_file, str(target))
        yield Path(directory)
