"""The dual encoder: a vision tower and a text tower, each followed by a projection into a shared
embedding space (linear; for text optionally open_clip's two-layer MLP head), and a learned temperature
(plus an optional bias for the sigmoid loss). Parameter names follow transformers'
``VisionTextDualEncoderModel``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from clip_jax.models.layers import Dense, TowerOutput
from clip_jax.models.registry import POOLINGS
from clip_jax.weights.keymap import IDENTITY, LINEAR, KeyMap, Rule

#: CLIP's initial temperature, log(1 / 0.07), and the ceiling exp(logit_scale) <= 100.
LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)
#: The text projection's kinds: one linear map (CLIP, transformers), or open_clip's ``hf_proj_type='mlp'`` head.
TEXT_PROJECTIONS = ("linear", "mlp")


@struct.dataclass
class DualEncoderOutput:
    """L2-normalised embeddings and the (clamped, exponentiated) logit scale."""

    image_embeds: jax.Array
    text_embeds: jax.Array
    logit_scale: jax.Array
    logit_bias: jax.Array | None = None


def pool_text(output: TowerOutput, attention_mask: jax.Array | None, method: str) -> jax.Array:
    """Sentence features from a text tower's output.

    ``pooler``: the tower's ``pooler_output`` (BERT's tanh pooler; CLIP's end-of-text state) —
    what ``VisionTextDualEncoderModel`` uses. ``cls``: the first token's final state. ``mean``:
    masked mean over tokens. ``eos``: the final state of the last attended token.
    """
    hidden = output.last_hidden_state
    if attention_mask is None:
        attention_mask = jnp.ones(hidden.shape[:2], jnp.int32)
    if method == "pooler":
        if output.pooler_output is None:
            raise ValueError(
                "text_pooling='pooler' but the text tower has no pooler; use 'cls', 'mean' or 'eos'."
            )
        return output.pooler_output
    if method == "cls":
        return hidden[:, 0]
    if method == "mean":
        mask = attention_mask.astype(hidden.dtype)[..., None]
        return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1)
    if method == "eos":
        last = jnp.maximum(attention_mask.astype(jnp.int32).sum(axis=1) - 1, 0)
        return jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    raise ValueError(f"Unknown text_pooling {method!r}; choose one of {POOLINGS}.")


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / ||x||`` along the last axis, computed in float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class MLPProjection(nnx.Module):
    """open_clip's MLP text head (``hf_proj_type='mlp'``): ``fc2(gelu(fc1(x)))`` with exact GELU, no biases, and
    a hidden width of ``(in_features + out_features) // 2``."""

    def __init__(self, in_features: int, out_features: int, **kwargs):
        hidden = (in_features + out_features) // 2
        self.fc1 = Dense(in_features, hidden, **kwargs)
        self.fc2 = Dense(hidden, out_features, **kwargs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class DualEncoder(nnx.Module):
    """Vision tower + text tower + projections + learned logit scale (and optional logit bias).

    ``logit_scale_max``: the ceiling of the log scale (CLIP's ln 100); None for none (SigLIP's models).
    ``text_projection_kind``: ``linear`` (one matrix) or ``mlp`` (open_clip's :class:`MLPProjection`).
    """

    def __init__(
        self,
        vision: nnx.Module,
        text: nnx.Module,
        *,
        projection_dim: int = 512,
        text_pooling: str = "pooler",
        text_projection_kind: str = "linear",
        logit_scale_init: float = LOGIT_SCALE_INIT,
        logit_bias_init: float | None = None,
        logit_scale_max: float | None = LOGIT_SCALE_MAX,
        dtype: jnp.dtype | None = None,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if text_pooling not in POOLINGS:
            raise ValueError(f"Unknown text_pooling {text_pooling!r}; choose one of {POOLINGS}.")
        if text_projection_kind not in TEXT_PROJECTIONS:
            raise ValueError(
                f"Unknown text projection {text_projection_kind!r}; choose one of {TEXT_PROJECTIONS}."
            )
        self.vision = vision
        self.text = text
        self.projection_dim = projection_dim
        self.text_pooling = text_pooling
        init = nnx.initializers.normal(0.02)
        kwargs = dict(use_bias=False, kernel_init=init, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.visual_projection = Dense(vision.config.hidden_size, projection_dim, **kwargs)
        # A text tower whose pooler ends in its own head (SigLIP) pools to that head's width.
        text_width = getattr(text.config, "pooled_size", None) if text_pooling == "pooler" else None
        #: the text projection's input width: the pooled text features'
        self.pooled_text_size = text_width or text.config.hidden_size
        self.text_projection_kind = text_projection_kind
        head = MLPProjection if text_projection_kind == "mlp" else Dense
        self.text_projection = head(self.pooled_text_size, projection_dim, **kwargs)
        self.logit_scale = nnx.Param(jnp.asarray(logit_scale_init, jnp.float32))
        self.logit_scale_max = logit_scale_max
        self.logit_bias = (
            nnx.Param(jnp.asarray(logit_bias_init, jnp.float32)) if logit_bias_init is not None else None
        )

    # The towers' pooled outputs, and the head on top of them (what a phase on cached features trains).
    def pooled_image(self, pixel_values: jax.Array, **kwargs) -> jax.Array:
        """The vision tower's pooled output ``[batch, vision hidden]``; pixels channels-last."""
        return self.vision(pixel_values, **kwargs).pooler_output

    def pooled_text(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, **kwargs
    ) -> jax.Array:
        """The text tower's sentence features ``[batch, text hidden]``, pooled as ``text_pooling`` says."""
        return pool_text(self.text(input_ids, attention_mask, **kwargs), attention_mask, self.text_pooling)

    def project_image(self, pooled: jax.Array) -> jax.Array:
        return self.visual_projection(pooled)

    def project_text(self, pooled: jax.Array) -> jax.Array:
        return self.text_projection(pooled)

    def image_features(self, pixel_values: jax.Array, **kwargs) -> jax.Array:
        """Projected (not normalised) image features ``[batch, projection_dim]``; pixels channels-last."""
        return self.project_image(self.pooled_image(pixel_values, **kwargs))

    def text_features(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, **kwargs
    ) -> jax.Array:
        """Projected (not normalised) text features ``[batch, projection_dim]``."""
        return self.project_text(self.pooled_text(input_ids, attention_mask, **kwargs))

    def contrastive_head(self, image_features: jax.Array, text_features: jax.Array) -> DualEncoderOutput:
        """Normalised embeddings and the temperature (and bias) from projected features."""
        bias = self.logit_bias[...] if self.logit_bias is not None else None
        return DualEncoderOutput(
            l2_normalize(image_features), l2_normalize(text_features), self.scale(), bias
        )

    def scale(self) -> jax.Array:
        """``exp(logit_scale)``, clamped at ``exp(logit_scale_max)`` (100 unless built otherwise)."""
        if self.logit_scale_max is None:
            return jnp.exp(self.logit_scale[...])
        return jnp.exp(jnp.minimum(self.logit_scale[...], self.logit_scale_max))

    def __call__(
        self,
        pixel_values: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> DualEncoderOutput:
        kwargs = dict(deterministic=deterministic, rngs=rngs)
        return self.contrastive_head(
            self.image_features(pixel_values, **kwargs),
            self.text_features(input_ids, attention_mask, **kwargs),
        )


HEAD_KEY_MAP = KeyMap(
    [
        Rule("visual_projection.weight", "visual_projection.kernel", LINEAR),
        Rule("text_projection.weight", "text_projection.kernel", LINEAR),
        Rule("text_projection.fc1.weight", "text_projection.fc1.kernel", LINEAR),
        Rule("text_projection.fc2.weight", "text_projection.fc2.kernel", LINEAR),
        Rule("logit_scale", "logit_scale", IDENTITY),
        Rule("logit_bias", "logit_bias", IDENTITY),
    ]
)


def dual_encoder_key_map(
    vision_map: KeyMap,
    text_map: KeyMap,
    vision_prefix: str = "vision_model.",
    text_prefix: str = "text_model.",
) -> KeyMap:
    """The whole model's PyTorch <-> our names, with each tower's keys under its prefix."""
    return (
        vision_map.prefixed(vision_prefix, "vision.") + text_map.prefixed(text_prefix, "text.") + HEAD_KEY_MAP
    )
