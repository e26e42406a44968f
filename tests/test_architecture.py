"""The layer order of docs/architecture.md: the same list as pyproject.toml's import-linter contract, kept by
every import (lint-imports) and by every importlib string in the package."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")
ROOT = Path(__file__).resolve().parents[1]
MODULE_STRING = re.compile(r"^clip_jax(\.\w+)+(:\w+)?$")


def contract_layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in re.split(r"[:|]", layer)] for layer in contract["layers"]]


def documented_layers() -> list[list[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/architecture.md has no ```layers block"
    return [[n.strip() for n in line.split(":")] for line in block.group(1).splitlines() if line.strip()]


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    top = module.split(".")[1] if "." in module else None
    return next((i for i, names in enumerate(layers) if top in names), None)


def test_docs_list_the_layers_the_contract_checks():
    assert documented_layers() == contract_layers()


def test_every_package_module_has_a_layer():
    layers = contract_layers()
    tops = {p.stem if p.is_file() else p.name for p in (ROOT / "clip_jax").iterdir()}
    tops = {t for t in tops if not t.startswith(("_", ".")) and t not in ("resources", "py")}
    missing = sorted(t for t in tops if layer_of(f"clip_jax.{t}", layers) is None)
    assert not missing, f"modules without a layer in pyproject.toml's contract: {missing}"


def upward_strings(sources: dict[str, str], layers: list[list[str]]) -> list[str]:
    """``module -> string`` for every importlib string (``"clip_jax.x.y[:name]"``) in ``sources`` (module ->
    its Python text) that names a higher layer than its own module's."""
    upward = []
    for module, text in sources.items():
        own = layer_of(module, layers)
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and MODULE_STRING.match(node.value)
            ):
                target = layer_of(node.value.split(":")[0], layers)
                if own is not None and target is not None and target < own:
                    upward.append(f"{module} -> {node.value}")
    return upward


def package_sources() -> dict[str, str]:
    return {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path.read_text()
        for path in sorted((ROOT / "clip_jax").rglob("*.py"))
    }


def test_importlib_strings_point_downhill():
    """Strings that name a module for importlib (a source reader, an error type) obey the layers too: a
    checker of import statements cannot see them."""
    upward = upward_strings(package_sources(), contract_layers())
    assert not upward, f"importlib strings naming a higher layer: {upward}"


def test_the_string_check_catches_an_upward_string():
    """The check above is not vacuous: the package has importlib strings, and a reader string naming a higher
    layer (the layout before this check: data/ naming evaluate/) is caught while a downhill one is not."""
    layers = contract_layers()
    assert "clip_jax.data.benchmarks:image_folder" in package_sources()["clip_jax.data.sources"]
    sources = {
        "clip_jax.data.sources": 'READER = "clip_jax.evaluate.datasets:image_folder"\n',
        "clip_jax.cli": 'ERROR = "clip_jax.export"\n',
    }
    assert upward_strings(sources, layers) == [
        "clip_jax.data.sources -> clip_jax.evaluate.datasets:image_folder"
    ]


@pytest.mark.skipif(
    not shutil.which("lint-imports", path=str(Path(sys.executable).parent)), reason="no lint-imports"
)
def test_lint_imports_keeps_the_contract():
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 kept, 0 broken" in done.stdout
