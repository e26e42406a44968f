"""clip_jax against transformers' PyTorch VisionTextDualEncoderModel: the same train step, same machine, one run.

    python bench/vs_pytorch.py --batch 16 --tokens 64 --steps 4
    python bench/vs_pytorch.py --batch 16 --tokens 64 --steps 4 --dtype bfloat16
    python bench/vs_pytorch.py --smoke   # tiny towers on both sides, result in a temporary folder

Both sides: CLIP ViT-B/32 (224 px) + BERT-base (Italian xxl vocabulary), 512-d projections, random
weights, AdamW, the symmetric contrastive loss, gradient clipping at 1.0, dropout on, float32 (or, with
``--dtype bfloat16``, bfloat16 compute with float32 weights: clip_jax's ``model.dtype``, PyTorch's CPU
autocast), the same batch shapes. Phase 1 in PyTorch sets ``requires_grad=False`` on both backbones (the usual way); phase 2
trains everything. Per phase, one warm-up (compiling) step per side, then the two sides' timed steps
alternate A B B A A B ... (``--steps`` each), so that the load of a shared machine hits both sides alike;
each turn runs ``--settle`` steps of that side before its timed one (a clip_jax phase-2 step right after a
PyTorch step has run 1.4-1.6x slower than one after its own on some days, while PyTorch's steps did not
depend on what ran before, so timing every step charges the switch to clip_jax). The turn's first step, the
one right after the other side's, is timed as well: the run reports both the settled ratio and the one
after a switch.
Prints per side the median step time and its spread (min..max), settled and after a switch, the minor page
faults per settled step, the ratios of the medians PyTorch / clip_jax (> 1: clip_jax is faster), each side's MFU (``step_flops`` of ``bench/train_step.py``
over the median step time, against the FLOP/s of a 2048² matmul in the compute dtype (16-bit operands
accumulating in float32) measured by JAX in the same run before
and after each phase, the highest of these samples), and the load average at the start and end of each
phase (a shared machine's load is the main source of noise).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.common import block, loadavg, machine, matmul_peak, write_result


def torch_phase_steps(
    batch: int, tokens: int, vision: dict | None = None, text: dict | None = None, dtype: str = "float32"
) -> dict:
    """``{phase: () -> None}``: one PyTorch train step of each phase; ``vision``/``text`` override the tower
    configs (``--smoke``); ``dtype="bfloat16"``: the forward pass and loss under ``torch.autocast`` (float32
    weights, gradients and optimizer, as clip_jax's ``model.dtype=bfloat16``). Call a phase's steps only after
    the previous phase's (it sets ``requires_grad``)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    vision = vision or {"patch_size": 32}
    text = {k: v for k, v in (text or {"vocab_size": 32102}).items() if k != "model_type"}
    config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(
        tf.CLIPVisionConfig(**vision), tf.BertConfig(**text), projection_dim=512
    )
    model = tf.VisionTextDualEncoderModel(config).train()
    rs = np.random.RandomState(0)
    size, vocab = vision.get("image_size", 224), text["vocab_size"]
    pixels = torch.tensor(rs.randn(batch, 3, size, size).astype(np.float32))
    ids = torch.tensor(rs.randint(min(1000, vocab // 2), min(30000, vocab), (batch, tokens)))
    mask = torch.ones_like(ids)
    labels = torch.arange(batch)
    optimizers: dict = {}

    def make(phase: int):
        def step():
            if phase not in optimizers:  # first call of this phase: freeze or unfreeze the backbones
                for p in list(model.vision_model.parameters()) + list(model.text_model.parameters()):
                    p.requires_grad_(phase == 2)
                trainable = [p for p in model.parameters() if p.requires_grad]
                optimizers[phase] = (torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.2), trainable)
            optimizer, trainable = optimizers[phase]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
                logits = out.logits_per_image.float()
                loss = (
                    torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)
                ) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()

        return step

    return {1: make(1), 2: make(2)}


def alternate(sides: dict, steps: int, pause: float = 0.0, settle: int = 0) -> dict:
    """Time ``steps`` turns of each zero-argument callable in ``sides``, alternating A B B A A B ..., after one
    warm-up call each. A turn is ``settle`` calls and then the timed one; the turn's first call, which follows
    the other side's, is timed too (``after_switch``), so that one run gives both the settled times and those
    that carry the switch (with ``settle=0`` they are the same calls). ``pause``: seconds of idle, untimed,
    before each turn's last call. Per side: the settled times with their median and spread, the same for
    ``after_switch``, and the minor page faults of each settled call (``faults``)."""
    names = list(sides)
    for name in names:
        block(sides[name]())
    times: dict = {name: [] for name in names}
    switched: dict = {name: [] for name in names}
    faults: dict = {name: [] for name in names}
    for r in range(steps):
        for name in names if r % 2 == 0 else names[::-1]:
            for call in range(settle + 1):
                if call == settle:
                    time.sleep(pause)
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                start = time.perf_counter()
                block(sides[name]())
                seconds = time.perf_counter() - start
                if call == 0:
                    switched[name].append(seconds)
                if call == settle:
                    times[name].append(seconds)
                    faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        name: {
            "step_s": float(np.median(times[name])),
            "min_s": min(times[name]),
            "max_s": max(times[name]),
            "times": times[name],
            "faults": faults[name],
            "faults_per_step": int(np.median(faults[name])),
            "after_switch": {
                "step_s": float(np.median(switched[name])),
                "min_s": min(switched[name]),
                "max_s": max(switched[name]),
                "times": switched[name],
            },
        }
        for name in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side and phase (alternating)")
    parser.add_argument(
        "--settle",
        type=int,
        default=1,
        help="steps at the start of each side's turn before its settled timed step (0: every step follows a "
        "switch, the method before 2026-11-27)",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="compute dtype of both sides (bfloat16: clip_jax's model.dtype, PyTorch's CPU autocast)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny towers, batch 4, 2 steps; result into --out or a temporary folder",
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    parser.add_argument(
        "--tag",
        default="",
        help="appended to the result's file name (e.g. the allocator and run: mimalloc_1)",
    )
    args = parser.parse_args()
    import jax.numpy as jnp

    from bench.train_step import (
        BERT_BASE,
        TINY_TEXT,
        TINY_VISION,
        VISION,
        apply_smoke,
        batch_on_mesh,
        make_model,
        phase_step,
        step_flops,
    )
    from clip_jax.sharding import make_mesh

    if args.smoke:
        apply_smoke(args)
        vision, text, torch_vision, torch_text = TINY_VISION, TINY_TEXT, TINY_VISION, TINY_TEXT
    else:
        vision, text, torch_vision, torch_text = VISION["B/32"], BERT_BASE, None, None
    model = make_model(vision, text, args.dtype)
    mesh = make_mesh({"data": -1})
    data = batch_on_mesh(vision, text, args.batch, args.tokens, mesh)
    torch_steps = torch_phase_steps(args.batch, args.tokens, torch_vision, torch_text, args.dtype)
    peak_n = 256 if args.smoke else 2048
    peak_dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
    peaks = [matmul_peak(peak_dtype, n=peak_n)]
    ours, theirs, load = {}, {}, {}
    for phase in (1, 2):
        jax_step = phase_step(model, mesh, data, phase)
        load[phase] = {"start": loadavg()}
        timed = alternate(
            {"clip_jax": jax_step, "pytorch": torch_steps[phase]}, args.steps, settle=args.settle
        )
        load[phase]["end"] = loadavg()
        peaks.append(matmul_peak(peak_dtype, n=peak_n))
        for side, out in (("clip_jax", ours), ("pytorch", theirs)):
            out[phase] = dict(timed[side], images_per_s=args.batch / timed[side]["step_s"])
        print(
            f"phase {phase}: clip_jax {ours[phase]['step_s']:.2f}s ({ours[phase]['min_s']:.2f}.."
            f"{ours[phase]['max_s']:.2f}), PyTorch {theirs[phase]['step_s']:.2f}s ({theirs[phase]['min_s']:.2f}.."
            f"{theirs[phase]['max_s']:.2f}), PyTorch / clip_jax {theirs[phase]['step_s'] / ours[phase]['step_s']:.2f}x,"
            f" load {load[phase]['start']} -> {load[phase]['end']}",
            flush=True,
        )
        switch = {side: out[phase]["after_switch"] for side, out in (("clip_jax", ours), ("pytorch", theirs))}
        print(
            f"phase {phase}: after a switch clip_jax {switch['clip_jax']['step_s']:.2f}s "
            f"({switch['clip_jax']['min_s']:.2f}..{switch['clip_jax']['max_s']:.2f}), PyTorch "
            f"{switch['pytorch']['step_s']:.2f}s ({switch['pytorch']['min_s']:.2f}..{switch['pytorch']['max_s']:.2f}),"
            f" PyTorch / clip_jax {switch['pytorch']['step_s'] / switch['clip_jax']['step_s']:.2f}x; minor page "
            f"faults per settled step clip_jax {ours[phase]['faults_per_step']:,}, PyTorch "
            f"{theirs[phase]['faults_per_step']:,}",
            flush=True,
        )
    peak = max(peaks)
    for phase in (1, 2):
        flops = step_flops(vision, args.batch, args.tokens, phase, text=text)
        for out in (ours, theirs):
            out[phase]["analytic_tflop_per_step"] = flops / 1e12
            out[phase]["mfu"] = flops / out[phase]["step_s"] / peak
        print(
            f"phase {phase}: MFU clip_jax {ours[phase]['mfu']:.0%}, PyTorch {theirs[phase]['mfu']:.0%} "
            f"(matmul peak {peak / 1e9:.0f} GFLOP/s, the highest of {len(peaks)} samples)",
            flush=True,
        )
    result = {
        "machine": machine(),
        "args": vars(args),
        "order": f"alternating A B B A per phase, {args.settle} step(s) at the start of each turn before the "
        "settled timed one; the turn's first step is timed as after_switch",
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "ld_preload": os.environ.get("LD_PRELOAD"),
        "mimalloc_purge_delay": os.environ.get("MIMALLOC_PURGE_DELAY"),
        "matmul_peak_tflops": peak / 1e12,
        "matmul_peak_samples_tflops": [p / 1e12 for p in peaks],
        "load_average": load,
        "clip_jax": ours,
        "pytorch": theirs,
        "pytorch_over_clip_jax": {p: theirs[p]["step_s"] / ours[p]["step_s"] for p in (1, 2)},
        "pytorch_over_clip_jax_after_switch": {
            p: theirs[p]["after_switch"]["step_s"] / ours[p]["after_switch"]["step_s"] for p in (1, 2)
        },
    }
    name = "vs_pytorch_cpu" if args.dtype == "float32" else f"vs_pytorch_cpu_{args.dtype}"
    write_result(name + (f"_{args.tag}" if args.tag else ""), result, args.out)


if __name__ == "__main__":
    main()
