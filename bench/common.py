"""Shared benchmark helpers: timing, a matrix-multiply peak measured in the same run, machine facts."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp


def block(x):
    return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` (compilation) calls."""
    for _ in range(warmup):
        block(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a square matmul on the default device (the denominator of MFU); 16-bit operands
    accumulate in float32, as the model's dense products do (:func:`clip_jax.models.layers.dense_product`)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    best = min(time_calls(lambda: f(a), repeats, warmup=2))
    return 2 * n**3 / best


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages (``/proc/loadavg``; "n/a" where there is none)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def machine() -> dict:
    device = jax.devices()[0]
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "platform": device.platform,
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "jax": jax.__version__,
    }


def write_result(name: str, result: dict, directory: str | None = None) -> None:
    """Print ``result`` and write it to ``<directory>/<name>.json`` (default ``bench/results``; ``--smoke``
    runs pass a temporary folder so that CI never touches the recorded results)."""
    directory = directory or "bench/results"
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    print(f"written to {path}")
