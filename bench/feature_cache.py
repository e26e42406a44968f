"""Phase 1 with and without LiT-style feature caching (``phases.<name>.cache_features``).

    python bench/feature_cache.py --vision B/32 --batch 16 --tokens 64 --steps 3
    python bench/feature_cache.py --smoke   # tiny towers, a few seconds, result in a temporary folder

Random weights with the real architectures (ViT-B/32 + BERT-base at 224 px). Measures, in one run:
the phase-1 step through both frozen towers (what every phase-1 step costs without the cache), the
caching pass (both towers' forward once per image and caption: what the first epoch costs with the
cache), and the step on cached features (every later step). Input decoding is not included: with the
cache, later epochs do not decode images at all.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.common import machine, time_calls, write_result
from bench.train_step import (
    BERT_BASE,
    SMOKE,
    TINY_TEXT,
    TINY_VISION,
    VISION,
    batch_on_mesh,
    make_model,
    phase_step,
)
from clip_jax.config import HEAD
from clip_jax.embedding import feature_function
from clip_jax.models.freezing import split_trainable
from clip_jax.sharding import make_mesh


def measure(
    vision: str | dict = "B/32", batch: int = 16, tokens: int = 64, steps: int = 3, text: dict = BERT_BASE
) -> dict:
    vision_config = VISION[vision] if isinstance(vision, str) else dict(vision)
    model = make_model(vision_config, text)
    mesh = make_mesh({"data": -1})
    data = batch_on_mesh(vision_config, text, batch, tokens, mesh)
    full = time_calls(phase_step(model, mesh, data, 1), steps, warmup=1)

    graphdef, params, frozen = split_trainable(model.module, HEAD)
    image_fn = feature_function(graphdef, "pooled_image", mesh=mesh)
    text_fn = feature_function(graphdef, "pooled_text", mesh=mesh)
    states = (params, frozen)
    image_pass = time_calls(lambda: image_fn(states, data["pixel_values"]), steps, warmup=1)
    text_pass = time_calls(
        lambda: text_fn(states, data["input_ids"], data["attention_mask"]), steps, warmup=1
    )
    features = {
        "image_features": image_fn(states, data["pixel_values"]),
        "text_features": text_fn(states, data["input_ids"], data["attention_mask"]),
    }
    cached = time_calls(phase_step(model, mesh, features, 1, cached_features=True), max(steps, 10), warmup=1)

    full_s, cached_s = float(np.median(full)), float(np.median(cached))
    pass_s = float(np.median(image_pass)) + float(np.median(text_pass))  # one caption per image here
    return {
        "batch": batch,
        "tokens": tokens,
        "phase1_full_step_s": full_s,
        "phase1_full_images_per_s": batch / full_s,
        "caching_pass_s_per_batch": pass_s,
        "caching_pass_images_per_s": batch / pass_s,
        "cached_step_s": cached_s,
        "cached_images_per_s": batch / cached_s,
        "full_over_cached_step_time": full_s / cached_s,
        "times": {"full": full, "image_pass": image_pass, "text_pass": text_pass, "cached": cached},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vision", default="B/32", choices=sorted(VISION))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny towers; result in --out or a temporary folder"
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    args = parser.parse_args()
    if args.smoke:
        result = measure(TINY_VISION, text=TINY_TEXT, **SMOKE)
    else:
        result = measure(args.vision, args.batch, args.tokens, args.steps)
    result = {"machine": machine(), "args": vars(args), **result}
    write_result("feature_cache", result, args.out or (tempfile.mkdtemp() if args.smoke else None))


if __name__ == "__main__":
    main()
