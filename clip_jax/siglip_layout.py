"""Whole SigLIP / SigLIP 2 models (transformers ``SiglipModel`` / ``Siglip2Model``) in and out of the dual
encoder.

A SigLIP model has no projections: its towers end in their own heads (the vision tower's attention pooling,
the text tower's dense head), whose outputs are compared directly, times ``exp(logit_scale)`` (not clamped)
plus ``logit_bias``. In clip_jax it becomes a :class:`~clip_jax.models.dual_encoder.DualEncoder` whose
projections start as the identity and whose temperature has no ceiling, so embeddings and logits are
SigLIP's. Written back (:func:`siglip_export`), the text projection folds exactly into the text head; the
vision projection has no place in SigLIP's layout, so a model whose vision projection is no longer the
identity is written in the dual-encoder layout instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from clip_jax.models.registry import architecture_of, normalised_config, tower_config
from clip_jax.weights.params import flat_params
from clip_jax.weights.readers import CheckpointError

logger = logging.getLogger(__name__)

#: The whole-model ``model_type`` of each family, by the ``model_type`` of its vision and text towers.
SIGLIP_MODEL_TYPES = {
    "siglip": ("siglip_vision_model", "siglip_text_model"),
    "siglip2": ("siglip2_vision_model", "siglip2_text_model"),
}


def is_siglip_model(config: Mapping[str, Any]) -> bool:
    """Whether a ``config.json`` is a whole SigLIP / SigLIP 2 model."""
    return config.get("model_type") in SIGLIP_MODEL_TYPES


def siglip_as_dual_encoder(
    config: Mapping[str, Any], state_dict: Mapping[str, np.ndarray], source: str = ""
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A SigLIP model's ``config.json`` and weights in the dual encoder's layout: identity projections as wide as
    the towers' outputs, the logit scale and bias as scalars, and no ceiling on the scale."""
    hf = normalised_config(dict(config), source)
    _, vision, _ = tower_config(hf, "vision", source)
    _, text, _ = tower_config(hf, "text", source)
    width = vision.hidden_size
    if text.pooled_size != width:
        raise CheckpointError(
            f"{source or 'config.json'}: the text head's projection_size {text.pooled_size} differs from the vision "
            f"tower's hidden_size {width}, so the two embeddings cannot be compared — the config is corrupt"
        )
    extra = dict(config.get("clip_jax", {}))
    extra.setdefault("logit_scale_max", None)  # SigLIP's temperature is not clamped
    converted = dict(config, projection_dim=width, clip_jax=extra)
    weights = dict(state_dict)
    identity = np.eye(width, dtype=np.float32)
    weights.setdefault("visual_projection.weight", identity)
    weights.setdefault("text_projection.weight", identity)
    for name in ("logit_scale", "logit_bias"):
        if name in weights:
            weights[name] = np.asarray(weights[name]).reshape(())
    return converted, weights


def siglip_export(module: Any, max_length: int | None) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """``(config.json, weights)`` of a dual encoder ``module`` in transformers' ``SiglipModel``
    / ``Siglip2Model`` layout, or None where that layout cannot hold it: towers not of one SigLIP family, text
    pooled otherwise than by its head, no logit bias, an MLP text projection, or a vision projection that is not
    the identity."""
    vision_type = module.vision.config.to_hf()["model_type"]
    text_type = module.text.config.to_hf()["model_type"]
    family = next((f for f, types in SIGLIP_MODEL_TYPES.items() if types == (vision_type, text_type)), None)
    if family is None:
        return None
    if (
        module.text_pooling != "pooler"
        or module.logit_bias is None
        or module.text_projection_kind != "linear"
    ):
        return None
    params = {path: np.asarray(jax.device_get(v)) for path, v in flat_params(module).items()}
    visual = params[("visual_projection", "kernel")]
    if visual.shape[0] != visual.shape[1] or not np.array_equal(
        visual, np.eye(visual.shape[0], dtype=visual.dtype)
    ):
        logger.warning(
            "The vision projection is no longer the identity (it was trained): SigLIP's layout has no place for "
            "it, so the model is written in the vision-text-dual-encoder layout."
        )
        return None
    text_projection = params.pop(("text_projection", "kernel")).astype(np.float64)
    del params[("visual_projection", "kernel")]
    head_kernel, head_bias = ("text", "head", "kernel"), ("text", "head", "bias")
    params[head_kernel] = (params[head_kernel].astype(np.float64) @ text_projection).astype(np.float32)
    params[head_bias] = (params[head_bias].astype(np.float64) @ text_projection).astype(np.float32)
    logit_scale, logit_bias = params.pop(("logit_scale",)), params.pop(("logit_bias",))
    vision_map = architecture_of(module.vision).key_map.prefixed("vision_model.", "vision.")
    text_map = architecture_of(module.text).key_map.prefixed("text_model.", "text.")
    tensors = (vision_map + text_map).export(params)
    tensors["logit_scale"] = np.asarray(logit_scale, np.float32).reshape(1)
    tensors["logit_bias"] = np.asarray(logit_bias, np.float32).reshape(1)
    text_config = dict(module.text.config.to_hf(), projection_size=module.projection_dim)
    config = {
        "model_type": family,
        "architectures": ["SiglipModel" if family == "siglip" else "Siglip2Model"],
        "vision_config": module.vision.config.to_hf(),
        "text_config": text_config,
        "clip_jax": {
            "text_pooling": "pooler",
            "max_length": max_length,
            "logit_scale_max": module.logit_scale_max,
        },
    }
    return config, tensors
