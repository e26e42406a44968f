"""The recipes shipped with clip_jax, one module per recipe, each with ``get_config()``.

``clip-jax train --config NAME`` picks ``clip_jax/configs/NAME.py``; ``--config path/to/file.py``
any config file. The files under ``configs/`` in a checkout re-export these modules.
"""

from __future__ import annotations

import os
from importlib import resources


def names() -> list[str]:
    """The built-in recipe names (``demo``, ``clip_italian``, ...)."""
    files = resources.files(__name__).iterdir()
    return sorted(f.name[:-3] for f in files if f.name.endswith(".py") and not f.name.startswith("_"))


def resolve(spec: str) -> str:
    """The config file a ``--config`` value names: a path to a ``.py`` file (optionally ``:ARG``) or a
    built-in recipe name. Raises ``ValueError`` listing the recipes if it is neither."""
    path, sep, arg = spec.partition(":")
    if os.path.isfile(os.path.expanduser(path)):
        return spec
    if not path.endswith(".py") and "/" not in path and path in names():
        return str(resources.files(__name__) / f"{path}.py") + sep + arg
    if path.endswith(".py") or "/" in path or os.sep in path:
        raise ValueError(
            f"config file {path} does not exist — give a path to a .py file with get_config(), or a "
            f"built-in recipe: {', '.join(names())}"
        )
    raise ValueError(
        f"no built-in recipe {path!r} — choose one of {', '.join(names())}, or give a path to a "
        "config file (.py with get_config())"
    )
