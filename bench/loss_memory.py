"""Per-device memory and time of the global contrastive loss: ours (local rows x gathered
columns) against the naive version that materialises the full B x B logits on one device.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python bench/loss_memory.py --batches 1024 4096 16384 32768
    python bench/loss_memory.py --smoke   # global batch 64 and 128, a few seconds, result in a temporary folder

Memory is XLA's buffer assignment for the compiled program on one device (temporary + argument +
output bytes, ``compiled.memory_analysis()``); time is measured where it fits in host memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bench.common import machine, time_calls, write_result
from clip_jax.loss import contrastive_loss, dense_contrastive_loss
from clip_jax.sharding import make_mesh


def footprint(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--time_up_to", type=int, default=4096, help="time runs only up to this global batch")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="global batch 64 and 128, 16-d; result into --out or a temporary folder",
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    args = parser.parse_args()
    if args.smoke:
        args.batches, args.dim, args.time_up_to = [64, 128], 16, 128
        args.out = args.out or tempfile.mkdtemp(prefix="bench_smoke_")
    mesh = make_mesh({"data": -1})
    n = mesh.size
    rows = NamedSharding(mesh, P("data"))
    result = {"machine": machine(), "args": vars(args), "devices": n, "dim": args.dim, "rows": []}
    for batch in args.batches:
        spec = jax.ShapeDtypeStruct((batch, args.dim), jnp.float32, sharding=rows)
        ours = jax.jit(
            jax.value_and_grad(
                lambda i, t: contrastive_loss(i, t, jnp.float32(10.0), mesh=mesh)[0], argnums=(0, 1)
            )
        )
        naive_spec = jax.ShapeDtypeStruct((batch, args.dim), jnp.float32)
        naive = jax.jit(
            jax.value_and_grad(lambda i, t: dense_contrastive_loss(i, t, jnp.float32(10.0)), argnums=(0, 1))
        )
        ours_c = ours.lower(spec, spec).compile()
        naive_c = naive.lower(naive_spec, naive_spec).compile()
        row = {
            "global_batch": batch,
            "ours_bytes_per_device": footprint(ours_c),
            "naive_bytes_one_device": footprint(naive_c),
            "b_times_B_over_n_bytes": 4 * batch * batch // n,
            "B_times_B_bytes": 4 * batch * batch,
        }
        if batch <= args.time_up_to:
            x = np.random.RandomState(0).randn(batch, args.dim).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            xs = jax.device_put(x, rows)
            row["ours_s"] = float(np.median(time_calls(lambda f=ours_c, x=xs: f(x, x), 3)))
            xn = jax.device_put(x, jax.devices()[0])
            row["naive_s"] = float(np.median(time_calls(lambda f=naive_c, x=xn: f(x, x), 3)))
        result["rows"].append(row)
        print(row, flush=True)
    write_result("loss_memory", result, args.out)


if __name__ == "__main__":
    main()
