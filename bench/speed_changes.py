"""The effect of each speed change of issue 16 on the train step, before/after in one process.

    python bench/speed_changes.py --batch 16 --tokens 64 --steps 4
    python bench/speed_changes.py --smoke   # tiny towers, result in a temporary folder

For each change and phase: the same jitted train step as ``bench/train_step.py`` (ViT-B/32 + BERT-base,
random weights, AdamW, global softmax loss, dropout on, in the change's dtype) compiled without the change ("before")
and with it ("after"), one warm-up (compiling) step each, then the two variants' timed steps alternate
A B B A ... (``--steps`` each), so that a shared machine's load hits both alike. Prints medians, spreads
(min..max) and before/after, and the load average at the start and end of each comparison.

Changes measured (``--changes``), each off through a module-level switch while the "before" step compiles
(its first call):
- ``residual_fence`` (float32): :func:`clip_jax.models.layers.residual_fence` between layers
  (``FENCE_RESIDUALS``).
- ``bfloat16_products`` (``model.dtype=bfloat16``): :func:`clip_jax.models.layers.dense_product`'s float32
  accumulation and CPU weight-gradient layout (``FAST_LOW_PRECISION_PRODUCTS``; off: the plain bfloat16
  product, as before the change; the attention products' float32 scores are not switched).
- ``frozen_rounding`` (``model.dtype=bfloat16``): frozen weights rounded to bfloat16 once, not in every step
  (:mod:`clip_jax.train.frozen_rounding`, ``ROUND_FROZEN_ONCE``); it matters in phase 1, where the towers
  are frozen.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: change -> (the module holding its switch, the switch, the compute dtype it is measured in)
CHANGES = {
    "residual_fence": ("clip_jax.models.layers", "FENCE_RESIDUALS", "float32"),
    "bfloat16_products": ("clip_jax.models.layers", "FAST_LOW_PRECISION_PRODUCTS", "bfloat16"),
    "frozen_rounding": ("clip_jax.train.frozen_rounding", "ROUND_FROZEN_ONCE", "bfloat16"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--steps", type=int, default=4, help="timed steps per variant and phase (alternating)"
    )
    parser.add_argument("--phases", default="1,2")
    parser.add_argument("--changes", default=",".join(CHANGES), help=f"comma-separated, of {list(CHANGES)}")
    parser.add_argument("--smoke", action="store_true", help="tiny towers, batch 4, 2 steps")
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    args = parser.parse_args()

    import importlib

    from bench.common import loadavg, machine, write_result
    from bench.train_step import apply_smoke, make_model, phase_step, step_setup
    from bench.vs_pytorch import alternate

    if args.smoke:
        apply_smoke(args)
    vision, text, mesh, data = step_setup(args.smoke, args.batch, args.tokens)

    def switched(step, module: str, switch: str, on: bool):
        holder = importlib.import_module(module)

        def call():
            setattr(holder, switch, on)  # read at the step's first call
            try:
                return step()
            finally:
                setattr(holder, switch, True)

        return call

    result = {
        "machine": machine(),
        "args": vars(args),
        "order": "alternating A B B A per phase",
        "changes": {},
    }
    for name in args.changes.split(","):
        module, switch, dtype = CHANGES[name]
        model = make_model(vision, text, dtype)
        result["changes"][name] = {"dtype": dtype}
        for phase in (int(p) for p in args.phases.split(",")):
            before, after = (
                switched(phase_step(model, mesh, data, phase), module, switch, on) for on in (False, True)
            )
            load_start = loadavg()
            timed = alternate({"before": before, "after": after}, args.steps)
            entry = {**timed, "load_start": load_start, "load_end": loadavg()}
            entry["before_over_after"] = timed["before"]["step_s"] / timed["after"]["step_s"]
            result["changes"][name][phase] = entry
            print(
                f"{name}, phase {phase}: before {timed['before']['step_s']:.2f}s ({timed['before']['min_s']:.2f}.."
                f"{timed['before']['max_s']:.2f}), after {timed['after']['step_s']:.2f}s "
                f"({timed['after']['min_s']:.2f}..{timed['after']['max_s']:.2f}), before/after "
                f"{entry['before_over_after']:.2f}x, load {entry['load_start']} -> {entry['load_end']}",
                flush=True,
            )
    measured = args.changes.split(",")
    name = "speed_changes_cpu" if set(measured) == set(CHANGES) else "speed_changes_cpu_" + "_".join(measured)
    write_result(name, result, args.out)


if __name__ == "__main__":
    main()
