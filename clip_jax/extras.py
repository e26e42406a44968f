"""Optional dependencies: importing one that is missing says which ``clip_jax[extra]`` installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

#: module -> (extra, pip package) for every optional import (see setup.cfg's extras_require).
EXTRAS = {
    "datasets": ("hf", "datasets"),
    "tensorflow_datasets": ("tfds", "tensorflow-datasets"),
    "gcsfs": ("gcs", "gcsfs"),
    "wandb": ("wandb", "wandb"),
    "matplotlib": ("viz", "matplotlib"),
    "umap": ("viz", "umap-learn"),
}

#: fsspec protocols whose implementation lives in an optional package.
PROTOCOLS = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "az": "adlfs", "abfs": "adlfs"}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra (or package) to install."""


def install_hint(module: str) -> str:
    """``pip install "clip_jax[viz]"`` for a module of an extra, else ``pip install PACKAGE``."""
    if module in EXTRAS:
        extra, package = EXTRAS[module]
        return f'pip install "clip_jax[{extra}]" (or pip install {package})'
    return f"pip install {module}"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtra` saying that ``purpose`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name and error.name.split(".")[0] != module.split(".")[0]:
            raise  # the module is there but one of its own dependencies is broken: show that
        raise MissingExtra(
            f"{purpose}: needs {module.split('.')[0]}, which is not installed — "
            f"{install_hint(module.split('.')[0])}"
        ) from None


def require_protocol(url: str) -> None:
    """Raise :class:`MissingExtra` if the fsspec implementation of ``url``'s protocol is not installed."""
    protocol = url.split("://", 1)[0]
    module = PROTOCOLS.get(protocol)
    if module is not None:
        require(module, f"{protocol}:// paths")
