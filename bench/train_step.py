"""Train-step throughput of a full-size dual encoder in phase 1 (projections only) and phase 2 (all).

    python bench/train_step.py --vision B/32 --batch 16 --tokens 64 --steps 3
    python bench/train_step.py --vision B/32 --batch 16 --tokens 64 --steps 4 --compare_dtypes float32,bfloat16
    python bench/train_step.py --smoke   # tiny towers, a few seconds, result in a temporary folder

Random weights with the real architectures (ViT-B/32 or B/16 at 224 px + BERT-base), AdamW, the
global softmax loss. Reports images/s, the phase-2 / phase-1 step-time ratio, and model FLOPs
utilisation (MFU): the analytic matmul FLOPs of the step (:func:`step_flops` says what is counted) over
its median time, against the FLOP/s of a square matmul in the same dtype measured in the same run (before
and after each phase; the highest sample), and the load average around each phase.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bench.common import loadavg, machine, matmul_peak, time_calls, write_result
from clip_jax import CLIPModel
from clip_jax.config import HEAD
from clip_jax.models.freezing import split_trainable
from clip_jax.sharding import batch_sharding, make_mesh
from clip_jax.train.features import make_feature_train_step
from clip_jax.train.optim import make_optimizer
from clip_jax.train.step import (
    TrainState,
    initial_rng,
    jit_train_step,
    make_train_step,
)

VISION = {
    "B/32": {"patch_size": 32},
    "B/16": {"patch_size": 16},
    "L/14": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "patch_size": 14,
    },
}
BERT_BASE = {"model_type": "bert", "vocab_size": 32102}
#: ``--smoke`` towers: the same code paths in a few seconds (CI runs them so the script does not rot).
TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 16,
    "image_size": 32,
}
TINY_TEXT = {
    "model_type": "bert",
    "vocab_size": 1000,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
}
SMOKE = {"batch": 4, "tokens": 8, "steps": 2}


def apply_smoke(args) -> None:
    """``--smoke``: the tiny settings, and the result into a temporary folder unless ``--out`` says where."""
    args.batch, args.tokens, args.steps = SMOKE["batch"], SMOKE["tokens"], SMOKE["steps"]
    args.out = args.out or tempfile.mkdtemp(prefix="bench_smoke_")


def tower_forward_flops(hidden: int, intermediate: int, layers: int, tokens: int) -> float:
    """Matmul FLOPs of one transformer encoder forward pass for one sequence (2 per multiply-add)."""
    per_layer = (
        2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * 2 * tokens * tokens * hidden
    )
    return layers * per_layer


def step_flops(
    vision: dict, batch: int, tokens: int, phase: int, projection: int = 512, text: dict | None = None
) -> float:
    """Analytic matmul FLOPs of one train step (2 per multiply-add): forward x1, plus x2 for the backward
    where gradients are needed (input and weight gradients), except the patch embedding, whose backward
    has no input gradient (x1: weights only). Counted: the transformer layers' dense maps and attention
    products, the patch embedding, projections, logits. Not counted: element-wise work (softmax,
    LayerNorm, GELU, dropout), embedding lookups, the optimizer update. Phase 1 trains only the
    projections and the logit scale, so the towers run forward only."""
    base = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12}
    v = base | {"patch_size": 32, "image_size": 224} | vision
    t = base | (text or {})
    patches = (v["image_size"] // v["patch_size"]) ** 2
    layers = tower_forward_flops(
        v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], patches + 1
    )
    layers += tower_forward_flops(t["hidden_size"], t["intermediate_size"], t["num_hidden_layers"], tokens)
    patch_embedding = 2 * patches * 3 * v["patch_size"] ** 2 * v["hidden_size"]
    heads = 2 * (v["hidden_size"] + t["hidden_size"]) * projection
    loss = 2 * 2 * batch * projection  # per example: its row of logits in each direction
    towers = 3 * layers + 2 * patch_embedding if phase == 2 else layers + patch_embedding
    return batch * (towers + 3 * (heads + loss))


def fake_batch(batch: int, tokens: int, image_size: int = 224, vocab_size: int = 32102) -> dict:
    """Random pixels (NHWC) and token ids, the same for every script that asks with the same sizes."""
    rs = np.random.RandomState(0)
    return {
        "pixel_values": rs.randn(batch, image_size, image_size, 3).astype(np.float32),
        "input_ids": rs.randint(min(1000, vocab_size // 2), min(30000, vocab_size), (batch, tokens)).astype(
            np.int32
        ),
        "attention_mask": np.ones((batch, tokens), np.int32),
    }


def batch_on_mesh(vision: dict, text: dict, batch: int, tokens: int, mesh) -> dict:
    """:func:`fake_batch` at the towers' image size and vocabulary, split over ``mesh``'s batch axes."""
    data = fake_batch(batch, tokens, vision.get("image_size", 224), text.get("vocab_size", 32102))
    return jax.device_put(data, batch_sharding(mesh))


def step_setup(smoke: bool, batch: int, tokens: int) -> tuple[dict, dict, Any, dict]:
    """What a step benchmark runs on: ``(vision, text, mesh, data)`` for ViT-B/32 + BERT-base (``smoke``: the
    tiny towers), a data mesh over the local devices and :func:`batch_on_mesh`'s batch on it."""
    vision, text = (TINY_VISION, TINY_TEXT) if smoke else (VISION["B/32"], BERT_BASE)
    mesh = make_mesh({"data": -1})
    return vision, text, mesh, batch_on_mesh(vision, text, batch, tokens, mesh)


def make_model(
    vision: dict, text: dict = BERT_BASE, dtype: str = "float32", projection_dim: int = 512
) -> CLIPModel:
    """A randomly initialised dual encoder from tower configs (no download)."""
    compute = jnp.bfloat16 if dtype == "bfloat16" else None
    return CLIPModel.from_towers(
        vision=dict(model_type="clip_vision_model", **vision),
        text=text,
        projection_dim=projection_dim,
        dtype=compute,
    )


def phase_step(
    model: CLIPModel, mesh, data: dict, phase: int, cached_features: bool = False, micro_batch_size: int = 0
):
    """A zero-argument callable running one jitted, state-donating train step of ``phase`` (1: heads, 2: all)
    on ``data`` (already on the mesh); it returns the step's metrics. The first call compiles.
    ``cached_features``: the phase-1 step on cached pooled features (``data`` holds ``image_features`` and
    ``text_features``) instead of pixels and tokens. ``micro_batch_size``: gradient caching (0: off)."""
    graphdef, params, frozen = split_trainable(model.module, HEAD if phase == 1 else ".*")
    groups = (("head", HEAD), ("vision", r"vision\..*"), ("text", r"text\..*"))
    tx, _ = make_optimizer(
        params,
        groups=groups,
        learning_rates={"head": 1e-3, "vision": 1e-5, "text": 1e-5},
        steps=1000,
        warmup_steps=0,
        decay="cosine",
        end_factor=0.0,
        optimizer="adamw",
        settings={"b1": 0.9, "b2": 0.98, "eps": 1e-6, "weight_decay": 0.2, "grad_clip_norm": 1.0},
    )
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        frozen=frozen,
        opt_state=tx.init(params),
        rng=initial_rng(0),
    )
    # The step donates its state: keep the model's own arrays. Placing the copy on the mesh gives the first
    # call the input types later calls see, so the warm-up call is the only compilation.
    placed = NamedSharding(mesh, P())
    state = jax.device_put(jax.tree.map(jnp.copy, state), placed)
    if cached_features:
        step_fn = make_feature_train_step(graphdef, tx, mesh, loss_kind="softmax")
    else:
        step_fn = make_train_step(
            graphdef, tx, mesh, loss_kind="softmax", dropout=True, micro_batch_size=micro_batch_size
        )
    # jitted as the trainer jits its steps (on CPU: frozen weights rounded to the compute dtype once)
    step = jit_train_step(step_fn, placed, batch_sharding(mesh), mesh)
    holder = {"state": state}

    def call():
        holder["state"], metrics = step(holder["state"], data)
        return metrics

    return call


def measure(
    vision: str | dict = "B/32",
    batch: int = 16,
    tokens: int = 64,
    steps: int = 3,
    dtype: str = "float32",
    text: dict = BERT_BASE,
) -> dict:
    """Median step time, images/s and MFU of phase 1 and phase 2 for clip_jax.

    ``vision`` is a key of :data:`VISION` (224 px) or a vision config dict (``--smoke``: :data:`TINY_VISION`).
    """
    vision_config = VISION[vision] if isinstance(vision, str) else dict(vision)
    model = make_model(vision_config, text, dtype)
    mesh = make_mesh({"data": -1})
    data = batch_on_mesh(vision_config, text, batch, tokens, mesh)

    def peak_sample() -> float:  # smoke: a small matmul
        return matmul_peak(
            jnp.bfloat16 if dtype == "bfloat16" else jnp.float32, n=2048 if isinstance(vision, str) else 256
        )

    peaks = [peak_sample()]
    result = {"phases": {}}
    for phase in (1, 2):
        load_start = loadavg()
        times = time_calls(phase_step(model, mesh, data, phase), steps, warmup=1)
        result["phases"][phase] = {
            "step_s": float(np.median(times)),
            "times": times,
            "load_start": load_start,
            "load_end": loadavg(),
        }
        peaks.append(peak_sample())
    # The peak sampled before and after each phase, in the same run; the highest sample is the denominator
    # (on a loaded machine a low sample would inflate MFU).
    peak = max(peaks)
    result["matmul_peak_tflops"] = peak / 1e12
    result["matmul_peak_samples_tflops"] = [p / 1e12 for p in peaks]
    for phase, entry in result["phases"].items():
        flops = step_flops(vision_config, batch, tokens, phase, text=text)
        entry["images_per_s"] = batch / entry["step_s"]
        entry["analytic_tflop_per_step"] = flops / 1e12
        entry["mfu"] = flops / entry["step_s"] / peak
    result["phase2_over_phase1_step_time"] = result["phases"][2]["step_s"] / result["phases"][1]["step_s"]
    for phase, entry in result["phases"].items():
        print(
            f"phase {phase}: {entry['step_s']:.2f}s/step (min {min(entry['times']):.2f}, max "
            f"{max(entry['times']):.2f}), {entry['images_per_s']:.1f} images/s, MFU {entry['mfu']:.0%}, load "
            f"{entry['load_start']} -> {entry['load_end']}",
            flush=True,
        )
    print(
        f"phase 2 / phase 1 step time {result['phase2_over_phase1_step_time']:.2f}x; matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s (highest of {len(peaks)} samples)",
        flush=True,
    )
    return result


def compare_dtypes(
    vision: str | dict, batch: int, tokens: int, steps: int, dtypes: list[str], text: dict = BERT_BASE
) -> dict:
    """Each phase's step in each of ``dtypes`` (``model.dtype``), the dtypes' timed steps alternating
    A B B A ... after one warm-up step each: medians, spreads and each dtype's speed-up over the first."""
    from bench.vs_pytorch import alternate

    vision_config = VISION[vision] if isinstance(vision, str) else dict(vision)
    mesh = make_mesh({"data": -1})
    data = batch_on_mesh(vision_config, text, batch, tokens, mesh)
    models = {dtype: make_model(vision_config, text, dtype) for dtype in dtypes}
    result = {"phases": {}}
    for phase in (1, 2):
        load_start = loadavg()
        timed = alternate({dtype: phase_step(models[dtype], mesh, data, phase) for dtype in dtypes}, steps)
        entry = {**timed, "load_start": load_start, "load_end": loadavg()}
        for dtype in dtypes:
            entry[dtype]["speedup_over_" + dtypes[0]] = timed[dtypes[0]]["step_s"] / timed[dtype]["step_s"]
        result["phases"][phase] = entry
        print(
            f"phase {phase}: "
            + ", ".join(
                f"{d} {timed[d]['step_s']:.2f}s ({timed[d]['min_s']:.2f}..{timed[d]['max_s']:.2f})"
                for d in dtypes
            )
            + f"; {dtypes[0]} / {dtypes[-1]} {entry[dtypes[-1]]['speedup_over_' + dtypes[0]]:.2f}x, load "
            f"{entry['load_start']} -> {entry['load_end']}",
            flush=True,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vision", default="B/32", choices=sorted(VISION))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--compare_dtypes",
        default=None,
        help="e.g. float32,bfloat16: time the dtypes' steps alternating instead (result train_step_cpu_dtypes)",
    )
    parser.add_argument("--name", default="train_step_cpu")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny towers, batch 4, 2 steps; result into --out or a temporary folder",
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    args = parser.parse_args()
    if args.smoke:
        apply_smoke(args)
    result = {"machine": machine(), "args": vars(args)}
    if args.compare_dtypes:
        dtypes = args.compare_dtypes.split(",")
        vision, text = (TINY_VISION, TINY_TEXT) if args.smoke else (args.vision, BERT_BASE)
        result.update(compare_dtypes(vision, args.batch, args.tokens, args.steps, dtypes, text=text))
        name = args.name if args.name != "train_step_cpu" else "train_step_cpu_dtypes"
        write_result(name, result, args.out)
        return
    if args.smoke:
        result.update(measure(TINY_VISION, args.batch, args.tokens, args.steps, args.dtype, text=TINY_TEXT))
    else:
        result.update(measure(args.vision, args.batch, args.tokens, args.steps, args.dtype))
    write_result(args.name, result, args.out)


if __name__ == "__main__":
    main()
