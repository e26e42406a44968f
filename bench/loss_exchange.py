"""What each device sends and holds for the global contrastive loss and its gradient, with the embeddings
exchanged by all-gather or around a ring (``loss.exchange``), compiled for TPU slices without a TPU.

    python bench/loss_exchange.py                                      # v5e:4x4 and v5e:16x16, B 4,096 and 32,768
    python bench/loss_exchange.py --topologies cpu:8 --batches 1024   # this host's CPU devices (no libtpu needed)

Per chip: the collectives of the compiled loss + gradient (``clip_jax.plan.hlo``: count, bytes produced, bytes
sent with ring algorithms), XLA's temporary memory and the compile time. The embeddings are float32
``[B, d]`` sharded over all devices on one data axis (what the train step hands the loss).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bench.common import machine, write_result
from clip_jax.loss import EXCHANGES, contrastive_loss
from clip_jax.plan.chips import target
from clip_jax.plan.hlo import summarize
from clip_jax.sharding import make_mesh


def compile_loss(topology: str, batch: int, dim: int, kind: str, exchange: str) -> dict:
    """Compile the loss's value and gradient for ``topology``; its per-chip collectives and memory."""
    where = target(topology)
    mesh = make_mesh({"data": len(where.devices)}, where.devices)
    spec = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=NamedSharding(mesh, P("data")))
    scalar = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))

    def loss(img, txt, scale, bias):
        return contrastive_loss(img, txt, scale, mesh=mesh, kind=kind, logit_bias=bias, exchange=exchange)[0]

    tick = time.perf_counter()
    compiled = (
        jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
        .trace(spec, spec, scalar, scalar)
        .lower(lowering_platforms=(where.platform,))
        .compile()
    )
    seconds = time.perf_counter() - tick
    summary = summarize(compiled.as_text(), len(where.devices))
    memory = compiled.memory_analysis()
    return {
        "topology": topology,
        "devices": len(where.devices),
        "global_batch": batch,
        "dim": dim,
        "kind": kind,
        "exchange": exchange,
        "collectives": {
            k: {"count": c.count, "bytes": c.bytes, "wire_bytes": c.wire_bytes}
            for k, c in summary.collectives.items()
        },
        "wire_bytes": summary.wire_bytes,
        "temp_bytes": int(memory.temp_size_in_bytes) if memory else None,
        "compile_s": seconds,
    }


def markdown(rows: list[dict]) -> str:
    mib = lambda b: f"{b / 2**20:,.1f}"
    lines = [
        "| topology | B | loss | exchange | collectives per chip (count: MiB produced) | MiB sent per chip | "
        "temporaries (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kinds = "; ".join(f"{k} {c['count']}: {mib(c['bytes'])}" for k, c in sorted(r["collectives"].items()))
        lines.append(
            f"| {r['topology']} | {r['global_batch']:,} | {r['kind']} | {r['exchange']} | {kinds} | "
            f"{mib(r['wire_bytes'])} | {mib(r['temp_bytes'] or 0)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--topologies", nargs="+", default=["v5e:4x4", "v5e:16x16"])
    parser.add_argument("--batches", type=int, nargs="+", default=[4096, 32768])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kinds", nargs="+", default=["softmax", "sigmoid"])
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    parser.add_argument("--name", default="loss_exchange")
    args = parser.parse_args()
    rows = []
    for topology in args.topologies:
        for batch in args.batches:
            for kind in args.kinds:
                for exchange in EXCHANGES:
                    rows.append(compile_loss(topology, batch, args.dim, kind, exchange))
                    print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    text = markdown(rows)
    print(text)
    write_result(
        args.name, {"machine": machine(), "args": vars(args), "rows": rows, "markdown": text}, args.out
    )


if __name__ == "__main__":
    main()
