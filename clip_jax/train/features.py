"""LiT-style feature caching for phases that train only the heads.

While both towers are frozen, the pooled tower outputs of an example never change. A phase with
``cache_features=True`` computes them once per example (images with evaluation preprocessing and no
dropout, every caption of every image) in a first pass over this process's part of the data, keeps
them on the host (and in ``<workdir>/feature_cache``), and then trains on them: each step costs only
the projections and the loss, and no image is decoded again. As in LiT, the cached image features
see no augmentation; each epoch still draws one caption per image at random. Mixture weights do not
apply to cached epochs: every cached example is drawn once per epoch.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from ml_collections import ConfigDict

from clip_jax.data.memory import DataPositionError, EpochBatches
from clip_jax.embedding import embed_rows, feature_function
from clip_jax.train.step import TrainState, apply_gradients, output_loss

TOWERS = re.compile(r"(vision|text)\.")


def check_cacheable(phase_name: str, params: nnx.State) -> None:
    """Raise ``ValueError`` if a trainable parameter lies inside a tower (its features would change)."""
    inside = sorted(
        ".".join(map(str, path))
        for path, _ in nnx.to_flat_state(params)
        if TOWERS.match(".".join(map(str, path)))
    )
    if inside:
        raise ValueError(
            f"phases.{phase_name}.cache_features needs the towers frozen, but the phase trains "
            f"{len(inside)} tower parameter(s), e.g. {inside[:3]}. Narrow phases.{phase_name}.trainable "
            "to the projections and logit scale, or set cache_features=False."
        )


@dataclass
class FeatureStore:
    """Pooled tower outputs of one process's examples: ``image [N, Dv]``, ``text [M, Dt]``, and
    ``owner [M]`` (the image of each caption)."""

    image: np.ndarray
    text: np.ndarray
    owner: np.ndarray

    def __post_init__(self):
        if len(self.image) == 0:
            raise ValueError("The feature cache is empty: this process has no usable training example.")
        if len(self.text) != len(self.owner) or self.owner.max(initial=0) >= len(self.image):
            raise ValueError("Corrupt feature cache: captions and owners do not match the images.")
        if len(np.unique(self.owner)) != len(self.image):
            raise ValueError("Corrupt feature cache: some image has no caption.")

    def save(self, path: str) -> None:
        """Write to ``path`` (local or fsspec URL) as an ``.npz``, atomically (see :func:`clip_jax.workdir.write_bytes`)."""
        from clip_jax import workdir as workdirs

        buffer = io.BytesIO()
        np.savez(buffer, image=self.image, text=self.text, owner=self.owner)
        workdirs.write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str) -> FeatureStore | None:
        """The store saved at ``path``, or ``None`` if there is none."""
        import fsspec

        fs, _, (local,) = fsspec.get_fs_token_paths(path)
        if not fs.exists(local):
            return None
        with fsspec.open(path, "rb") as f:
            arrays = np.load(io.BytesIO(f.read()), allow_pickle=False)
            return cls(arrays["image"], arrays["text"], arrays["owner"])


class FeatureBatches(EpochBatches):
    """This process's batches of its own cached features: each epoch a fresh permutation of them (seeded per
    process), one of each image's captions drawn at random; resumable by ``(epoch, position)`` under the same
    process count only (:meth:`carry_state`)."""

    def __init__(self, store: FeatureStore, local_batch: int, seed: int, process_index: int = 0):
        # the store is this process's alone: its epochs are this process's, with a batch of local_batch
        super().__init__(
            len(store.image),
            local_batch,
            seed=seed,
            process_index=0,
            process_count=1,
            noun="cached examples of this process (the per-process batch)",
        )
        self.store, self.owner_process = store, process_index
        self.captions_of = [np.flatnonzero(store.owner == i) for i in range(len(store.image))]

    def epoch_generator(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.owner_process, self.epoch])

    @staticmethod
    def carry_state(states: list[dict[str, int]]) -> dict[str, int]:  # type: ignore[override]
        """Never possible under another process count: each process caches and orders its own examples."""
        raise DataPositionError(
            "each process trains on the features of its own examples, in its own order (cache_features)"
        )

    def __next__(self) -> dict[str, np.ndarray]:
        rows, rng = self.next_rows()
        draws = rng.integers(0, 1 << 30, self.size)
        texts = np.array([self.captions_of[i][draws[i] % len(self.captions_of[i])] for i in rows])
        return {"image_features": self.store.image[rows], "text_features": self.store.text[texts]}


def make_feature_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    loss_kind: str,
    negatives: str = "global",
    exchange: str = "all_gather",
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The (un-jitted) step on cached features: projections, global contrastive loss, update."""

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.frozen)
            out = model.contrastive_head(
                model.project_image(batch["image_features"]), model.project_text(batch["text_features"])
            )
            return output_loss(out, mesh, kind=loss_kind, negatives=negatives, exchange=exchange)

        (_loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return apply_gradients(state, tx, grads, metrics)

    return step


def compute_features(
    image_fn: Callable,
    text_fn: Callable,
    examples: Callable[[], Iterator[tuple[np.ndarray, list[list[str]]]]],
    tokenize: Callable[[list[str]], dict],
    local_batch: int,
    mesh: Mesh,
) -> FeatureStore:
    """Pooled features of every image and caption ``examples()`` yields (chunks of eval-preprocessed
    pixels and their caption lists), in two lock-step passes over the mesh."""
    captions: list[str] = []
    owner: list[int] = []

    def image_chunks():
        count = 0
        for pixels, caption_lists in examples():
            for caps in caption_lists:
                captions.extend(caps)
                owner.extend([count] * len(caps))
                count += 1
            yield [pixels]

    image = embed_rows(image_fn, image_chunks(), batch_size=local_batch, mesh=mesh)

    def text_chunks():
        for start in range(0, len(captions), local_batch):
            tokens = tokenize(captions[start : start + local_batch])
            yield [tokens["input_ids"], tokens["attention_mask"]]

    text = embed_rows(text_fn, text_chunks(), batch_size=local_batch, mesh=mesh)
    return FeatureStore(image, text, np.asarray(owner, np.int64))


def feature_cache_path(workdir: str, phase: str, process_index: int, process_count: int = 1) -> str:
    """Where process ``process_index`` of ``process_count`` caches ``phase``'s features: a cache written under
    another process count holds another share of the examples, so it is not read (it is computed again)."""
    return (
        f"{workdir.rstrip('/')}/feature_cache/{phase}-process{process_index:05d}-of-{process_count:05d}.npz"
    )


def describe(store: FeatureStore) -> dict[str, Any]:
    return {
        "images": len(store.image),
        "captions": len(store.text),
        "image_dim": store.image.shape[1],
        "text_dim": store.text.shape[1],
    }


def feature_batches(
    config: ConfigDict,
    workdir: str,
    phase: str,
    state: TrainState,
    graphdef: nnx.GraphDef,
    mesh: Mesh,
    examples: Callable[[], Iterator[tuple[np.ndarray, list[list[str]]]]],
    tokenize: Callable[[list[str]], dict],
    log: Callable[[str], None],
) -> FeatureBatches:
    """The batches of a ``cache_features`` phase: features cached in ``<workdir>/feature_cache`` by an earlier
    attempt, or computed now in one pass over ``examples()`` (all processes together) and saved there."""
    path = feature_cache_path(workdir, phase, jax.process_index(), jax.process_count())
    store = FeatureStore.load(path)
    # Several processes recompute together unless every one has its part (the pass is lock-step).
    if jax.process_count() > 1 and not np.all(multihost_utils.process_allgather(np.array(store is not None))):
        store = None
    local_batch = config.train.batch_size // jax.process_count()
    if store is None:
        log(f"Phase {phase!r}: caching the frozen towers' features (one pass over the training data)...")
        tick = time.perf_counter()
        states = (state.params, state.frozen)
        image_fn = feature_function(graphdef, "pooled_image", mesh=mesh)
        text_fn = feature_function(graphdef, "pooled_text", mesh=mesh)
        store = compute_features(
            lambda x: image_fn(states, x),
            lambda ids, mask: text_fn(states, ids, mask),
            examples,
            tokenize,
            local_batch,
            mesh,
        )
        store.save(path)
        log(f"Cached {describe(store)} in {time.perf_counter() - tick:.1f}s at {path}.")
    return FeatureBatches(store, local_batch, config.train.seed, jax.process_index())
