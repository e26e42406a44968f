"""The CPU train step under different memory allocators, each in its own process, turns alternating in one run.

    python bench/allocators.py --batch 16 --tokens 64 --steps 4 --dtype bfloat16 --phase 2
    python bench/allocators.py --allocators glibc,hugetlb,mimalloc --phase 1
    python bench/allocators.py --smoke   # tiny towers, result in a temporary folder

Why: XLA's CPU runtime allocates each step's temporary buffer (2 GiB for ViT-B/32 + BERT-base phase 2) and
frees it at the end; glibc returns such a block to the kernel at once, so the next step faults it in and zeroes
it again (``bench/cpu_pages.py``), and after an idle gap of a few seconds (another library's step, an
evaluation) a virtual machine with free-page reporting has given the memory back to its host, which makes
that zeroing many times slower. An allocator that keeps freed memory mapped avoids both.

An allocator is fixed when a process starts (``LD_PRELOAD``, ``GLIBC_TUNABLES``), so each one gets a worker
process: it builds the step of ``bench/train_step.py`` (random weights, AdamW, state donated), compiles it,
and runs one step per request. The driver alternates the workers' turns A B B A ... with
``vs_pytorch.alternate``: each turn is one step right after the other workers' turns (``after_switch``: it
carries the idle gap) and one settled step. Per allocator: the median settled step time with its spread,
the after-switch times, and the worker's own minor page faults, kernel (system) time and peak RSS.

Allocators (``--allocators``, comma-separated):
- ``glibc``: the default, nothing set.
- ``hugetlb``: glibc with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages: 512x fewer faults).
- ``mimalloc``: ``LD_PRELOAD=libmimalloc.so`` with ``MIMALLOC_PURGE_DELAY=-1`` (freed memory is kept
  committed and reused); the library from ``--mimalloc``, ``$CLIP_JAX_MIMALLOC`` or the ``cmeel-mimalloc``
  package (``pip install cmeel-mimalloc``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import sysconfig
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ALLOCATORS = ("glibc", "hugetlb", "mimalloc")


def find_mimalloc(given: str | None = None) -> str | None:
    """The mimalloc shared library: ``given``, ``$CLIP_JAX_MIMALLOC``, or the one ``cmeel-mimalloc`` installs
    in this environment; ``None`` when there is none."""
    for path in (given, os.environ.get("CLIP_JAX_MIMALLOC")):
        if path:
            return path
    lib = os.path.join(sysconfig.get_paths()["purelib"], "cmeel.prefix", "lib", "libmimalloc.so*")
    found = sorted(glob.glob(lib))
    return found[0] if found else None


def allocator_env(name: str, mimalloc: str | None) -> dict[str, str]:
    """The environment variables that select allocator ``name`` in a new process."""
    if name == "glibc":
        return {}
    if name == "hugetlb":
        return {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    if name == "mimalloc":
        if not mimalloc:
            raise SystemExit(
                "error: no mimalloc library found; pip install cmeel-mimalloc, or pass --mimalloc PATH"
            )
        return {"LD_PRELOAD": mimalloc, "MIMALLOC_PURGE_DELAY": "-1"}
    raise SystemExit(f"error: unknown allocator {name!r}; choose from {', '.join(ALLOCATORS)}")


def worker(args: argparse.Namespace) -> None:
    """Build and compile one phase's step, then run a step for each line read from stdin and answer with
    one JSON line: the step's seconds, minor page faults and system time; ``stop`` ends it."""
    import jax

    from bench.train_step import make_model, phase_step, step_setup

    vision, text, mesh, data = step_setup(args.smoke, args.batch, args.tokens)
    step = phase_step(make_model(vision, text, args.dtype), mesh, data, args.phase)
    jax.block_until_ready(step())
    with open("/proc/self/maps") as maps:
        preloaded = "libmimalloc" in maps.read()
    print(json.dumps({"ready": True, "mimalloc_loaded": preloaded}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stop":
            return
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        jax.block_until_ready(step())
        seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
        reply = {
            "seconds": seconds,
            "faults": after.ru_minflt - before.ru_minflt,
            "system_s": after.ru_stime - before.ru_stime,
            "max_rss_gib": after.ru_maxrss / 2**20,
        }
        print(json.dumps(reply), flush=True)


class Worker:
    """A worker process under one allocator; calling it runs one step there and returns the worker's reply."""

    def __init__(self, name: str, args: argparse.Namespace, mimalloc: str | None):
        forwarded = ["--batch", str(args.batch), "--tokens", str(args.tokens), "--dtype", args.dtype,
                     "--phase", str(args.phase)] + (["--smoke"] * args.smoke)  # fmt: skip
        env = dict(os.environ, **allocator_env(name, mimalloc))
        self.replies: list[dict] = []
        self.mimalloc_loaded = False
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", *forwarded],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.mimalloc_loaded = self._read()["mimalloc_loaded"]  # compiled and ready

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"worker exited with {self.process.wait()}")

    def __call__(self) -> None:
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        self.replies.append(self._read())

    def close(self) -> None:
        self.process.stdin.write("stop\n")
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed (settled) steps per allocator")
    parser.add_argument("--phase", type=int, default=2, choices=[1, 2])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--allocators", default="hugetlb,mimalloc", help=f"comma-separated, of {ALLOCATORS}")
    parser.add_argument("--mimalloc", default=None, help="path of libmimalloc.so (default: see above)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny towers, batch 4, 2 steps; a temporary folder"
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # the driver forwards --smoke's batch and tokens; --smoke picks the tiny towers
        worker(args)
        return

    from bench.common import loadavg, machine, write_result
    from bench.train_step import apply_smoke
    from bench.vs_pytorch import alternate

    if args.smoke:
        apply_smoke(args)
    mimalloc = find_mimalloc(args.mimalloc)
    names = args.allocators.split(",")
    for name in names:
        allocator_env(name, mimalloc)  # an unknown name or a missing library fails before anything starts
    workers = {name: Worker(name, args, mimalloc) for name in names}
    load_start = loadavg()
    try:
        # one settle step per turn: the turn's first step (after the other workers' turns) is "after_switch"
        timed = alternate(workers, args.steps, settle=1)
    finally:
        for w in workers.values():
            w.close()
    result = {
        "machine": machine(),
        "args": vars(args),
        "order": "one process per allocator, turns alternating A B B A, each turn one step after the switch "
        "and one settled step",
        "mimalloc": mimalloc if "mimalloc" in names else None,
        "load_average": {"start": load_start, "end": loadavg()},
        "allocators": {},
    }
    for name, w in workers.items():
        # alternate's warm-up call, then per turn: the after-switch step, the settled step
        turns = w.replies[1:]
        settled, switched = turns[1::2], turns[0::2]
        entry = dict(timed[name], env=allocator_env(name, mimalloc), mimalloc_loaded=w.mimalloc_loaded)
        entry.pop("faults"), entry.pop("faults_per_step")  # the driver's own faults, not the worker's
        entry["worker"] = {
            "settled_faults": [r["faults"] for r in settled],
            "settled_system_s": [round(r["system_s"], 3) for r in settled],
            "after_switch_faults": [r["faults"] for r in switched],
            "after_switch_system_s": [round(r["system_s"], 3) for r in switched],
            "max_rss_gib": max(r["max_rss_gib"] for r in w.replies),
        }
        result["allocators"][name] = entry
        print(
            f"{name}: settled {entry['step_s']:.3f}s ({entry['min_s']:.3f}..{entry['max_s']:.3f}), after a "
            f"switch {entry['after_switch']['step_s']:.3f}s ({entry['after_switch']['min_s']:.3f}.."
            f"{entry['after_switch']['max_s']:.3f}); faults/step settled {entry['worker']['settled_faults']}, "
            f"after a switch {entry['worker']['after_switch_faults']}; system s after a switch "
            f"{entry['worker']['after_switch_system_s']}; peak RSS {entry['worker']['max_rss_gib']:.2f} GiB",
            flush=True,
        )
    suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
    write_result(f"allocators_cpu_phase{args.phase}{suffix}", result, args.out)


if __name__ == "__main__":
    main()
