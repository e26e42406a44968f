"""clip_jax against transformers' PyTorch VisionTextDualEncoderModel: the same train step, same machine, one run.

    python bench/vs_pytorch.py --batch 16 --tokens 64 --steps 3
    python bench/vs_pytorch.py --smoke   # tiny towers on both sides, result in a temporary folder

Both sides: CLIP ViT-B/32 (224 px) + BERT-base (Italian xxl vocabulary), 512-d projections, random
weights, AdamW, the symmetric contrastive loss, dropout on, float32, the same batch shapes. Phase 1 in
PyTorch sets ``requires_grad=False`` on both backbones (the usual way); phase 2 trains everything.
Prints step times and the PyTorch / clip_jax ratio per phase.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.common import machine, write_result


def measure_torch(batch: int, tokens: int, steps: int, vision: dict | None = None, text: dict | None = None) -> dict:
    """Median step time of both phases in PyTorch; ``vision``/``text`` override the tower configs (``--smoke``)."""
    import time

    import torch
    import transformers as tf

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    vision = vision or {"patch_size": 32}
    text = {k: v for k, v in (text or {"vocab_size": 32102}).items() if k != "model_type"}
    config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(
        tf.CLIPVisionConfig(**vision), tf.BertConfig(**text), projection_dim=512)
    model = tf.VisionTextDualEncoderModel(config).train()
    rs = np.random.RandomState(0)
    size, vocab = vision.get("image_size", 224), text["vocab_size"]
    pixels = torch.tensor(rs.randn(batch, 3, size, size).astype(np.float32))
    ids = torch.tensor(rs.randint(min(1000, vocab // 2), min(30000, vocab), (batch, tokens)))
    mask = torch.ones_like(ids)
    labels = torch.arange(batch)
    result = {}
    for phase in (1, 2):
        for p in list(model.vision_model.parameters()) + list(model.text_model.parameters()):
            p.requires_grad_(phase == 2)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.2)

        def step(optimizer=optimizer, trainable=trainable):
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels)
            logits = out.logits_per_image
            loss = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()

        step()  # warm-up
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        seconds = float(np.median(times))
        result[phase] = {"step_s": seconds, "times": times, "images_per_s": batch / seconds}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny towers, batch 4, 2 steps; result into --out or a temporary folder")
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    args = parser.parse_args()
    from bench.train_step import SMOKE, TINY_TEXT, TINY_VISION, measure

    if args.smoke:
        args.batch, args.tokens, args.steps = SMOKE["batch"], SMOKE["tokens"], SMOKE["steps"]
        args.out = args.out or tempfile.mkdtemp(prefix="bench_smoke_")
        ours = measure(TINY_VISION, args.batch, args.tokens, args.steps, text=TINY_TEXT)
        theirs = measure_torch(args.batch, args.tokens, args.steps, TINY_VISION, TINY_TEXT)
    else:
        ours = measure("B/32", args.batch, args.tokens, args.steps)
        theirs = measure_torch(args.batch, args.tokens, args.steps)
    result = {"machine": machine(), "args": vars(args), "clip_jax": ours["phases"], "pytorch": theirs,
              "pytorch_over_clip_jax": {p: theirs[p]["step_s"] / ours["phases"][p]["step_s"] for p in (1, 2)}}
    write_result("vs_pytorch_cpu", result, args.out)


if __name__ == "__main__":
    main()
