"""CLIP's vision transformer (Hugging Face ``clip_vision_model``; the vision half of ``clip``).

Pixels come in channels-last, ``[batch, height, width, 3]``. The outputs match
transformers' ``CLIPVisionModel``: ``last_hidden_state`` is the encoder output (before
the final LayerNorm) and ``pooler_output`` the post-LayerNorm class token.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from clip_jax.models.layers import (
    MLP,
    Attention,
    DType,
    HFConfig,
    TowerOutput,
    layer_norm,
    normal,
    run_layers,
)
from clip_jax.weights.keymap import CONV, HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, KeyMap, Rule


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig(HFConfig):
    """Hyper-parameters of a CLIP ViT; field names and defaults as transformers' ``CLIPVisionConfig``."""

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    projection_dim: int = 512
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    model_type = "clip_vision_model"

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclasses.dataclass(frozen=True)
class MetaClip2VisionConfig(CLIPVisionConfig):
    """Meta CLIP 2's vision tower (``metaclip_2_vision_model``): CLIP's ViT, weights under the same names."""

    model_type = "metaclip_2_vision_model"


@functools.lru_cache(maxsize=64)
def bicubic_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """``[out, in]`` matrix equal to PyTorch's bicubic interpolation (a=-0.75, align_corners=False).

    Used to resize the grid of position embeddings exactly as transformers'
    ``interpolate_pos_encoding`` does, so interpolated models match the reference.
    """
    a = -0.75
    matrix = np.zeros((out_size, in_size), np.float64)
    scale = in_size / out_size
    for dst in range(out_size):
        src = scale * (dst + 0.5) - 0.5
        base = math.floor(src)
        t = src - base
        weights = (
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
        )
        weights = (*weights, 1.0 - sum(weights))
        for offset, w in zip(range(-1, 3), weights):
            matrix[dst, min(max(base + offset, 0), in_size - 1)] += w
    return matrix.astype(np.float32)


def resize_position_embedding(table: jax.Array | np.ndarray, grid: tuple[int, int]) -> jax.Array:
    """Resize a ``[1 + g*g, dim]`` CLS+patch position table to a ``grid = (rows, cols)`` patch grid."""
    old = math.isqrt(table.shape[0] - 1)
    if old * old != table.shape[0] - 1:
        raise ValueError(f"Position table of {table.shape[0]} rows is not 1 + a square grid of patches.")
    if (old, old) == tuple(grid):
        return jnp.asarray(table)
    patches = jnp.asarray(table[1:]).reshape(old, old, -1)
    rows, cols = bicubic_resize_matrix(old, grid[0]), bicubic_resize_matrix(old, grid[1])
    resized = jnp.einsum(
        "yi,xj,ijd->yxd", rows, cols, patches.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    ).astype(table.dtype)
    return jnp.concatenate([jnp.asarray(table[:1]), resized.reshape(grid[0] * grid[1], -1)], axis=0)


class PreNormBlock(nnx.Module):
    """A CLIP transformer layer: ``x + attn(ln1(x))`` then ``x + mlp(ln2(x))``.

    Random initialisation as transformers' ``CLIPPreTrainedModel._init_weights``: query/key/value
    and fc2 draw from ``normal(d^-0.5 (2 L)^-0.5 f)``, the output projection from ``normal(d^-0.5 f)``,
    fc1 from ``normal((2 d)^-0.5 f)`` (``d`` the width, ``L`` the depth, ``f`` ``initializer_factor``).
    """

    def __init__(
        self,
        hidden_size: int,
        intermediate_size: int,
        num_heads: int,
        act: str,
        eps: float,
        attention_dropout: float,
        *,
        num_layers: int,
        initializer_factor: float = 1.0,
        dtype: DType,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        in_std = hidden_size**-0.5 * (2 * num_layers) ** -0.5 * initializer_factor
        self.layer_norm1 = layer_norm(hidden_size, eps, **kwargs)
        self.attention = Attention(
            hidden_size,
            num_heads,
            dropout=attention_dropout,
            in_init=normal(in_std),
            out_init=normal(hidden_size**-0.5 * initializer_factor),
            **kwargs,
        )
        self.layer_norm2 = layer_norm(hidden_size, eps, **kwargs)
        self.mlp = MLP(
            hidden_size,
            intermediate_size,
            act,
            fc1_init=normal((2 * hidden_size) ** -0.5 * initializer_factor),
            fc2_init=normal(in_std),
            **kwargs,
        )

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        x = x + self.attention(self.layer_norm1(x), mask, deterministic=deterministic, rngs=rngs)
        return x + self.mlp(self.layer_norm2(x))


class CLIPVisionTransformer(nnx.Module):
    """CLIP ViT: patch embedding, class token, position embedding, pre-norm encoder, pooled CLS.

    Built from a config alone, it is initialised as transformers initialises ``CLIPVisionModel``
    (``initializer_range`` and ``initializer_factor`` honoured; see :class:`PreNormBlock`).
    """

    def __init__(
        self,
        config: CLIPVisionConfig,
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
        d, factor = config.hidden_size, config.initializer_factor
        std = config.initializer_range * factor
        self.patch_embedding = nnx.Conv(
            config.num_channels,
            d,
            kernel_size=(config.patch_size,) * 2,
            strides=(config.patch_size,) * 2,
            padding="VALID",
            use_bias=False,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=normal(std),
            rngs=rngs,
        )
        self.class_embedding = nnx.Param(normal(d**-0.5 * factor)(rngs.params(), (d,), param_dtype))
        self.position_embedding = nnx.Param(
            normal(std)(rngs.params(), (config.grid_size**2 + 1, d), param_dtype)
        )
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.pre_layernorm = layer_norm(d, config.layer_norm_eps, **kwargs)
        self.layers = nnx.List(
            [
                PreNormBlock(
                    d,
                    config.intermediate_size,
                    config.num_attention_heads,
                    config.hidden_act,
                    config.layer_norm_eps,
                    config.attention_dropout,
                    num_layers=config.num_hidden_layers,
                    initializer_factor=factor,
                    **kwargs,
                )
                for _ in range(config.num_hidden_layers)
            ]
        )
        self.post_layernorm = layer_norm(d, config.layer_norm_eps, **kwargs)

    def __call__(
        self,
        pixel_values: jax.Array,
        *,
        interpolate_pos_encoding: bool = False,
        output_hidden_states: bool = False,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> TowerOutput:
        """Encode ``pixel_values`` ``[batch, height, width, channels]`` (normalised floats).

        Images of another size than ``config.image_size`` need ``interpolate_pos_encoding=True``
        (bicubic, as transformers); to change the size for good, load the tower with ``image_size=``.
        """
        if pixel_values.ndim != 4 or pixel_values.shape[-1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values must be [batch, height, width, {self.config.num_channels}] (channels last); got "
                f"shape {tuple(pixel_values.shape)}. Transpose PyTorch-style [N, C, H, W] with x.transpose(0, 2, 3, 1)."
            )
        height, width = pixel_values.shape[1:3]
        p = self.config.patch_size
        if (height, width) != (self.config.image_size,) * 2 and not interpolate_pos_encoding:
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match the model's ({self.config.image_size}*"
                f"{self.config.image_size}); pass interpolate_pos_encoding=True or resize the images."
            )
        dtype = self.dtype or self.position_embedding.get_value().dtype
        patches = self.patch_embedding(pixel_values.astype(dtype))
        batch = patches.shape[0]
        patches = patches.reshape(batch, -1, patches.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(patches.dtype), (batch, 1, patches.shape[-1]))
        positions = resize_position_embedding(self.position_embedding[...], (height // p, width // p))
        x = jnp.concatenate([cls, patches], axis=1) + positions.astype(patches.dtype)
        x, hidden_states = run_layers(
            self.layers, self.pre_layernorm(x), None, remat=self.remat, deterministic=deterministic, rngs=rngs
        )
        pooled = self.post_layernorm(x[:, 0])
        return TowerOutput(x, pooled, tuple(hidden_states) if output_hidden_states else None)


#: PyTorch CLIPEncoder layers <-> our PreNormBlocks; shared by the vision and text towers.
CLIP_ENCODER_RULES = (
    *[
        Rule(
            f"encoder.layers.{{i}}.self_attn.{hf}_proj.weight",
            f"layers.{{i}}.attention.{ours}.kernel",
            HEADS_IN,
        )
        for hf, ours in (("q", "query"), ("k", "key"), ("v", "value"))
    ],
    *[
        Rule(
            f"encoder.layers.{{i}}.self_attn.{hf}_proj.bias",
            f"layers.{{i}}.attention.{ours}.bias",
            HEADS_BIAS,
        )
        for hf, ours in (("q", "query"), ("k", "key"), ("v", "value"))
    ],
    Rule("encoder.layers.{i}.self_attn.out_proj.weight", "layers.{i}.attention.out.kernel", HEADS_OUT),
    Rule("encoder.layers.{i}.self_attn.out_proj.bias", "layers.{i}.attention.out.bias"),
    *[
        Rule(f"encoder.layers.{{i}}.layer_norm{n}.weight", f"layers.{{i}}.layer_norm{n}.scale")
        for n in (1, 2)
    ],
    *[Rule(f"encoder.layers.{{i}}.layer_norm{n}.bias", f"layers.{{i}}.layer_norm{n}.bias") for n in (1, 2)],
    *[
        Rule(f"encoder.layers.{{i}}.mlp.fc{n}.weight", f"layers.{{i}}.mlp.fc{n}.kernel", LINEAR)
        for n in (1, 2)
    ],
    *[Rule(f"encoder.layers.{{i}}.mlp.fc{n}.bias", f"layers.{{i}}.mlp.fc{n}.bias") for n in (1, 2)],
)

KEY_MAP = KeyMap(
    [
        Rule("embeddings.class_embedding", "class_embedding"),
        Rule("embeddings.patch_embedding.weight", "patch_embedding.kernel", CONV),
        Rule("embeddings.position_embedding.weight", "position_embedding"),
        Rule("pre_layrnorm.weight", "pre_layernorm.scale"),
        Rule("pre_layrnorm.bias", "pre_layernorm.bias"),
        *CLIP_ENCODER_RULES,
        Rule("post_layernorm.weight", "post_layernorm.scale"),
        Rule("post_layernorm.bias", "post_layernorm.bias"),
    ]
)
