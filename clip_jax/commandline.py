"""Parsing a config command's line (``clip-jax train`` / ``clip-jax plan``): ``--config NAME|FILE``, the
config file run and checked, ``--config.KEY=VALUE`` overrides checked against it; :class:`UsageError`."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any


class UsageError(Exception):
    """A mistake on the command line or in its inputs; the message says what and how to fix it."""


def _config_arg(argv: list[str]) -> tuple[list[str], str]:
    """argv with ``--config NAME`` / ``--config=NAME`` replaced by the resolved file, and that file."""
    from clip_jax import configs

    out, specs, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError(
                    f"--config needs a value — a recipe ({', '.join(configs.names())}) or a .py file"
                )
            specs.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--config="):
            specs.append(arg.split("=", 1)[1])
        else:
            out.append(arg)
        i += 1
    if len(specs) > 1:
        raise UsageError(
            f"--config is given {len(specs)} times ({', '.join(specs)}) — give one recipe or file, and change "
            "single values with --config.KEY=VALUE"
        )
    spec = specs[0] if specs else "demo"
    try:
        resolved = configs.resolve(spec)
    except ValueError as error:
        raise UsageError(f"--config: {error}") from None
    return [f"--config={resolved}", *out], resolved


def load_config_file(spec: str):
    """``get_config()`` (or ``get_config(ARG)`` for ``FILE.py:ARG``) of a config file: an
    ``ml_collections.ConfigDict``. The file is Python and runs here. Its own mistakes (a syntax error, an
    exception while it runs, no ``get_config``, another return type) are a :class:`UsageError` naming it."""
    import importlib.util

    from ml_collections import ConfigDict

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_clip_jax_config", os.path.expanduser(path))
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise UsageError(
                f"config file {path} defines no get_config() — add one returning an ml_collections "
                "ConfigDict (start from clip_jax.config.base_config(); see clip_jax/configs/demo.py)"
            )
        config = get_config(arg) if arg else get_config()
    except UsageError:
        raise
    except SyntaxError as error:
        raise UsageError(
            f"config file {path}, line {error.lineno}: {error.msg} — fix the Python syntax there"
        ) from None
    except Exception as error:  # the file is user code: any error in it is the file's
        where = next(
            (
                f", line {frame.lineno}"
                for frame in reversed(traceback.extract_tb(error.__traceback__))
                if os.path.abspath(frame.filename) == os.path.abspath(os.path.expanduser(path))
            ),
            "",
        )
        first = (str(error).strip().splitlines() or [""])[0]
        raise UsageError(
            f"config file {path}{where}: {type(error).__name__}: {first} — fix the file "
            "(--debug shows the traceback)"
        ) from error
    if not isinstance(config, ConfigDict):
        raise UsageError(
            f"config file {path}: get_config() returned a {type(config).__name__}, not an ml_collections "
            "ConfigDict — return clip_jax.config.base_config() with your changes (a ConfigDict)"
        )
    return config


def check_overrides(config, argv: Sequence[str]) -> None:
    """Raise :class:`UsageError` for a ``--config.KEY=...`` naming a key the config does not have,
    listing the valid keys of the section (ml_collections's own error is a 45-line traceback)."""
    for arg in argv:
        if not arg.startswith("--config."):
            continue
        key = arg[len("--config.") :].split("=", 1)[0]
        node, parts = config, key.split(".")
        for depth, part in enumerate(parts):
            children = node.keys() if hasattr(node, "keys") else None
            if children is None:
                section = ".".join(parts[:depth])
                raise UsageError(
                    f"unknown config key {key!r}: {section} is a value, not a section — set "
                    f"--config.{section}=... instead"
                )
            if part not in children:
                section = ".".join(parts[:depth]) or "the config"
                raise UsageError(
                    f"unknown config key {key!r} — valid keys of {section}: {', '.join(sorted(children))}"
                )
            node = node[part]


def parse_config_command(command: str, argv: Sequence[str], define_flags: Callable) -> tuple[Any, str]:
    """The parsed flags of ``clip-jax COMMAND`` and the resolved config file. The file runs once: its
    ``get_config()`` result, overrides checked against it, becomes ``--config`` through
    ``define_flags(argv, config)`` (which defines the command's flags); positional arguments are refused."""
    from absl import flags

    import clip_jax.demo  # noqa: F401 (demo:NAME towers resolve in any recipe, not only the demo's)

    argv, config_file = _config_arg(list(argv))
    config = load_config_file(config_file)
    check_overrides(config, argv)
    argv = [f"clip-jax {command}", *(a for a in argv if not a.startswith("--config="))]
    values = define_flags(argv, config)
    try:
        positional = values(argv)[1:]
    except flags.Error as error:
        raise UsageError(f"{str(error).splitlines()[0]} — see clip-jax {command} --help") from None
    if positional:
        raise UsageError(
            f"clip-jax {command} takes no positional arguments ({' '.join(positional)}) — name a recipe or "
            f"file with --config (e.g. --config {positional[0]})"
            + (", a run directory with --workdir" if command == "train" else "")
        )
    return values, config_file


def define_config_flag(values: Any, argv: Sequence[str], config: Any) -> None:
    """``--config`` on ``values``: the loaded ``config`` with ``--config.KEY=VALUE`` overrides (``argv`` names
    them), or, without a config (help text only), the file flag."""
    from ml_collections import config_flags

    text = "Built-in recipe name or config file (.py with get_config())."
    if config is None:
        config_flags.DEFINE_config_file("config", None, text, flag_values=values, sys_argv=list(argv))
    else:
        config_flags.DEFINE_config_dict(
            "config", config, text, lock_config=True, flag_values=values, sys_argv=list(argv)
        )
