"""The train step's matrix multiplies alone: XLA (what clip_jax runs) against PyTorch's MKL and NumPy's
OpenBLAS, shape by shape, in one process.

    python bench/matmul_libs.py --rounds 9
    python bench/matmul_libs.py --smoke   # small shapes, result in a temporary folder

Why: after the residual fence, about 62% of a phase-2 step's CPU time is matrix multiplies
(``docs/benchmarks.md``), so the speed of one float32 GEMM bounds how close the step can come to
PyTorch's. The shapes are those of ViT-B/32 + BERT-base at ``--batch`` images (50 tokens each) and
``--tokens`` tokens per caption: each dense map's forward product (``x @ W``), input gradient
(``dy @ W.T``) and weight gradient (``x.T @ dy``), and the 2048² product that ``bench/train_step.py`` takes
as its MFU peak. Each library's timed calls alternate A B C C B A ... (``--rounds`` each) after one warm-up
call, so that a shared machine's load hits all alike; a timed call is ``--inner`` products in a row (as in a
train step, where the same library runs product after product) after ``--pause`` seconds of idle (each
library's worker threads spin for a while after its last product and would slow the next library's); prints each library's median GFLOP/s, its spread
(min..max of the per-call rates) and the ratio to XLA's. ``--dtype bfloat16`` multiplies bfloat16
operands with float32 accumulation and output on XLA (``preferred_element_type``) and PyTorch's bfloat16
matmul (NumPy has no bfloat16 and is left out), and adds ``clip_jax``: the product as
:func:`clip_jax.models.layers.dense_product` computes it, which differs from plain XLA in the weight gradient
(``x.T`` stored row-major first, so that XLA's CPU compiler keeps the product in bfloat16).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.common import loadavg, machine, write_result

FORWARD, INPUT_GRADIENT, WEIGHT_GRADIENT = "x @ W", "dy @ W.T", "x.T @ dy"


def step_shapes(batch: int, tokens: int, hidden: int = 768, intermediate: int = 3072) -> list[dict]:
    """The dense maps' products of one train step, as ``{name, kind, m, k, n}`` (``[m, k] @ [k, n]`` in
    the multiply's own orientation, ``kind`` one of the forward, input-gradient or weight-gradient
    products), and the square MFU peak product."""
    shapes = []
    for tower, rows in (("vision", batch * 50), ("text", batch * tokens)):
        for layer, (fan_in, fan_out) in (
            ("attention", (hidden, hidden)),
            ("fc1", (hidden, intermediate)),
            ("fc2", (intermediate, hidden)),
        ):
            name = f"{tower} {layer}"
            shapes += [
                {"name": name, "kind": FORWARD, "m": rows, "k": fan_in, "n": fan_out},
                {"name": name, "kind": INPUT_GRADIENT, "m": rows, "k": fan_out, "n": fan_in},
                {"name": name, "kind": WEIGHT_GRADIENT, "m": fan_in, "k": rows, "n": fan_out},
            ]
    shapes.append({"name": "MFU peak", "kind": FORWARD, "m": 2048, "k": 2048, "n": 2048})
    return shapes


def operands(shape: dict, rs: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """The two operands as stored in a train step: the weight gradient's are ``x [k, m]`` and
    ``dy [k, n]`` (contracted over their rows), the input gradient's ``W [n, k]`` is transposed."""
    m, k, n = shape["m"], shape["k"], shape["n"]
    if shape["kind"] == WEIGHT_GRADIENT:
        a, b = rs.randn(k, m), rs.randn(k, n)
    elif shape["kind"] == INPUT_GRADIENT:
        a, b = rs.randn(m, k), rs.randn(n, k)
    else:
        a, b = rs.randn(m, k), rs.randn(k, n)
    return a.astype(np.float32), b.astype(np.float32)


def library_calls(shape: dict, a: np.ndarray, b: np.ndarray, dtype: str, inner: int) -> dict:
    """``{library: zero-argument callable}`` computing the product of ``shape`` on ``a`` and ``b``,
    ``inner`` times in a row."""
    import jax
    import jax.numpy as jnp
    import torch

    contract = {FORWARD: ((1,), (0,)), INPUT_GRADIENT: ((1,), (1,)), WEIGHT_GRADIENT: ((0,), (0,))}
    dims = (contract[shape["kind"]], ((), ()))
    low = dtype == "bfloat16"
    xa, xb = jnp.asarray(a), jnp.asarray(b)
    if low:
        xa, xb = xa.astype(jnp.bfloat16), xb.astype(jnp.bfloat16)
    xla = jax.jit(lambda p, q: jax.lax.dot_general(p, q, dims, preferred_element_type=jnp.float32))
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if low:
        ta, tb = ta.bfloat16(), tb.bfloat16()
    if shape["kind"] == WEIGHT_GRADIENT:
        ta = ta.T
    elif shape["kind"] == INPUT_GRADIENT:
        tb = tb.T
    calls = {
        "xla": lambda: xla(xa, xb).block_until_ready(),
        "pytorch": lambda: torch.matmul(ta, tb),
    }
    if low:  # clip_jax's weight gradient: x.T stored row-major first (``layers.dense_product``'s backward)
        from clip_jax.models.layers import _rows_to_columns

        if shape["kind"] == WEIGHT_GRADIENT:
            laid_out = jax.jit(
                lambda p, q: jnp.dot(_rows_to_columns(p), q, preferred_element_type=jnp.float32)
            )
            calls["clip_jax"] = lambda: laid_out(xa, xb).block_until_ready()
        else:
            calls["clip_jax"] = calls["xla"]
    else:
        na = a.T if shape["kind"] == WEIGHT_GRADIENT else a
        nb = b.T if shape["kind"] == INPUT_GRADIENT else b
        calls["numpy"] = lambda: na @ nb
    return {library: repeated(call, inner) for library, call in calls.items()}


def repeated(call: Callable[[], object], times: int) -> Callable[[], None]:
    """``call`` run ``times`` times in a row (one timed unit)."""

    def run() -> None:
        for _ in range(times):
            call()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9, help="timed calls per library and shape")
    parser.add_argument("--inner", type=int, default=5, help="products in a row per timed call")
    parser.add_argument(
        "--pause", type=float, default=0.3, help="idle seconds before each timed call (spinning threads)"
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--smoke", action="store_true", help="batch 1, 8 tokens, 2 rounds of 2 products, small shapes"
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    args = parser.parse_args()
    import torch

    from bench.vs_pytorch import alternate

    torch.set_num_threads(os.cpu_count() or 1)
    if args.smoke:
        args.batch, args.tokens, args.rounds, args.inner, args.pause = 1, 8, 2, 2, 0.0
        args.out = args.out or tempfile.mkdtemp(prefix="bench_smoke_")
        shapes = step_shapes(args.batch, args.tokens, hidden=64, intermediate=256)[:3]
    else:
        shapes = step_shapes(args.batch, args.tokens)
    rs = np.random.RandomState(0)
    rows = []
    load_start = loadavg()
    for shape in shapes:
        a, b = operands(shape, rs)
        flops = 2 * shape["m"] * shape["k"] * shape["n"] * args.inner
        timed = alternate(library_calls(shape, a, b, args.dtype, args.inner), args.rounds, args.pause)
        row = dict(shape)
        for library, t in timed.items():
            rates = [flops / s / 1e9 for s in t["times"]]
            row[library] = {
                "gflops": float(np.median(rates)),
                "min_gflops": min(rates),
                "max_gflops": max(rates),
            }
        for library in timed:
            row[library]["over_xla"] = row[library]["gflops"] / row["xla"]["gflops"]
        rows.append(row)
        print(
            f"{shape['name']:>17} {shape['kind']:>9} {shape['m']:>5}x{shape['k']:>5}x{shape['n']:>5}: "
            + ", ".join(
                f"{lib} {row[lib]['gflops']:.0f} GFLOP/s ({row[lib]['min_gflops']:.0f}..{row[lib]['max_gflops']:.0f})"
                for lib in timed
            )
            + f"; PyTorch / XLA {row['pytorch']['over_xla']:.2f}x",
            flush=True,
        )
    weights = [2 * r["m"] * r["k"] * r["n"] for r in rows if r["name"] != "MFU peak"]
    step_rows = [r for r in rows if r["name"] != "MFU peak"]
    summary = {
        lib: float(sum(weights) / sum(w / (r[lib]["gflops"] * 1e9) for w, r in zip(weights, step_rows)) / 1e9)
        for lib in rows[0]
        if isinstance(rows[0][lib], dict)
    }
    print(
        "FLOP-weighted over the step's products: "
        + ", ".join(f"{lib} {g:.0f} GFLOP/s" for lib, g in summary.items())
        + f"; PyTorch / XLA {summary['pytorch'] / summary['xla']:.2f}x",
        flush=True,
    )
    result = {
        "machine": machine(),
        "args": vars(args),
        "order": f"alternating A B C C B A per shape; each timed call {args.inner} products, after {args.pause} s idle",
        "load_average": {"start": load_start, "end": loadavg()},
        "torch_threads": torch.get_num_threads(),
        "step_weighted_gflops": summary,
        "shapes": rows,
    }
    write_result(f"matmul_libs_cpu_{args.dtype}", result, args.out)


if __name__ == "__main__":
    main()
