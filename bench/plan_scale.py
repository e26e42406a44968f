"""The scale table of docs/benchmarks.md: `clip-jax plan` rows for recipes x topologies x batches x meshes x
dtypes, each compiled in its own process (one JSON line per compiled step appended to --out).

    python bench/plan_scale.py --out bench/results/plan_scale.jsonl            # every row (hours on 2 cores)
    python bench/plan_scale.py --rows 0,3 --out /tmp/rows.jsonl                # some of them
    python bench/plan_scale.py --table bench/results/plan_scale.jsonl          # the markdown table of results

Each row is `python -m clip_jax.plan --json` with the row's overrides; a row that fails or runs past
--timeout is recorded with its error. Nothing here is timed but the compiles.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LARGE = ["--config.model.vision=openai/clip-vit-large-patch14-336", "--config.model.text=FacebookAI/xlm-roberta-large",
         "--config.model.projection_dim=768", "--config.model.max_length=64"]  # fmt: skip
#: (name, recipe args, topology, phases, overrides)
ROWS = [
    ("clip_italian", [], "v5e:16x16", "warmup", ["--config.train.batch_size=32768"]),
    ("clip_italian", [], "v5e:16x16", "warmup", ["--config.train.batch_size=32768", "--config.model.dtype=bfloat16"]),
    ("clip_italian", [], "v5e:16x16", "finetune", ["--config.train.batch_size=32768", "--config.model.dtype=bfloat16"]),
    ("clip_italian", [], "v5e:16x16", "finetune",
     ["--config.train.batch_size=32768", "--config.model.dtype=bfloat16", "--config.mesh.axes.data=1",
      "--config.mesh.axes.fsdp=256"]),
    ("clip_italian", [], "v4:2x2x4", "warmup", ["--config.train.batch_size=4096"]),
    ("clip_italian", [], "v4:2x2x4", "finetune", ["--config.train.batch_size=4096", "--config.model.dtype=bfloat16"]),
    ("clip_italian", [], "v5p:4x4x4", "finetune",
     ["--config.train.batch_size=131072", "--config.model.dtype=bfloat16", "--config.train.micro_batch_size=8192"]),
    ("vit_l14_xlmr_large", LARGE, "v5p:4x4x4", "finetune",
     ["--config.train.batch_size=32768", "--config.model.dtype=bfloat16", "--config.train.micro_batch_size=4096"]),
    ("clip_italian", [], "v5p:4x4x4", "warmup", ["--config.train.batch_size=131072"]),
    ("clip_italian", [], "v4:2x2x4", "warmup",
     ["--config.train.batch_size=4096", "--config.mesh.axes.data=1", "--config.mesh.axes.fsdp=16"]),
    ("clip_italian", [], "v5e:16x16", "finetune", ["--config.train.batch_size=32768"]),
]  # fmt: skip


def table(path: str) -> str:
    """The markdown rows of docs/benchmarks.md's scale table from plan_scale's JSON lines."""
    gib, out = 2**30, []
    with open(path) as lines:
        records = [json.loads(line) for line in lines]
    for r in records:
        if "memory" not in r:
            out.append(f"| row {r['row']} | {r.get('error')} |")
            continue
        mem, bound = r["memory"], r["bound_seconds"]
        phase = {"warmup": "1 (heads)", "finetune": "2 (everything)"}.get(r["step"], r["step"])
        mesh = ", ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1)
        collectives = ", ".join(
            f"{k} {v['count']}x {v['bytes'] / gib:.2f} GiB" for k, v in sorted(r["collectives"].items())
        )
        limiter = max(("compute", "memory", "collective"), key=lambda k: bound[k])
        fits = "yes" if r["fits"] else "**no**"
        if not r["fits"] and r.get("suggestion"):
            change = ", ".join(
                f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}"
                for k, v in r["suggestion"]["change"].items()
            )
            fits += f"; fits with {change}: {r['suggestion']['memory']['total'] / gib:.2f} GiB"
        out.append(
            f"| {r['topology']} ({r['chips']} chips, {r['hosts']} hosts) | {r['name']} | {mesh} | {r['dtype']} | "
            f"{phase} | {r['global_batch']:,}"
            + (f" (micro {r['micro_batch']:,})" if r["micro_batch"] else "")
            + f" | {mem['total'] / gib:.2f} GiB of {r['hbm_bytes'] / gib:.0f} (args {mem['argument'] / gib:.2f}, "
            f"temporaries {mem['temporary'] / gib:.2f}) | {fits} | "
            f"{r['flops_analytic']:.4g} / {r['flops_xla']:.4g} | {collectives} | "
            f"{bound['step'] * 1e3:.1f} ms ({limiter}), {r['bound_images_per_s'] / 1e3:,.0f}k img/s, "
            f"{r['bound_images_per_s'] / r['hosts']:,.0f} img/s per host | {r['compile_seconds']:.0f} s |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="append the rows' JSON lines here")
    parser.add_argument("--table", help="print the markdown table of this results file and exit")
    parser.add_argument("--rows", default="", help="comma-separated row indices (default: all)")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    if not args.out:
        parser.error("--out is needed to run rows")
    picked = [int(i) for i in args.rows.split(",") if i] or range(len(ROWS))
    env = dict(os.environ, HF_HUB_OFFLINE="1", ALLOW_MULTIPLE_LIBTPU_LOAD="1")
    for index in picked:
        name, recipe, topology, phases, overrides = ROWS[index]
        command = [sys.executable, "-m", "clip_jax.plan", "--config", "clip_italian", "--topology", topology,
                   "--phases", phases, "--json", *recipe, *overrides]  # fmt: skip
        start = time.time()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
            lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
            error = None if done.returncode == 0 else done.stderr.strip().splitlines()[-2:]
        except subprocess.TimeoutExpired:
            lines, error = [], f"compile ran past {args.timeout:.0f} s"
        with open(args.out, "a") as out:
            for line in lines or [{}]:
                record = {
                    "row": index,
                    "name": name,
                    "overrides": recipe + overrides,
                    "wall_s": time.time() - start,
                }
                out.write(json.dumps({**record, **line, **({"error": error} if error else {})}) + "\n")
        print(
            f"row {index} ({name} {topology} {phases}): {'error ' + str(error) if error else 'done'}",
            flush=True,
        )


if __name__ == "__main__":
    main()
