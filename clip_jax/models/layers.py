"""Building blocks shared by the towers: activations, multi-head attention, MLP, outputs.

Parameter layout follows Flax conventions: dense kernels are ``[in, out]``; attention
projections keep the head axis explicit (``[embed, heads, head_dim]``) so that sharding
rules can split heads and weight loaders can reshape PyTorch's fused matrices.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx, struct

Array = jax.Array
DType = jnp.dtype | None

DEFAULT_INIT = nnx.initializers.normal(stddev=0.02)


def normal(std: float) -> nnx.Initializer:
    """``normal(0, std)``: how transformers' ``_init_weights`` draws weights (biases start at zero)."""
    return nnx.initializers.normal(stddev=std)


def quick_gelu(x: Array) -> Array:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[Array], Array]:
    """The activation function named as in a Hugging Face config's ``hidden_act``."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"Unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}.") from None


@struct.dataclass
class TowerOutput:
    """What a tower returns, with Hugging Face's field names.

    ``hidden_states`` (when requested) holds the embedding output followed by every
    layer's output, as in transformers' ``output_hidden_states=True``.
    """

    last_hidden_state: Array
    pooler_output: Array | None = None
    hidden_states: tuple[Array, ...] | None = None


#: Whether :func:`dense_product` takes its float32-accumulating, CPU-layout path for 16-bit operands (off: the
#: plain product); a switch so that ``bench/speed_changes.py`` can measure the step without it.
FAST_LOW_PRECISION_PRODUCTS = True


def _low_precision(*arrays: Array) -> bool:
    return all(jnp.issubdtype(a.dtype, jnp.floating) and jnp.finfo(a.dtype).bits == 16 for a in arrays)


def _product(a: Array, kernel: Array) -> Array:
    """``a [m, k] @ kernel [k, n]`` in ``a``'s (16-bit) dtype, with float32 accumulation."""
    return jnp.dot(a, kernel.astype(a.dtype), preferred_element_type=jnp.float32).astype(a.dtype)


def _rows_to_columns(a: Array) -> Array:
    """``a.T`` for ``a [m, k]``, written so that XLA stores the transpose row-major instead of folding it into
    the consumer's layout: a reshape that the transpose must physically feed."""
    m, k = a.shape
    block = next((b for b in (16, 8, 4, 2) if k % b == 0), 1)
    return a.reshape(m, k // block, block).transpose(1, 2, 0).reshape(k, m)


def _product_forward(a: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
    return _product(a, kernel), (a, kernel)


def _input_gradient(a: Array, kernel: Array, grad: Array) -> Array:
    dims = (((1,), (1,)), ((), ()))
    return jax.lax.dot_general(grad, kernel.astype(a.dtype), dims, preferred_element_type=jnp.float32)


def _product_backward(saved: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
    """The weight gradient stays in float32 (the kernel's dtype when it is a float32 master weight) from the
    product on: with a batch sharded over devices, the cross-device sum XLA inserts after it runs in float32."""
    a, kernel = saved
    grad = grad.astype(a.dtype)
    grad_kernel = jnp.dot(a.T, grad, preferred_element_type=jnp.float32)
    return _input_gradient(a, kernel, grad).astype(a.dtype), grad_kernel.astype(kernel.dtype)


def _cpu_product_backward(saved: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
    """:func:`_product_backward` with ``a.T`` stored row-major first (XLA's CPU bfloat16 kernels need it)."""
    a, kernel = saved
    grad = grad.astype(a.dtype)
    grad_kernel = jnp.dot(_rows_to_columns(a), grad, preferred_element_type=jnp.float32)
    return _input_gradient(a, kernel, grad).astype(a.dtype), grad_kernel.astype(kernel.dtype)


_default_product = jax.custom_vjp(_product)
_default_product.defvjp(_product_forward, _product_backward)
_cpu_product = jax.custom_vjp(_product)
_cpu_product.defvjp(_product_forward, _cpu_product_backward)


def dense_product(x: Array, kernel: Array) -> Array:
    """``x [..., in] @ kernel [in, out]``: a dense map's matrix product, computed in ``x``'s dtype.

    With 16-bit ``x`` (``model.dtype=bfloat16``), ``kernel`` may be the float32 master weight: it is rounded
    for the product, which accumulates in float32, and its gradient is computed and returned in float32 — so
    in a data-parallel step the gradient is summed across devices in float32, as the master weights are kept
    (``clip-jax plan`` shows the reductions' dtypes). On CPU the gradient is written for XLA's fast bfloat16
    kernels (AMX on recent Xeons): XLA's CPU compiler runs a bfloat16 product only when both operands are
    stored row-major in the product's own orientation, and otherwise converts them to float32 first, so the
    weight gradient ``x.T @ dy`` ran at float32 speed, 4-5x slower than the forward product
    (``bench/matmul_libs.py --dtype bfloat16``); the backward pass stores ``x.T`` row-major before
    multiplying. Values and gradients are those of the plain product up to float32 summation order. float32
    ``x`` takes the plain product on every platform.
    """
    if not (_low_precision(x) and FAST_LOW_PRECISION_PRODUCTS):
        return jnp.dot(x, kernel.astype(x.dtype) if _low_precision(x) else kernel)
    rows = x.reshape(-1, x.shape[-1])
    product = jax.lax.platform_dependent(rows, kernel, cpu=_cpu_product, default=_default_product)
    return product.reshape(*x.shape[:-1], kernel.shape[-1])


class Dense(nnx.Module):
    """``x @ kernel + bias``, with ``nnx.Linear``'s parameters (``kernel [in, out]``, ``bias [out]``), computed
    in ``dtype`` from weights kept in ``param_dtype`` by :func:`dense_product` (16-bit compute: float32 weight
    gradients)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        kernel_init: nnx.Initializer = DEFAULT_INIT,
        dtype: DType = None,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features), param_dtype))
        if use_bias:
            rngs.params()  # the key nnx.Linear draws for its bias: the parameters after it initialise as before
            self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype))
        else:
            self.bias = nnx.data(None)
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        if self.dtype is not None:
            x = x.astype(self.dtype)
        y = dense_product(x, self.kernel[...])
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)


class HeadsProjection(nnx.Module):
    """Dense map ``[..., embed] -> [..., heads, head_dim]`` (a query, key or value projection)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        dtype: DType,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        init: nnx.Initializer = DEFAULT_INIT,
    ):
        self.kernel = nnx.Param(init(rngs.params(), (embed_dim, num_heads, head_dim), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_heads, head_dim), param_dtype))
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        kernel, bias = self.kernel[...], self.bias[...]
        if self.dtype is not None:
            x, bias = x.astype(self.dtype), bias.astype(self.dtype)
        heads = dense_product(x, kernel.reshape(kernel.shape[0], -1))  # the master kernel: see dense_product
        return heads.reshape(*x.shape[:-1], *kernel.shape[1:]) + bias


class HeadsMerge(nnx.Module):
    """Dense map ``[..., heads, head_dim] -> [..., embed]`` (the attention output projection)."""

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        embed_dim: int,
        *,
        dtype: DType,
        param_dtype: jnp.dtype,
        rngs: nnx.Rngs,
        init: nnx.Initializer = DEFAULT_INIT,
    ):
        self.kernel = nnx.Param(init(rngs.params(), (num_heads, head_dim, embed_dim), param_dtype))
        self.bias = nnx.Param(jnp.zeros((embed_dim,), param_dtype))
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        kernel, bias = self.kernel[...], self.bias[...]
        if self.dtype is not None:
            x, bias = x.astype(self.dtype), bias.astype(self.dtype)
        merged = x.reshape(*x.shape[:-2], -1)
        return dense_product(merged, kernel.reshape(-1, kernel.shape[-1])) + bias


class Attention(nnx.Module):
    """Multi-head scaled dot-product self-attention with an optional boolean mask.

    ``mask`` is broadcastable to ``[batch, heads, query, key]``; True means "may attend".
    Attention scores and softmax are float32 whatever the compute dtype. ``in_init`` draws the query/key/value
    kernels, ``out_init`` the output projection's.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        *,
        dropout: float = 0.0,
        dtype: DType = None,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
        in_init: nnx.Initializer = DEFAULT_INIT,
        out_init: nnx.Initializer = DEFAULT_INIT,
    ):
        if embed_dim % num_heads:
            raise ValueError(f"hidden_size {embed_dim} is not divisible by num_attention_heads {num_heads}.")
        head_dim = embed_dim // num_heads
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.query = HeadsProjection(embed_dim, num_heads, head_dim, init=in_init, **kwargs)
        self.key = HeadsProjection(embed_dim, num_heads, head_dim, init=in_init, **kwargs)
        self.value = HeadsProjection(embed_dim, num_heads, head_dim, init=in_init, **kwargs)
        self.out = HeadsMerge(num_heads, head_dim, embed_dim, init=out_init, **kwargs)
        self.dropout = nnx.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(head_dim)

    def __call__(
        self, x: Array, mask: Array | None = None, *, deterministic: bool = True, rngs: nnx.Rngs | None = None
    ) -> Array:
        q, k, v = self.query(x), self.key(x), self.value(x)
        scores = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) * self.scale
        if mask is not None:
            scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        probs = self.dropout(probs, deterministic=deterministic, rngs=rngs)
        context = jnp.einsum("bhqs,bshk->bqhk", probs, v, preferred_element_type=jnp.float32)
        return self.out(context.astype(v.dtype))


class MLP(nnx.Module):
    """Two dense layers with an activation between them (``fc1 -> act -> fc2``)."""

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int,
        act: str,
        *,
        dtype: DType = None,
        param_dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs,
        fc1_init: nnx.Initializer = DEFAULT_INIT,
        fc2_init: nnx.Initializer = DEFAULT_INIT,
    ):
        kwargs = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Dense(embed_dim, hidden_dim, kernel_init=fc1_init, **kwargs)
        self.fc2 = Dense(hidden_dim, embed_dim, kernel_init=fc2_init, **kwargs)
        self.act = activation(act)

    def __call__(self, x: Array) -> Array:
        return self.fc2(self.act(self.fc1(x)))


def layer_norm(
    dim: int, eps: float, *, dtype: DType, param_dtype: jnp.dtype, rngs: nnx.Rngs
) -> nnx.LayerNorm:
    """A LayerNorm with PyTorch's epsilon convention (added to the variance)."""
    return nnx.LayerNorm(
        dim, epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False, rngs=rngs
    )


def padding_mask(attention_mask: Array) -> Array:
    """``[batch, seq]`` 0/1 mask -> boolean ``[batch, 1, 1, seq]`` key mask."""
    return attention_mask.astype(bool)[:, None, None, :]


#: Whether :func:`run_layers` fences the residual stream between layers (:func:`residual_fence`); a switch so
#: that ``bench/speed_changes.py`` can measure the step without it, in the same process.
FENCE_RESIDUALS = True


def residual_fence(x: Array) -> Array:
    """``x`` unchanged, and on CPU a point where XLA must write ``x`` (and, in the backward pass, its
    gradient) to memory instead of fusing it into every consumer.

    Why: in a pre-norm tower the gradient of the residual stream is a chain of cheap additions across the
    layers (``dx_l = dx_{l+1} + LayerNorm terms``). XLA's CPU compiler duplicates cheap element-wise chains
    into each consumer fusion, so every layer's backward recomputed the sum over all later layers, work
    quadratic in depth: 28% of the CPU time of a ViT-B/32 + BERT-base phase-2 step (``docs/benchmarks.md``).
    ``jax.lax.optimization_barrier`` does not stop it (the CPU compiler removes barriers before fusion);
    a conditional whose predicate XLA cannot fold does, since its operand and result are buffers. Both
    branches are the identity, so values and gradients (through the conditional's transpose, a conditional
    again) are exactly those without the fence. Only on CPU: on GPU a conditional's predicate is copied to
    the host, a synchronisation per layer, and the GPU compiler's fusion does not have this problem.
    """
    if not FENCE_RESIDUALS:
        return x

    def fence(v: Array) -> Array:
        # ``a * 1``, not ``a``: JAX drops the outputs that every branch merely forwards (and with them the
        # conditional); XLA simplifies the multiplication away after the conditional is fixed.
        same = lambda a: a * 1
        return jax.lax.cond(jnp.isnan(v.reshape(-1)[0]), same, same, v)

    return jax.lax.platform_dependent(x, cpu=fence, default=lambda v: v)


def run_layers(
    layers,
    x: Array,
    mask: Array | None,
    *,
    remat: bool = False,
    deterministic: bool = True,
    rngs: nnx.Rngs | None = None,
) -> tuple[Array, list[Array]]:
    """Apply transformer layers in order; return the output and ``[input, output of each layer]``.

    With ``remat`` each layer's activations are recomputed in the backward pass instead of
    stored (gradient checkpointing per layer): memory for depth, paid with one extra forward.
    Each layer's input passes through :func:`residual_fence` (a no-op except for XLA's CPU fusion).
    """
    hidden_states = [x]
    for layer in layers:
        x = residual_fence(x)
        if remat:
            x = nnx.remat(lambda lyr, h, m, r: lyr(h, m, deterministic=deterministic, rngs=r))(
                layer, x, mask, rngs
            )
        else:
            x = layer(x, mask, deterministic=deterministic, rngs=rngs)
        hidden_states.append(x)
    return x, hidden_states


def config_fields(cls: type, hf: dict) -> dict:
    """The entries of a Hugging Face config dict that name fields of dataclass ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in hf.items() if k in names}


class HFConfig:
    """The mapping every tower config shares with its transformers config: a frozen dataclass whose fields
    are named as transformers names them, ``model_type`` (a class attribute, or a field where one class
    serves several types), and :attr:`hf_extra` entries written besides the fields."""

    model_type: str
    #: Entries :meth:`to_hf` writes besides the fields (fixed by what clip_jax supports).
    hf_extra: ClassVar[dict[str, Any]] = {}

    @classmethod
    def check_hf(cls, hf: dict) -> None:
        """Raise ``ValueError`` for a transformers config this tower cannot run (default: none)."""

    @classmethod
    def from_hf(cls, hf: dict) -> Any:
        """From a transformers config dict (``to_dict()`` or config.json): the entries that name fields."""
        cls.check_hf(hf)
        return cls(**config_fields(cls, hf))

    def to_hf(self) -> dict:
        """A dict that the transformers config class of ``model_type`` accepts."""
        return {"model_type": self.model_type, **dataclasses.asdict(self), **self.hf_extra}
