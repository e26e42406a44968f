"""Evaluation data sets read from the files as they are distributed.

Labelled image data sets for zero-shot classification: ``imagefolder:PATH`` (one sub-folder per
class), ``hf:NAME?image=COL&label=COL&split=test`` and ``tfds:NAME[:SPLIT][?data_dir=DIR]`` (needs
tensorflow-datasets; TensorFlow too unless the data set was prepared as array_record).

Multilingual image–caption benchmarks for retrieval (any source spec takes them, so ``eval.py --task
retrieval --data`` and a training run's validation data both do), with the file layouts of their
distributions and CLIP_benchmark's choices:

- ``xm3600:DIR?language=it[&captions=all]``: Crossmodal-3600, ``DIR/captions.jsonl`` (one JSON object per
  image: ``"image/key"`` and, per language code, ``{"caption": [...], ...}``) and ``DIR/images/{key}.jpg``.
  The first caption of each image by default, as CLIP_benchmark reports it; ``captions=all`` keeps all.
- ``xtd10:DIR?language=it``: XTD10, ``DIR/test_image_names.txt`` and ``DIR/test_1kcaptions_{language}.txt``
  (line i captions image i; the German/French and Japanese files live in the repository's ``MIC/`` and
  ``STAIR/`` folders, looked for there too) and the images in ``DIR/images/``.
- ``multi30k:DIR?language=de&split=test``: Multi30k task 1, ``DIR/data/task1/raw/{split}.{language}[.gz]``
  and ``DIR/data/task1/image_splits/{split}.txt`` (line i captions image i), the Flickr30k images in
  ``DIR/images/`` or ``DIR/flickr30k-images/``. ``split=test`` means ``test_2016_flickr``.

An image listed but missing from the images folder is skipped and counted (CLIP_benchmark skips it too).
"""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clip_jax.data.sources import LabelledImages, SourceSpec, kinds_for, parse_source, split_spec

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
#: Image formats found in photo folders that clip_jax does not decode: counted as skipped
#: (``unsupported_format``), never silently left out.
UNSUPPORTED_IMAGE_SUFFIXES = {
    ".heic",
    ".heif",
    ".svg",
    ".svgz",
    ".avif",
    ".jxl",
    ".raw",
    ".dng",
    ".cr2",
    ".nef",
}


def load_labelled(
    spec: str, *, limit: int | None = None, skipped: dict | None = None
) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """(RGB images, integer labels, the data set's own class folder/label names) of a labelled source
    (``imagefolder:``, ``hf:``, ``tfds:``; see :mod:`clip_jax.data.sources`).

    Images that cannot be used (missing, unreadable, corrupt, empty, decompression bombs) are left out and
    counted by reason in ``skipped`` when it is given (see :func:`clip_jax.data.pipeline.check_bad_fraction`)."""
    from clip_jax.data.pipeline import BadExample, decode_image

    kinds = kinds_for("labels")
    if spec.partition(":")[0] not in kinds:
        raise ValueError(
            f"Unknown data set spec {spec!r}; use imagefolder:PATH, hf:NAME?image=..&label=.. or tfds:NAME "
            f"(labelled kinds: {', '.join(k + ':' for k in kinds)})."
        )
    skipped = skipped if skipped is not None else {}
    data = parse_source(spec, role="labels")
    images, labels = [], []
    for record in data.records:
        try:
            if record.get("error"):
                raise BadExample(*record["error"])
            image = record["image"]
            if isinstance(image, np.ndarray):  # decoded by the reader (tfds)
                image = Image.fromarray(image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1))
            else:
                image = decode_image(image, record["path"])
        except BadExample as error:
            skipped[error.reason] = skipped.get(error.reason, 0) + 1
            continue
        images.append(image)
        labels.append(int(record["label"]))
        if limit and len(images) >= limit:
            break
    return images, np.array(labels, dtype=np.int64), data.classes


def image_folder(spec: SourceSpec, settings: dict[str, Any]) -> LabelledImages:
    """``imagefolder:DIR``: one sub-folder per class (sorted names are the classes), images read lazily."""
    root = Path(spec.path)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist — check the path")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    suffixes = IMAGE_SUFFIXES | UNSUPPORTED_IMAGE_SUFFIXES
    files = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).rglob("*"))
        if f.suffix.lower() in suffixes
    ]
    if not files:
        raise ValueError(
            f"Image folder {root} holds no images in class sub-folders ({len(classes)} folders found) — "
            f"put each class's images ({', '.join(sorted(IMAGE_SUFFIXES))}) in a sub-folder named after it"
        )
    present = {label for _, label in files}
    empty = [c for i, c in enumerate(classes) if i not in present]
    if empty:  # kept: they hold the class indices of a subset; said, since a stray folder is one more class
        logger.warning(
            "Image folder %s: %d class folder(s) hold no images (%s): they still count among the %d classes "
            "(zero-shot candidates, --classnames), and per-class recall leaves them out",
            root,
            len(empty),
            ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else ""),
            len(classes),
        )

    def records():
        for file, label in files:
            if file.suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES:
                detail = f"{file}: {file.suffix} images are not read; convert them to JPEG or PNG"
                yield {
                    "image": None,
                    "path": str(file),
                    "label": label,
                    "error": ("unsupported_format", detail),
                }
                continue
            try:
                yield {"image": file.read_bytes(), "path": str(file), "label": label}
            except OSError as error:
                yield {
                    "image": None,
                    "path": str(file),
                    "label": label,
                    "error": ("unreadable_file", str(error)),
                }

    return LabelledImages(records(), classes)


def spec_options(spec: str, allowed: tuple[str, ...] | None = None) -> tuple[str, dict[str, str]]:
    """``KIND:PATH?a=1&b=2`` -> (``PATH``, ``{"a": "1", "b": "2"}``), by the one spec parser
    (:func:`clip_jax.data.sources.split_spec`); with ``allowed``, an option outside it is an error too."""
    parsed = split_spec(spec)
    unknown = sorted(set(parsed.options) - set(allowed)) if allowed is not None else []
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} in {spec!r}; valid: {', '.join(allowed)}.")
    return parsed.path, parsed.options


def tfds_labelled(spec: SourceSpec, settings: dict[str, Any]) -> LabelledImages:
    """``tfds:NAME[:SPLIT][?data_dir=DIR&image=KEY&label=KEY]``: a prepared TFDS data set (an unprepared one is
    downloaded and prepared into ``data_dir``, default ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets). Data prepared
    as array_record (``tfds build --file_format=array_record``) is read without TensorFlow through
    ``tfds.data_source``; tfrecord data (tfds's default) is read with tf.data and needs ``tensorflow``.
    tfds decodes the images itself, so its records carry arrays."""
    from clip_jax.extras import require

    tfds = require("tensorflow_datasets", "tfds: data sets")
    name, _, split = spec.path.partition(":")
    builder = tfds.builder(name, data_dir=spec.option("data_dir") or None)
    if not builder.is_prepared():
        builder.download_and_prepare()
    keys = builder.info.supervised_keys
    image_key, label_key = keys if keys and all(isinstance(k, str) for k in keys) else ("image", "label")
    image_key, label_key = spec.option("image", image_key), spec.option("label", label_key)
    split = split or "test"
    random_access = tfds.core.file_adapters.FileFormat.with_random_access()
    if builder.info.available_file_formats() & random_access:
        source = builder.as_data_source(split=split)
        examples = (source[i] for i in range(len(source)))
    else:
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise ImportError(
                f"tfds:{name} is stored as {builder.info.file_format.value}, which needs `pip install "
                "tensorflow` to read; or prepare it with file_format=array_record."
            ) from None
        examples = tfds.as_numpy(builder.as_dataset(split=split))
    records = (
        {"image": np.asarray(e[image_key]), "path": f"{name}:{split}:{i}", "label": int(e[label_key])}
        for i, e in enumerate(examples)
    )
    names = list(getattr(builder.info.features[label_key], "names", None) or [])
    return LabelledImages(records, names)


#: Spec prefixes of the image–caption benchmarks (see the module docstring).
CAPTION_BENCHMARKS = ("xm3600", "xtd10", "multi30k")
#: Multi30k split aliases: ``test`` is the 2016 Flickr test set every paper reports.
MULTI30K_SPLITS = {"test": "test_2016_flickr", "val": "val", "train": "train"}


class CaptionedImages:
    """An image–caption benchmark as a random-access source (``len``, ``[i]``) giving the records
    :mod:`clip_jax.data.sources` gives: ``{"image": bytes | None, "path", "captions", "key"}``."""

    streaming = False

    def __init__(self, name: str, items: list[tuple[Path, list[str]]], language: str):
        self.name, self.items, self.language = name, items, language

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, captions = self.items[index]
        data = path.read_bytes() if path.is_file() else None
        return {"image": data, "path": str(path), "captions": list(captions), "key": f"{self.name}:{index}"}


def caption_benchmark(spec: str | SourceSpec, settings: dict[str, Any] | None = None) -> CaptionedImages:
    """The benchmark named by ``xm3600:DIR?language=..``, ``xtd10:DIR?language=..`` or
    ``multi30k:DIR?language=..&split=..`` (see the module docstring; the options are checked by the one spec
    parser, :func:`clip_jax.data.sources.split_spec`)."""
    parsed = split_spec(spec) if isinstance(spec, str) else spec
    spec, kind, path, options = parsed.spec, parsed.kind, parsed.path, parsed.options
    if kind not in CAPTION_BENCHMARKS:
        raise ValueError(
            f"Unknown benchmark {kind!r} in {spec!r}; use one of {', '.join(CAPTION_BENCHMARKS)}."
        )
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{kind}: data directory {root} does not exist (spec {spec!r}).")
    language = options.get("language")
    if not language:
        raise ValueError(f"{spec!r} names no language: add ?language=it (or another language code).")
    if kind == "xm3600":
        items = _xm3600(root, language, options.get("captions", "first"))
    elif kind == "xtd10":
        items = _xtd10(root, language)
    else:
        items = _multi30k(root, language, options.get("split", "test"))
    return CaptionedImages(f"{kind}-{language}", items, language)


def _xm3600(root: Path, language: str, which: str) -> list[tuple[Path, list[str]]]:
    if which not in ("first", "all"):
        raise ValueError(
            f"xm3600: captions={which!r}; use captions=first (CLIP_benchmark's choice) or captions=all."
        )
    listing = root / "captions.jsonl"
    if not listing.is_file():
        raise FileNotFoundError(
            f"xm3600: {listing} does not exist; unzip Crossmodal-3600's captions.zip into {root}."
        )
    items = []
    for number, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if language not in row:
            known = sorted(k for k, v in row.items() if isinstance(v, dict) and "caption" in v)
            raise ValueError(f"xm3600: {listing} line {number} has no language {language!r}; it has {known}.")
        captions = row[language]["caption"]
        items.append(
            (root / "images" / f"{row['image/key']}.jpg", captions[:1] if which == "first" else captions)
        )
    if not items:
        raise ValueError(
            f"xm3600: {listing} holds no images — check that it is Crossmodal-3600's captions.jsonl"
        )
    return items


def _lines(path: Path) -> list[str]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.decode("utf-8").splitlines()


def _paired(kind: str, images: list[str], captions: list[str], image_dir: Path, names: str, texts: str):
    if len(images) != len(captions):
        raise ValueError(
            f"{kind}: {names} lists {len(images)} images but {texts} has {len(captions)} captions; "
            "they must pair line by line."
        )
    return [(image_dir / name.strip(), [caption]) for name, caption in zip(images, captions) if name.strip()]


def _xtd10(root: Path, language: str) -> list[tuple[Path, list[str]]]:
    names = root / "test_image_names.txt"
    filename = f"test_1kcaptions_{language}.txt"
    found = [
        d / filename for d in (root, root / "XTD10", root / "MIC", root / "STAIR") if (d / filename).is_file()
    ]
    if not names.is_file() or not found:
        missing = names if not names.is_file() else root / filename
        raise FileNotFoundError(
            f"xtd10: {missing} does not exist; put XTD10's test_image_names.txt and "
            f"{filename} (from its XTD10/, MIC/ or STAIR/ folder) in {root}."
        )
    return _paired("xtd10", _lines(names), _lines(found[0]), root / "images", str(names), str(found[0]))


def _multi30k(root: Path, language: str, split: str) -> list[tuple[Path, list[str]]]:
    split = MULTI30K_SPLITS.get(split, split)
    task = root / "data" / "task1"
    texts = next(
        (
            p
            for p in (task / "raw" / f"{split}.{language}", task / "raw" / f"{split}.{language}.gz")
            if p.is_file()
        ),
        None,
    )
    names = task / "image_splits" / f"{split}.txt"
    if texts is None or not names.is_file():
        missing = names if texts is not None else task / "raw" / f"{split}.{language}.gz"
        raise FileNotFoundError(
            f"multi30k: {missing} does not exist; {root} should be a clone of "
            "github.com/multi30k/dataset (data/task1/raw, data/task1/image_splits)."
        )
    image_dir = next((d for d in (root / "images", root / "flickr30k-images") if d.is_dir()), root / "images")
    return _paired("multi30k", _lines(names), _lines(texts), image_dir, str(names), str(texts))
