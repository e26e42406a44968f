"""Which module, config class and weight table serve each Hugging Face ``model_type``.

Adding a text architecture: write ``clip_jax/models/<name>.py`` (a config satisfying :class:`TowerConfig`,
an ``nnx.Module`` satisfying :class:`Tower`, and a ``KEY_MAP``), then add one :class:`Architecture` entry to
``ARCHITECTURES``. Nothing else changes: the dual encoder, training, export and evaluation only use what the
two protocols below promise.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_jax.models import bert, clip_text, siglip, vit
from clip_jax.models.layers import DType
from clip_jax.weights.keymap import KeyMap
from clip_jax.weights.params import Adapter, load_params
from clip_jax.weights.readers import CheckpointError, read_config, read_state_dict, resolve_checkpoint

Kind = Literal["vision", "text"]
POOLINGS = ("pooler", "cls", "mean", "eos")


class TowerConfig(Protocol):
    """What a tower's config provides (a dataclass, e.g. :class:`~clip_jax.models.bert.BertConfig`)."""

    #: Width of the tower's outputs: the input size of the dual encoder's projection.
    hidden_size: int
    num_hidden_layers: int

    @classmethod
    def from_hf(cls, hf: dict) -> TowerConfig:
        """From a transformers ``config.json`` dict (unknown keys ignored)."""
        ...

    def to_hf(self) -> dict:
        """A transformers ``config.json`` dict (with ``model_type``) that transformers loads."""
        ...


@runtime_checkable
class Tower(Protocol):
    """What a tower module provides.

    Built as ``module_cls(config, dtype=..., param_dtype=..., rngs=nnx.Rngs(...))``. Called as
    ``tower(pixel_values)`` (vision, channels-last ``[B, S, S, 3]``) or ``tower(input_ids, attention_mask)``
    (text), with keyword arguments ``deterministic`` (dropout off), ``rngs`` (dropout keys) and
    ``output_hidden_states``; returns a :class:`~clip_jax.models.layers.TowerOutput` whose
    ``last_hidden_state`` is ``[B, T, hidden_size]`` and whose ``pooler_output`` is ``[B, hidden_size]``
    (vision: required; text: ``None`` when the architecture has no pooler). ``remat``: per-layer gradient
    checkpointing, switched by the trainer (``model.remat``). Parameter paths follow transformers' names so
    that ``KEY_MAP`` is a table of renames.
    """

    config: Any
    remat: bool

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any: ...


def _adapt_vit_positions(path, array: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray | None:
    """Interpolate a checkpoint's position embeddings to the grid of a different ``image_size``."""
    if path != ("position_embedding",) or array.shape[1:] != target_shape[1:]:
        return None
    grid = math.isqrt(target_shape[0] - 1)
    return np.asarray(vit.resize_position_embedding(array, (grid, grid)))


@dataclasses.dataclass(frozen=True)
class Architecture:
    """How to build and load one tower architecture."""

    kind: Kind
    config_cls: type
    module_cls: Callable[..., nnx.Module]
    key_map: KeyMap
    #: Where the tower's keys start in its own transformers model class (e.g. ``bert.`` in BertForMaskedLM).
    prefixes: tuple[str, ...]
    #: A key (after the prefix) that every checkpoint of the architecture holds.
    anchor: str
    #: Checkpoint keys that are expected and not used (regexes, after the prefix).
    ignore: tuple[str, ...] = ()
    #: Parameters that may be absent and then keep their random initialisation (regexes).
    allow_missing: tuple[str, ...] = ()
    adapt: Adapter | None = None


_BERT = dict(
    kind="text",
    config_cls=bert.BertConfig,
    module_cls=bert.BertEncoder,
    key_map=bert.KEY_MAP,
    anchor="embeddings.word_embeddings.weight",
    ignore=(r"embeddings\.position_ids", r"embeddings\.token_type_ids"),
    allow_missing=(r"pooler\..*",),
)

_CLIP_VISION = dict(
    kind="vision",
    module_cls=vit.CLIPVisionTransformer,
    key_map=vit.KEY_MAP,
    prefixes=("vision_model.", ""),
    anchor="embeddings.patch_embedding.weight",
    ignore=(r"embeddings\.position_ids",),
    adapt=_adapt_vit_positions,
)
_CLIP_TEXT = dict(
    kind="text",
    module_cls=clip_text.CLIPTextTransformer,
    key_map=clip_text.KEY_MAP,
    prefixes=("text_model.", ""),
    anchor="embeddings.token_embedding.weight",
    ignore=(r"embeddings\.position_ids",),
)

ARCHITECTURES: dict[str, Architecture] = {
    "clip_vision_model": Architecture(config_cls=vit.CLIPVisionConfig, **_CLIP_VISION),
    "clip_text_model": Architecture(config_cls=clip_text.CLIPTextConfig, **_CLIP_TEXT),
    # Meta CLIP 2: CLIP's towers and weight names; the text tower pools at the EOS token even when its id is 2.
    "metaclip_2_vision_model": Architecture(config_cls=vit.MetaClip2VisionConfig, **_CLIP_VISION),
    "metaclip_2_text_model": Architecture(config_cls=clip_text.MetaClip2TextConfig, **_CLIP_TEXT),
    **{
        model_type: Architecture(
            kind="vision",
            config_cls=config_cls,
            module_cls=siglip.SiglipVisionTransformer,
            key_map=key_map,
            prefixes=("vision_model.", ""),
            anchor="embeddings.position_embedding.weight",
            ignore=(r"embeddings\.position_ids",),
        )
        for model_type, config_cls, key_map in (
            ("siglip_vision_model", siglip.SiglipVisionConfig, siglip.VISION_KEY_MAP),
            ("siglip2_vision_model", siglip.Siglip2VisionConfig, siglip.VISION2_KEY_MAP),
        )
    },
    **{
        model_type: Architecture(
            kind="text",
            config_cls=config_cls,
            module_cls=siglip.SiglipTextTransformer,
            key_map=siglip.TEXT_KEY_MAP,
            prefixes=("text_model.", ""),
            anchor="embeddings.token_embedding.weight",
            ignore=(r"embeddings\.position_ids",),
        )
        for model_type, config_cls in (
            ("siglip_text_model", siglip.SiglipTextConfig),
            ("siglip2_text_model", siglip.Siglip2TextConfig),
        )
    },
    "bert": Architecture(prefixes=("", "bert."), **_BERT),
    "roberta": Architecture(prefixes=("", "roberta."), **_BERT),
    "xlm-roberta": Architecture(prefixes=("", "roberta."), **_BERT),
    "camembert": Architecture(prefixes=("", "roberta."), **_BERT),
}

#: Checkpoints that hold both towers: sub-config key and key prefix of each tower.
COMPOSITES: dict[str, dict[Kind, tuple[str, str]]] = {
    "clip": {"vision": ("vision_config", "vision_model."), "text": ("text_config", "text_model.")},
    "vision-text-dual-encoder": {
        "vision": ("vision_config", "vision_model."),
        "text": ("text_config", "text_model."),
    },
    "metaclip_2": {"vision": ("vision_config", "vision_model."), "text": ("text_config", "text_model.")},
    "siglip": {"vision": ("vision_config", "vision_model."), "text": ("text_config", "text_model.")},
    "siglip2": {"vision": ("vision_config", "vision_model."), "text": ("text_config", "text_model.")},
    # CLIP-Italian's earlier Flax checkpoints (transformers' jax-projects hybrid_clip).
    "hybrid-clip": {"vision": ("vision_config", "vision_model."), "text": ("text_config", "text_model.")},
}
_COMPOSITE_DEFAULT_TYPES = {
    ("clip", "vision"): "clip_vision_model",
    ("clip", "text"): "clip_text_model",
    ("metaclip_2", "vision"): "metaclip_2_vision_model",
    ("metaclip_2", "text"): "metaclip_2_text_model",
    ("siglip", "vision"): "siglip_vision_model",
    ("siglip", "text"): "siglip_text_model",
    ("siglip2", "vision"): "siglip2_vision_model",
    ("siglip2", "text"): "siglip2_text_model",
}


def architecture_for(model_type: str, kind: Kind) -> Architecture:
    """The registered architecture for a Hugging Face ``model_type``, checked to be a ``kind`` tower."""
    arch = ARCHITECTURES.get(model_type)
    if arch is None:
        supported = sorted(t for t, a in ARCHITECTURES.items() if a.kind == kind)
        raise CheckpointError(
            f"Unknown {kind} model_type {model_type!r}. Supported {kind} towers: {supported} (or a composite: "
            f"{sorted(COMPOSITES)}). To add one, see clip_jax/models/registry.py."
        )
    if arch.kind != kind:
        raise CheckpointError(
            f"model_type {model_type!r} is a {arch.kind} tower, not a {kind} tower — give it as model.{arch.kind}"
        )
    return arch


def normalised_config(raw: dict[str, Any], source: str = "") -> dict[str, Any]:
    """config.json with transformers' defaults filled in where transformers knows the model_type."""
    try:
        from transformers import CONFIG_MAPPING

        config_cls = CONFIG_MAPPING[raw.get("model_type")]
    except (ImportError, KeyError, TypeError):
        return raw
    try:
        return config_cls.from_dict(raw).to_dict()
    except (TypeError, ValueError, KeyError, ZeroDivisionError, AttributeError) as error:
        raise CheckpointError(
            f"{source or 'config.json'}: transformers cannot read it as a "
            f"{raw.get('model_type')!r} config ({error})."
        ) from None


def architecture_of(tower: nnx.Module) -> Architecture:
    """The registered architecture of a tower module (from its config's ``model_type``)."""
    return ARCHITECTURES[tower.config.to_hf()["model_type"]]


POSITIVE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "max_position_embeddings",
    "image_size",
    "patch_size",
    "projection_dim",
)


def check_tower_config(config: Any, kind: Kind, source: str = "") -> None:
    """Raise :class:`CheckpointError` for tower sizes that cannot build a model (zero heads, odd head size...)."""
    where = f"{source}/config.json" if source else "config.json"
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    bad = {k: v for k, v in values.items() if k in POSITIVE_FIELDS and not (isinstance(v, int) and v > 0)}
    if bad:
        raise CheckpointError(
            f"{where}: the {kind} tower's {', '.join(f'{k}={v!r}' for k, v in bad.items())} "
            "must be positive whole numbers — the config is corrupt or not for this model."
        )
    hidden, heads = values.get("hidden_size"), values.get("num_attention_heads")
    if hidden and heads and hidden % heads:
        raise CheckpointError(
            f"{where}: the {kind} tower's hidden_size {hidden} is not divisible by "
            f"num_attention_heads {heads}."
        )


def tower_config(hf_config: dict[str, Any], kind: Kind, source: str = "") -> tuple[Architecture, Any, str]:
    """Resolve a (possibly composite) Hugging Face config dict to (architecture, our config, key prefix);
    sizes that cannot build a tower raise :class:`CheckpointError` naming ``source``."""
    model_type = hf_config.get("model_type")
    if model_type is None:
        raise CheckpointError(
            "config.json has no 'model_type'; it is not a transformers config — pass a transformers model's directory"
        )
    outer = ""
    if model_type in COMPOSITES:
        sub_key, outer = COMPOSITES[model_type][kind]
        if sub_key not in hf_config:
            raise CheckpointError(
                f"A {model_type!r} config.json needs '{sub_key}' — the file is incomplete: save the model again"
            )
        sub = dict(hf_config[sub_key])
        if sub.get("model_type") in COMPOSITES:  # hybrid-clip keeps a whole CLIP config as its vision config
            arch, config, _ = tower_config(normalised_config(sub, source), kind, source)
            return arch, config, outer
        sub.setdefault("model_type", _COMPOSITE_DEFAULT_TYPES.get((model_type, kind)))
        hf_config, model_type = sub, sub["model_type"]
    arch = architecture_for(model_type, kind)
    try:
        config = arch.config_cls.from_hf(hf_config)
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{source or 'config.json'}: cannot read the {kind} tower's config ({error})."
        ) from None
    check_tower_config(config, kind, source)
    return arch, config, outer


def detect_prefix(state_dict: dict[str, Any], arch: Architecture, outer: str = "", *, source: str) -> str:
    """The key prefix under which ``arch``'s weights sit in ``state_dict`` (e.g. ``bert.``, ``vision_model.``)."""
    candidates = [outer + p for p in arch.prefixes]
    prefix = next((p for p in candidates if p + arch.anchor in state_dict), None)
    if prefix is None:
        raise CheckpointError(
            f"{source} has no {arch.kind} tower weights: expected a key like {candidates[0] + arch.anchor!r}. "
            f"The weights may belong to another architecture than config.json's model_type says."
        )
    return prefix


@dataclasses.dataclass
class LoadedTower:
    """A tower module with where it came from (tokenizer and image-processor files live there)."""

    module: nnx.Module
    architecture: Architecture
    directory: Path | None


def tower_builder(
    arch: Architecture, config: Any, dtype: DType = None, param_dtype: jnp.dtype = jnp.float32, seed: int = 0
) -> Callable[[], nnx.Module]:
    """A no-argument function that builds (randomly initialises) the tower; for ``nnx.eval_shape``."""
    return lambda: arch.module_cls(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))


def build_tower(
    config: Any, kind: Kind, *, dtype: DType = None, param_dtype: jnp.dtype = jnp.float32, seed: int = 0
) -> LoadedTower:
    """A randomly initialised tower from our config dataclass, a transformers config, or a config dict."""
    if not hasattr(config, "to_hf") and hasattr(config, "to_dict"):  # a transformers config
        config = config.to_dict()
    if isinstance(config, dict):
        arch, config, _ = tower_config(normalised_config(config), kind)
    else:
        model_type = config.to_hf()["model_type"]
        arch = architecture_for(model_type, kind)
    return LoadedTower(tower_builder(arch, config, dtype, param_dtype, seed)(), arch, None)


def load_tower(
    path_or_id: str | os.PathLike,
    kind: Kind,
    *,
    revision: str | None = None,
    dtype: DType = None,
    param_dtype: jnp.dtype = jnp.float32,
    ignore: tuple[str, ...] = (),
    allow_missing: tuple[str, ...] = (),
    seed: int = 0,
    **config_overrides: Any,
) -> LoadedTower:
    """Load the ``kind`` tower of a checkpoint (a tower on its own or one half of a composite)."""
    directory = resolve_checkpoint(path_or_id, revision=revision)
    arch, config, outer = tower_config(
        normalised_config(read_config(directory), str(directory)), kind, str(directory)
    )
    if config_overrides:
        unknown = set(config_overrides) - {f.name for f in dataclasses.fields(config)}
        if unknown:
            raise TypeError(
                f"Unknown {type(config).__name__} override(s) {sorted(unknown)}; valid: "
                f"{[f.name for f in dataclasses.fields(config)]}."
            )
        config = dataclasses.replace(config, **config_overrides)
    state_dict = read_state_dict(directory)
    prefix = detect_prefix(state_dict, arch, outer, source=str(directory))
    module = load_params(
        tower_builder(arch, config, dtype, param_dtype, seed),
        state_dict,
        arch.key_map,
        prefix=prefix,
        ignore=arch.ignore + tuple(ignore),
        allow_missing=arch.allow_missing + tuple(allow_missing),
        adapt=arch.adapt,
        source=f"{kind} tower from {directory}",
    )
    return LoadedTower(module, arch, directory)


def load_vision_tower(
    path_or_id: str | os.PathLike,
    *,
    revision: str | None = None,
    dtype: DType = None,
    param_dtype: jnp.dtype = jnp.float32,
    image_size: int | None = None,
    **kwargs: Any,
) -> nnx.Module:
    """A pretrained CLIP vision tower from a local directory or hub id.

    The returned module is called as ``tower(pixel_values)`` with ``pixel_values`` channels-last
    ``[batch, height, width, 3]`` (normalised floats) and returns a :class:`TowerOutput` with
    ``last_hidden_state`` and ``pooler_output``. ``image_size`` changes the input resolution,
    interpolating the position embeddings bicubically. ``param_dtype`` is the storage dtype of
    the weights (float32 or bfloat16); ``dtype`` the compute dtype (default: that of the inputs/params).
    """
    overrides = {"image_size": image_size} if image_size is not None else {}
    return load_tower(
        path_or_id, "vision", revision=revision, dtype=dtype, param_dtype=param_dtype, **overrides, **kwargs
    ).module


def load_text_tower(
    path_or_id: str | os.PathLike,
    *,
    revision: str | None = None,
    dtype: DType = None,
    param_dtype: jnp.dtype = jnp.float32,
    **kwargs: Any,
) -> nnx.Module:
    """A pretrained text tower (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, CLIP text) from a directory or hub id.

    The returned module is called as ``tower(input_ids, attention_mask)`` (``[batch, seq]`` integer
    arrays) and returns a :class:`TowerOutput` whose ``last_hidden_state`` and ``pooler_output``
    equal transformers'. Tokenise with ``transformers.AutoTokenizer`` on the same checkpoint.
    """
    return load_tower(
        path_or_id, "text", revision=revision, dtype=dtype, param_dtype=param_dtype, **kwargs
    ).module
