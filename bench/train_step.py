"""Train-step throughput of a full-size dual encoder in phase 1 (projections only) and phase 2 (all).

    python bench/train_step.py --vision B/32 --batch 16 --tokens 64 --steps 3

Random weights with the real architectures (ViT-B/32 or B/16 at 224 px + BERT-base), AdamW, the
global softmax loss. Reports images/s, the phase-2 / phase-1 step-time ratio, and model FLOPs
utilisation: analytic FLOPs of the step over its time, against a matmul peak measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import os

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import machine, matmul_peak, time_calls, write_result
from clip_jax import CLIPModel
from clip_jax.config import HEAD
from clip_jax.sharding import batch_sharding, make_mesh
from clip_jax.train.optim import make_optimizer
from clip_jax.train.state import TrainState, initial_rng, make_train_step, split_trainable

VISION = {"B/32": dict(patch_size=32), "B/16": dict(patch_size=16),
          "L/14": dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                       patch_size=14)}
BERT_BASE = dict(model_type="bert", vocab_size=32102)


def tower_forward_flops(hidden: int, intermediate: int, layers: int, tokens: int) -> float:
    """Matmul FLOPs of one transformer encoder forward pass for one sequence (2 per multiply-add)."""
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * 2 * tokens * tokens * hidden
    return layers * per_layer


def step_flops(vision: dict, batch: int, tokens: int, phase: int, projection: int = 512) -> float:
    """Analytic FLOPs of one train step: forward (x1) + backward (x2) where gradients are needed."""
    v = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, patch_size=32, image_size=224) | vision
    patches = (v["image_size"] // v["patch_size"]) ** 2
    vis = tower_forward_flops(v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], patches + 1)
    vis += 2 * patches * 3 * v["patch_size"] ** 2 * v["hidden_size"]
    txt = tower_forward_flops(768, 3072, 12, tokens)
    heads = 2 * (v["hidden_size"] + 768) * projection
    loss = 2 * 2 * batch * projection  # per example: its row of logits in each direction
    towers = vis + txt
    multiplier = 3 if phase == 2 else 1
    return batch * (multiplier * towers + 3 * (heads + loss))


def measure(vision: str = "B/32", batch: int = 16, tokens: int = 64, steps: int = 3,
            dtype: str = "float32") -> dict:
    """Median step time, images/s and MFU of phase 1 and phase 2 for clip_jax."""
    compute = jnp.bfloat16 if dtype == "bfloat16" else None
    model = CLIPModel.from_towers(vision=dict(model_type="clip_vision_model", **VISION[vision]),
                                  text=BERT_BASE, projection_dim=512, dtype=compute)
    mesh = make_mesh({"data": -1})
    rs = np.random.RandomState(0)
    data = {"pixel_values": rs.randn(batch, 224, 224, 3).astype(np.float32),
            "input_ids": rs.randint(1000, 30000, (batch, tokens)).astype(np.int32),
            "attention_mask": np.ones((batch, tokens), np.int32)}
    data = jax.device_put(data, batch_sharding(mesh))
    peak = matmul_peak(jnp.bfloat16 if compute is not None else jnp.float32)
    result = {"matmul_peak_tflops": peak / 1e12, "phases": {}}
    for phase, trainable in ((1, HEAD), (2, ".*")):
        graphdef, params, frozen = split_trainable(model.module, trainable)
        groups = (("head", HEAD), ("vision", r"vision\..*"), ("text", r"text\..*"))
        tx, _ = make_optimizer(params, groups=groups, learning_rates={"head": 1e-3, "vision": 1e-5, "text": 1e-5},
                               steps=1000, warmup_steps=0, decay="cosine", end_factor=0.0, optimizer="adamw",
                               settings=dict(b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.2, grad_clip_norm=1.0))
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params),
                           rng=initial_rng(0))
        state = jax.tree.map(jnp.copy, state)  # the step donates its state; keep the model's own arrays
        step = jax.jit(make_train_step(graphdef, tx, mesh, loss_kind="softmax", dropout=True), donate_argnums=(0,))
        holder = {"state": state}

        def call():
            holder["state"], metrics = step(holder["state"], data)
            return metrics

        times = time_calls(call, steps, warmup=1)
        seconds = float(np.median(times))
        flops = step_flops(VISION[vision], batch, tokens, phase)
        result["phases"][phase] = {"step_s": seconds, "times": times, "images_per_s": batch / seconds,
                                   "analytic_tflop_per_step": flops / 1e12, "mfu": flops / seconds / peak}
    result["phase2_over_phase1_step_time"] = result["phases"][2]["step_s"] / result["phases"][1]["step_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vision", default="B/32", choices=sorted(VISION))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--name", default="train_step_cpu")
    args = parser.parse_args()
    result = {"machine": machine(), "args": vars(args)}
    result.update(measure(args.vision, args.batch, args.tokens, args.steps, args.dtype))
    write_result(args.name, result)


if __name__ == "__main__":
    main()
