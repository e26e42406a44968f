"""Hugging Face checkpoints in (safetensors, sharded, .bin, legacy Flax msgpack) and out."""

from clip_jax.weights.keymap import KeyMap, Rule, Transform
from clip_jax.weights.params import flat_params, load_params
from clip_jax.weights.readers import CheckpointError, read_config, read_state_dict, resolve_checkpoint

__all__ = [
    "CheckpointError",
    "KeyMap",
    "Rule",
    "Transform",
    "flat_params",
    "load_params",
    "read_config",
    "read_state_dict",
    "resolve_checkpoint",
]
