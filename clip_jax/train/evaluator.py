"""Validation during training: the run's objective's metrics on its validation split
(:meth:`clip_jax.train.objectives.Objective.val_metrics`), and the eval tasks of ``train.evals``
(:mod:`clip_jax.evaluate.tasks`, the same tasks and options as ``clip-jax eval``).

Both see the state being trained as a :class:`~clip_jax.clip_model.CLIPModel` on the training mesh: its
parameters stay where training keeps them (sharded, on every process), and embedding goes through
``CLIPModel``'s own path.

    c.train.evals = {
        "forgetting": dict(task="zeroshot", dataset="imagefolder:/data/cifar10/test",
                           classnames="en:cifar10", templates="en:cifar10",
                           reference="openai/clip-vit-base-patch32"),
    }

logs ``val/forgetting/acc1`` (the reference model with the vision tower being trained) and
``val/forgetting/original/acc1`` (the reference as it is) at each evaluation.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clip_jax.clip_model import CLIPModel
from clip_jax.embedding import spans_processes
from clip_jax.evaluate.tasks import EvalTask, task_arguments
from clip_jax.evaluate.zeroshot import ClassEmbeddingCache
from clip_jax.sharding import batch_axes, replicated
from clip_jax.train.objectives import objective_of
from clip_jax.train.step import TrainState


def on_mesh(model: CLIPModel, module: nnx.Module, mesh: Mesh) -> CLIPModel:
    """``module`` (its parameters on ``mesh``) with ``model``'s tokenizer and image processor, embedding there."""
    return CLIPModel(
        module,
        tokenizer=model.tokenizer,
        image_processor=model.image_processor,
        max_length=model.max_length,
        mesh=mesh,
    )


def replicate_on(module: nnx.Module, mesh: Mesh) -> nnx.Module:
    """A copy of ``module`` with a full copy of every array on each device of ``mesh`` (also a mesh that
    spans processes: each process gives its own copy of the same values)."""
    graphdef, state = nnx.split(module)
    sharding = replicated(mesh)

    def place(leaf):
        host = np.asarray(jax.device_get(leaf))
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return nnx.merge(graphdef, jax.tree.map(place, state))


class TaskEval:
    """One ``train.evals`` entry: an eval task and its arguments; with ``reference``, the reference model
    (read once) with the vision tower being trained."""

    def __init__(self, name: str, options: dict[str, Any], mesh: Mesh, batch_size: int):
        self.name, self.mesh = name, mesh
        self.task: EvalTask
        self.task, self.args = task_arguments(f"train.evals.{name}", options)
        if not options.get("batch_size"):  # the run's eval batch, a multiple of the devices
            self.args.batch_size = batch_size
        self.args.class_cache = ClassEmbeddingCache(None)  # for the run: the reference's classes once
        self.reference: CLIPModel | None = None
        self.original: dict[str, float] = {}

    def _reference(self) -> CLIPModel:
        if self.reference is None:
            from clip_jax.loading import load_model

            original = load_model(self.args.reference, logit_scale=self.args.logit_scale)
            self.reference = on_mesh(original, replicate_on(original.module, self.mesh), self.mesh)
            self.original = self._metrics(self.reference, self.args.reference)
        return self.reference

    def _metrics(self, model: CLIPModel, label: str) -> dict[str, float]:
        record = self.task.run(model, label, self.args, 0)
        return {k: float(v) for k, v in record["metrics"].items() if isinstance(v, (int, float))}

    def __call__(self, model: CLIPModel) -> dict[str, float]:
        prefix = f"val/{self.name}"
        if getattr(self.args, "reference", None):
            from clip_jax.evaluate.forgetting import check_fits, with_vision_tower

            reference = self._reference()
            check_fits(reference, model, "the model being trained", self.args.reference)
            model = with_vision_tower(reference, model.module.vision, mesh=self.mesh)
            original = {f"{prefix}/original/{k}": v for k, v in self.original.items()}
        else:
            original = {}
        scores = self._metrics(model, self.name)
        return {**{f"{prefix}/{k}": v for k, v in scores.items()}, **original}


class Evaluator:
    """``evaluator(state, graphdef) -> {"val/...": value}``: the objective's metrics on ``val`` (an ``EvalSet``
    of images and captions, or distillation's ``ValPairs``; none when there is no validation data), then each
    ``train.evals`` task's."""

    def __init__(self, config: ConfigDict, val: Any, mesh: Mesh, model: CLIPModel):
        """``model``: the run's model (its tokenizer and image processor embed the validation data)."""
        self.config, self.val, self.mesh, self.model = config, val, mesh, model
        self.objective = objective_of(config)
        devices = int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))
        devices //= jax.process_count() if spans_processes(mesh) else 1
        size = max(1, config.train.eval_batch_size)
        self.batch_size = (
            -(-size // devices) * devices
        )  # rows per call and process: a multiple of its devices
        # checked now, before the run writes anything
        self.tasks = [
            TaskEval(name, dict(options), mesh, self.batch_size)
            for name, options in config.train.get("evals", {}).items()
        ]

    def model_of(self, state: TrainState, graphdef: nnx.GraphDef) -> CLIPModel:
        """The model in ``state``, embedding on the training mesh."""
        return on_mesh(self.model, nnx.merge(graphdef, state.params, state.frozen), self.mesh)

    def __call__(self, state: TrainState, graphdef: nnx.GraphDef) -> dict[str, float]:
        model = self.model_of(state, graphdef)
        metrics = {}
        if self.val is not None and len(self.val):
            metrics.update(self.objective.val_metrics(model, self.val, self.config, self.batch_size))
        for task in self.tasks:
            metrics.update(task(model))
        return metrics
