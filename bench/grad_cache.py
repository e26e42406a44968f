"""Gradient caching (``train.micro_batch_size``): per-device memory and step time against the global batch.

    python bench/grad_cache.py                       # ViT-B/32 + BERT-base, memory for batch 64..1024, time at 16
    python bench/grad_cache.py --smoke               # tiny towers, result in a temporary folder

1. **Memory**, from compilation only (nothing runs, so any batch fits): XLA's compiled memory analysis of
   the phase-2 train step (the same step ``train.py`` runs, dropout on, float32, one device) for each global
   batch in ``--batches`` without micro-batches and with each of ``--micro``. ``temp`` is the step's own
   working memory (activations, gradients, optimizer temporaries); ``arguments`` holds the state and the batch.
2. **Time** of the phase-2 step at ``--time_batch`` without and with each ``--time_micro``: the variants'
   timed steps alternate (A B C C B A ...) so that machine noise hits each; medians and spreads (min..max)
   per variant and per example, and the ratio to the plain step.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench.common import block, machine, write_result
from bench.train_step import BERT_BASE, TINY_TEXT, TINY_VISION, VISION, fake_batch, make_model, phase_step
from clip_jax.models.freezing import split_trainable
from clip_jax.sharding import batch_sharding, make_mesh
from clip_jax.train.step import TrainState, initial_rng, make_train_step

MIB = 2**20


def compiled_memory(model, mesh, batch: int, micro: int, image_size: int, tokens: int, vocab: int) -> dict:
    """XLA's memory analysis (MiB per device) of the phase-2 step at global ``batch``; compiles, runs nothing."""
    graphdef, params, frozen = split_trainable(model.module, ".*")
    tx = optax.adamw(1e-5, b2=0.98, eps=1e-6, weight_decay=0.2)
    step = make_train_step(graphdef, tx, mesh, loss_kind="softmax", dropout=True, micro_batch_size=micro)
    state = jax.eval_shape(
        lambda: TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            frozen=frozen,
            opt_state=tx.init(params),
            rng=initial_rng(0),
        )
    )
    sample = fake_batch(1, tokens, image_size, vocab)
    data = {
        k: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype, sharding=batch_sharding(mesh))
        for k, v in sample.items()
    }
    tick = time.perf_counter()
    analysis = jax.jit(step, donate_argnums=(0,)).lower(state, data).compile().memory_analysis()
    return {
        "batch": batch,
        "micro_batch_size": micro,
        "temp_mib": analysis.temp_size_in_bytes / MIB,
        "argument_mib": analysis.argument_size_in_bytes / MIB,
        "output_mib": analysis.output_size_in_bytes / MIB,
        "compile_s": time.perf_counter() - tick,
    }


def interleaved_times(
    model, mesh, batch: int, micros: list[int], rounds: int, image_size: int, tokens: int, vocab: int
) -> dict:
    """Phase-2 step times per micro-batch size (0: off), the variants alternating A B C C B A per round."""
    data = jax.device_put(fake_batch(batch, tokens, image_size, vocab), batch_sharding(mesh))
    calls = {m: phase_step(model, mesh, data, 2, micro_batch_size=m) for m in micros}
    for call in calls.values():  # compile and warm up
        block(call())
    times: dict[int, list[float]] = {m: [] for m in micros}
    for r in range(rounds):
        for m in micros if r % 2 == 0 else micros[::-1]:
            start = time.perf_counter()
            block(calls[m]())
            times[m].append(time.perf_counter() - start)
    base = float(np.median(times[micros[0]]))
    out = {}
    for m in micros:
        median = float(np.median(times[m]))
        out[str(m)] = {
            "step_s": median,
            "min_s": min(times[m]),
            "max_s": max(times[m]),
            "times": times[m],
            "images_per_s": batch / median,
            "over_plain_step": median / base,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vision", default="B/32", choices=sorted(VISION))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--batches", default="64,128,256,512,1024", help="global batches for the memory analysis"
    )
    parser.add_argument(
        "--micro", default="32", help="micro-batch sizes for the memory analysis (0 is always added)"
    )
    parser.add_argument("--time_batch", type=int, default=16)
    parser.add_argument(
        "--time_micro", default="8", help="micro-batch sizes to time (against the plain step)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="timed steps per variant (alternating)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny towers; result into --out or a temporary folder"
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    args = parser.parse_args()
    if args.smoke:
        args.tokens, args.batches, args.micro, args.time_batch, args.time_micro, args.rounds = (
            8,
            "16",
            "4",
            8,
            "4",
            2,
        )
        args.out = args.out or tempfile.mkdtemp(prefix="bench_smoke_")
        vision, text = TINY_VISION, TINY_TEXT
    else:
        vision, text = VISION[args.vision], BERT_BASE
    image_size, vocab = vision.get("image_size", 224), text.get("vocab_size", 32102)
    model = make_model(vision, text)
    mesh = make_mesh({"data": -1})
    micros = [0] + [int(m) for m in args.micro.split(",")]
    memory = [
        compiled_memory(model, mesh, b, m, image_size, args.tokens, vocab)
        for b in (int(x) for x in args.batches.split(","))
        for m in micros
        if m < b
    ]
    for row in memory:
        print(
            f"batch {row['batch']:5d} micro {row['micro_batch_size']:4d}: temp {row['temp_mib']:9.1f} MiB, "
            f"arguments {row['argument_mib']:9.1f} MiB (compiled in {row['compile_s']:.0f}s)",
            flush=True,
        )
    timing = interleaved_times(
        model,
        mesh,
        args.time_batch,
        [0] + [int(m) for m in args.time_micro.split(",")],
        args.rounds,
        image_size,
        args.tokens,
        vocab,
    )
    result = {"machine": machine(), "args": vars(args), "memory": memory, "time": timing}
    write_result("grad_cache_cpu", result, args.out)


if __name__ == "__main__":
    main()
