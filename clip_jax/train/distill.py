"""Text-only distillation into a CLIP's embedding space (M-CLIP, Carlsson et al. 2022; multilingual knowledge
distillation, Reimers & Gurevych 2020): the recipe that needs no images, only parallel sentences.

The *teacher* is a CLIP (``model.vision``: a full CLIP or vision-text dual encoder checkpoint). Its text tower
and text projection embed the teacher-language side of each pair once (cached under ``data.cache_dir``); the
*student* — the target-language text tower (``model.text``) with a fresh projection into the teacher's
embedding space — learns to give the same embedding to the translation (MSE, or ``distill.loss='cosine'``).
The model being trained is an ordinary dual encoder whose vision tower, visual projection and temperature are
the teacher's and never train, so the result is a CLIP for the new language whose image side is bit-identical
to the teacher's, exported like any other run.

It runs in the :class:`~clip_jax.train.trainer.Trainer` (``train.objective='distill'``): same mesh, phases
(e.g. the projection alone, then the whole student), optimizer groups, checkpoints and resume, logging. Only
the model builder, the data and the step differ — the three functions here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clip_jax.clip_model import CLIPModel
from clip_jax.data.parallel import PairBatches, read_pairs
from clip_jax.data.shapes import ShapesSpec
from clip_jax.embedding import shared_rows
from clip_jax.train.step import apply_gradients

LOSSES = ("mse", "cosine")


def teacher_directory(config: ConfigDict) -> str:
    """The teacher CLIP's checkpoint (``model.vision``; ``demo:english-clip`` is built on first use)."""
    from clip_jax.weights.readers import resolve_named

    return str(resolve_named(config.model.vision, config.data.cache_dir))


def load_teacher(config: ConfigDict) -> CLIPModel:
    """The teacher CLIP; an error that says what to give when ``model.vision`` is not a full CLIP. Loaded once
    per process: the model's vision side and the distillation targets both come from it."""
    return _load_teacher(teacher_directory(config))


@functools.lru_cache(maxsize=1)
def _load_teacher(source: str) -> CLIPModel:
    try:
        return CLIPModel.from_pretrained(source)
    except Exception as error:
        raise ValueError(
            f"train.objective='distill' takes the teacher from model.vision, which must be a whole "
            f"CLIP (vision and text towers and projections, e.g. openai/clip-vit-base-patch32); "
            f"{source!r} could not be loaded as one: {error}"
        ) from error


def build_model(config: ConfigDict) -> CLIPModel:
    """The dual encoder to train: the teacher's vision tower, visual projection and temperature, the student
    text tower (``model.text``) and a fresh text projection into the teacher's embedding space."""
    from clip_jax.train.model import build_model as build_dual_encoder

    teacher = load_teacher(config)
    dim = teacher.module.visual_projection.kernel.shape[1]
    if config.model.projection_dim != dim:
        raise ValueError(
            f"model.projection_dim={config.model.projection_dim}, but the teacher's embedding space "
            f"has {dim} dimensions: set --config.model.projection_dim={dim}."
        )
    model = build_dual_encoder(config)
    module = model.module
    # copies: the loaded teacher is shared (its text side makes the targets) and must not change with the model
    module.vision = nnx.clone(teacher.module.vision)
    module.visual_projection = nnx.clone(teacher.module.visual_projection)
    module.logit_scale = nnx.Param(teacher.module.logit_scale[...])
    model.image_processor = teacher.image_processor
    return model


def teacher_embeddings(teacher: CLIPModel, texts: list[str], cache_dir: str, key: str) -> np.ndarray:
    """The teacher's projected, unnormalised text embeddings of ``texts`` (M-CLIP's targets), computed once and
    cached in ``cache_dir`` keyed by the teacher and the sentences."""
    digest = hashlib.sha1(("\n".join([key, *texts])).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / "distill-targets" / f"{digest}.npy"
    if path.exists():
        return np.load(path)
    # Each process embeds its share of the sentences; all get every target (a global permutation draws them).
    targets = shared_rows(lambda part: teacher.encode_text(part, normalize=False), texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(
        f"{path.stem}.{jax.process_index()}.partial.npy"
    )  # processes may share the cache
    np.save(partial, targets)
    partial.replace(path)
    return targets


@dataclasses.dataclass
class ValPairs:
    """Held-out pairs: student-language sentences and the teacher's embeddings of their translations."""

    texts: list[str]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def build_data(
    config: ConfigDict, model: CLIPModel, tokenize: Callable[[list[str]], dict]
) -> tuple[PairBatches, ValPairs | None]:
    """This process's batches of (student sentence, teacher embedding) and the held-out pairs."""
    d = config.distill
    if not d.train:
        raise ValueError(
            "train.objective='distill' needs distill.train: parallel pairs (e.g. "
            "'jsonl:/data/en-it.jsonl' with columns distill.teacher_column / distill.student_column)."
        )
    teacher = load_teacher(config)
    shapes = ShapesSpec(**config.data.shapes.to_dict())
    key = f"{teacher_directory(config)}|{teacher.module.text_pooling}"
    teacher_texts, student_texts = read_pairs(d.train, d.teacher_column, d.student_column, shapes=shapes)
    targets = teacher_embeddings(teacher, teacher_texts, config.data.cache_dir, key)
    if d.student_sees_teacher_language:  # M-CLIP: the student also maps the English sentence to its embedding
        student_texts, targets = student_texts + teacher_texts, np.concatenate([targets, targets])
    train = PairBatches(
        student_texts,
        targets,
        config.train.batch_size,
        tokenize=tokenize,
        seed=config.train.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    val = None
    if d.val:
        teacher_texts, student_texts = read_pairs(d.val, d.teacher_column, d.student_column, shapes=shapes)
        limit = d.val_limit or len(teacher_texts)
        val = ValPairs(
            student_texts[:limit],
            teacher_embeddings(teacher, teacher_texts[:limit], config.data.cache_dir, key),
        )
    return train, val


def distill_loss(student: jax.Array, target: jax.Array, kind: str = "mse") -> tuple[jax.Array, dict]:
    """MSE between the student's and the teacher's embeddings (mean over batch and dimensions, as M-CLIP), or
    ``cosine``: 1 - their mean cosine similarity. Metrics: ``loss``, ``mse``, ``cosine``."""
    if kind not in LOSSES:
        raise ValueError(f"Unknown distill.loss {kind!r}; choose one of {LOSSES}.")
    student, target = student.astype(jnp.float32), target.astype(jnp.float32)
    mse = jnp.mean((student - target) ** 2)
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    cosine = jnp.mean(jnp.sum(unit(student) * unit(target), axis=-1))
    loss = mse if kind == "mse" else 1.0 - cosine
    return loss, {"loss": loss, "mse": mse, "cosine": cosine}


def make_distill_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation, mesh: Mesh, *, loss_kind: str, dropout: bool
) -> Callable:
    """The (un-jitted) distillation step over a :class:`~clip_jax.train.step.TrainState`: the student's
    projected text features of ``input_ids`` regress ``target``; gradients of the trainable parameters only."""
    del mesh  # the batch is sharded over the mesh; the loss is a mean over the global batch

    def step(state, batch: dict) -> tuple[Any, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.frozen)
            student = model.text_features(
                batch["input_ids"],
                batch["attention_mask"],
                deterministic=not dropout,
                rngs=nnx.Rngs(dropout=rng),
            )
            return distill_loss(student, batch["target"], loss_kind)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(state, tx, grads, metrics)

    return step


def val_metrics(student: np.ndarray, targets: np.ndarray, loss_kind: str) -> dict[str, float]:
    """``val/loss``, ``val/mse`` and ``val/cosine`` (mean cosine between student(target-language sentence) and
    teacher(its translation)) from the student's embeddings of the held-out sentences."""
    _, metrics = distill_loss(jnp.asarray(student), jnp.asarray(targets), loss_kind)
    return {f"val/{k}": float(v) for k, v in metrics.items()}
