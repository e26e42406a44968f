"""Validation during training, with the model's own embedding path and the configured loss.

Contrastive runs: ``val/loss`` — the configured loss (:data:`clip_jax.loss.LOSSES`) of each validation image
against its first caption — and retrieval recall over all captions under CLIP_benchmark's names.
Distillation runs: the distillation loss, MSE and mean cosine against the teacher's embeddings.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clip_jax.embedding import embed_rows, spans_processes
from clip_jax.evaluate.retrieval import benchmark_names, retrieval_metrics
from clip_jax.loss import dense_contrastive_loss
from clip_jax.models.dual_encoder import l2_normalize
from clip_jax.sharding import batch_axes, batch_sharding
from clip_jax.train import distill
from clip_jax.train.state import TrainState


class Evaluator:
    """``evaluator(state, graphdef) -> {"val/...": value}`` on ``val`` (an ``EvalSet`` of images and captions,
    or distillation's ``ValPairs``); empty when there is no validation data."""

    def __init__(self, config: ConfigDict, val: Any, mesh: Mesh, tokenize):
        self.config, self.val, self.mesh, self.tokenize = config, val, mesh, tokenize
        devices = int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))
        devices //= jax.process_count() if spans_processes(mesh) else 1
        size = max(1, config.train.eval_batch_size)
        self.batch_size = (
            -(-size // devices) * devices
        )  # rows per call and process: a multiple of its devices
        self._fns: tuple[nnx.GraphDef, Any, Any] | None = None

    def _embedders(self, graphdef: nnx.GraphDef) -> tuple[Any, Any]:
        """Jitted ``(params, frozen, ...) -> features`` for images and texts (compiled once per phase);
        normalised for contrastive runs, raw for distillation (its targets are unnormalised)."""
        if self._fns is None or self._fns[0] is not graphdef:
            post = (lambda x: x.astype(jnp.float32)) if self.distilling else l2_normalize
            out = batch_sharding(self.mesh)

            def images(params, frozen, pixels):
                return post(nnx.merge(graphdef, params, frozen).image_features(pixels))

            def texts(params, frozen, ids, mask):
                return post(nnx.merge(graphdef, params, frozen).text_features(ids, mask))

            self._fns = (graphdef, jax.jit(images, out_shardings=out), jax.jit(texts, out_shardings=out))
        return self._fns[1], self._fns[2]

    @property
    def distilling(self) -> bool:
        return self.config.train.objective == "distill"

    def _embed_texts(self, state: TrainState, graphdef: nnx.GraphDef, texts: list[str]) -> np.ndarray:
        _, fn = self._embedders(graphdef)
        tokens = self.tokenize(texts)
        return embed_rows(
            lambda ids, mask: fn(state.params, state.frozen, ids, mask),
            [(tokens["input_ids"], tokens["attention_mask"])],
            batch_size=self.batch_size,
            mesh=self.mesh,
        )

    def __call__(self, state: TrainState, graphdef: nnx.GraphDef) -> dict[str, float]:
        if self.val is None or len(self.val) == 0:
            return {}
        if self.distilling:
            student = self._embed_texts(state, graphdef, self.val.texts)
            return distill.val_metrics(student, self.val.targets, self.config.distill.loss)
        embed_images, _ = self._embedders(graphdef)
        captions = self.val.captions
        image_embeds = embed_rows(
            lambda x: embed_images(state.params, state.frozen, x),
            [(self.val.pixels,)],
            batch_size=self.batch_size,
            mesh=self.mesh,
        )
        text_embeds = self._embed_texts(state, graphdef, [c for caps in captions for c in caps])
        text_image = np.array([i for i, caps in enumerate(captions) for _ in caps])
        first = np.concatenate([[0], np.cumsum([len(c) for c in captions])[:-1]])
        module = nnx.merge(graphdef, state.params, state.frozen)
        bias = None if module.logit_bias is None else jnp.asarray(jax.device_get(module.logit_bias[...]))
        loss = dense_contrastive_loss(
            jnp.asarray(image_embeds),
            jnp.asarray(text_embeds[first]),
            jnp.asarray(jax.device_get(module.scale())),
            kind=self.config.loss.kind,
            logit_bias=bias,
        )
        metrics = retrieval_metrics(image_embeds, text_embeds, text_image, ks=(1, 5))
        return {
            "val/loss": float(loss),
            **{f"val/{k}": v for k, v in benchmark_names(metrics).items() if "mrr" not in k},
        }
