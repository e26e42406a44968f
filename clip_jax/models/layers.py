"""Building blocks shared by the towers: activations, multi-head attention, MLP, outputs.

Parameter layout follows Flax conventions: dense kernels are ``[in, out]``; attention
projections keep the head axis explicit (``[embed, heads, head_dim]``) so that sharding
rules can split heads and weight loaders can reshape PyTorch's fused matrices.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

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


def _product(a: Array, b: Array) -> Array:
    """``a [m, k] @ b [k, n]`` with float32 accumulation, in ``a``'s dtype."""
    return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype)


def _rows_to_columns(a: Array) -> Array:
    """``a.T`` for ``a [m, k]``, written so that XLA stores the transpose row-major instead of folding it into
    the consumer's layout: a reshape that the transpose must physically feed."""
    m, k = a.shape
    block = next((b for b in (16, 8, 4, 2) if k % b == 0), 1)
    return a.reshape(m, k // block, block).transpose(1, 2, 0).reshape(k, m)


@jax.custom_vjp
def _cpu_product(a: Array, b: Array) -> Array:
    return _product(a, b)


def _cpu_product_forward(a: Array, b: Array) -> tuple[Array, tuple[Array, Array]]:
    return _product(a, b), (a, b)


def _cpu_product_backward(saved: tuple[Array, Array], grad: Array) -> tuple[Array, Array]:
    a, b = saved
    grad = grad.astype(a.dtype)
    grad_a = jax.lax.dot_general(grad, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    grad_b = _product(_rows_to_columns(a), grad)
    return grad_a.astype(a.dtype), grad_b.astype(b.dtype)


_cpu_product.defvjp(_cpu_product_forward, _cpu_product_backward)


def dense_product(x: Array, kernel: Array) -> Array:
    """``x [..., in] @ kernel [in, out]``: a dense map's matrix product.

    In 16-bit floats (``model.dtype=bfloat16``) the product accumulates in float32 and returns ``x``'s dtype.
    On CPU its gradient is written for XLA's fast bfloat16 kernels (AMX on recent Xeons): XLA's CPU
    compiler runs a bfloat16 product only when both operands are stored row-major in the product's own
    orientation, and otherwise converts them to float32 first, so the weight gradient ``x.T @ dy`` ran at
    float32 speed, 4-5x slower than the forward product (``bench/matmul_libs.py --dtype bfloat16``). The
    backward pass stores ``x.T`` row-major before multiplying. Values and gradients are those of the plain
    product up to float32 summation order (each is rounded once to the compute dtype). float32 operands take
    the plain product on every platform.
    """
    if not (_low_precision(x, kernel) and FAST_LOW_PRECISION_PRODUCTS):
        return jnp.dot(x, kernel)
    rows = x.reshape(-1, x.shape[-1])
    product = jax.lax.platform_dependent(rows, kernel, cpu=_cpu_product, default=_product)
    return product.reshape(*x.shape[:-1], kernel.shape[-1])


def dense_dot_general(
    lhs: Array, rhs: Array, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None
) -> Array:
    """``jax.lax.dot_general`` for ``nnx.Linear``: :func:`dense_product` for its 16-bit products."""
    (lhs_contracting, rhs_contracting), batch = dimension_numbers
    dense = tuple(lhs_contracting) == (lhs.ndim - 1,) and tuple(rhs_contracting) == (0,) and rhs.ndim == 2
    plain = not any(batch) and precision is None and preferred_element_type is None and out_sharding is None
    if dense and plain and _low_precision(lhs, rhs):
        return dense_product(lhs, rhs)
    return jax.lax.dot_general(
        lhs,
        rhs,
        dimension_numbers,
        precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=out_sharding,
    )


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
            x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
        heads = dense_product(x, kernel.reshape(kernel.shape[0], -1))
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
            x, kernel, bias = x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)
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
        kwargs["dot_general"] = dense_dot_general
        self.fc1 = nnx.Linear(embed_dim, hidden_dim, kernel_init=fc1_init, **kwargs)
        self.fc2 = nnx.Linear(hidden_dim, embed_dim, kernel_init=fc2_init, **kwargs)
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
