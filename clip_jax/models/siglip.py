"""SigLIP and SigLIP 2 towers (Hugging Face ``siglip_vision_model``, ``siglip2_vision_model``,
``siglip_text_model``, ``siglip2_text_model``; the halves of ``siglip`` and ``siglip2``).

The vision towers are pre-norm ViTs without a class token: ``last_hidden_state`` is the encoder output after
the final LayerNorm and ``pooler_output`` the multi-head attention-pooling head's output (a learned probe
attends to every patch), as transformers' ``SiglipVisionModel``. SigLIP 2's tower embeds flattened patches
with a dense layer (NaFlex); here it runs at its fixed resolution (the square grid of ``num_patches``, no
padding patches), where transformers' position-embedding resize is the identity. Pixels come channels-last.

The text tower is bidirectional; ``pooler_output`` is its head (a dense layer) applied to the final state of
the *last position*, so texts must be padded to the tower's fixed length (``pads_to_max_length``), as the
SigLIP processors do with ``padding="max_length"``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from clip_jax.models.layers import (
    MLP,
    Dense,
    DType,
    HFConfig,
    TowerOutput,
    dense_product,
    layer_norm,
    normal,
    padding_mask,
    run_layers,
)
from clip_jax.models.vit import CLIP_ENCODER_RULES, PreNormBlock
from clip_jax.weights.keymap import CONV, IDENTITY, LINEAR, KeyMap, Rule


def _encoder_layers(config, *, dtype: DType, param_dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.List:
    """SigLIP's encoder layers: CLIP's pre-norm block (same parameter names in transformers)."""
    return nnx.List(
        [
            PreNormBlock(
                config.hidden_size,
                config.intermediate_size,
                config.num_attention_heads,
                config.hidden_act,
                config.layer_norm_eps,
                config.attention_dropout,
                num_layers=config.num_hidden_layers,
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            for _ in range(config.num_hidden_layers)
        ]
    )


def _check_head(hf: dict) -> None:
    if not hf.get("vision_use_head", True):
        raise ValueError(
            "vision_use_head=False: this SigLIP vision tower has no pooling head, so it gives no image "
            "embedding — use a checkpoint with its head"
        )


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig(HFConfig):
    """Hyper-parameters of SigLIP's vision tower; names and defaults as transformers' ``SiglipVisionConfig``."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0

    model_type = "siglip_vision_model"
    hf_extra: ClassVar[dict[str, Any]] = {"vision_use_head": True}  # clip_jax needs the pooling head

    @classmethod
    def check_hf(cls, hf: dict) -> None:
        _check_head(hf)

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class Siglip2VisionConfig(HFConfig):
    """SigLIP 2's vision tower at its fixed resolution; names and defaults as ``Siglip2VisionConfig``.

    ``image_size`` is derived: the side of the square grid of ``num_patches`` patches, in pixels.
    """

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    num_patches: int = 256
    patch_size: int = 16
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0

    model_type = "siglip2_vision_model"
    hf_extra: ClassVar[dict[str, Any]] = {"vision_use_head": True}  # clip_jax needs the pooling head

    @classmethod
    def check_hf(cls, hf: dict) -> None:
        _check_head(hf)

    def __post_init__(self):
        if math.isqrt(self.num_patches) ** 2 != self.num_patches:
            raise ValueError(
                f"num_patches={self.num_patches} is not a square grid; clip_jax runs SigLIP 2 at its fixed "
                "square resolution only"
            )

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.num_patches)

    @property
    def image_size(self) -> int:
        return self.grid_size * self.patch_size


@dataclasses.dataclass(frozen=True)
class SiglipTextConfig(HFConfig):
    """Hyper-parameters of SigLIP's text tower; names and defaults as transformers' ``SiglipTextConfig``."""

    vocab_size: int = 32000
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 64
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    #: Width of the head's output (``pooler_output``); None: ``hidden_size``, as transformers.
    projection_size: int | None = None

    model_type = "siglip_text_model"

    def __post_init__(self):
        if self.projection_size is None:
            object.__setattr__(self, "projection_size", self.hidden_size)

    @property
    def max_length(self) -> int:
        """The tower's fixed token length (texts are padded to it)."""
        return self.max_position_embeddings

    @property
    def pooled_size(self) -> int:
        """Width of ``pooler_output`` (the head's output)."""
        return self.projection_size

    #: The pooled state is the last position's: texts must be padded to ``max_length``.
    pads_to_max_length = True


@dataclasses.dataclass(frozen=True)
class Siglip2TextConfig(SiglipTextConfig):
    """SigLIP 2's text tower: the same architecture as SigLIP's (``Siglip2TextConfig``)."""

    model_type = "siglip2_text_model"


def _affine(x: jax.Array, kernel: jax.Array, bias: jax.Array, dtype: DType) -> jax.Array:
    """``x @ kernel + bias`` in ``dtype`` (default: ``x``'s), through :func:`dense_product` as every dense map."""
    if dtype is not None:
        x = x.astype(dtype)
    return dense_product(x, kernel) + bias.astype(x.dtype)


class AttentionPoolingHead(nnx.Module):
    """SigLIP's multi-head attention pooling: a learned probe attends to the tokens (``nn.MultiheadAttention``,
    its fused input projection kept as one ``in_proj``), then ``x + mlp(layernorm(x))``; returns
    ``[batch, hidden]``."""

    def __init__(self, config, *, dtype: DType, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        d = config.hidden_size
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.probe = nnx.Param(nnx.initializers.xavier_uniform()(rngs.params(), (1, 1, d), param_dtype))
        self.in_proj = Dense(d, 3 * d, kernel_init=nnx.initializers.xavier_uniform(), **kwargs)
        self.out_proj = Dense(d, d, kernel_init=nnx.initializers.lecun_normal(), **kwargs)
        self.layernorm = layer_norm(d, config.layer_norm_eps, **kwargs)
        self.mlp = MLP(d, config.intermediate_size, config.hidden_act, **kwargs)
        self.num_heads = config.num_attention_heads
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, seq, d = x.shape
        heads, head_dim = self.num_heads, d // self.num_heads
        kernel, bias = self.in_proj.kernel[...], self.in_proj.bias[...]
        q = _affine(self.probe[...][0].astype(x.dtype), kernel[:, :d], bias[:d], self.dtype)
        k = _affine(x, kernel[:, d : 2 * d], bias[d : 2 * d], self.dtype).reshape(batch, seq, heads, head_dim)
        v = _affine(x, kernel[:, 2 * d :], bias[2 * d :], self.dtype).reshape(batch, seq, heads, head_dim)
        q = q.reshape(1, heads, head_dim)
        scores = jnp.einsum("qhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) / math.sqrt(head_dim)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        context = jnp.einsum("bhqs,bshk->bqhk", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)
        pooled = self.out_proj(context.reshape(batch, 1, d))
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


class SiglipVisionTransformer(nnx.Module):
    """SigLIP / SigLIP 2 ViT: patch embedding (a convolution, or SigLIP 2's dense map of flattened patches),
    position embedding (no class token), pre-norm encoder, final LayerNorm, attention-pooling head."""

    def __init__(
        self,
        config: SiglipVisionConfig | Siglip2VisionConfig,
        *,
        dtype: DType = None,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if config.image_size % config.patch_size:
            raise ValueError(
                f"image_size {config.image_size} is not a multiple of patch_size {config.patch_size}."
            )
        self.config = config
        self.remat = False  # gradient checkpointing per layer; set by the trainer
        self.dtype = dtype
        d, p, c = config.hidden_size, config.patch_size, config.num_channels
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if isinstance(config, Siglip2VisionConfig):
            self.patch_embedding = Dense(p * p * c, d, kernel_init=nnx.initializers.lecun_normal(), **kwargs)
        else:
            self.patch_embedding = nnx.Conv(
                c,
                d,
                kernel_size=(p, p),
                strides=(p, p),
                padding="VALID",
                kernel_init=nnx.initializers.lecun_normal(),
                **kwargs,
            )
        self.position_embedding = nnx.Param(
            normal(d**-0.5)(rngs.params(), (config.grid_size**2, d), param_dtype)
        )
        self.layers = _encoder_layers(config, **kwargs)
        self.post_layernorm = layer_norm(d, config.layer_norm_eps, **kwargs)
        self.head = AttentionPoolingHead(config, **kwargs)

    def patches(self, pixel_values: jax.Array) -> jax.Array:
        """Patch embeddings ``[batch, grid * grid, hidden]`` of channels-last pixels."""
        dtype = self.dtype or self.position_embedding.get_value().dtype
        pixel_values = pixel_values.astype(dtype)
        if isinstance(self.patch_embedding, Dense):  # SigLIP 2: patches flattened as (row, column, channel)
            batch, height, width, channels = pixel_values.shape
            p = self.config.patch_size
            grid = pixel_values.reshape(batch, height // p, p, width // p, p, channels).transpose(
                0, 1, 3, 2, 4, 5
            )
            return self.patch_embedding(grid.reshape(batch, (height // p) * (width // p), p * p * channels))
        patches = self.patch_embedding(pixel_values)
        return patches.reshape(patches.shape[0], -1, patches.shape[-1])

    def __call__(
        self,
        pixel_values: jax.Array,
        *,
        output_hidden_states: bool = False,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> TowerOutput:
        """Encode ``pixel_values`` ``[batch, image_size, image_size, channels]`` (normalised floats)."""
        size, channels = self.config.image_size, self.config.num_channels
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != channels:
            raise ValueError(
                f"pixel_values must be [batch, height, width, {channels}] (channels last); got shape "
                f"{tuple(pixel_values.shape)}. Transpose PyTorch-style [N, C, H, W] with x.transpose(0, 2, 3, 1)."
            )
        if tuple(pixel_values.shape[1:3]) != (size, size):
            raise ValueError(
                f"Input image size ({pixel_values.shape[1]}*{pixel_values.shape[2]}) doesn't match the model's "
                f"({size}*{size}); resize the images (this tower runs at its fixed resolution)."
            )
        patches = self.patches(pixel_values)
        x = patches + self.position_embedding[...].astype(patches.dtype)
        x, hidden_states = run_layers(
            self.layers, x, None, remat=self.remat, deterministic=deterministic, rngs=rngs
        )
        x = self.post_layernorm(x)
        return TowerOutput(x, self.head(x), tuple(hidden_states) if output_hidden_states else None)


class SiglipTextTransformer(nnx.Module):
    """Token + position embeddings, bidirectional pre-norm encoder, final LayerNorm, and the head (a dense
    layer) on the last position's state."""

    def __init__(
        self,
        config: SiglipTextConfig,
        *,
        dtype: DType = None,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.remat = False  # gradient checkpointing per layer; set by the trainer
        d = config.hidden_size
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        embed_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
        self.token_embedding = nnx.Embed(config.vocab_size, d, embedding_init=embed_init, **kwargs)
        self.position_embedding = nnx.Embed(
            config.max_position_embeddings, d, embedding_init=embed_init, **kwargs
        )
        self.layers = _encoder_layers(config, **kwargs)
        self.final_layer_norm = layer_norm(d, config.layer_norm_eps, **kwargs)
        self.head = Dense(d, config.pooled_size, kernel_init=nnx.initializers.lecun_normal(), **kwargs)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        output_hidden_states: bool = False,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> TowerOutput:
        """Encode ``input_ids`` ``[batch, seq]`` (padded to ``max_length``: the last position is pooled)."""
        seq = input_ids.shape[1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {seq} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}; truncate the text."
            )
        if position_ids is None:
            position_ids = jnp.arange(seq)[None, :]
        x = self.token_embedding(input_ids) + self.position_embedding(position_ids)
        mask = padding_mask(attention_mask) if attention_mask is not None else None
        x, hidden_states = run_layers(
            self.layers, x, mask, remat=self.remat, deterministic=deterministic, rngs=rngs
        )
        x = self.final_layer_norm(x)
        return TowerOutput(x, self.head(x[:, -1]), tuple(hidden_states) if output_hidden_states else None)


_HEAD_RULES = (
    Rule("head.probe", "head.probe"),
    Rule("head.attention.in_proj_weight", "head.in_proj.kernel", LINEAR),
    Rule("head.attention.in_proj_bias", "head.in_proj.bias"),
    Rule("head.attention.out_proj.weight", "head.out_proj.kernel", LINEAR),
    Rule("head.attention.out_proj.bias", "head.out_proj.bias"),
    Rule("head.layernorm.weight", "head.layernorm.scale"),
    Rule("head.layernorm.bias", "head.layernorm.bias"),
    *[Rule(f"head.mlp.fc{n}.weight", f"head.mlp.fc{n}.kernel", LINEAR) for n in (1, 2)],
    *[Rule(f"head.mlp.fc{n}.bias", f"head.mlp.fc{n}.bias") for n in (1, 2)],
)
_VISION_COMMON = (
    Rule("embeddings.patch_embedding.bias", "patch_embedding.bias"),
    Rule("embeddings.position_embedding.weight", "position_embedding"),
    *CLIP_ENCODER_RULES,
    Rule("post_layernorm.weight", "post_layernorm.scale"),
    Rule("post_layernorm.bias", "post_layernorm.bias"),
    *_HEAD_RULES,
)
VISION_KEY_MAP = KeyMap(
    [Rule("embeddings.patch_embedding.weight", "patch_embedding.kernel", CONV), *_VISION_COMMON]
)
VISION2_KEY_MAP = KeyMap(
    [Rule("embeddings.patch_embedding.weight", "patch_embedding.kernel", LINEAR), *_VISION_COMMON]
)
TEXT_KEY_MAP = KeyMap(
    [
        Rule("embeddings.token_embedding.weight", "token_embedding.embedding", IDENTITY),
        Rule("embeddings.position_embedding.weight", "position_embedding.embedding", IDENTITY),
        *CLIP_ENCODER_RULES,
        Rule("final_layer_norm.weight", "final_layer_norm.scale"),
        Rule("final_layer_norm.bias", "final_layer_norm.bias"),
        Rule("head.weight", "head.kernel", LINEAR),
        Rule("head.bias", "head.bias"),
    ]
)
