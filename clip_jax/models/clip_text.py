"""CLIP's text transformer (Hugging Face ``clip_text_model``; the text half of ``clip``).

Causal pre-norm transformer; ``pooler_output`` is the final-LayerNorm state at the
end-of-text token, located exactly as transformers does (legacy configs with
``eos_token_id == 2`` take the highest token id, as OpenAI's code did).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from clip_jax.models.layers import (
    DType,
    HFConfig,
    TowerOutput,
    layer_norm,
    normal,
    padding_mask,
    run_layers,
)
from clip_jax.models.vit import CLIP_ENCODER_RULES, PreNormBlock
from clip_jax.weights.keymap import KeyMap, Rule


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig(HFConfig):
    """Hyper-parameters of CLIP's text tower; names and defaults as transformers' ``CLIPTextConfig``."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    pad_token_id: int = 1
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    projection_dim: int = 512
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    model_type = "clip_text_model"
    #: transformers' CLIP pools at the highest token id when ``eos_token_id == 2`` (configs older than the EOS
    #: fix, as OpenAI's code); Meta CLIP 2, whose tokenizer's EOS really is 2, always pools at the EOS token.
    legacy_eos_pooling = True

    @property
    def max_length(self) -> int:
        """The longest token sequence the tower accepts."""
        return self.max_position_embeddings


@dataclasses.dataclass(frozen=True)
class MetaClip2TextConfig(CLIPTextConfig):
    """Meta CLIP 2's text tower (``metaclip_2_text_model``): CLIP's, pooled at the EOS token whatever its id."""

    model_type = "metaclip_2_text_model"
    legacy_eos_pooling = False


class CLIPTextTransformer(nnx.Module):
    """Token + position embeddings, causal pre-norm encoder, final LayerNorm, EOS pooling.

    Built from a config alone, it is initialised as transformers initialises ``CLIPTextModel``:
    both embeddings ``normal(0.02 f)``, the layers as :class:`~clip_jax.models.vit.PreNormBlock` says.
    """

    def __init__(
        self,
        config: CLIPTextConfig,
        *,
        dtype: DType = None,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.remat = False  # gradient checkpointing per layer; set by the trainer
        d, factor = config.hidden_size, config.initializer_factor
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.token_embedding = nnx.Embed(config.vocab_size, d, embedding_init=normal(0.02 * factor), **kwargs)
        self.position_embedding = nnx.Embed(
            config.max_position_embeddings, d, embedding_init=normal(0.02 * factor), **kwargs
        )
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
        self.final_layer_norm = layer_norm(d, config.layer_norm_eps, **kwargs)

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
        """Encode ``input_ids`` ``[batch, seq]`` with an optional 0/1 ``attention_mask``."""
        seq = input_ids.shape[1]
        if seq > self.config.max_position_embeddings:
            raise ValueError(
                f"Sequence length {seq} exceeds max_position_embeddings "
                f"{self.config.max_position_embeddings}; truncate the text."
            )
        if position_ids is None:
            position_ids = jnp.arange(seq)[None, :]
        x = self.token_embedding(input_ids) + self.position_embedding(position_ids)
        mask = jnp.tril(jnp.ones((seq, seq), bool))[None, None]
        if attention_mask is not None:
            mask = mask & padding_mask(attention_mask)
        x, hidden_states = run_layers(
            self.layers, x, mask, remat=self.remat, deterministic=deterministic, rngs=rngs
        )
        x = self.final_layer_norm(x)
        if self.config.eos_token_id == 2 and self.config.legacy_eos_pooling:
            eos_index = jnp.argmax(input_ids, axis=-1)
        else:
            eos_index = jnp.argmax((input_ids == self.config.eos_token_id).astype(jnp.int32), axis=-1)
        pooled = jnp.take_along_axis(x, eos_index[:, None, None], axis=1)[:, 0]
        return TowerOutput(x, pooled, tuple(hidden_states) if output_hidden_states else None)


KEY_MAP = KeyMap(
    [
        Rule("embeddings.token_embedding.weight", "token_embedding.embedding"),
        Rule("embeddings.position_embedding.weight", "position_embedding.embedding"),
        *CLIP_ENCODER_RULES,
        Rule("final_layer_norm.weight", "final_layer_norm.scale"),
        Rule("final_layer_norm.bias", "final_layer_norm.bias"),
    ]
)
