"""The global-batch losses on 8 devices equal a dense NumPy computation, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from clip_jax.loss import contrastive_loss, dense_contrastive_loss
from clip_jax.plan.hlo import summarize
from clip_jax.sharding import make_mesh


def numpy_loss(img, txt, scale, kind, bias=0.0):
    logits = scale * img @ txt.T
    n = len(logits)
    if kind == "sigmoid":
        z = logits + bias
        signs = 2 * np.eye(n) - 1
        return np.sum(np.logaddexp(0, -signs * z)) / n
    lse_rows = np.log(np.exp(logits).sum(1))
    lse_cols = np.log(np.exp(logits).sum(0))
    diag = np.diag(logits)
    return ((lse_rows - diag).mean() + (lse_cols - diag).mean()) / 2


def embeddings(n, d=16, seed=0):
    rs = np.random.RandomState(seed)
    x = rs.randn(2, n, d)
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    return x[0], x[1]


@pytest.mark.parametrize("exchange", ["all_gather", "ring"])
@pytest.mark.parametrize("axes", [{"data": 8, "fsdp": 1}, {"data": 4, "fsdp": 2}, {"data": 1, "fsdp": 8}])
@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_sharded_loss_and_gradients_equal_dense(axes, kind, exchange):
    mesh = make_mesh(axes)
    img, txt = embeddings(32)
    scale, bias = 7.0, -2.5
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    put = lambda x: jax.device_put(jnp.asarray(x, jnp.float32), sharding)

    def sharded(i, t, s, b):
        return contrastive_loss(i, t, s, mesh=mesh, kind=kind, logit_bias=b, exchange=exchange)[0]

    value, grads = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2, 3)))(
        put(img), put(txt), jnp.float32(scale), jnp.float32(bias)
    )
    assert float(value) == pytest.approx(numpy_loss(img, txt, scale, kind, bias), rel=1e-5)
    dense = jax.grad(
        lambda i, t, s, b: dense_contrastive_loss(i, t, s, kind=kind, logit_bias=b), argnums=(0, 1, 2, 3)
    )(jnp.asarray(img, jnp.float32), jnp.asarray(txt, jnp.float32), jnp.float32(scale), jnp.float32(bias))
    for ours, reference in zip(grads, dense):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(reference), rtol=1e-5, atol=1e-6)
    # Cross-device negatives matter: the gradient of row 0 depends on rows held by other devices.
    assert np.abs(np.asarray(grads[0])[0]).max() > 0


def test_dense_reference_matches_numpy():
    img, txt = embeddings(12, seed=3)
    assert float(dense_contrastive_loss(jnp.asarray(img), jnp.asarray(txt), 5.0)) == pytest.approx(
        numpy_loss(img, txt, 5.0, "softmax"), rel=1e-5
    )


@pytest.mark.parametrize("exchange", ["all_gather", "ring"])
def test_accuracy_metrics_count_global_argmax(exchange):
    mesh = make_mesh({"data": 8})
    img, txt = embeddings(16, seed=1)
    txt[:10] = img[:10]  # the first 10 pairs match exactly
    _, metrics = contrastive_loss(
        jnp.asarray(img, jnp.float32),
        jnp.asarray(txt, jnp.float32),
        jnp.float32(10.0),
        mesh=mesh,
        exchange=exchange,
    )
    logits = img @ txt.T
    assert float(metrics["i2t_accuracy"]) == pytest.approx(np.mean(logits.argmax(1) == np.arange(16)))
    assert float(metrics["t2i_accuracy"]) == pytest.approx(np.mean(logits.argmax(0) == np.arange(16)))


def test_loss_block_memory_is_local():
    """Each device's compiled loss holds a b x B block, not B x B: check the largest intermediate."""
    mesh = make_mesh({"data": 8})
    n, d = 256, 8
    img = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    compiled = (
        jax.jit(lambda i, t: contrastive_loss(i, t, jnp.float32(1.0), mesh=mesh)[0]).lower(img, img).compile()
    )
    text = compiled.as_text()
    assert f"f32[{n // 8},{n}]" in text  # the local logits block
    assert f"f32[{n},{n}]" not in text


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_ring_exchange_moves_rows_not_the_batch(kind):
    """exchange='ring': the compiled loss and gradient pass rows between devices (collective-permutes) and
    neither gather nor reduce a [B, d] array; each device's gradient is only its own rows."""
    mesh = make_mesh({"data": 8})
    n, d = 256, 64
    sharding = NamedSharding(mesh, P("data"))
    img = jax.ShapeDtypeStruct((n, d), jnp.float32, sharding=sharding)

    def hlo(exchange):
        def loss(i, t):
            return contrastive_loss(
                i, t, jnp.float32(1.0), mesh=mesh, kind=kind, logit_bias=jnp.float32(0.0), exchange=exchange
            )[0]

        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(img, img).compile().as_text()

    ring, gathered = hlo("ring"), hlo("all_gather")
    assert "all-gather" in gathered and "all-gather" not in ring
    assert "collective-permute" in ring
    assert f"f32[{n},{d}]" not in ring  # no device holds the whole batch's embeddings
    for line in ring.splitlines():
        if "all-reduce(" in line or "reduce-scatter(" in line:  # only the scalar sums are reduced
            assert f"[{n // 8},{d}]" not in line and f"[{n},{d}]" not in line, line
    # plan's count (loop bodies times their trip counts): the rows go round once forwards and once back
    permuted = summarize(ring, 8).collectives["collective-permute"]
    rows = 7 * (n // 8) * d * 4
    assert rows * 2 <= permuted.bytes < rows * 2.2
    # softmax gathers both modalities and reduce-scatters both gradients; the ring moves the texts only. (On
    # TPU the gather's reduce-scatter becomes an all-reduce, which this CPU compile does not show.)
    ratio = summarize(gathered, 8).wire_bytes / summarize(ring, 8).wire_bytes
    assert ratio > 1.8 if kind == "softmax" else ratio > 0.9


def test_bad_loss_arguments():
    img, txt = embeddings(4)
    with pytest.raises(ValueError, match="Unknown loss kind"):
        contrastive_loss(jnp.asarray(img), jnp.asarray(txt), 1.0, kind="hinge")
    with pytest.raises(ValueError, match="needs a logit_bias"):
        contrastive_loss(jnp.asarray(img), jnp.asarray(txt), 1.0, kind="sigmoid")
    with pytest.raises(ValueError, match="exchange must be one of"):
        contrastive_loss(jnp.asarray(img), jnp.asarray(txt), 1.0, exchange="broadcast")


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_local_negatives_equal_per_device_dense_losses(kind):
    """CLIP-Italian's per-device loss: each device's 4 rows only see each other (NumPy reference)."""
    mesh = make_mesh({"data": 8, "fsdp": 1})
    img, txt = embeddings(32, seed=3)
    scale, bias = 7.0, -2.5
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    put = lambda x: jax.device_put(jnp.asarray(x, jnp.float32), sharding)
    loss, _ = contrastive_loss(
        put(img),
        put(txt),
        jnp.float32(scale),
        mesh=mesh,
        kind=kind,
        logit_bias=jnp.float32(bias),
        negatives="local",
    )
    expected = np.mean(
        [numpy_loss(img[i : i + 4], txt[i : i + 4], scale, kind, bias) for i in range(0, 32, 4)]
    )
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert abs(float(loss) - numpy_loss(img, txt, scale, kind, bias)) > 1e-2  # not the global loss
