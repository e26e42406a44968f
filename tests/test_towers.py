"""Tower parity with transformers' PyTorch models (float32, max abs diff <= 1e-4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import TINY_BERT, TINY_CLIP_TEXT, TINY_VISION, save_torch_model
from flax import nnx

from clip_jax.models import load_text_tower, load_vision_tower
from clip_jax.models.registry import ARCHITECTURES, Tower
from clip_jax.models.vit import bicubic_resize_matrix

TOL = 1e-4


def max_diff(reference, ours):
    return float(np.abs(reference.detach().numpy() - np.asarray(ours, np.float32)).max())


def pixels(batch=3, size=32, seed=0):
    return np.random.RandomState(seed).randn(batch, 3, size, size).astype(np.float32)


def padded_ids(vocab, pad_id, low=5, seed=1):
    """Three sequences of lengths 10, 6 and 3, right-padded with ``pad_id``."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(low, vocab, (3, 10))
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = pad_id
    return ids, mask


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
def test_vision_tower_matches_transformers(checkpoints, tmp_path, fmt):
    model = checkpoints["models"]["vision"]
    directory = save_torch_model(model, tmp_path / fmt, fmt)
    tower = load_vision_tower(directory)
    x = pixels()
    with torch.no_grad():
        ref = model(torch.tensor(x), output_hidden_states=True)
    out = tower(jnp.asarray(x.transpose(0, 2, 3, 1)), output_hidden_states=True)
    assert max_diff(ref.last_hidden_state, out.last_hidden_state) <= TOL
    assert max_diff(ref.pooler_output, out.pooler_output) <= TOL
    assert len(out.hidden_states) == len(ref.hidden_states) == model.config.num_hidden_layers + 1
    for r, o in zip(ref.hidden_states, out.hidden_states):
        assert max_diff(r, o) <= TOL


def test_vision_tower_rejects_channels_first_and_wrong_size(checkpoints):
    tower = load_vision_tower(checkpoints["paths"]["vision"])
    with pytest.raises(ValueError, match="channels last"):
        tower(jnp.zeros((1, 3, 32, 32)))
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        tower(jnp.zeros((1, 48, 48, 3)))


def test_bicubic_matrix_equals_torch_interpolate():
    grid = torch.randn(1, 5, 7, 7)
    for out in (7, 4, 12, 16):
        ref = torch.nn.functional.interpolate(grid, size=(out, out), mode="bicubic", align_corners=False)
        m = bicubic_resize_matrix(7, out)
        ours = np.einsum("yi,xj,cij->cyx", m, m, grid[0].numpy())
        assert np.abs(ref[0].numpy() - ours).max() <= 1e-5


def test_position_interpolation_matches_transformers(checkpoints):
    """A 48px input on a 32px tower: runtime interpolation and a tower loaded at image_size=48 both match HF."""
    model = checkpoints["models"]["vision"]
    x = pixels(size=48)
    with torch.no_grad():
        ref = model(torch.tensor(x), interpolate_pos_encoding=True)
    nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    runtime = load_vision_tower(checkpoints["paths"]["vision"])(nhwc, interpolate_pos_encoding=True)
    resized_tower = load_vision_tower(checkpoints["paths"]["vision"], image_size=48)
    assert resized_tower.config.image_size == 48
    assert resized_tower.position_embedding.get_value().shape == (37, TINY_VISION["hidden_size"])
    resized = resized_tower(nhwc)
    for out in (runtime, resized):
        assert max_diff(ref.last_hidden_state, out.last_hidden_state) <= TOL
        assert max_diff(ref.pooler_output, out.pooler_output) <= TOL


@pytest.mark.parametrize("name", ["bert", "roberta", "xlm-roberta", "camembert"])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_bert_family_matches_transformers(checkpoints, tmp_path, name, fmt):
    model = checkpoints["models"][name]
    directory = save_torch_model(model, tmp_path / name, fmt)
    tower = load_text_tower(directory)
    ids, mask = padded_ids(TINY_BERT["vocab_size"], model.config.pad_token_id)
    token_types = np.zeros_like(ids)
    if name == "bert":
        token_types[:, 5:] = 1  # segment embeddings must matter too
    with torch.no_grad():
        ref = model(
            torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(token_types)
        )
    out = tower(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(token_types))
    assert max_diff(ref.last_hidden_state, out.last_hidden_state) <= TOL
    assert max_diff(ref.pooler_output, out.pooler_output) <= TOL
    # The mask matters: without it the padded rows change.
    unmasked = tower(jnp.asarray(ids), None, jnp.asarray(token_types))
    assert (
        np.abs(np.asarray(unmasked.last_hidden_state[1, :6]) - np.asarray(out.last_hidden_state[1, :6])).max()
        > 1e-3
    )


def test_clip_text_tower_matches_transformers(checkpoints):
    model = checkpoints["models"]["clip_text"]
    ids, mask = padded_ids(TINY_CLIP_TEXT["vocab_size"] - 3, TINY_CLIP_TEXT["pad_token_id"])
    ids[:, 0] = TINY_CLIP_TEXT["bos_token_id"]
    for row, length in enumerate((10, 6, 3)):
        ids[row, length - 1] = TINY_CLIP_TEXT["eos_token_id"]
    tower = load_text_tower(checkpoints["paths"]["clip_text"])
    with torch.no_grad():
        ref = model(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    out = tower(jnp.asarray(ids), jnp.asarray(mask), output_hidden_states=True)
    assert max_diff(ref.last_hidden_state, out.last_hidden_state) <= TOL
    assert max_diff(ref.pooler_output, out.pooler_output) <= TOL
    for r, o in zip(ref.hidden_states, out.hidden_states):
        assert max_diff(r, o) <= TOL


def test_both_halves_of_a_full_clip_checkpoint(checkpoints):
    model = checkpoints["models"]["clip"]
    vision = load_vision_tower(checkpoints["paths"]["clip"])
    text = load_text_tower(checkpoints["paths"]["clip"])
    x = pixels()
    ids, mask = padded_ids(90, 0)
    ids[:, -1] = TINY_CLIP_TEXT["eos_token_id"]
    mask[:] = 1
    with torch.no_grad():
        ref_v = model.vision_model(torch.tensor(x))
        ref_t = model.text_model(torch.tensor(ids), attention_mask=torch.tensor(mask))
    assert max_diff(ref_v.pooler_output, vision(jnp.asarray(x.transpose(0, 2, 3, 1))).pooler_output) <= TOL
    assert max_diff(ref_t.pooler_output, text(jnp.asarray(ids), jnp.asarray(mask)).pooler_output) <= TOL


def test_masked_lm_checkpoint_loads_as_tower_with_head_ignored(checkpoints, caplog):
    """A BertForMaskedLM checkpoint: 'bert.' prefix found, MLM head skipped, absent pooler initialised."""
    model = checkpoints["models"]["bert_mlm"]
    tower = load_text_tower(checkpoints["paths"]["bert_mlm"])
    assert "randomly initialised: pooler.bias, pooler.kernel" in caplog.text
    ids, mask = padded_ids(TINY_BERT["vocab_size"], 0)
    with torch.no_grad():
        ref = model.bert(torch.tensor(ids), attention_mask=torch.tensor(mask))
    assert (
        max_diff(ref.last_hidden_state, tower(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state) <= TOL
    )


def test_bfloat16_parameters(checkpoints):
    tower = load_text_tower(checkpoints["paths"]["bert"], param_dtype=jnp.bfloat16)
    assert tower.word_embeddings.embedding.get_value().dtype == jnp.bfloat16
    assert tower.layers[0].attention.query.kernel.get_value().dtype == jnp.bfloat16
    ids, mask = padded_ids(TINY_BERT["vocab_size"], 0)
    with torch.no_grad():
        ref = checkpoints["models"]["bert"](torch.tensor(ids), attention_mask=torch.tensor(mask))
    out = tower(jnp.asarray(ids), jnp.asarray(mask))
    # bfloat16 keeps 8 bits of mantissa: agreement to a few percent of unit-scale activations.
    assert max_diff(ref.last_hidden_state, out.last_hidden_state) <= 0.1


def test_remat_changes_memory_plan_not_results(checkpoints):
    import jax
    from flax import nnx

    tower = load_text_tower(checkpoints["paths"]["bert"])
    ids, mask = padded_ids(TINY_BERT["vocab_size"], 0)
    graphdef, params = nnx.split(tower)

    def loss(params, remat):
        module = nnx.merge(graphdef, params)
        module.remat = remat
        return jnp.sum(module(jnp.asarray(ids), jnp.asarray(mask)).last_hidden_state ** 2)

    plain = jax.grad(loss)(params, False)
    checkpointed = jax.grad(loss)(params, True)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(checkpointed)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)

    def primitives(remat):
        names = set()

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                names.add(eqn.primitive.name)
                for value in eqn.params.values():
                    for sub in value if isinstance(value, (tuple, list)) else [value]:
                        inner = getattr(sub, "jaxpr", sub)
                        if hasattr(inner, "eqns"):
                            walk(inner)

        walk(jax.make_jaxpr(jax.grad(loss), static_argnums=1)(params, remat).jaxpr)
        return names

    assert "remat2" in primitives(True)  # jax.checkpoint's primitive
    assert "remat2" not in primitives(False)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_every_registered_tower_keeps_the_tower_contract(model_type):
    """What the dual encoder relies on (registry.Tower / TowerConfig), checked abstractly at full size."""
    arch = ARCHITECTURES[model_type]
    config = arch.config_cls.from_hf(arch.config_cls().to_hf())
    assert config == arch.config_cls() and config.to_hf()["model_type"] in ARCHITECTURES

    def build_and_run():
        tower = arch.module_cls(config, rngs=nnx.Rngs(0))
        assert (
            isinstance(tower, Tower)
            and tower.remat is False
            and tower.config.hidden_size == config.hidden_size
        )
        if arch.kind == "vision":
            out = tower(jnp.zeros((2, config.image_size, config.image_size, 3)), output_hidden_states=True)
        else:
            out = tower(jnp.zeros((2, 8), jnp.int32), jnp.ones((2, 8), jnp.int32), output_hidden_states=True)
        return out

    out = jax.eval_shape(build_and_run)
    assert out.last_hidden_state.shape[::2] == (2, config.hidden_size)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    if arch.kind == "vision" or out.pooler_output is not None:
        assert out.pooler_output.shape == (2, config.hidden_size)


def _vision_grad_hlo(layers: int, fence: bool):
    """The optimised CPU HLO of the parameter gradient of a random pre-norm ViT ``layers`` deep."""
    import jax
    from flax import nnx

    from clip_jax.models import layers as model_layers
    from clip_jax.models.vit import CLIPVisionConfig, CLIPVisionTransformer

    config = CLIPVisionConfig.from_hf({**TINY_VISION, "num_hidden_layers": layers})
    graphdef, params = nnx.split(CLIPVisionTransformer(config, rngs=nnx.Rngs(0)))
    x = jnp.asarray(pixels().transpose(0, 2, 3, 1))

    def loss(params):
        return jnp.mean(nnx.merge(graphdef, params)(x).last_hidden_state ** 2)

    model_layers.FENCE_RESIDUALS = fence
    try:
        grads = jax.jit(jax.grad(loss))(params)
        text = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    finally:
        model_layers.FENCE_RESIDUALS = True
    return grads, text


def test_residual_fence_keeps_values_and_gradients_and_bounds_fusions():
    """The fence between layers (XLA CPU would otherwise recompute the residual gradient of all later layers
    inside every layer's backward fusions) changes neither the tower's values nor its gradients; on CPU it
    puts conditionals into the compiled step, and the largest fusion no longer grows with depth."""
    import re

    import jax

    from clip_jax.models.layers import residual_fence

    x = jnp.arange(6.0).reshape(2, 3) - 2.5
    np.testing.assert_array_equal(np.asarray(residual_fence(x)), np.asarray(x))
    w = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
    np.testing.assert_array_equal(np.asarray(jax.grad(lambda v: jnp.sum(residual_fence(v) * w))(x)), w)

    fenced, text = _vision_grad_hlo(6, fence=True)
    plain, _ = _vision_grad_hlo(6, fence=False)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(fenced)):  # up to float32 summation order
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)

    def largest_fusion(text):
        return max(m.group(1).count("%") for m in re.finditer(r"= \S+ fusion\(([^)]*)\)", text))

    if jax.default_backend() == "cpu":
        assert " conditional(" in text
        assert largest_fusion(_vision_grad_hlo(12, fence=True)[1]) <= largest_fusion(text) + 2


def _dot_operand_dtypes(hlo: str) -> list[tuple[str, str]]:
    """The element types of both operands of every dot in compiled HLO text."""
    import re

    types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
    dots = re.findall(r"= \w+\[[^\]]*\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo)
    return [(types[a], types[b]) for a, b in dots]


@pytest.mark.parametrize("shape", [(2, 7, 48), (10, 48)])
def test_bfloat16_dense_product_matches_numpy_and_runs_bfloat16_products_on_cpu(shape):
    """``dense_product`` on bfloat16 operands: the value and both gradients equal a float64 NumPy product of the
    same bfloat16 numbers, rounded once to bfloat16 (tolerance: one bfloat16 rounding, 2**-8 relative, plus
    float32 summation order). On CPU the compiled gradient multiplies bfloat16 operands only: the weight
    gradient is not converted to float32 first (the 4-5x slower path ``bench/matmul_libs.py`` measures)."""
    from clip_jax.models import layers as model_layers

    rs = np.random.RandomState(0)
    bf16 = jnp.bfloat16
    x = jnp.asarray(rs.randn(*shape), bf16)
    kernel = jnp.asarray(rs.randn(shape[-1], 80) * 0.1, bf16)
    cotangent = jnp.asarray(rs.randn(*shape[:-1], 80), bf16)
    x64, k64, c64 = (np.asarray(a.astype(jnp.float32), np.float64) for a in (x, kernel, cotangent))

    def loss(x, kernel):
        return jnp.sum(
            model_layers.dense_product(x, kernel).astype(jnp.float32) * cotangent.astype(jnp.float32)
        )

    value = model_layers.dense_product(x, kernel)
    grad_x, grad_kernel = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
    assert value.dtype == grad_x.dtype == grad_kernel.dtype == bf16
    flat_x, flat_c = x64.reshape(-1, shape[-1]), c64.reshape(-1, 80)
    for ours, reference in (
        (value, x64 @ k64),
        (grad_x, c64 @ k64.T),
        (grad_kernel, flat_x.T @ flat_c),
    ):
        scale = np.abs(reference).max()
        np.testing.assert_allclose(
            np.asarray(ours.astype(jnp.float32), np.float64), reference, rtol=2**-8, atol=scale * 1e-5
        )
    plain_grad_kernel = _with_fast_products(False, lambda: jax.jit(jax.grad(loss, argnums=1))(x, kernel))
    np.testing.assert_allclose(  # the plain product's gradient agrees to the same tolerance
        np.asarray(grad_kernel.astype(jnp.float32)),
        np.asarray(plain_grad_kernel.astype(jnp.float32)),
        rtol=2**-7,
        atol=float(np.abs(flat_x.T @ flat_c).max()) * 1e-5,
    )
    if jax.default_backend() == "cpu":

        def operand_types(fast: bool) -> list[tuple[str, str]]:
            step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
            return _with_fast_products(
                fast, lambda: _dot_operand_dtypes(step.lower(x, kernel).compile().as_text())
            )

        fast = operand_types(True)
        assert len(fast) == 3  # forward, input gradient, weight gradient
        assert all(types == ("bf16", "bf16") for types in fast), fast
        assert ("f32", "f32") in operand_types(False)  # the plain product's weight gradient, converted


def _with_fast_products(on: bool, compute):
    """``compute()`` traced with :func:`dense_product`'s fast 16-bit path switched ``on`` or off."""
    from clip_jax.models import layers as model_layers

    model_layers.FAST_LOW_PRECISION_PRODUCTS = on
    try:
        return compute()
    finally:
        model_layers.FAST_LOW_PRECISION_PRODUCTS = True


def test_float32_dense_product_is_the_plain_product():
    from clip_jax.models.layers import dense_product

    rs = np.random.RandomState(1)
    x, kernel = rs.randn(3, 5, 16).astype(np.float32), rs.randn(16, 8).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(dense_product(jnp.asarray(x), jnp.asarray(kernel))), x @ kernel, rtol=1e-5, atol=1e-5
    )
