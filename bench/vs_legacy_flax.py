"""clip_jax against the legacy Flax recipe: transformers 4.x ``FlaxVisionTextDualEncoderModel`` trained as
the hybrid-CLIP community script and CLIP-Italian did (``jax.pmap``, a contrastive loss per device).

    python bench/vs_legacy_flax.py --batch 16 --tokens 64 --steps 5
    python bench/vs_legacy_flax.py --stack same-jax     # the legacy recipe on clip_jax's own jax/flax/optax
    python bench/vs_legacy_flax.py --smoke              # tiny, clip_jax side + negatives only; no venv, no network

Two measurements, one run:

1. **Step time**, same machine, same sizes and batch: CLIP ViT-B/32 (224 px) + BERT-base (Italian xxl
   vocabulary), 512-d projections, random weights, AdamW, dropout on, float32, the same input arrays.
   The legacy side runs in its own virtualenv (created on first use with :data:`STACKS` pins, then reused;
   ``--legacy_venv``) as a subprocess (``bench/_legacy_flax_worker.py``) that waits for the parent's
   commands, so the two sides' timed steps alternate (ABBA...) and machine noise hits both. Phase 1:
   clip_jax builds no backbone backward pass; the legacy recipe zeroes backbone updates with
   ``optax.multi_transform`` + ``set_to_zero`` (CLIP-Italian's way) and leaves the rest to XLA.
   Phase 2 trains everything. Median of ``--steps`` timed steps per side after two warm-up steps.
2. **Negatives per example** at equal global batch on 8 (fake CPU) devices, measured, not computed
   from a formula: for both losses (the legacy per-device loss under ``pmap``, clip_jax's global loss
   under ``shard_map``) we take the Jacobian of every image's gradient with respect to every text
   embedding (forward-mode, one column per text) and count, per image, the texts it depends on:
   those are its positive plus its negatives. The Jacobian entries of an independent pair are exact
   zeros, so the count is exact.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402  (after the sys.path line above)

#: Legacy environments. ``declared``: the last transformers 4.x release (4.57.6; v5 removed Flax) with the
#: newest jax / jaxlib / flax / optax its own dependency table allows (``jax<=0.4.13``, ``flax<=0.7.0``,
#: ``optax<=0.1.4``), plus the numpy-1 stack those need. ``same-jax``: transformers 4.57.6 on the jax, flax
#: and optax of the running environment (filled in by :func:`stack_pins`), which separates the recipe from
#: the compiler version.
STACKS = {
    "declared": [
        "transformers==4.57.6",
        "jax==0.4.13",
        "jaxlib==0.4.13",
        "flax==0.7.0",
        "optax==0.1.4",
        "chex==0.1.82",
        "numpy==1.26.4",
        "scipy==1.12.0",
        "ml_dtypes==0.5.4",
    ],
    "same-jax": ["transformers==4.57.6"],
}
DEFAULT_VENV = os.path.join(os.path.expanduser("~"), ".cache", "clip_jax_bench", "legacy_venv-{stack}")
WORKER = os.path.join(ROOT, "bench", "_legacy_flax_worker.py")
#: Full-size towers as transformers configs (the worker builds them) and as clip_jax tower configs.
LEGACY_VISION = {"patch_size": 32}
LEGACY_TEXT = {"vocab_size": 32102}


def stack_pins(stack: str) -> list[str]:
    from importlib.metadata import version

    pins = list(STACKS[stack])
    if stack == "same-jax":
        pins += [f"{name}=={version(name)}" for name in ("jax", "jaxlib", "flax", "optax", "numpy")]
    return pins


def ensure_venv(path: str, pins: list[str]) -> str:
    """The legacy virtualenv's python, created with ``pins`` unless ``path`` already holds exactly them."""
    python = os.path.join(path, "bin", "python")
    stamp = os.path.join(path, "clip_jax_bench_pins.txt")
    wanted = "\n".join(pins) + "\n"
    if os.path.exists(python) and os.path.exists(stamp):
        with open(stamp) as f:
            reuse = f.read() == wanted
    else:
        reuse = False
    if reuse:
        print(f"reusing the legacy virtualenv {path}", file=sys.stderr, flush=True)
        return python
    print(
        f"creating the legacy virtualenv {path} with {' '.join(pins)} (a few minutes, once)",
        file=sys.stderr,
        flush=True,
    )
    subprocess.run([sys.executable, "-m", "venv", "--clear", path], check=True)
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins], check=True
    )
    with open(stamp, "w") as f:
        f.write(wanted)
    return python


class LegacyWorker:
    """The legacy train step in its own process; each :meth:`ask` is one command and its JSON answer."""

    def __init__(self, python: str, config: dict):
        from bench._legacy_flax_worker import PREFIX

        self.prefix = PREFIX
        env = dict(os.environ, HF_HUB_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
        self.process = subprocess.Popen(
            [python, WORKER, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.hello = self._read()

    def _read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith(self.prefix):
                return json.loads(line[len(self.prefix) :])
        raise RuntimeError(
            f"the legacy worker stopped (exit code {self.process.wait()}); its errors are above"
        )

    def ask(self, command: dict) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)


def step_times(
    batch: int,
    steps: int,
    vision: dict,
    text: dict,
    projection_dim: int,
    legacy: LegacyWorker | None,
    data: dict,
) -> dict:
    """Per phase: both sides build and warm up their step, then their timed steps alternate."""
    import jax

    from bench.common import block
    from bench.train_step import make_model, phase_step
    from clip_jax.sharding import batch_sharding, make_mesh

    model = make_model(vision, text, projection_dim=projection_dim)
    mesh = make_mesh({"data": -1})
    data = jax.device_put(data, batch_sharding(mesh))
    result = {"clip_jax": {}, "legacy": {} if legacy else None}
    for phase in (1, 2):
        ours, theirs = {"times": [], "warmup_s": []}, {"times": []}
        if legacy:
            theirs.update(legacy.ask({"cmd": "phase", "phase": phase, "warmup": 2}))
        call = phase_step(model, mesh, data, phase)
        for _ in range(2):
            start = time.perf_counter()
            block(call())
            ours["warmup_s"].append(time.perf_counter() - start)
        for k in range(steps):
            order = ("clip_jax", "legacy") if k % 2 == 0 else ("legacy", "clip_jax")
            for side in order:
                if side == "clip_jax":
                    start = time.perf_counter()
                    block(call())
                    ours["times"].append(time.perf_counter() - start)
                elif legacy:
                    theirs["times"].append(legacy.ask({"cmd": "step"})["step_s"])
        del call
        for name, side in (("clip_jax", ours), ("legacy", theirs)):
            if side["times"]:
                side["step_s"] = float(np.median(side["times"]))
                side["images_per_s"] = batch / side["step_s"]
                result[name][phase] = side
        print(
            f"phase {phase}: clip_jax {ours['step_s']:.3f} s/step"
            + (f", legacy {theirs['step_s']:.3f} s/step" if legacy else ""),
            file=sys.stderr,
            flush=True,
        )
    return result


def count_negatives(global_batch: int, dim: int = 32, scale: float = 20.0, chunk: int = 64) -> dict:
    """Per example, how many texts its image gradient depends on (minus its own): the legacy per-device
    loss under pmap against clip_jax's global loss, both on all local devices (run with 8 fake ones)."""
    import jax
    import jax.numpy as jnp

    from bench._legacy_flax_worker import per_device_clip_loss
    from clip_jax.loss import contrastive_loss
    from clip_jax.sharding import make_mesh

    n = jax.device_count()
    b = global_batch // n
    assert b * n == global_batch, f"global batch {global_batch} does not split over {n} devices"
    rs = np.random.RandomState(0)
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    img, txt = unit(rs.randn(global_batch, dim)), unit(rs.randn(global_batch, dim))
    move = rs.randn(global_batch, dim).astype(np.float32)  # the direction each text embedding is moved in
    read = rs.randn(global_batch, dim).astype(np.float32)  # how each image's gradient is read out
    s = jnp.float32(scale)

    legacy_grad = jax.pmap(jax.grad(lambda i, t: per_device_clip_loss(i, t, s)), axis_name="batch")
    mesh = make_mesh({"data": -1})
    ours_grad = jax.grad(lambda i, t: contrastive_loss(i, t, s, mesh=mesh)[0])
    grads = {
        "legacy_per_device_loss": lambda i, t: legacy_grad(
            i.reshape(n, b, dim), t.reshape(n, b, dim)
        ).reshape(-1, dim),
        "clip_jax_global_loss": ours_grad,
    }
    device_of = np.arange(global_batch) // b
    other_device = device_of[:, None] != device_of[None, :]
    result = {
        "devices": n,
        "global_batch": global_batch,
        "per_device_batch": b,
        "embed_dim": dim,
        "logit_scale": scale,
    }
    for name, grad in grads.items():

        def image_grads(t, grad=grad):  # t[j]: how far text j moves; one number per image
            return jnp.sum(grad(img, txt + t[:, None] * move) * read, axis=1)

        columns = jax.jit(jax.vmap(lambda v, f=image_grads: jax.jvp(f, (jnp.zeros(global_batch),), (v,))[1]))
        start = time.perf_counter()
        eye = np.eye(global_batch, dtype=np.float32)
        jac = np.concatenate(
            [np.asarray(columns(eye[k : k + chunk])) for k in range(0, global_batch, chunk)]
        ).T
        depends = jac != 0  # depends[i, j]: image i's gradient moves with text j
        negatives = depends.sum(1) - np.diag(depends)
        from_others = (depends & other_device).sum(1)
        result[name] = {
            "negatives_per_example": {
                "min": int(negatives.min()),
                "max": int(negatives.max()),
                "mean": float(negatives.mean()),
            },
            "negatives_from_other_devices": {"min": int(from_others.min()), "max": int(from_others.max())},
            "every_positive_seen": bool(np.diag(depends).all()),
            "seconds": time.perf_counter() - start,
        }
    return result


def negatives_subprocess(global_batch: int, devices: int = 8) -> dict:
    """:func:`count_negatives` in a fresh process with ``devices`` fake CPU devices."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--negatives_only", str(global_batch)],
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16, help="global batch of the step-time comparison")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--steps", type=int, default=5, help="timed steps per side and phase (after 2 warm-up)"
    )
    parser.add_argument("--stack", default="declared", choices=sorted(STACKS), help="legacy environment pins")
    parser.add_argument(
        "--legacy_venv", default=None, help=f"legacy virtualenv folder (default {DEFAULT_VENV})"
    )
    parser.add_argument(
        "--negatives_batch",
        type=int,
        default=1024,
        help="global batch of the negatives count on 8 fake devices (CLIP-Italian: 8 x 128)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny towers, clip_jax side and negatives only (no virtualenv, no network); writes "
        "into --out or a temporary folder, not bench/results",
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    parser.add_argument("--negatives_only", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.negatives_only:
        print(json.dumps(count_negatives(args.negatives_only)))
        return

    from bench.common import machine, write_result
    from bench.train_step import (
        BERT_BASE,
        SMOKE,
        TINY_TEXT,
        TINY_VISION,
        VISION,
        fake_batch,
    )

    if args.smoke:
        args.batch, args.tokens, args.steps, args.negatives_batch = SMOKE["batch"], SMOKE["tokens"], 2, 64
        args.out = args.out or tempfile.mkdtemp(prefix="bench_smoke_")
        vision, text = TINY_VISION, TINY_TEXT
    else:
        vision, text = VISION["B/32"], BERT_BASE
    projection = 512
    result = {"machine": machine(), "args": vars(args)}
    print(f"negatives per example: global batch {args.negatives_batch} on 8 fake devices", file=sys.stderr)
    result["negatives"] = negatives_subprocess(args.negatives_batch)

    data = fake_batch(args.batch, args.tokens, vision.get("image_size", 224), text["vocab_size"])
    legacy = None
    if args.smoke:
        reason = "legacy side skipped: --smoke never creates the legacy virtualenv nor uses the network"
        print(reason, file=sys.stderr)
        result["legacy"] = {"skipped": reason}
    else:
        pins = stack_pins(args.stack)
        python = ensure_venv(args.legacy_venv or DEFAULT_VENV.format(stack=args.stack), pins)
        with tempfile.TemporaryDirectory(
            prefix="vs_legacy_flax_"
        ) as folder:  # the worker reads it before "ready"
            np.savez(os.path.join(folder, "batch.npz"), **data)
            legacy = LegacyWorker(
                python,
                {
                    "data": os.path.join(folder, "batch.npz"),
                    "vision": LEGACY_VISION,
                    "text": LEGACY_TEXT,
                    "projection_dim": projection,
                },
            )
        result["legacy"] = {
            "stack": args.stack,
            "pins": pins,
            "versions": legacy.hello["versions"],
            "devices": legacy.hello["devices"],
        }
    try:
        times = step_times(args.batch, args.steps, vision, text, projection, legacy, data)
    finally:
        if legacy:
            legacy.close()
    result["clip_jax"] = times["clip_jax"]
    if legacy:
        result["legacy"]["phases"] = times["legacy"]
        result["legacy_over_clip_jax"] = {
            p: times["legacy"][p]["step_s"] / times["clip_jax"][p]["step_s"] for p in (1, 2)
        }
    name = "vs_legacy_flax_cpu" + ("" if args.stack == "declared" else f"_{args.stack.replace('-', '_')}")
    write_result(name, result, args.out)


if __name__ == "__main__":
    main()
