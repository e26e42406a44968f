"""Validation during training: the model's own embedding path on the mesh; the metrics are the run's
objective's (:meth:`clip_jax.train.objectives.Objective.val_metrics`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clip_jax.embedding import embed_rows, spans_processes
from clip_jax.models.dual_encoder import l2_normalize
from clip_jax.sharding import batch_axes, batch_sharding
from clip_jax.train.objectives import objective_of
from clip_jax.train.step import TrainState


class Evaluator:
    """``evaluator(state, graphdef) -> {"val/...": value}`` on ``val`` (an ``EvalSet`` of images and captions,
    or distillation's ``ValPairs``); empty when there is no validation data."""

    def __init__(self, config: ConfigDict, val: Any, mesh: Mesh, tokenize):
        self.config, self.val, self.mesh, self.tokenize = config, val, mesh, tokenize
        self.objective = objective_of(config)
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
            post = l2_normalize if self.objective.normalised_embeddings else (lambda x: x.astype(jnp.float32))
            out = batch_sharding(self.mesh)

            def images(params, frozen, pixels):
                return post(nnx.merge(graphdef, params, frozen).image_features(pixels))

            def texts(params, frozen, ids, mask):
                return post(nnx.merge(graphdef, params, frozen).text_features(ids, mask))

            self._fns = (graphdef, jax.jit(images, out_shardings=out), jax.jit(texts, out_shardings=out))
        return self._fns[1], self._fns[2]

    def embed_texts(self, state: TrainState, graphdef: nnx.GraphDef, texts: list[str]) -> np.ndarray:
        """``texts``' embeddings by the model in ``state``, batched over the mesh."""
        _, fn = self._embedders(graphdef)
        tokens = self.tokenize(texts)
        return embed_rows(
            lambda ids, mask: fn(state.params, state.frozen, ids, mask),
            [(tokens["input_ids"], tokens["attention_mask"])],
            batch_size=self.batch_size,
            mesh=self.mesh,
        )

    def embed_images(self, state: TrainState, graphdef: nnx.GraphDef, pixels: np.ndarray) -> np.ndarray:
        """Preprocessed images' embeddings by the model in ``state``, batched over the mesh."""
        fn, _ = self._embedders(graphdef)
        return embed_rows(
            lambda x: fn(state.params, state.frozen, x),
            [(pixels,)],
            batch_size=self.batch_size,
            mesh=self.mesh,
        )

    def __call__(self, state: TrainState, graphdef: nnx.GraphDef) -> dict[str, float]:
        if self.val is None or len(self.val) == 0:
            return {}
        return self.objective.val_metrics(self, state, graphdef)
