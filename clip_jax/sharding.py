"""Device mesh, parameter partitioning by regex rules, batch sharding and multi-host start-up.

Training is ``jax.jit`` over a ``Mesh`` with ``NamedSharding``: parameters and optimizer state
are placed by (regex, rule) pairs matched against parameter paths (``vision.layers.3.mlp.fc1.kernel``);
the batch is split over every data-parallel axis. Default axes: ``('data', 'fsdp')``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

#: Axes the batch is split over (every axis but 'tensor').
BATCH_AXES = ("data", "fsdp")
#: Parameters smaller than this stay replicated under the 'fsdp' rule (sharding them costs more than it saves).
FSDP_MIN_SIZE = 2**16


class MeshError(ValueError):
    """A mesh, batch or sharding configuration that does not fit the available devices."""


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with the named axes; one size may be -1 (all remaining devices).

    ``axes`` is ordered, e.g. ``{'data': -1, 'fsdp': 1}`` or ``{'data': 2, 'fsdp': 4}``.
    """
    devices = list(devices if devices is not None else jax.devices())
    names, sizes = list(axes), [int(s) for s in axes.values()]
    unknown = [i for i, s in enumerate(sizes) if s == -1]
    if len(unknown) > 1:
        raise MeshError(
            f"At most one mesh axis may be -1 (inferred); got {dict(axes)} — give the other axes sizes"
        )
    known = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or len(devices) % known:
        raise MeshError(
            f"Mesh {dict(axes)} does not fit {len(devices)} devices: the product of the axis sizes "
            f"must divide the device count — e.g. {{'data': -1, 'fsdp': 1}} fits any count"
        )
    if unknown:
        sizes[unknown[0]] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise MeshError(
            f"Mesh {dict(zip(names, sizes))} has {math.prod(sizes)} slots but there are "
            f"{len(devices)} devices — make the sizes multiply to {len(devices)} or use -1 for one axis"
        )
    try:
        device_array = jax.experimental.mesh_utils.create_device_mesh(sizes, devices)
    except Exception as error:
        if devices[0].platform != "cpu":  # on an accelerator, a plain reshape would ignore the interconnect
            raise MeshError(
                f"Mesh {dict(zip(names, sizes))} cannot be laid out on the {len(devices)} "
                f"{devices[0].device_kind} devices' physical topology ({error}) — choose axis sizes that "
                f"follow the slice's shape (e.g. {{'data': -1, 'fsdp': 1}}); on TPU v4/v5p, count chips "
                f"(megacore), not TensorCores"
            ) from None
        device_array = np.array(devices).reshape(sizes)  # CPU: no interconnect, plain order is fine
    return Mesh(device_array, tuple(names))


def process_count_of(mesh: Mesh) -> int:
    """How many processes (hosts) own the devices of ``mesh``: the target's, also for a compile-only mesh."""
    return len({d.process_index for d in mesh.devices.flat})


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over."""
    return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batch dimension split over all data-parallel axes."""
    return NamedSharding(mesh, P(batch_axes(mesh)))


def check_batch_size(global_batch: int, mesh: Mesh, process_count: int | None = None) -> None:
    """Raise :class:`MeshError` unless the batch splits evenly over devices and processes (default: the
    processes that own ``mesh``'s devices, so a compile-only mesh of a pod is checked for the pod)."""
    n = data_parallel_size(mesh)
    process_count = process_count or process_count_of(mesh)
    if global_batch % n or global_batch % process_count:
        lower, upper = (global_batch // n) * n, (global_batch // n + 1) * n
        raise MeshError(
            f"Global batch size {global_batch} is not divisible by the {n} data-parallel devices "
            f"(and {process_count} processes) — use a multiple of {n}, e.g. {lower or n} or {upper}"
        )


def check_micro_batch_size(micro_batch_size: int, mesh: Mesh) -> None:
    """Raise :class:`MeshError` unless a gradient-caching micro-batch splits evenly over the devices."""
    n = data_parallel_size(mesh)
    if micro_batch_size % n:
        raise MeshError(
            f"train.micro_batch_size {micro_batch_size} is not divisible by the {n} data-parallel "
            f"devices (each device embeds micro_batch_size / {n} examples at a time) — use a multiple "
            f"of {n}, e.g. {max(n, micro_batch_size // n * n)}"
        )


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh, min_size: int = FSDP_MIN_SIZE) -> P:
    """Shard the largest axis divisible by the 'fsdp' size; replicate small or indivisible arrays."""
    size = mesh.shape.get("fsdp", 1)
    if size == 1 or math.prod(shape) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % size == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def partition_spec(
    path: str,
    shape: tuple[int, ...],
    rules: Sequence[tuple[str, Any]],
    mesh: Mesh,
    fsdp_min_size: int = FSDP_MIN_SIZE,
) -> P:
    r"""The spec of the first rule whose regex is found in ``path``: ``'fsdp'``, ``None`` (replicate) or a tuple.

    Regexes are searched (not anchored), so a rule for ``text\.layers\..*kernel`` also places the
    matching Adam moments, whose paths carry an optimizer prefix (``0.mu.text.layers...``).
    """
    for pattern, rule in rules:
        if re.search(pattern, path):
            if rule is None or rule == "replicate":
                return P()
            if rule == "fsdp":
                return _fsdp_spec(shape, mesh, fsdp_min_size)
            spec = P(*rule)
            for axis_name, dim in zip(spec, shape):
                names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
                count = math.prod(mesh.shape[a] for a in names if a is not None)
                if dim % count:
                    raise MeshError(
                        f"Rule {pattern!r} -> {rule} cannot split {path} {shape}: {dim} is not "
                        f"divisible by {count} — change the rule or the mesh axis size"
                    )
            return spec
    return P()


DEFAULT_RULES: tuple[tuple[str, Any], ...] = ((r".*", "fsdp"),)


def path_string(path: tuple) -> str:
    """A pytree key path as dotted text, without nnx's trailing ``value`` attribute."""
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return ".".join(parts[:-1] if parts and parts[-1] == "value" else parts)


def shard_params(
    tree: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
    fsdp_min_size: int = FSDP_MIN_SIZE,
) -> Any:
    """The NamedSharding tree for a parameter (or optimizer-state) pytree, by path rules."""

    def spec(path, leaf):
        name = path_string(path)
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, partition_spec(name, shape, rules, mesh, fsdp_min_size))

    return jax.tree_util.tree_map_with_path(spec, tree)


def initialize_distributed(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    auto: bool = False,
) -> None:
    """Start ``jax.distributed`` explicitly (all three flags) or automatically (TPU pods, SLURM).

    On CPU, cross-process collectives use gloo.
    """
    explicit = [coordinator, num_processes, process_id]
    if any(x is not None for x in explicit):
        if any(x is None for x in explicit):
            raise MeshError(
                "Multi-process runs need --coordinator, --num_processes and --process_id together — give all three "
                "(or --distributed on TPU pods and SLURM)"
            )
        if num_processes > 1:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    elif auto:
        jax.distributed.initialize()
