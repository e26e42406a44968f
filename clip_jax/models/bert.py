"""BERT-family text encoders: BERT, RoBERTa, XLM-RoBERTa, CamemBERT (Hugging Face ``bert``,
``roberta``, ``xlm-roberta``, ``camembert``).

Post-norm transformer with word, position and token-type embeddings and the tanh
pooler over the first token. The RoBERTa family numbers positions from
``pad_token_id + 1`` and skips padding, exactly as transformers does.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from clip_jax.models.layers import (
    MLP,
    Attention,
    Dense,
    DType,
    HFConfig,
    TowerOutput,
    activation,
    layer_norm,
    normal,
    padding_mask,
    run_layers,
)
from clip_jax.weights.keymap import HEADS_BIAS, HEADS_IN, HEADS_OUT, LINEAR, KeyMap, Rule

ROBERTA_FAMILY = ("roberta", "xlm-roberta", "camembert")


@dataclasses.dataclass(frozen=True)
class BertConfig(HFConfig):
    """Hyper-parameters of a BERT-family encoder; names and defaults as transformers' ``BertConfig``."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    initializer_range: float = 0.02
    model_type: str = "bert"

    def __post_init__(self):
        if self.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported (only 'absolute')."
            )

    @property
    def max_length(self) -> int:
        """The longest token sequence the tower accepts (RoBERTa reserves pad_token_id + 1 positions)."""
        if self.model_type in ROBERTA_FAMILY:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings


class PostNormBlock(nnx.Module):
    """A BERT layer: ``ln(x + attn(x))`` then ``ln(x + mlp(x))``, dropout before each residual add."""

    def __init__(self, config: BertConfig, *, dtype: DType, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d = config.hidden_size
        init = normal(config.initializer_range)
        self.attention = Attention(
            d,
            config.num_attention_heads,
            dropout=config.attention_probs_dropout_prob,
            in_init=init,
            out_init=init,
            **kwargs,
        )
        self.attention_norm = layer_norm(d, config.layer_norm_eps, **kwargs)
        self.mlp = MLP(d, config.intermediate_size, config.hidden_act, fc1_init=init, fc2_init=init, **kwargs)
        self.mlp_norm = layer_norm(d, config.layer_norm_eps, **kwargs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob)

    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        drop = lambda y: self.dropout(y, deterministic=deterministic, rngs=rngs)
        x = self.attention_norm(x + drop(self.attention(x, mask, deterministic=deterministic, rngs=rngs)))
        return self.mlp_norm(x + drop(self.mlp(x)))


class BertEncoder(nnx.Module):
    """Embeddings, post-norm encoder and (optionally) the tanh pooler.

    Built from a config alone, it is initialised as transformers' ``BertPreTrainedModel._init_weights``:
    every dense kernel and embedding from ``normal(initializer_range)``, the padding token's word
    embedding zero, biases zero, LayerNorms one/zero.
    """

    def __init__(
        self,
        config: BertConfig,
        *,
        add_pooling_layer: bool = True,
        dtype: DType = None,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.remat = False  # gradient checkpointing per layer; set by the trainer
        d = config.hidden_size
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        init = normal(config.initializer_range)
        embed = lambda n: nnx.Embed(n, d, embedding_init=init, **kwargs)
        self.word_embeddings = embed(config.vocab_size)
        if (
            0 <= config.pad_token_id < config.vocab_size
        ):  # nn.Embedding(padding_idx=pad_token_id) starts at zero
            table = self.word_embeddings.embedding
            table.set_value(table.get_value().at[config.pad_token_id].set(0))
        self.position_embeddings = embed(config.max_position_embeddings)
        self.token_type_embeddings = embed(config.type_vocab_size)
        self.embeddings_norm = layer_norm(d, config.layer_norm_eps, **kwargs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob)
        self.layers = nnx.List([PostNormBlock(config, **kwargs) for _ in range(config.num_hidden_layers)])
        self.pooler = Dense(d, d, kernel_init=init, **kwargs) if add_pooling_layer else None

    def position_ids(self, input_ids: jax.Array) -> jax.Array:
        """Positions as transformers numbers them for this model type."""
        if self.config.model_type in ROBERTA_FAMILY:
            not_pad = (input_ids != self.config.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(not_pad, axis=1) * not_pad + self.config.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        output_hidden_states: bool = False,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> TowerOutput:
        """Encode ``input_ids`` ``[batch, seq]`` with an optional 0/1 ``attention_mask``."""
        if input_ids.shape[1] > self.config.max_length:
            raise ValueError(
                f"Sequence length {input_ids.shape[1]} exceeds the model's maximum "
                f"{self.config.max_length}; truncate the text."
            )
        if position_ids is None:
            position_ids = self.position_ids(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(position_ids)
        )
        x = self.dropout(self.embeddings_norm(x), deterministic=deterministic, rngs=rngs)
        mask = padding_mask(attention_mask) if attention_mask is not None else None
        x, hidden_states = run_layers(
            self.layers, x, mask, remat=self.remat, deterministic=deterministic, rngs=rngs
        )
        pooled = jnp.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None
        return TowerOutput(x, pooled, tuple(hidden_states) if output_hidden_states else None)


_LAYER = "encoder.layer.{i}."
KEY_MAP = KeyMap(
    [
        Rule("embeddings.word_embeddings.weight", "word_embeddings.embedding"),
        Rule("embeddings.position_embeddings.weight", "position_embeddings.embedding"),
        Rule("embeddings.token_type_embeddings.weight", "token_type_embeddings.embedding"),
        Rule("embeddings.LayerNorm.weight", "embeddings_norm.scale"),
        Rule("embeddings.LayerNorm.bias", "embeddings_norm.bias"),
        *[
            Rule(_LAYER + f"attention.self.{name}.weight", f"layers.{{i}}.attention.{name}.kernel", HEADS_IN)
            for name in ("query", "key", "value")
        ],
        *[
            Rule(_LAYER + f"attention.self.{name}.bias", f"layers.{{i}}.attention.{name}.bias", HEADS_BIAS)
            for name in ("query", "key", "value")
        ],
        Rule(_LAYER + "attention.output.dense.weight", "layers.{i}.attention.out.kernel", HEADS_OUT),
        Rule(_LAYER + "attention.output.dense.bias", "layers.{i}.attention.out.bias"),
        Rule(_LAYER + "attention.output.LayerNorm.weight", "layers.{i}.attention_norm.scale"),
        Rule(_LAYER + "attention.output.LayerNorm.bias", "layers.{i}.attention_norm.bias"),
        Rule(_LAYER + "intermediate.dense.weight", "layers.{i}.mlp.fc1.kernel", LINEAR),
        Rule(_LAYER + "intermediate.dense.bias", "layers.{i}.mlp.fc1.bias"),
        Rule(_LAYER + "output.dense.weight", "layers.{i}.mlp.fc2.kernel", LINEAR),
        Rule(_LAYER + "output.dense.bias", "layers.{i}.mlp.fc2.bias"),
        Rule(_LAYER + "output.LayerNorm.weight", "layers.{i}.mlp_norm.scale"),
        Rule(_LAYER + "output.LayerNorm.bias", "layers.{i}.mlp_norm.bias"),
        Rule("pooler.dense.weight", "pooler.kernel", LINEAR),
        Rule("pooler.dense.bias", "pooler.bias"),
    ]
)


class BertForMaskedLM(nnx.Module):
    """A BERT encoder (no pooler) with transformers' masked-language-modelling head: dense, activation,
    LayerNorm, then logits through the word embeddings (tied, as ``BertForMaskedLM``) plus a bias.

    Saved with :meth:`save_pretrained` in the ``BertForMaskedLM`` layout (``bert.*`` and
    ``cls.predictions.*``), so transformers loads it and ``load_text_tower`` takes its encoder.
    """

    def __init__(
        self, config: BertConfig, *, dtype: DType = None, param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs
    ):
        self.config = config
        self.bert = BertEncoder(
            config, add_pooling_layer=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        d = config.hidden_size
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.transform = Dense(d, d, kernel_init=normal(config.initializer_range), **kwargs)
        self.transform_norm = layer_norm(d, config.layer_norm_eps, **kwargs)
        self.bias = nnx.Param(jnp.zeros((config.vocab_size,), param_dtype))
        self.act = activation(config.hidden_act)

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> jax.Array:
        """Vocabulary logits ``[batch, seq, vocab_size]`` (float32)."""
        hidden = self.bert(
            input_ids, attention_mask, deterministic=deterministic, rngs=rngs
        ).last_hidden_state
        hidden = self.transform_norm(self.act(self.transform(hidden)))
        logits = self.bert.word_embeddings.attend(hidden)
        return logits.astype(jnp.float32) + self.bias[...].astype(jnp.float32)


#: ``BertForMaskedLM`` (transformers) <-> :class:`BertForMaskedLM`; the decoder weight is tied to the word
#: embeddings and the decoder bias to ``cls.predictions.bias``, so neither is stored separately.
MLM_KEY_MAP = KEY_MAP.prefixed("bert.", "bert.") + KeyMap(
    [
        Rule("cls.predictions.transform.dense.weight", "transform.kernel", LINEAR),
        Rule("cls.predictions.transform.dense.bias", "transform.bias"),
        Rule("cls.predictions.transform.LayerNorm.weight", "transform_norm.scale"),
        Rule("cls.predictions.transform.LayerNorm.bias", "transform_norm.bias"),
        Rule("cls.predictions.bias", "bias"),
    ]
)
