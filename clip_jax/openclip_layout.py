"""open_clip's hub layout in and out of the dual encoder.

A directory in open_clip's layout holds ``open_clip_config.json`` (``model_cfg``: ``embed_dim``, ``quick_gelu``,
``vision_cfg``, ``text_cfg``, ``init_logit_bias``; ``preprocess_cfg``) and ``open_clip_model.safetensors`` (or
``open_clip_pytorch_model.bin``, read only with ``torch.load(weights_only=True)``). What maps onto clip_jax:

- open_clip's own ViT (``visual.conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
  ``transformer.resblocks.N`` with a fused ``attn.in_proj_weight``, ``ln_post``, ``proj``) is CLIP's ViT plus
  the vision projection;
- a Hugging Face text tower (``text_cfg.hf_model_name``: its architecture comes from that name, a local
  directory, the Hugging Face cache, or a ``config.json`` beside the weights) with ``hf_pooler_type``
  ``mean_pooler`` / ``cls_pooler`` (the tower's own pooler) / ``cls_last_hidden_state_pooler`` and an
  ``hf_proj_type`` of ``mlp`` (open_clip's default: Linear-GELU-Linear, clip_jax's ``text_projection_kind='mlp'``),
  ``linear`` or none;
- open_clip's built-in CLIP text transformer (OpenAI-style ``ViT-B-32``) is CLIP's text tower;
- ``logit_scale`` and (SigLIP-style models) ``logit_bias``.

Reading converts the weights to transformers' ``vision-text-dual-encoder`` names, which :mod:`clip_jax.hub` then
loads; writing (:func:`openclip_export`) goes the other way, for the models open_clip can express.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clip_jax.weights.readers import CheckpointError

logger = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
SAFETENSORS_NAME = "open_clip_model.safetensors"
WEIGHT_NAMES = (SAFETENSORS_NAME, "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
#: open_clip's default ``text_cfg`` values (``CLIPTextCfg``) where a config leaves them out.
DEFAULT_HF_PROJ, DEFAULT_HF_POOLER = "mlp", "mean_pooler"
#: open_clip's pooler of a Hugging Face text tower -> clip_jax's ``text_pooling``.
POOLERS = {"mean_pooler": "mean", "cls_pooler": "pooler", "cls_last_hidden_state_pooler": "cls"}
#: open_clip's default pooler per Hugging Face ``model_type`` (its ``hf_configs.arch_dict``), for a null one.
ARCH_POOLERS = {"roberta": "mean_pooler", "xlm-roberta": "mean_pooler", "bert": "cls_pooler"}
#: Hugging Face text towers open_clip can build (its ``arch_dict``) that clip_jax also has.
EXPORTABLE_TEXT = ("bert", "roberta", "xlm-roberta")
#: Old un-namespaced hub ids that open_clip's configs still name.
LEGACY_IDS = {
    "xlm-roberta-base": "FacebookAI/xlm-roberta-base",
    "xlm-roberta-large": "FacebookAI/xlm-roberta-large",
    "bert-base-multilingual-cased": "google-bert/bert-base-multilingual-cased",
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenClipExportError(ValueError):
    """A model open_clip's layout cannot express."""


def is_openclip_dir(directory: str | Path) -> bool:
    """Whether ``directory`` is in open_clip's hub layout."""
    return (Path(directory) / CONFIG_NAME).is_file()


def read_openclip_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}) — the file is damaged") from None
    if "model_cfg" not in raw:
        raise CheckpointError(f"{path} has no model_cfg — it is not an open_clip model config")
    return raw


# ------------------------------------------------------------------------------------------- names, as data
#: One transformer block: open_clip's name -> transformers' CLIP name (the fused q/k/v apart: _FUSED).
_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
#: ``nn.MultiheadAttention``'s fused input projection -> transformers' q / k / v projections (stacked in that order).
_FUSED = {"attn.in_proj_weight": "self_attn.{}_proj.weight", "attn.in_proj_bias": "self_attn.{}_proj.bias"}
_VISION = {
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_BUILTIN_TEXT = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
#: Stacks of blocks: open_clip's prefix -> transformers' prefix.
_STACKS = {
    "visual.transformer.resblocks.": "vision_model.encoder.layers.",
    "transformer.resblocks.": "text_model.encoder.layers.",
}
#: ``x @ proj`` matrices ``[in, out]`` -> ``nn.Linear`` weights ``[out, in]``.
_TRANSPOSED = {"visual.proj": "visual_projection.weight", "text_projection": "text_projection.weight"}
_HF_TEXT_PREFIX, _HF_PROJ = "text.transformer.", "text.proj.weight"
#: open_clip's MLP text head (``nn.Sequential``: Linear, GELU, Linear) -> clip_jax's ``MLPProjection``.
_HF_MLP = {
    "text.proj.0.weight": "text_projection.fc1.weight",
    "text.proj.2.weight": "text_projection.fc2.weight",
}
_SCALARS = ("logit_scale", "logit_bias")


def to_dual_encoder_names(state_dict: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """open_clip's weights under transformers' ``vision-text-dual-encoder`` names (q/k/v split); every name
    that has no place is reported at once."""
    out: dict[str, np.ndarray] = {}
    unknown = []
    fixed = {**_VISION, **_BUILTIN_TEXT}
    for name, array in state_dict.items():
        if name in fixed:
            out[fixed[name]] = array
        elif name in _TRANSPOSED:
            out[_TRANSPOSED[name]] = np.ascontiguousarray(np.asarray(array).T)
        elif name in _SCALARS:
            out[name] = np.asarray(array).reshape(())
        elif name == _HF_PROJ:
            out["text_projection.weight"] = array
        elif name in _HF_MLP:
            out[_HF_MLP[name]] = array
        elif name.startswith(_HF_TEXT_PREFIX):
            out["text_model." + name[len(_HF_TEXT_PREFIX) :]] = array
        elif name == "attn_mask":  # the built-in text tower's causal mask (a buffer in old checkpoints)
            continue
        else:
            stack = next((s for s in _STACKS if name.startswith(s)), None)
            match = re.match(r"(\d+)\.(.*)", name[len(stack) :]) if stack else None
            if match is None or (match.group(2) not in _BLOCK and match.group(2) not in _FUSED):
                unknown.append(name)
                continue
            layer, rest = match.groups()
            target = _STACKS[stack] + layer + "."
            if rest in _BLOCK:
                out[target + _BLOCK[rest]] = array
            else:
                for part, piece in zip("qkv", np.split(np.asarray(array), 3, axis=0)):
                    out[target + _FUSED[rest].format(part)] = piece
    if unknown:
        raise CheckpointError(
            f"{source}: open_clip weights with no place in clip_jax's CLIP ViT / text towers: "
            f"{', '.join(sorted(unknown)[:8])}{' ...' if len(unknown) > 8 else ''} — this open_clip architecture is "
            "not supported"
        )
    return out


def from_dual_encoder_names(tensors: Mapping[str, np.ndarray], hf_text: bool) -> dict[str, np.ndarray]:
    """transformers' ``vision-text-dual-encoder`` names -> open_clip's (q/k/v fused): the inverse of
    :func:`to_dual_encoder_names`, with the text tower as a Hugging Face tower (``hf_text``) or the built-in one."""
    inverse = {v: k for k, v in {**_VISION, **_BUILTIN_TEXT, **(_HF_MLP if hf_text else {})}.items()}
    stacks = {v: k for k, v in _STACKS.items()}
    blocks = {v: k for k, v in _BLOCK.items()}
    out: dict[str, np.ndarray] = {}
    fused: dict[str, dict[str, np.ndarray]] = {}
    for name, array in tensors.items():
        if name == "visual_projection.weight":
            out["visual.proj"] = np.ascontiguousarray(array.T)
        elif name == "text_projection.weight":
            out[_HF_PROJ if hf_text else "text_projection"] = (
                array if hf_text else np.ascontiguousarray(array.T)
            )
        elif name in _SCALARS:
            out[name] = np.asarray(array, np.float32).reshape(())
        elif hf_text and name.startswith("text_model."):
            out[_HF_TEXT_PREFIX + name[len("text_model.") :]] = array
        elif name in inverse:
            out[inverse[name]] = array
        else:
            stack = next(s for s in stacks if name.startswith(s))
            layer, rest = name[len(stack) :].split(".", 1)
            if rest in blocks:
                out[stacks[stack] + layer + "." + blocks[rest]] = array
                continue
            match = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            key = stacks[stack] + layer + ".attn.in_proj_" + match.group(2)
            fused.setdefault(key, {})[match.group(1)] = array
    for key, parts in fused.items():
        out[key] = np.concatenate([parts[p] for p in "qkv"], axis=0)
    return out


# ------------------------------------------------------------------------------------------------- reading
def _refuse(source: str, what: str, fix: str = "this open_clip model cannot be loaded into clip_jax") -> None:
    raise CheckpointError(f"{source}: {what} — {fix}")


def _vision_config(cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    """open_clip's ``vision_cfg`` as a transformers ``clip_vision_model`` config, refusing what CLIP's ViT lacks."""
    if cfg.get("timm_model_name"):
        _refuse(source, f"its image tower is a timm model ({cfg['timm_model_name']}), not open_clip's ViT")
    if isinstance(cfg.get("layers", 12), (list, tuple)):
        _refuse(source, "its image tower is a ModifiedResNet, not a ViT")
    _refuse_options(
        cfg,
        {"attentional_pool": False, "no_ln_pre": False, "final_ln_after_pool": False, "pool_type": "tok"},
        "vision_cfg",
        "CLIP's ViT",
        source,
    )
    image_size, patch_size = (
        _square(cfg.get("image_size", 224), source),
        _square(cfg.get("patch_size", 16), source),
    )
    width = int(cfg.get("width", 768))
    heads, rest = divmod(width, int(cfg.get("head_width", 64)))
    if rest:
        _refuse(source, f"vision_cfg.width {width} is not a multiple of head_width {cfg.get('head_width')}")
    return {
        "model_type": "clip_vision_model",
        "hidden_size": width,
        "intermediate_size": int(width * float(cfg.get("mlp_ratio", 4.0))),
        "num_hidden_layers": int(cfg.get("layers", 12)),
        "num_attention_heads": heads,
        "image_size": image_size,
        "patch_size": patch_size,
        "hidden_act": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
        "layer_norm_eps": float((cfg.get("norm_kwargs") or {}).get("eps", 1e-5)),
        "projection_dim": int(model_cfg["embed_dim"]),
    }


#: open_clip transformer options (both towers) that CLIP's towers have no counterpart for, with their defaults.
_TRANSFORMER_DEFAULTS = {
    "ls_init_value": None,
    "act_kwargs": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "block_type": None,
}


def _refuse_options(
    cfg: Mapping[str, Any], defaults: Mapping[str, Any], section: str, tower: str, source: str
) -> None:
    """Refuse (one line) any of the shared transformer options or this tower's ``defaults`` set otherwise."""
    for key, default in {**_TRANSFORMER_DEFAULTS, **defaults}.items():
        value = cfg.get(key, default)
        if value != default and not (key == "block_type" and value == "default"):
            _refuse(source, f"{section}.{key}={value!r} has no counterpart in {tower}")


def _square(size: Any, source: str) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            _refuse(source, f"a non-square size {list(size)}: clip_jax's ViT takes square images and patches")
        size = size[0]
    return int(size)


def _builtin_text_config(cfg: Mapping[str, Any], model_cfg: Mapping[str, Any], source: str) -> dict[str, Any]:
    """open_clip's built-in text transformer as a transformers ``clip_text_model`` config."""
    _refuse_options(
        cfg,
        {
            "embed_cls": False,
            "no_causal_mask": False,
            "final_ln_after_pool": False,
            "proj_bias": False,
            "proj_type": "linear",
        },
        "text_cfg",
        "CLIP's text tower",
        source,
    )
    pool = cfg.get("pool_type", "argmax")
    if pool not in ("argmax", "eos"):
        _refuse(source, f"text_cfg.pool_type={pool!r}: CLIP's text tower pools at the end-of-text token only")
    width = int(cfg.get("width", 512))
    # eos_token_id 2 makes our CLIP text tower pool at the highest id, as open_clip's argmax does
    eos = 2 if pool == "argmax" else int(cfg.get("eos_id", 2))
    return {
        "model_type": "clip_text_model",
        "vocab_size": int(cfg.get("vocab_size", 49408)),
        "hidden_size": width,
        "intermediate_size": int(width * float(cfg.get("mlp_ratio", 4.0))),
        "num_hidden_layers": int(cfg.get("layers", 12)),
        "num_attention_heads": int(cfg.get("heads", 8)),
        "max_position_embeddings": int(cfg.get("context_length", 77)),
        "hidden_act": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
        "layer_norm_eps": float((cfg.get("norm_kwargs") or {}).get("eps", 1e-5)),
        "pad_token_id": int(cfg.get("pad_id", 0)),
        "bos_token_id": int(cfg.get("vocab_size", 49408)) - 2,  # CLIP's start-of-text, the second highest id
        "eos_token_id": eos,
        "projection_dim": int(model_cfg["embed_dim"]),
    }


def hf_text_config(directory: Path, name: str, source: str) -> dict[str, Any]:
    """The ``config.json`` of the Hugging Face text tower ``name`` (``text_cfg.hf_model_name``): beside the
    weights (clip_jax's exports put it there), a local directory, the Hugging Face cache, or clip_jax's copy."""
    from clip_jax.weights.readers import read_architecture, read_config

    beside = Path(directory) / "config.json"
    if beside.is_file():
        raw = read_config(Path(directory))
        if raw.get("model_type") and "vision_config" not in raw:
            return raw
    candidates = [name] + ([LEGACY_IDS[name]] if name in LEGACY_IDS else [])
    for candidate in candidates:
        if Path(candidate).expanduser().is_dir():
            return read_config(Path(candidate).expanduser())
        try:
            import huggingface_hub

            cached = huggingface_hub.try_to_load_from_cache(candidate, "config.json")
        except Exception:  # not a valid repo id
            cached = None
        if isinstance(cached, str):
            return read_config(Path(cached).parent)
        try:
            return read_architecture(candidate)[0]
        except CheckpointError:
            continue
    raise CheckpointError(
        f"{source}: the architecture of its text tower hf_model_name={name!r} is not known offline (no local "
        f"directory, not in the Hugging Face cache) — download it once (huggingface-cli download {name} "
        f"config.json), or put that tower's config.json beside {CONFIG_NAME}"
    )


def openclip_as_dual_encoder(directory: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """An open_clip directory's model as a ``vision-text-dual-encoder`` ``config.json`` (with its ``clip_jax``
    section: text pooling and projection, ``max_length``, the logit bias and scale ceiling) and weights under its
    names."""
    from clip_jax.weights.readers import _read_safetensors, _read_torch_bin

    directory = Path(directory)
    config, proj = _dual_encoder_config(directory)
    state_dict = _read_weights(directory, _read_safetensors, _read_torch_bin)
    weights = to_dual_encoder_names(state_dict, str(directory))
    if proj is None:  # open_clip's nn.Identity: a square identity projection
        weights["text_projection.weight"] = np.eye(config["projection_dim"], dtype=np.float32)
    if (
        config["clip_jax"]["text_pooling"] != "pooler"
    ):  # open_clip builds no pooler layer then; ours is unused
        weights = {k: v for k, v in weights.items() if not k.startswith("text_model.pooler.")}
    biased = "logit_bias" in weights  # the weights decide where they and the config disagree
    config["clip_jax"].update(
        logit_bias_init=float(weights["logit_bias"]) if biased else None,
        logit_scale_max=None if biased else math.log(100.0),
    )
    return config, weights


def openclip_architecture(spec: str) -> tuple[dict[str, Any], str] | None:
    """``(config.json, where it came from)`` of the open_clip model ``spec`` as a ``vision-text-dual-encoder``, read
    from ``open_clip_config.json`` and the text tower's ``config.json`` alone, no weights (what ``clip-jax plan``
    needs): a local open_clip directory, a hub id whose ``open_clip_config.json`` is cached, or one of the copies
    clip_jax ships for the recipes' hub ids (``weights/architectures/open_clip/``); None where ``spec`` is none."""
    from clip_jax.weights.readers import SHIPPED_ARCHITECTURES

    directory = find_openclip_dir(spec)
    if directory is not None:
        return _dual_encoder_config(directory)[0], str(directory / CONFIG_NAME)
    shipped = SHIPPED_ARCHITECTURES / "open_clip" / (spec.replace("/", "--") + ".json")
    if "/" in spec and not spec.startswith((".", "/", "~")) and shipped.is_file():
        raw = {k: v for k, v in json.loads(shipped.read_text()).items() if not k.startswith("_")}
        return _dual_encoder_config(shipped.parent, raw)[0], f"clip_jax's copy ({shipped.name})"
    return None


def find_openclip_dir(spec: str) -> Path | None:
    """The directory holding ``spec``'s ``open_clip_config.json``: ``spec`` itself when local, the Hugging Face
    cache's snapshot when ``spec`` is a hub id whose config was downloaded; None when it is neither."""
    path = Path(spec).expanduser()
    if is_openclip_dir(path):
        return path
    if "/" in spec and not spec.startswith((".", "/", "~")) and "://" not in spec:
        try:
            import huggingface_hub

            cached = huggingface_hub.try_to_load_from_cache(spec, CONFIG_NAME)
        except Exception:  # not a valid repo id
            return None
        if isinstance(cached, str):
            return Path(cached).parent
    return None


def _dual_encoder_config(
    directory: Path, raw: dict[str, Any] | None = None
) -> tuple[dict[str, Any], str | None]:
    """The dual encoder ``config.json`` of an open_clip directory (or of its ``open_clip_config.json``, ``raw``),
    and its ``hf_proj_type`` (None: identity)."""
    source = str(directory)
    raw = raw or read_openclip_config(directory)
    model_cfg = raw["model_cfg"]
    if "multimodal_cfg" in model_cfg:
        _refuse(source, "it is a CoCa model (a captioning decoder beside the towers)")
    if "embed_dim" not in model_cfg:
        _refuse(source, "its model_cfg has no embed_dim", "the config is damaged")
    vision = _vision_config(model_cfg.get("vision_cfg", {}), model_cfg, source)
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    embed_dim = int(model_cfg["embed_dim"])
    if text_cfg.get("hf_model_name"):
        text = hf_text_config(directory, text_cfg["hf_model_name"], source)
        proj = text_cfg.get("hf_proj_type", DEFAULT_HF_PROJ)
        pooler = text_cfg.get("hf_pooler_type", DEFAULT_HF_POOLER) or ARCH_POOLERS.get(text.get("model_type"))
        if pooler not in POOLERS:
            _refuse(
                source,
                f"its text pooler hf_pooler_type={pooler!r} has no counterpart in clip_jax ({', '.join(POOLERS)})",
            )
        pooling = POOLERS[pooler]
        width = int(text.get("hidden_size", text.get("d_model", 0)))
        if proj not in ("mlp", "linear", None) or (proj is None and width != embed_dim):
            _refuse(
                source,
                f"its text projection hf_proj_type={proj!r} is none of open_clip's mlp or linear heads (nor an "
                "identity between equal widths)",
            )
        limit = int(text.get("max_position_embeddings", 512)) - (
            int(text.get("pad_token_id", 0)) + 1
            if text.get("model_type") in ("roberta", "xlm-roberta", "camembert")
            else 0
        )
        max_length = min(int(text_cfg.get("context_length", 77)), limit)
    else:
        text = _builtin_text_config(text_cfg, model_cfg, source)
        proj, pooling, max_length = "linear", "pooler", text["max_position_embeddings"]
    # open_clip builds a logit_bias parameter exactly when init_logit_bias is set (SigLIP-style models)
    bias = model_cfg.get("init_logit_bias")
    config = {
        "model_type": "vision-text-dual-encoder",
        "vision_config": vision,
        "text_config": text,
        "projection_dim": embed_dim,
        "clip_jax": {
            "text_pooling": pooling,
            "text_projection": "mlp" if proj == "mlp" else "linear",
            "max_length": max_length,
            "logit_bias_init": None if bias is None else float(bias),
            # open_clip clamps the temperature at 100 while training CLIP, not SigLIP-style models
            "logit_scale_max": None if bias is not None else math.log(100.0),
            "open_clip": True,
        },
    }
    return config, proj


def _read_weights(directory: Path, read_safetensors, read_torch_bin) -> dict[str, np.ndarray]:
    for name in WEIGHT_NAMES:
        path = directory / name
        if path.is_file():
            return read_safetensors(path) if name.endswith(".safetensors") else read_torch_bin(path)
    raise CheckpointError(
        f"{directory} holds open_clip's config but no weights: expected one of {', '.join(WEIGHT_NAMES)}"
    )


def openclip_inputs(directory: str | Path) -> tuple[Any, Any]:
    """The tokenizer and image processor of an open_clip directory: its own files where it has them (clip_jax's
    exports write them), else ``text_cfg.hf_tokenizer_name`` (local or from the Hugging Face cache) and
    ``preprocess_cfg``."""
    from clip_jax.data.preprocess import ImageProcessorConfig
    from clip_jax.weights.tokenizers import TOKENIZER_FILES, load_tokenizer

    directory = Path(directory)
    raw = read_openclip_config(directory)
    text_cfg = raw["model_cfg"].get("text_cfg", {})
    if any((directory / f).is_file() for f in TOKENIZER_FILES):
        tokenizer = load_tokenizer(directory)
    else:
        name = (
            text_cfg.get("hf_tokenizer_name")
            or text_cfg.get("hf_model_name")
            or "openai/clip-vit-base-patch32"
        )
        tokenizer = None
        for candidate in [name] + ([LEGACY_IDS[name]] if name in LEGACY_IDS else []):
            try:
                tokenizer = load_tokenizer(candidate)
                break
            except Exception:  # not local, not cached: the next candidate, then the error below
                continue
        if tokenizer is None and not text_cfg.get("hf_model_name"):
            # the built-in text tower's BPE tokenizer is OpenAI's, not always at hand offline: images still embed
            logger.warning(
                "%s: no tokenizer files and %r is not available offline; the model has no tokenizer — pass "
                "one to encode text (CLIPModel.tokenizer)",
                directory,
                name,
            )
        elif tokenizer is None:
            raise CheckpointError(
                f"{directory}: its tokenizer {name!r} is not available offline (no tokenizer files beside the "
                f"weights, not in the Hugging Face cache) — download it once (huggingface-cli download {name}) "
                "or copy its tokenizer files into the directory"
            )
    processor = ImageProcessorConfig.from_pretrained(directory)
    if processor is None:
        pre = raw.get("preprocess_cfg", {})
        vision_cfg = raw["model_cfg"].get("vision_cfg", {})
        size = _square(pre.get("size", vision_cfg.get("image_size", 224)), str(directory))
        if pre.get("interpolation", "bicubic") != "bicubic" or pre.get("resize_mode", "shortest") not in (
            "shortest",
            "squash",
        ):
            logger.warning(
                "%s: preprocess_cfg %s is read as a bicubic resize; clip_jax's preprocessing differs slightly",
                directory,
                pre,
            )
        processor = ImageProcessorConfig(
            shortest_edge=size,
            crop_height=size,
            crop_width=size,
            image_mean=tuple(pre.get("mean", OPENAI_MEAN)),
            image_std=tuple(pre.get("std", OPENAI_STD)),
            do_center_crop=pre.get("resize_mode", "shortest") != "squash",
            resize_to_crop=pre.get("resize_mode", "shortest") == "squash",
        )
    return tokenizer, processor


# ------------------------------------------------------------------------------------------------- writing
def openclip_export(
    module: Any, tensors: Mapping[str, np.ndarray], image_processor: Any, max_length: int, hf_model_name: str
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None]:
    """``(open_clip_config.json, open_clip's weights, the HF text tower's config.json or None)`` of a dual
    encoder whose ``vision-text-dual-encoder`` weights are ``tensors``; :class:`OpenClipExportError` (one line)
    where open_clip cannot express it. ``hf_model_name``: where open_clip finds the text tower's architecture."""
    vision = module.vision.config.to_hf()
    text = module.text.config.to_hf()
    why = []
    if vision["model_type"] not in ("clip_vision_model", "metaclip_2_vision_model"):
        why.append(f"its vision tower is a {vision['model_type']}, not CLIP's ViT")
    if vision.get("hidden_act") not in ("gelu", "quick_gelu"):
        why.append(
            f"its vision tower's activation {vision.get('hidden_act')!r} is neither gelu nor quick_gelu"
        )
    hf_text = text["model_type"] in EXPORTABLE_TEXT
    builtin = text["model_type"] in ("clip_text_model", "metaclip_2_text_model")
    if not hf_text and not builtin:
        why.append(
            f"its text tower is a {text['model_type']}, which open_clip builds neither itself nor as a Hugging Face "
            f"tower ({', '.join(EXPORTABLE_TEXT)})"
        )
    pooler = {v: k for k, v in POOLERS.items()}.get(module.text_pooling)
    if hf_text and pooler is None:
        why.append(f"it pools text with {module.text_pooling!r}, which open_clip's text poolers cannot do")
    mlp = module.text_projection_kind == "mlp"
    if builtin and mlp:
        why.append("its text projection is an MLP; open_clip's built-in text tower has a linear one only")
    if builtin and module.text_pooling != "pooler":
        why.append(
            f"its CLIP text tower pools with {module.text_pooling!r}; open_clip pools at the end-of-text token"
        )
    if builtin and text.get("hidden_act") != vision.get("hidden_act"):
        why.append("its two towers use different activations; open_clip's quick_gelu flag sets both")
    if builtin and text.get("max_position_embeddings") != max_length:
        why.append(
            f"its CLIP text tower takes {text.get('max_position_embeddings')} positions but the model's max_length is "
            f"{max_length}; open_clip's built-in text tower always takes all of them"
        )
    width = vision["hidden_size"]
    mlp_ratio = vision["intermediate_size"] / width
    if int(width * mlp_ratio) != vision["intermediate_size"]:
        why.append(
            f"its vision MLP width {vision['intermediate_size']} is no ratio of {width} that open_clip rebuilds"
        )
    if why:
        raise OpenClipExportError("Cannot export in open_clip's layout: " + "; ".join(why))
    embed_dim = module.projection_dim
    vision_cfg: dict[str, Any] = {
        "image_size": vision["image_size"],
        "layers": vision["num_hidden_layers"],
        "width": width,
        "head_width": width // vision["num_attention_heads"],
        "mlp_ratio": mlp_ratio,
        "patch_size": vision["patch_size"],
    }
    if vision.get("layer_norm_eps", 1e-5) != 1e-5:
        vision_cfg["norm_kwargs"] = {"eps": vision["layer_norm_eps"]}
    if hf_text:
        text_cfg: dict[str, Any] = {
            "hf_model_name": hf_model_name,
            "hf_tokenizer_name": hf_model_name,
            "hf_proj_type": "mlp" if mlp else "linear",
            "hf_pooler_type": pooler,
            "context_length": max_length,
        }
        if module.text_pooling != "pooler":  # open_clip builds the tower without its pooler layer then
            tensors = {k: v for k, v in tensors.items() if not k.startswith("text_model.pooler.")}
    else:
        text_width = text["hidden_size"]
        text_cfg = {
            "context_length": text["max_position_embeddings"],
            "vocab_size": text["vocab_size"],
            "width": text_width,
            "heads": text["num_attention_heads"],
            "layers": text["num_hidden_layers"],
            "mlp_ratio": text["intermediate_size"] / text_width,
            "hf_tokenizer_name": hf_model_name,  # the tokenizer files written beside the weights
        }
        legacy = text.get("eos_token_id") == 2 and text["model_type"] == "clip_text_model"
        if not legacy:
            text_cfg.update(pool_type="eos", eos_id=text["eos_token_id"])
        if text.get("layer_norm_eps", 1e-5) != 1e-5:
            text_cfg["norm_kwargs"] = {"eps": text["layer_norm_eps"]}
    model_cfg: dict[str, Any] = {
        "embed_dim": embed_dim,
        "quick_gelu": vision["hidden_act"] == "quick_gelu",
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }
    if module.logit_bias is not None:
        model_cfg["init_logit_bias"] = float(np.asarray(tensors["logit_bias"]))
    processor = image_processor
    preprocess_cfg = {
        "size": vision["image_size"],
        "mean": list(processor.image_mean) if processor else list(OPENAI_MEAN),
        "std": list(processor.image_std) if processor else list(OPENAI_STD),
        "interpolation": "bicubic",
        "resize_mode": "squash" if processor is not None and processor.resize_to_crop else "shortest",
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
    return config, from_dual_encoder_names(tensors, hf_text), (text if hf_text else None)
