"""Page faults and step time of the CPU train step with 4 KiB pages against transparent huge pages, one process.

    python bench/cpu_pages.py --batch 16 --tokens 64 --steps 4                 # float32, both phases
    python bench/cpu_pages.py --batch 16 --tokens 64 --steps 4 --dtype bfloat16
    python bench/cpu_pages.py --smoke   # tiny towers, result in a temporary folder

XLA's CPU runtime allocates each execution's temporary buffer afresh and frees it at the end; a buffer that
large is an ``mmap`` of its own in glibc's malloc, so every step faults in all of its pages again (ViT-B/32 +
BERT-base, batch 16, phase 2: 2.1 GiB of temporaries, 564k faults of 4 KiB per step). glibc's tunable
``glibc.malloc.hugetlb=1`` marks such mappings for transparent huge pages (2 MiB: 512x fewer faults).

The script runs itself under ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (re-executing when it is not set) and
compares, per phase, the ViT-B/32 + BERT-base step of ``bench/train_step.py`` (random weights, AdamW, state
donated) in two turns that alternate A B B A ...: ``4k`` turns disable transparent huge pages for the process
(``prctl(PR_SET_THP_DISABLE)``: the tunable's advice is then ignored, as without it), ``huge`` turns allow
them. Each turn runs one untimed step first. Prints per turn kind the median step time with its spread, the
minor page faults per step, and the ratio 4k / huge (> 1: huge pages are faster); also the kernel's
transparent-huge-page mode (``/sys/kernel/mm/transparent_hugepage/enabled``: under ``always`` the process
gets huge pages without the tunable, under ``never`` not even with it).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TUNABLE = "glibc.malloc.hugetlb=1"
PR_SET_THP_DISABLE = 41


def ensure_tunable() -> None:
    """Re-execute this script with glibc's huge-page tunable when the process did not start with it (glibc reads
    its tunables once, at start)."""
    current = os.environ.get("GLIBC_TUNABLES", "")
    if TUNABLE not in current.split(":"):
        env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (current, TUNABLE) if t))
        os.execve(sys.executable, [sys.executable, *sys.argv], env)


def thp_mode() -> str:
    """The kernel's transparent-huge-page mode (the bracketed word of its sysfs file), or "n/a"."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return next(w.strip("[]") for w in f.read().split() if w.startswith("["))
    except (OSError, StopIteration):
        return "n/a"


def set_huge_pages(allowed: bool) -> None:
    """Allow or forbid transparent huge pages for this process (Linux ``prctl``); raises where it fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_THP_DISABLE, 0 if allowed else 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_THP_DISABLE) failed")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per turn kind and phase")
    parser.add_argument("--phases", default="1,2")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny towers, batch 4, 2 steps; a temporary folder"
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    args = parser.parse_args()
    ensure_tunable()

    from bench.common import loadavg, machine, write_result
    from bench.train_step import apply_smoke, make_model, phase_step, step_setup
    from bench.vs_pytorch import alternate

    if args.smoke:
        apply_smoke(args)
    vision, text, mesh, data = step_setup(args.smoke, args.batch, args.tokens)
    model = make_model(vision, text, args.dtype)
    phases: dict = {}
    for phase in (int(p) for p in args.phases.split(",")):
        step = phase_step(model, mesh, data, phase)  # alternate's warm-up calls compile it
        load_start = loadavg()

        def on_pages(huge: bool, step=step):
            """One train step with huge pages allowed or not."""
            set_huge_pages(huge)
            return step()

        # each turn's first (settle) step puts the turn's page kind in the allocator and the kernel
        turns = alternate(
            {"4k": lambda: on_pages(False), "huge": lambda: on_pages(True)}, args.steps, settle=1
        )
        set_huge_pages(True)
        phases[phase] = dict(turns, ratio=turns["4k"]["step_s"] / turns["huge"]["step_s"],
                             load_average={"start": load_start, "end": loadavg()})  # fmt: skip
        print(
            f"phase {phase}: 4 KiB pages {turns['4k']['step_s']:.3f}s ({turns['4k']['min_s']:.3f}.."
            f"{turns['4k']['max_s']:.3f}, {turns['4k']['faults_per_step']:,} faults/step), huge pages "
            f"{turns['huge']['step_s']:.3f}s ({turns['huge']['min_s']:.3f}..{turns['huge']['max_s']:.3f}, "
            f"{turns['huge']['faults_per_step']:,} faults/step), 4k / huge {phases[phase]['ratio']:.2f}x, "
            f"load {load_start} -> {loadavg()}",
            flush=True,
        )
    result = {
        "machine": machine(),
        "args": vars(args),
        "order": "alternating 4k/huge turns A B B A per phase, one untimed step at the start of each turn",
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "thp_mode": thp_mode(),
        "phases": phases,
    }
    name = "cpu_pages" if args.dtype == "float32" else f"cpu_pages_{args.dtype}"
    write_result(name, result, args.out)


if __name__ == "__main__":
    main()
