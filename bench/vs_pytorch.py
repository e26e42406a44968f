"""clip_jax against transformers' PyTorch VisionTextDualEncoderModel: the same train step, same machine, one run.

    python bench/vs_pytorch.py --batch 16 --tokens 64 --steps 3

Both sides: CLIP ViT-B/32 (224 px) + BERT-base (Italian xxl vocabulary), 512-d projections, random
weights, AdamW, the symmetric contrastive loss, dropout on, float32, the same batch shapes. Phase 1 in
PyTorch sets ``requires_grad=False`` on both backbones (the usual way); phase 2 trains everything.
Prints step times and the PyTorch / clip_jax ratio per phase.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.common import machine, write_result


def measure_torch(batch: int, tokens: int, steps: int) -> dict:
    import time

    import torch
    import transformers as tf

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    config = tf.VisionTextDualEncoderConfig.from_vision_text_configs(
        tf.CLIPVisionConfig(patch_size=32), tf.BertConfig(vocab_size=32102), projection_dim=512)
    model = tf.VisionTextDualEncoderModel(config).train()
    rs = np.random.RandomState(0)
    pixels = torch.tensor(rs.randn(batch, 3, 224, 224).astype(np.float32))
    ids = torch.tensor(rs.randint(1000, 30000, (batch, tokens)))
    mask = torch.ones_like(ids)
    labels = torch.arange(batch)
    result = {}
    for phase in (1, 2):
        for p in list(model.vision_model.parameters()) + list(model.text_model.parameters()):
            p.requires_grad_(phase == 2)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.2)

        def step():
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
    args = parser.parse_args()
    from bench.train_step import measure

    ours = measure("B/32", args.batch, args.tokens, args.steps)
    theirs = measure_torch(args.batch, args.tokens, args.steps)
    result = {"machine": machine(), "args": vars(args), "clip_jax": ours["phases"], "pytorch": theirs,
              "pytorch_over_clip_jax": {p: theirs[p]["step_s"] / ours["phases"][p]["step_s"] for p in (1, 2)}}
    write_result("vs_pytorch_cpu", result)


if __name__ == "__main__":
    main()
