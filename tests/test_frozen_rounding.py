"""Frozen weights rounded to the compute dtype once per phase (CPU): which weights qualify, and the same
losses and parameters as rounding them inside every step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_grad_cache import random_batch
from train_helpers import tiny_config

from clip_jax.config import phase
from clip_jax.train import Trainer, frozen_rounding
from clip_jax.train.frozen_rounding import FrozenRoundedStep, rounded_leaves
from clip_jax.train.step import TrainState


def trainer_for(tmp_path, name, dtype="bfloat16", trainable=None):
    config = tiny_config(
        tmp_path / "cache", **{"model.dtype": dtype, "model.dropout": False, "train.batch_size": 16}
    )
    config.mesh.axes = {"data": 4, "fsdp": 2}
    if trainable:
        config.phases.warmup = phase(3, trainable, {"head": 1e-2, "vision": 1e-2, "text": 1e-2})
    return Trainer(config, str(tmp_path / name))


def run_steps(tmp_path, name, rounding, trainable=None, steps=3):
    """Losses of ``steps`` warm-up steps and the parameters after them, with rounding once on or off."""
    frozen_rounding.ROUND_FROZEN_ONCE = rounding
    try:
        trainer = trainer_for(tmp_path, name, trainable=trainable)
        started = trainer.start_phase(trainer.phases[0], trainer.model.module)
        state, losses = started.state, []
        initial = jax.device_get(state.params)
        for k in range(steps):
            state, metrics = started.step_fn(
                state, trainer.global_batch(random_batch(16, np.random.RandomState(k)))
            )
            losses.append(float(metrics["loss"]))
        return started.step_fn, losses, initial, jax.device_get(state.params)
    finally:
        frozen_rounding.ROUND_FROZEN_ONCE = True


def frozen_names(state, indices):
    paths = [
        jax.tree_util.keystr(p, simple=True, separator=".")
        for p, _ in jax.tree_util.tree_flatten_with_path(state.frozen)[0]
    ]
    return {paths[i] for i in indices}, paths


@pytest.mark.parametrize(
    "trainable",
    [None, r"text\.embeddings\..*|.*projection.*|logit_scale"],
    ids=["heads (phase 1)", "under frozen layers"],
)
def test_rounding_frozen_weights_once_gives_the_same_steps(tmp_path, trainable):
    """bfloat16 steps on 8 devices (data 4 x fsdp 2): the same losses and updated parameters, bit for bit,
    whether the frozen kernels are rounded once or in every step; also where gradients flow back through the
    frozen layers (trainable embeddings under them)."""
    step_fn, losses, initial, params = run_steps(tmp_path, "once", True, trainable)
    plain_fn, plain_losses, _, plain_params = run_steps(tmp_path, "every", False, trainable)
    assert isinstance(step_fn, FrozenRoundedStep) and step_fn.rounded
    assert plain_fn.rounded == {}
    assert losses == plain_losses
    for (path, leaf), plain in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(plain_params)
    ):
        np.testing.assert_array_equal(leaf, plain, err_msg=jax.tree_util.keystr(path))
    # the comparison means something: every trained leaf moved
    for before, after in zip(jax.tree.leaves(initial), jax.tree.leaves(params)):
        assert np.abs(np.asarray(after, np.float32) - np.asarray(before, np.float32)).max() > 1e-4


def test_every_frozen_weight_of_a_bfloat16_model_qualifies(tmp_path):
    """The towers compute in bfloat16 and round every parameter they read (dense and attention kernels,
    embedding tables, and LayerNorm scales and biases, which flax's LayerNorm promotes to its dtype): in the
    heads-only phase every frozen leaf is rounded once."""
    trainer = trainer_for(tmp_path, "names")
    started = trainer.start_phase(trainer.phases[0], trainer.model.module)
    found = rounded_leaves(started.step_fn.unjitted, started.abstract, started.batch)
    names, paths = frozen_names(started.state, found)
    assert any(p.endswith("kernel.value") for p in paths) and any("norm" in p for p in paths)
    assert names == set(paths)
    assert set(found.values()) == {jnp.dtype(jnp.bfloat16)}


def test_only_weights_used_rounded_everywhere_qualify():
    """A hand-written step: rounded after a reshape or inside a conditional and a scan's constants
    qualifies; used at full precision anywhere, carried through a scan, or rounded to two dtypes does not."""
    bf16 = jnp.bfloat16

    def step(state, batch):
        f = state.frozen
        x = batch.astype(bf16)
        y = x @ f["reshaped"].reshape(4, 4).astype(bf16)
        y = y + jax.lax.cond(
            batch[0, 0] > 0, lambda w: w.astype(bf16), lambda w: -w.astype(bf16), f["in_cond"]
        )
        y = y * f["full"] + (f["mixed"].astype(bf16) * f["mixed"]).astype(bf16)
        y, _ = jax.lax.scan(lambda c, _: (c @ f["scanned"].astype(bf16), None), y, None, length=2)
        carry, _ = jax.lax.scan(lambda c, _: (c * 2, None), f["carried"], None, length=2)
        y = y + carry.astype(bf16) + f["two_dtypes"].astype(bf16) + f["two_dtypes"].astype(jnp.float16)
        metrics = {"loss": y.astype(jnp.float32).sum()}
        return state.replace(step=state.step + 1), metrics

    frozen = {
        name: jnp.ones(shape, jnp.float32)
        for name, shape in [("reshaped", (16,)), ("in_cond", (4,)), ("full", (4,)), ("mixed", (4,)),
                            ("scanned", (4, 4)), ("carried", (4,)), ("two_dtypes", (4,))]
    }  # fmt: skip
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params={}, frozen=frozen, opt_state=(), rng=jnp.zeros(2)
    )
    found = rounded_leaves(step, state, jnp.ones((2, 4)))
    names = sorted(frozen)  # the leaf order of a dict
    assert {names[i] for i in found} == {"reshaped", "in_cond", "scanned"}
    assert set(found.values()) == {jnp.dtype(bf16)}


def test_float32_steps_round_nothing(tmp_path):
    trainer = trainer_for(tmp_path, "f32", dtype="float32")
    started = trainer.start_phase(trainer.phases[0], trainer.model.module)
    started.step_fn(started.state, trainer.global_batch(random_batch(16, np.random.RandomState(0))))
    assert started.step_fn.rounded == {}


def test_another_state_is_rounded_afresh(tmp_path):
    """Given a state it did not return (other frozen weights: a restored checkpoint, another run), the step
    rounds that state's weights, not the copies it kept."""
    trainer = trainer_for(tmp_path, "fresh")
    started = trainer.start_phase(trainer.phases[0], trainer.model.module)
    batch = trainer.global_batch(random_batch(16, np.random.RandomState(0)))
    # copies throughout: the step donates the state it is given
    doubled = lambda: jax.tree.map(jnp.copy, started.state).replace(
        frozen=jax.tree.map(lambda x: x * 2, started.state.frozen)
    )
    other, reference = doubled(), doubled()
    started.step_fn(started.state, batch)  # rounds and keeps the original weights
    _, metrics = started.step_fn(other, batch)
    _, expected = started.step_fn.plain(reference, batch)
    assert float(metrics["loss"]) == float(expected["loss"])
