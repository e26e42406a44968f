"""Finding a checkpoint (local directory or hub id) and reading its tensors as NumPy arrays.

Formats, in order of preference: ``model.safetensors``, sharded safetensors
(``model.safetensors.index.json``), ``pytorch_model.bin`` (and its sharded index; read
only through ``torch.load(weights_only=True)``), and transformers' legacy Flax
``flax_model.msgpack`` (converted to PyTorch names). Nothing here unpickles arbitrary
objects or runs code from a checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_BIN = "pytorch_model.bin"
TORCH_BIN_INDEX = "pytorch_model.bin.index.json"
FLAX_MSGPACK = "flax_model.msgpack"
WEIGHT_FILES = (SAFETENSORS, SAFETENSORS_INDEX, TORCH_BIN, TORCH_BIN_INDEX, FLAX_MSGPACK)


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read, or matched to a model."""


#: ``PREFIX`` -> resolver(name, cache_dir) -> a local checkpoint directory: model names that are built, not
#: downloaded (the demo's ``demo:english-clip``, registered by :mod:`clip_jax.demo`).
NAMED_MODELS: dict[str, Any] = {}


def register_named_models(prefix: str, resolver) -> None:
    """Let ``PREFIX...`` model names resolve through ``resolver(name, cache_dir) -> directory``."""
    NAMED_MODELS[prefix] = resolver


def resolve_named(spec: Any, cache_dir: str) -> Any:
    """A registered named model (``demo:english-clip``) -> its directory (built if needed); anything else
    (a local directory, a hub id, a dict config, None) unchanged."""
    if not isinstance(spec, str):
        return spec
    for prefix, resolver in NAMED_MODELS.items():
        if spec.startswith(prefix):
            return resolver(spec, cache_dir)
    if spec.startswith("demo:"):
        raise ValueError(
            f"{spec} names a demo stand-in, but clip_jax.demo is not imported — import clip_jax.demo first "
            "(the clip-jax command and the demo recipes do)"
        )
    return spec


def resolve_checkpoint(path_or_id: str | os.PathLike, *, revision: str | None = None) -> Path:
    """A local directory holding the checkpoint: ``path_or_id`` itself, or a hub snapshot.

    Hub ids go through huggingface_hub's cache, so ``HF_HUB_OFFLINE=1`` and ``HF_HOME``
    are respected. Only safetensors are fetched when a repo has them.
    """
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    if path.exists():
        raise CheckpointError(f"{text} is a file; pass the directory that holds config.json and the weights.")
    first = Path(text).parts[0] if Path(text).parts else ""
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or ("/" in text and Path(first).is_dir()):
        # A path: absolute, relative with a local first folder (runs/it), or not shaped like a hub id (USER/REPO).
        raise CheckpointError(
            f"No such checkpoint directory: {text} — check the path (it should hold "
            "config.json and the weights)."
        )
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError

    try:
        files = set(huggingface_hub.list_repo_files(text, revision=revision)) if not _offline() else set()
    except (HfHubHTTPError, OSError, ValueError):
        files = set()
    except (
        Exception
    ) as error:  # httpx's ConnectError / timeouts are none of the above: the hub is unreachable
        raise CheckpointError(hub_error_message(text, error, revision=revision)) from error
    # configs, tokenizer and image-processor files, and weights (PyTorch pickles only if
    # the repo has no safetensors, so nothing is downloaded twice).
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "*.msgpack"]
    if not any(f.endswith(".safetensors") for f in files):
        patterns.append("*.bin")
    try:
        return Path(huggingface_hub.snapshot_download(text, revision=revision, allow_patterns=patterns))
    except Exception as error:  # huggingface_hub raises many types; all mean "not available"
        raise CheckpointError(hub_error_message(text, error, revision=revision)) from error


def hub_error_message(repo_id: str, error: BaseException, *, revision: str | None = None) -> str:
    """What went wrong fetching ``repo_id`` from the hub, and the likely fixes (offline? typo? private?)."""
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    if _offline():
        hint = (
            "HF_HUB_OFFLINE is set, so only models already in the cache can be used — download it once with "
            "network access, or pass a local directory"
        )
    else:
        name = type(error).__name__
        if (
            "Connect" in name
            or "Timeout" in name
            or "Network" in name
            or isinstance(error, (ConnectionError, TimeoutError))
        ):
            hint = (
                "the hub could not be reached — check the network (or set HF_HUB_OFFLINE=1 to use the cache), "
                "or pass a local directory"
            )
        else:
            hint = (
                "check the spelling of the repo id; for a private or gated repo log in (`huggingface-cli "
                "login` or HF_TOKEN); if you meant a local directory, it does not exist"
            )
    return (
        f"Could not get {where}: no such local directory, and the Hugging Face hub lookup failed "
        f"({type(error).__name__}: {detail}) — {hint}."
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def read_config(directory: Path) -> dict[str, Any]:
    """The checkpoint's ``config.json`` as a dict."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{directory} has no config.json — pass a Hugging Face model directory (save_pretrained writes one)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error}) — the file is damaged; download or export the model again"
        ) from error


#: Architectures (``config.json`` sizes, no weights) of the hub ids the shipped recipes name, for planning offline.
SHIPPED_ARCHITECTURES = Path(__file__).parent / "architectures"


def read_architecture(path_or_id: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """A checkpoint's ``config.json`` without reading (or downloading) any weights, and where it came from:
    a local directory, the Hugging Face cache, or the architectures shipped for the recipes' hub ids."""
    text = str(path_or_id)
    path = Path(text).expanduser()
    if path.is_dir():
        return read_config(path), str(path / "config.json")
    shipped = SHIPPED_ARCHITECTURES / (text.replace("/", "--") + ".json")
    if "/" in text and not text.startswith((".", "/", "~")):
        import huggingface_hub

        cached = huggingface_hub.try_to_load_from_cache(text, "config.json")
        if isinstance(cached, str):
            return read_config(Path(cached).parent), f"the Hugging Face cache ({cached})"
        if shipped.is_file():
            raw = json.loads(shipped.read_text())
            return {
                k: v for k, v in raw.items() if not k.startswith("_")
            }, f"clip_jax's copy ({shipped.name})"
    known = sorted(p.stem.replace("--", "/") for p in SHIPPED_ARCHITECTURES.glob("*.json"))
    raise CheckpointError(
        f"the architecture of {text} is not known offline: it is no local directory, not in the Hugging Face "
        f"cache, and not one of the architectures clip_jax ships ({', '.join(known)}) — download its "
        f"config.json once (huggingface-cli download {text} config.json; an open_clip model's is "
        f"open_clip_config.json) or pass a local directory"
    )


def weight_format(directory: Path) -> str:
    """Which weight file a directory holds, in order of preference."""
    for name in WEIGHT_FILES:
        if (Path(directory) / name).is_file():
            return name
    raise CheckpointError(
        f"{directory} holds no weights: expected one of {', '.join(WEIGHT_FILES)} — pass the directory save_pretrained wrote"
    )


def read_state_dict(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of the checkpoint in ``directory``, by PyTorch name, as NumPy arrays."""
    directory = Path(directory)
    fmt = weight_format(directory)
    if fmt == SAFETENSORS:
        return _read_safetensors(directory / SAFETENSORS)
    if fmt in (SAFETENSORS_INDEX, TORCH_BIN_INDEX):
        reader = _read_safetensors if fmt == SAFETENSORS_INDEX else _read_torch_bin
        out: dict[str, np.ndarray] = {}
        for shard in _index_shards(directory / fmt):
            out.update(reader(shard))
        return out
    if fmt == TORCH_BIN:
        return _read_torch_bin(directory / TORCH_BIN)
    return read_flax_msgpack(directory / FLAX_MSGPACK)


def _index_shards(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as error:
        raise CheckpointError(
            f"{index_path} is not a valid shard index (needs 'weight_map'): {error}."
        ) from error
    shards = []
    for name in dict.fromkeys(weight_map.values()):
        shard = index_path.parent / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{index_path} names shard {name!r} outside the checkpoint directory.")
        if not shard.is_file():
            raise CheckpointError(
                f"Shard {name} listed in {index_path.name} is missing from {index_path.parent}."
            )
        shards.append(shard)
    return shards


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in f}
    except (SafetensorError, OSError, TypeError, AttributeError, ValueError) as error:
        # NumPy has no bfloat16 / float8 types: safetensors' NumPy reader fails on them (AttributeError, TypeError)
        if isinstance(error, (TypeError, AttributeError)) or any(
            t in str(error).lower() for t in ("bfloat16", "bf16", "float8", "f8")
        ):
            return _read_safetensors_header(path)
        raise CheckpointError(
            f"Could not read {path}: {error}. The file may be truncated or corrupt."
        ) from error


def _read_safetensors_header(path: Path) -> dict[str, np.ndarray]:
    """safetensors' NumPy reader has no bfloat16; parse the file ourselves with ml_dtypes. Other dtypes NumPy
    lacks (float8...) are refused with a :class:`CheckpointError`."""
    import ml_dtypes

    dtypes = {
        "BF16": ml_dtypes.bfloat16,
        "F16": np.float16,
        "F32": np.float32,
        "F64": np.float64,
        "I64": np.int64,
        "I32": np.int32,
        "I16": np.int16,
        "I8": np.int8,
        "U8": np.uint8,
        "BOOL": np.bool_,
    }
    try:
        data = path.read_bytes()
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        base = 8 + header_len
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info.get("dtype") not in dtypes:
                raise CheckpointError(
                    f"{path}: tensor {name!r} has dtype {info.get('dtype')!r}, which clip_jax cannot "
                    f"read (supported: {', '.join(dtypes)}) — convert the checkpoint to float32, "
                    "float16 or bfloat16."
                )
            start, end = info["data_offsets"]
            array = np.frombuffer(data[base + start : base + end], dtype=dtypes[info["dtype"]]).reshape(
                info["shape"]
            )
            out[name] = array
        return out
    except (ValueError, KeyError, TypeError, OSError) as error:  # bad JSON, offsets or shapes
        raise CheckpointError(
            f"Could not read {path}: {error}. The file may be truncated or corrupt."
        ) from error


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{path} is a PyTorch pickle; reading it needs torch (pip install torch), loaded safely with "
            "weights_only=True. Alternatively convert the checkpoint to safetensors."
        ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise CheckpointError(
            f"Could not read {path} with torch.load(weights_only=True): {error}. Files that need full unpickling "
            "are refused for safety; convert the checkpoint to safetensors."
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor.")
    return {k: _torch_to_numpy(v) for k, v in state.items()}


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.float().numpy().astype(ml_dtypes.bfloat16)
    return tensor.detach().cpu().numpy()


def read_flax_msgpack(path: Path) -> dict[str, np.ndarray]:
    """transformers' legacy Flax checkpoint, renamed and transposed to PyTorch conventions.

    Flax ``kernel`` -> ``weight`` (2-D transposed; 4-D conv HWIO -> OIHW), ``scale`` ->
    ``weight``, ``embedding`` -> ``weight``; nested dicts are joined with dots. This is the
    inverse of transformers 4.x's PyTorch-to-Flax conversion.
    """
    from flax import serialization

    try:
        tree = serialization.msgpack_restore(Path(path).read_bytes())
    except Exception as error:  # msgpack raises several types on corrupt input
        raise CheckpointError(f"Could not read {path} as a Flax msgpack checkpoint: {error}.") from error
    if not isinstance(tree, dict) or not tree:
        raise CheckpointError(
            f"{path} is not a Flax checkpoint: its root is a {type(tree).__name__}, not a non-empty "
            "dict of parameters."
        )
    out: dict[str, np.ndarray] = {}

    def visit(node: Any, parts: list[str]) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                visit(child, [*parts, str(key)])
            return
        array = np.asarray(node)
        if array.dtype == object or not parts:
            raise CheckpointError(
                f"{path}: entry {'.'.join(parts) or '(root)'} is a {type(node).__name__}, not an array."
            )
        *parents, leaf = parts
        if leaf == "kernel":
            leaf = "weight"
            array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
        elif leaf in ("scale", "embedding"):
            leaf = "weight"
        out[".".join([*parents, leaf])] = array

    visit(tree, [])
    return out
