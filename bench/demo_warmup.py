"""The offline demo with phase 1 of different lengths, several seeds: does the demo follow what
docs/recipe.md found (a long phase 1 is what damages the vision tower)?

    PYTHONPATH=. python bench/demo_warmup.py --warmup 1000 100 --seeds 0 1 2

Each run is the demo recipe (``clip_jax.demo.demo_config``) with ``phases.warmup.steps`` changed and
everything else as shipped (phase 2: 600 steps); its report after each phase is what ``python train.py``
prints. Results go to ``bench/results/demo_warmup.json``, and a markdown table (mean ± std over seeds) is
printed for docs/recipe.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

COLUMNS = ("colour", "shape", "count", "colour+shape")


def run(warmup: int, seed: int, root: Path) -> dict:
    from clip_jax.demo import demo_config, evaluate_transfer
    from clip_jax.train import train

    config = demo_config()
    config.phases.warmup.steps = warmup
    config.phases.warmup.warmup_steps = min(int(config.phases.warmup.warmup_steps), max(1, warmup // 10))
    config.train.seed = seed
    workdir = str(root / f"warmup{warmup}-seed{seed}")
    tick = time.perf_counter()
    train(config, workdir)
    wall = time.perf_counter() - tick
    rows = evaluate_transfer(config, workdir)["rows"]
    final = rows["after_finetune"]
    return {
        "warmup": warmup,
        "seed": seed,
        "wall_s": wall,
        "reference": {c: rows["english_clip_en"]["heldout_zero_shot"][c]["acc1"] for c in COLUMNS},
        "after_warmup": {c: rows["after_warmup"]["heldout_zero_shot"][c]["acc1"] for c in COLUMNS},
        "after_finetune": {c: final["heldout_zero_shot"][c]["acc1"] for c in COLUMNS},
        "r_at_1": final["val_retrieval"]["text_retrieval_recall@1"],
        "forgetting": {c: final["forgetting_en"][c]["acc1"] for c in COLUMNS},
    }


def table(results: list[dict]) -> str:
    def stat(values):
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"

    lines = [
        "| phase 1 steps | seeds | after phase 1: colour+shape | after phase 2: colour | shape | count | "
        "colour+shape | i→t R@1 | forgetting: EN colour+shape | EN count |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for warmup in sorted({r["warmup"] for r in results}, reverse=True):
        rs = [r for r in results if r["warmup"] == warmup]
        lines.append(
            f"| {warmup} | {len(rs)} | {stat([r['after_warmup']['colour+shape'] for r in rs])} | "
            + " | ".join(stat([r["after_finetune"][c] for r in rs]) for c in COLUMNS)
            + f" | {stat([r['r_at_1'] for r in rs])} | {stat([r['forgetting']['colour+shape'] for r in rs])} | "
            f"{stat([r['forgetting']['count'] for r in rs])} |"
        )
    reference = results[0]["reference"]
    lines.append(
        "| English CLIP itself (reference) | | | "
        + " | ".join(f"{reference[c]:.3f}" for c in COLUMNS)
        + f" | | {reference['colour+shape']:.3f} | {reference['count']:.3f} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, nargs="+", default=[1000, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="bench/results/demo_warmup.json")
    parser.add_argument("--table", action="store_true", help="only print the table of --out")
    args = parser.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []
    if not args.table:
        with tempfile.TemporaryDirectory() as root:
            for seed in args.seeds:
                for warmup in args.warmup:
                    results = [r for r in results if (r["warmup"], r["seed"]) != (warmup, seed)]
                    results.append(run(warmup, seed, Path(root)))
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(results, indent=1) + "\n")
                    print(json.dumps(results[-1]), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
