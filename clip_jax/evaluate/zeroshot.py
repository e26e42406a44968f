"""Zero-shot classification: images against prompt-ensembled class embeddings (:mod:`clip_jax.prompts`),
by scaled cosine; the on-disk class-embedding cache."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clip_jax.prompts import class_embeddings


def model_fingerprint(model) -> str:
    """A digest of everything a text embedding depends on: the text tower's and text projection's parameters
    (values, shapes, dtypes), the text pooling, ``max_length`` and the tokenizer's vocabulary. Two models with
    the same fingerprint embed every text identically (whatever their vision towers); retraining or
    re-exporting to the same path changes it. Parameters sharded over several processes are gathered (every
    process must call it then, as in-training validation does)."""
    import jax
    from flax import nnx
    from jax.experimental import multihost_utils

    digest = hashlib.blake2b(digest_size=16)
    module = model.module
    state = {"text": nnx.state(module.text, nnx.Param), "proj": nnx.state(module.text_projection, nnx.Param)}
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(state)[0], key=lambda kv: str(kv[0])):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(f"pooling={getattr(module, 'text_pooling', '')}|max_length={model.max_length}".encode())
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
        digest.update(type(tokenizer).__name__.encode())
    return digest.hexdigest()


class ClassEmbeddingCache:
    """Class embeddings per (model, class names, templates), computed once, kept in memory and on disk.

    Keyed by :func:`model_fingerprint` (the parameters, tokenizer and ``max_length``), not by the model's name,
    so a workdir trained further or an export overwritten at the same path never reuses stale embeddings."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory).expanduser() if directory else None
        self.memory: dict[str, np.ndarray] = {}

    def get(self, model, model_id: str, classnames: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """The class embeddings of ``model``; ``model_id`` is only a label (the key is the model's fingerprint)."""
        del model_id
        key = hashlib.sha1(
            json.dumps([model_fingerprint(model), list(classnames), list(templates)]).encode()
        ).hexdigest()[:20]
        if key in self.memory:
            return self.memory[key]
        path = self.directory / f"classes-{key}.npy" if self.directory else None
        if path is not None and path.exists():
            value = np.load(path)
        else:
            value = class_embeddings(model, classnames, templates)
            if path is not None:  # atomically: a concurrent or killed eval never leaves half a file
                from clip_jax import workdir as workdirs

                buffer = io.BytesIO()
                np.save(buffer, value)
                workdirs.write_bytes(path, buffer.getvalue())
        self.memory[key] = value
        return value


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy and mean per-class recall (classes with no example are left out).

    Top-5 accuracy is absent with 5 classes or fewer: every label is then in the top 5, so it would
    read 1.0 whatever the model (CLIP_benchmark leaves it out too)."""
    labels = np.asarray(labels)
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = order[:, 0] == labels
    present = [c for c in range(num_classes) if (labels == c).any()]
    recall = float(np.mean([top1[labels == c].mean() for c in present]))
    metrics = {"acc1": float(top1.mean())}
    if num_classes > 5:
        metrics["acc5"] = float((order[:, :5] == labels[:, None]).any(axis=1).mean())
    metrics["mean_per_class_recall"] = recall
    return metrics


def zero_shot(
    model,
    images: np.ndarray | Sequence,
    labels: Sequence[int],
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    cache: ClassEmbeddingCache | None = None,
    model_id: str = "",
    batch_size: int = 64,
) -> dict[str, float]:
    """Zero-shot metrics of ``model`` on images with integer labels into ``classnames``."""
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classnames)):
        raise ValueError(
            f"Labels go up to {labels.max()} but there are only {len(classnames)} class names; "
            "the class list does not match the data set."
        )
    classes = (cache or ClassEmbeddingCache()).get(model, model_id or str(id(model)), classnames, templates)
    image_embeds = model.encode_image(images, batch_size=batch_size)
    return classification_metrics(model.logit_scale * image_embeds @ classes.T, labels, len(classnames))
