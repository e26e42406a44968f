"""Labelled image data sets for zero-shot evaluation: ``imagefolder:PATH`` (one sub-folder per
class), ``hf:NAME?image=COL&label=COL&split=test`` and ``tfds:NAME[:SPLIT][?data_dir=DIR]`` (needs
tensorflow-datasets; TensorFlow too unless the data set was prepared as array_record)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def load_labelled(spec: str, *, limit: int | None = None, skipped: dict | None = None
                  ) -> tuple[list[Image.Image], np.ndarray, list[str]]:
    """(RGB images, integer labels, the data set's own class folder/label names).

    Image files that cannot be used (corrupt, empty, decompression bombs) are left out and counted by reason
    in ``skipped`` when it is given (see :func:`clip_jax.data.pipeline.check_bad_fraction`)."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise ValueError(f"Unknown data set spec {spec!r}; use imagefolder:PATH, hf:NAME?image=..&label=.. or "
                         "tfds:NAME.")
    if kind == "imagefolder":
        return _image_folder(Path(rest), limit, skipped if skipped is not None else {})
    if kind == "hf":
        return _hf(rest, limit)
    if kind == "tfds":
        return _tfds(rest, limit)
    raise ValueError(f"Unknown data set kind {kind!r} in {spec!r}; use imagefolder:, hf: or tfds:.")


def _image_folder(root: Path, limit: int | None, skipped: dict):
    from clip_jax.data.pipeline import BadExample, decode_image

    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).rglob("*"))
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise ValueError(f"Image folder {root} holds no images in class sub-folders ({len(classes)} folders found).")
    images, labels = [], []
    for file, label in files:
        try:
            images.append(decode_image(file.read_bytes(), str(file)))
        except BadExample as error:
            skipped[error.reason] = skipped.get(error.reason, 0) + 1
            continue
        except OSError:
            skipped["unreadable_file"] = skipped.get("unreadable_file", 0) + 1
            continue
        labels.append(label)
        if limit and len(images) >= limit:
            break
    return images, np.array(labels, dtype=np.int64), classes


def _hf(rest: str, limit: int | None):
    from urllib.parse import parse_qs

    from clip_jax.extras import require

    datasets = require("datasets", "hf: data sets")
    name, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    image_col, label_col = options.get("image", "image"), options.get("label", "label")
    split = options.get("split", "test")
    saved = Path(name).is_dir() and any((Path(name) / f).exists() for f in ("state.json", "dataset_dict.json"))
    data = datasets.load_from_disk(name) if saved else datasets.load_dataset(name, split=split)
    if isinstance(data, datasets.DatasetDict):
        data = data[split]
    if limit:
        data = data.select(range(min(limit, len(data))))
    feature = data.features.get(label_col)
    names = list(getattr(feature, "names", []) or [])
    images = [img.convert("RGB") for img in data[image_col]]
    return images, np.asarray(data[label_col]), names


def _tfds(rest: str, limit: int | None):
    """``NAME[:SPLIT][?data_dir=DIR&image=KEY&label=KEY]``: a prepared TFDS data set (an unprepared one is
    downloaded and prepared into ``data_dir``, default ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets). Data prepared
    as array_record (``tfds build --file_format=array_record``) is read without TensorFlow through
    ``tfds.data_source``; tfrecord data (tfds's default) is read with tf.data and needs ``tensorflow``."""
    from urllib.parse import parse_qs

    from clip_jax.extras import require

    tfds = require("tensorflow_datasets", "tfds: data sets")
    spec, _, query = rest.partition("?")
    name, _, split = spec.partition(":")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    builder = tfds.builder(name, data_dir=options.get("data_dir"))
    if not builder.is_prepared():
        builder.download_and_prepare()
    keys = builder.info.supervised_keys
    image_key, label_key = keys if keys and all(isinstance(k, str) for k in keys) else ("image", "label")
    image_key, label_key = options.get("image", image_key), options.get("label", label_key)
    split = split or "test"
    random_access = tfds.core.file_adapters.FileFormat.with_random_access()
    if builder.info.available_file_formats() & random_access:
        source = builder.as_data_source(split=split)
        examples = (source[i] for i in range(min(limit or len(source), len(source))))
    else:
        try:
            import tensorflow  # noqa: F401
        except ImportError:
            raise ImportError(f"tfds:{name} is stored as {builder.info.file_format.value}, which needs `pip install "
                              "tensorflow` to read; or prepare it with file_format=array_record.") from None
        data = builder.as_dataset(split=split)
        examples = tfds.as_numpy(data.take(limit) if limit else data)
    images, labels = [], []
    for example in examples:
        image = np.asarray(example[image_key])
        images.append(Image.fromarray(image if image.shape[-1] == 3 else np.repeat(image, 3, axis=-1)))
        labels.append(int(example[label_key]))
    names = list(getattr(builder.info.features[label_key], "names", None) or [])
    return images, np.asarray(labels), names
