"""Embedding many rows: the one jitted feature function (:func:`feature_function`) and the one batching loop
(:func:`embed_rows`) of clip_jax.

``CLIPModel.encode_image`` / ``encode_text`` (also in-training validation, which embeds through a
``CLIPModel`` on the training mesh) and the feature cache all go through both. :func:`embed_rows`: rows are
gathered into batches, the last one padded (with copies of a real row, so attention masks stay valid), split
over the mesh's batch axes, and the outputs of the real rows come back as one NumPy array. On a mesh that spans several processes every process calls it together (lock-step),
each with its own rows; a process whose rows run out feeds padding until all are done.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clip_jax.models.dual_encoder import l2_normalize
from clip_jax.sharding import batch_axes, batch_sharding

#: What :func:`feature_function` computes from a ``DualEncoder`` and a batch.
FEATURES: dict[str, Callable[..., jax.Array]] = {
    "image": lambda model, pixels: model.image_features(pixels),
    "text": lambda model, ids, mask: model.text_features(ids, mask),
    "pooled_image": lambda model, pixels: model.pooled_image(pixels),
    "pooled_text": lambda model, ids, mask: model.pooled_text(ids, mask),
    # the vision tower's class-token state after the embeddings and after each layer: [batch, layers + 1, hidden]
    "image_layers": lambda model, pixels: jnp.stack(
        [h[:, 0] for h in model.vision(pixels, output_hidden_states=True).hidden_states], axis=1
    ),
}


@functools.lru_cache(maxsize=64)
def feature_function(
    graphdef: nnx.GraphDef, kind: str, *, mesh: Mesh, normalize: bool = False
) -> Callable[..., jax.Array]:
    """Jitted ``fn(states, *batch)``: the ``kind`` features (:data:`FEATURES`) of the model
    ``nnx.merge(graphdef, *states)``, float32, L2-normalised with ``normalize``, batch-sharded over ``mesh``.

    ``states`` is whatever together makes the model's state: ``(state,)``, or a phase's ``(params, frozen)``,
    placed anywhere jit takes it (replicated, or sharded on ``mesh`` as training keeps it). One function per
    graph, kind and mesh: every model of that structure (each validation of a run, a reloaded export) reuses
    its compilations."""
    features = FEATURES[kind]

    def fn(states, *batch):
        out = features(nnx.merge(graphdef, *states), *batch).astype(jnp.float32)
        return l2_normalize(out) if normalize else out

    return jax.jit(fn, out_shardings=batch_sharding(mesh))


def next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def bucket_size(rows: int, batch_size: int, devices: int) -> int:
    """Padded size of a batch of ``rows``: a power of two (at most ``batch_size``) rounded up to a multiple of
    ``devices``, so a handful of shapes is compiled whatever the number of inputs."""
    size = min(batch_size, next_power_of_two(rows))
    return -(-max(size, rows) // devices) * devices


def spans_processes(mesh: Mesh) -> bool:
    """Whether ``mesh`` holds devices of other processes (then every process must call collectively)."""
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def embed_rows(
    fn: Callable[..., jax.Array],
    chunks: Iterable[Sequence[np.ndarray]],
    *,
    batch_size: int,
    mesh: Mesh,
    bucket: bool = False,
) -> np.ndarray:
    """``fn`` over the rows of ``chunks`` (each a list of arrays with equal first dimensions), ``batch_size``
    rows of this process at a time: the outputs of the real rows, in order, as a host array.

    ``fn(*arrays)`` gets global arrays split over ``batch_axes(mesh)`` and must return an array whose first
    axis is the batch (on a multi-process mesh, batch-sharded the same way, e.g. ``jax.jit(...,
    out_shardings=batch_sharding(mesh))``). ``bucket``: pad a short batch only to :func:`bucket_size` instead of
    ``batch_size`` (fewer wasted rows for few inputs; not on a multi-process mesh, where every process must
    feed the same shape).
    """
    sharding = NamedSharding(mesh, P(batch_axes(mesh)))
    lockstep = spans_processes(mesh)
    devices = int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))  # this process's share of them:
    devices //= jax.process_count() if lockstep else 1
    if (lockstep or not bucket) and batch_size % devices:
        raise ValueError(
            f"batch_size {batch_size} must be a multiple of the {devices} batch devices of this process."
        )
    chunks = iter(chunks)
    out: list[np.ndarray] = []
    pending: list[list[np.ndarray]] = []
    template: list[np.ndarray] | None = None
    exhausted = False
    while True:
        rows = 0
        while not exhausted and sum(len(p[0]) for p in pending) < batch_size:
            try:
                pending.append([np.asarray(a) for a in next(chunks)])
            except StopIteration:
                exhausted = True
        take: list[np.ndarray] = []
        if pending:
            arrays = [np.concatenate([p[j] for p in pending]) for j in range(len(pending[0]))]
            take = [a[:batch_size] for a in arrays]
            rest = [a[batch_size:] for a in arrays]
            pending = [rest] if len(rest[0]) else []
            rows = len(take[0])
            template = template or [a[:1] for a in take]
        done = exhausted and not pending and rows == 0
        if lockstep:
            if np.all(multihost_utils.process_allgather(np.array(done))):
                break
            if template is None:  # this process has no rows at all: nothing to pad with
                raise ValueError(
                    f"Process {jax.process_index()} has no rows to embed while others have; give every "
                    "process data (more shards or a longer listing)."
                )
        elif done:
            break
        size = bucket_size(rows, batch_size, devices) if bucket and not lockstep else batch_size
        if rows == 0:
            take = [np.zeros((0, *t.shape[1:]), t.dtype) for t in template]
        padded = [
            np.concatenate([a, np.repeat(a[-1:] if len(a) else t, size - rows, axis=0)])
            for a, t in zip(take, template)
        ]
        result = fn(*(jax.make_array_from_process_local_data(sharding, a) for a in padded))
        if lockstep:
            result = multihost_utils.global_array_to_host_local_array(result, mesh, P(batch_axes(mesh)))
        out.append(np.asarray(result)[:rows])
    if not out:
        return np.zeros((0,), np.float32)
    return np.concatenate(out)


def shared_rows(compute: Callable[[list], np.ndarray], items: Sequence) -> np.ndarray:
    """``compute(items)`` with the work split over processes: each computes every ``process_count``-th item
    (its own devices, no collective inside ``compute``), then all exchange results; every process returns
    all rows in ``items`` order. On one process, just ``compute(items)``."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return np.asarray(compute(list(items)))
    mine = np.asarray(compute(list(items[index::count])))
    rows = -(-len(items) // count)
    padded = np.zeros((rows, *mine.shape[1:]), mine.dtype)
    padded[: len(mine)] = mine
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [count, rows, ...]
    out = np.empty((len(items), *mine.shape[1:]), mine.dtype)
    for p in range(count):
        out[p::count] = gathered[p][: len(range(p, len(items), count))]
    return out
