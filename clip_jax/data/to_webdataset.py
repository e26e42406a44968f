"""Convert an image–caption listing (JSONL/JSON/CSV/TSV) to WebDataset tar shards.

    clip-jax to-webdataset --input jsonl:/data/mscoco-it/train.jsonl \\
        --output /data/shards/coco-it --shard_size 5000

Each example becomes ``<key>.<ext>`` (the original image bytes) and, as the WebDataset convention
has it, ``<key>.txt`` (UTF-8) for its caption, or ``<key>.json`` (``{"captions": [...]}``) when it has
several; unreadable rows are skipped and counted. Prints the brace pattern to
use as ``data.train``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import io
import json
import os
import tarfile
import time

from clip_jax.data.pipeline import BadExample, decode_image, valid_captions
from clip_jax.data.sources import FileSource, parse_source


def _image_extension(data: bytes, path: str) -> str:
    """``jpg``/``png``/``webp`` from the image's header, ``""`` for another format; a file PIL cannot identify
    is one skipped example (``corrupt_image``), never the end of the conversion."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(image.format, "")
    except (OSError, SyntaxError, ValueError) as error:
        raise BadExample("corrupt_image", f"{path}: {error}") from None


def convert(
    spec: str,
    output: str,
    shard_size: int = 5000,
    *,
    image_key: str = "",
    caption_key: str = "",
    verify: bool = True,
) -> tuple[str, dict]:
    """Write the shards; returns (brace pattern, counts: written and skipped by reason)."""
    keys = {k: v for k, v in (("image_key", image_key), ("caption_key", caption_key)) if v}
    source = parse_source(spec, **keys)
    if not isinstance(source, FileSource):
        raise ValueError(f"{spec} is already WebDataset shards — train on it directly (wds:...)")
    os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
    counts: collections.Counter = collections.Counter()
    num_shards = max(1, -(-len(source) // shard_size))
    width = max(5, len(str(num_shards - 1)))
    try:
        shard = _write_shards(source, output, shard_size, width, verify, counts)
    except BaseException:
        for partial in glob.glob(glob.escape(output) + "-*.tar.partial"):
            os.unlink(partial)
        raise
    if shard < 0:
        raise ValueError(
            f"No usable example in {spec}: {dict(counts)} — check the image paths and the image/caption keys"
        )
    pattern = f"{output}-{{{0:0{width}d}..{shard:0{width}d}}}.tar"
    return pattern, dict(counts)


def _finish(tar: tarfile.TarFile) -> None:
    """Close a shard written as ``NAME.partial`` and give it its name (fsynced): a shard is whole or absent."""
    tar.close()
    with open(tar.name, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tar.name, tar.name.removesuffix(".partial"))


def _write_shards(source, output: str, shard_size: int, width: int, verify: bool, counts) -> int:
    """Write the shards of ``source``; returns the last shard's number (-1: none)."""
    tar, shard, in_shard = None, -1, 0
    for index in range(len(source)):
        record = source[index]
        try:
            if record.get("error"):  # a listing row that is not an example (malformed line, missing key...)
                raise BadExample(*record["error"])
            captions = valid_captions(record["captions"], record["key"])
            if verify:
                decode_image(record["image"], record["path"])
            ext = _image_extension(record["image"], record["path"]) if record["image"] else ""
            if not ext:
                raise BadExample("unsupported_image_format", record["path"])
        except BadExample as error:
            counts[error.reason] += 1
            continue
        if tar is None or in_shard >= shard_size:
            if tar is not None:
                _finish(tar)
            shard, in_shard = shard + 1, 0
            tar = tarfile.open(f"{output}-{shard:0{width}d}.tar.partial", "w")  # noqa: SIM115  (closed when full)
        key = f"{index:09d}"
        text = (
            (f"{key}.txt", captions[0].encode())
            if len(captions) == 1
            else (f"{key}.json", json.dumps({"captions": captions}, ensure_ascii=False).encode())
        )
        for name, payload in ((f"{key}.{ext}", record["image"]), text):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(payload), int(time.time())
            tar.addfile(info, io.BytesIO(payload))
        in_shard += 1
        counts["written"] += 1
    if tar is not None:
        _finish(tar)
    return shard


def main(argv: list[str] | None = None) -> None:
    """``clip-jax to-webdataset``: convert a listing and print the ``data.train`` spec to use."""
    parser = argparse.ArgumentParser(
        prog="clip-jax to-webdataset",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", required=True, help="a listing spec, e.g. jsonl:/data/train.jsonl")
    parser.add_argument("--output", required=True, help="shard path prefix, e.g. /data/shards/train")
    parser.add_argument("--shard_size", type=int, default=5000)
    parser.add_argument("--image_key", default="")
    parser.add_argument("--caption_key", default="")
    parser.add_argument("--no_verify", action="store_true", help="do not decode images to check them")
    args = parser.parse_args(argv)
    if args.shard_size < 1:
        parser.error(f"--shard_size must be at least 1, not {args.shard_size}")
    pattern, counts = convert(
        args.input,
        args.output,
        args.shard_size,
        image_key=args.image_key,
        caption_key=args.caption_key,
        verify=not args.no_verify,
    )
    print(
        f"Wrote {counts.get('written', 0)} examples; skipped: "
        f"{ {k: v for k, v in counts.items() if k != 'written'} }"
    )
    print(f"Use: --config.data.train=wds:{pattern}")
