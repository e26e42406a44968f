"""Training objectives: what a run builds, feeds and optimises, chosen by ``train.objective``.

An :class:`Objective` is everything the trainer, the phase program, in-training validation and ``clip-jax
plan`` need to know about one: the model it trains, its data, its configuration checks, each phase's batch
shapes and step, and its validation metrics. Two ship: ``contrastive`` (images and captions, the CLIP loss of
``loss.kind``) and ``distill`` (text only: the student's text embeddings regress the teacher's,
:mod:`clip_jax.train.distill`). Adding one is a module with an :class:`Objective` subclass and a
:func:`register_objective` call; nothing else branches on the objective's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clip_jax.clip_model import CLIPModel
from clip_jax.config import invalid_value, one_of
from clip_jax.data import build_training_data
from clip_jax.evaluate.retrieval import benchmark_names, retrieval_metrics
from clip_jax.loss import dense_contrastive_loss
from clip_jax.sharding import batch_sharding
from clip_jax.train import distill
from clip_jax.train import features as feature_cache
from clip_jax.train.model import build_model
from clip_jax.train.step import TrainState, make_train_step

Step = Callable[[TrainState, dict], tuple[TrainState, dict]]


class Objective:
    """One training objective. Subclasses set ``name`` and ``summary`` and implement every method."""

    name: str = ""
    summary: str = ""

    def check(self, config: ConfigDict) -> None:
        """Raise ``ValueError`` (what is wrong — how to fix it) for settings this objective cannot run."""

    def check_phase(self, phase: Any, params: Any) -> None:
        """Raise ``ValueError`` if ``phase`` cannot train ``params`` (its trainable parameters) this way."""

    def build_model(self, config: ConfigDict) -> CLIPModel:
        """The model the run trains (towers, projections; weights read)."""
        raise NotImplementedError

    def build_data(self, config: ConfigDict, model: CLIPModel, tokenize: Callable) -> tuple[Iterator, Any]:
        """``(training batches of this process, validation set or None)``."""
        raise NotImplementedError

    def step_kind(self, phase: Any) -> str:
        """What ``phase``'s step computes, as ``clip-jax plan`` reports it (``train``, ``cached_features``...)."""
        raise NotImplementedError

    def batch_shapes(self, config: ConfigDict, module: nnx.Module, phase: Any, mesh: Mesh) -> dict[str, Any]:
        """The global batch ``phase``'s step takes: ``ShapeDtypeStruct`` leaves, batch-sharded."""
        raise NotImplementedError

    def make_step(
        self,
        config: ConfigDict,
        graphdef: nnx.GraphDef,
        tx: optax.GradientTransformation,
        mesh: Mesh,
        phase: Any,
    ) -> Step:
        """The (un-jitted) train step of ``phase``."""
        raise NotImplementedError

    def val_metrics(
        self, model: CLIPModel, val: Any, config: ConfigDict, batch_size: int
    ) -> dict[str, float]:
        """``{"val/...": value}`` of ``model`` (the state being trained, embedding on the training mesh:
        ``model.encode_image`` / ``encode_text`` with ``batch_size`` rows per process) on ``val``, the validation
        set :meth:`build_data` returned."""
        raise NotImplementedError


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Make ``objective`` available as ``train.objective=NAME``."""
    OBJECTIVES[objective.name] = objective
    return objective


def objective_of(config: ConfigDict) -> Objective:
    """The registered objective ``train.objective`` names, its settings checked."""
    name = config.train.objective
    rule = one_of(*OBJECTIVES)
    if not rule.ok(name):
        raise invalid_value("train.objective", name, rule.text)
    objective = OBJECTIVES[name]
    objective.check(config)
    return objective


def _spec(config: ConfigDict, mesh: Mesh) -> Callable[[tuple, Any], jax.ShapeDtypeStruct]:
    rows, sharded = config.train.batch_size, batch_sharding(mesh)
    return lambda shape, dtype: jax.ShapeDtypeStruct((rows, *shape), dtype, sharding=sharded)


def _token_shapes(config: ConfigDict, module: nnx.Module, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    spec = _spec(config, mesh)
    length = min(int(config.model.max_length), int(module.text.config.max_length))
    return {"input_ids": spec((length,), jnp.int32), "attention_mask": spec((length,), jnp.int32)}


class Contrastive(Objective):
    """Images and captions, the contrastive loss of ``loss.kind`` over the global batch; a phase may run on
    cached tower features (``phases.<p>.cache_features``)."""

    name = "contrastive"
    summary = "images + captions, the CLIP loss of loss.kind"

    def check_phase(self, phase: Any, params: Any) -> None:
        if phase.cache_features:
            feature_cache.check_cacheable(phase.name, params)

    def build_model(self, config: ConfigDict) -> CLIPModel:
        return build_model(config)

    def build_data(self, config: ConfigDict, model: CLIPModel, tokenize: Callable) -> tuple[Iterator, Any]:
        return build_training_data(config, model.image_processor, tokenize)

    def step_kind(self, phase: Any) -> str:
        return "cached_features" if phase.cache_features else "train"

    def batch_shapes(self, config: ConfigDict, module: nnx.Module, phase: Any, mesh: Mesh) -> dict[str, Any]:
        spec = _spec(config, mesh)
        if phase.cache_features:
            return {
                # the projections' input widths: a tower's pooled output (a SigLIP text head may differ
                # from the tower's hidden size)
                "image_features": spec((module.visual_projection.kernel.shape[0],), jnp.float32),
                "text_features": spec((module.pooled_text_size,), jnp.float32),
            }
        size = int(module.vision.config.image_size)
        return {"pixel_values": spec((size, size, 3), jnp.float32), **_token_shapes(config, module, mesh)}

    def make_step(
        self,
        config: ConfigDict,
        graphdef: nnx.GraphDef,
        tx: optax.GradientTransformation,
        mesh: Mesh,
        phase: Any,
    ) -> Step:
        loss = {
            "loss_kind": config.loss.kind,
            "negatives": config.loss.negatives,
            "exchange": config.loss.exchange,
        }
        if phase.cache_features:  # projections on cached features: no tower activations, no micro-batches
            return feature_cache.make_feature_train_step(graphdef, tx, mesh, **loss)
        return make_train_step(
            graphdef,
            tx,
            mesh,
            **loss,
            dropout=config.model.dropout,
            micro_batch_size=config.train.micro_batch_size,
        )

    def val_metrics(
        self, model: CLIPModel, val: Any, config: ConfigDict, batch_size: int
    ) -> dict[str, float]:
        """Retrieval R@1/R@5 (images grouped with all their captions) and the loss on each image's first
        caption."""
        captions = val.captions
        image_embeds = model.encode_image(val.pixels, batch_size=batch_size)
        text_embeds = model.encode_text([c for caps in captions for c in caps], batch_size=batch_size)
        text_image = np.array([i for i, caps in enumerate(captions) for _ in caps])
        first = np.concatenate([[0], np.cumsum([len(c) for c in captions])[:-1]])
        module = model.module
        bias = None if module.logit_bias is None else jnp.asarray(jax.device_get(module.logit_bias[...]))
        loss = dense_contrastive_loss(
            jnp.asarray(image_embeds),
            jnp.asarray(text_embeds[first]),
            jnp.asarray(jax.device_get(module.scale())),
            kind=config.loss.kind,
            logit_bias=bias,
        )
        metrics = retrieval_metrics(image_embeds, text_embeds, text_image, ks=(1, 5))
        return {
            "val/loss": float(loss),
            **{f"val/{k}": v for k, v in benchmark_names(metrics).items() if "mrr" not in k},
        }


class Distill(Objective):
    """Text only: the student's text embeddings regress a teacher CLIP's on parallel sentences (M-CLIP);
    the teacher's vision tower and projection are kept (:mod:`clip_jax.train.distill`)."""

    name = "distill"
    summary = "text-only distillation into model.vision's embedding space (parallel sentences)"

    def check(self, config: ConfigDict) -> None:
        cached = [n for n in config.train.phases if config.phases[n].cache_features]
        if cached:
            raise ValueError(
                f"phases.{cached[0]}.cache_features is for contrastive phases; train.objective='distill' caches "
                "the teacher's embeddings by itself — set phases.*.cache_features=False"
            )
        rule = one_of(*distill.LOSSES)
        if not rule.ok(config.distill.loss):
            raise invalid_value("distill.loss", config.distill.loss, rule.text)

    def build_model(self, config: ConfigDict) -> CLIPModel:
        return distill.build_model(config)

    def build_data(self, config: ConfigDict, model: CLIPModel, tokenize: Callable) -> tuple[Iterator, Any]:
        return distill.build_data(config, model, tokenize)

    def step_kind(self, phase: Any) -> str:
        return "distill"

    def batch_shapes(self, config: ConfigDict, module: nnx.Module, phase: Any, mesh: Mesh) -> dict[str, Any]:
        target = _spec(config, mesh)((module.projection_dim,), jnp.float32)
        return {**_token_shapes(config, module, mesh), "target": target}

    def make_step(
        self,
        config: ConfigDict,
        graphdef: nnx.GraphDef,
        tx: optax.GradientTransformation,
        mesh: Mesh,
        phase: Any,
    ) -> Step:
        return distill.make_distill_step(
            graphdef, tx, mesh, loss_kind=config.distill.loss, dropout=config.model.dropout
        )

    def val_metrics(
        self, model: CLIPModel, val: Any, config: ConfigDict, batch_size: int
    ) -> dict[str, float]:
        # unnormalised: the targets are the teacher's raw embeddings
        student = model.encode_text(val.texts, batch_size=batch_size, normalize=False)
        return distill.val_metrics(student, val.targets, config.distill.loss)


register_objective(Contrastive())
register_objective(Distill())
