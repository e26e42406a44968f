"""Where examples come from: one registry of source kinds and one spec parser, used by training,
evaluation and distillation.

A *source spec* is a string ``KIND:PATH[?option=value&...]`` or a bare path whose form says the kind
(``.jsonl``/``.json``/``.csv``/``.tsv``: a listing; ``.tar`` or a brace pattern of them: WebDataset shards;
``shapes``: the demo's synthetic scenes). :data:`SOURCES` lists the kinds (``python -c "from
clip_jax.data.sources import describe_sources; print(describe_sources())"``):

- ``jsonl:PATH``, ``json:PATH``, ``csv:PATH``, ``tsv:PATH``: a listing of image paths and captions (or, for
  distillation, of parallel sentences in two columns),
- ``wds:PATTERN``: WebDataset tar shards, brace ranges ``{000..099}`` and lists ``{train,val}``,
- ``hf:NAME_OR_PATH?image=COL&caption=COL&label=COL&teacher=COL&student=COL&split=S&streaming=1``: a Hugging
  Face dataset (hub id, ``save_to_disk`` directory or data files),
- ``shapes:train|val|heldout``: the offline demo's synthetic scenes (``shapes:heldout`` as parallel pairs),
- ``xm3600:DIR?language=it``, ``xtd10:DIR?language=it``, ``multi30k:DIR?language=de&split=test``:
  multilingual benchmarks as distributed (:mod:`clip_jax.data.benchmarks`),
- ``imagefolder:DIR``, ``tfds:NAME[:SPLIT]``: labelled images for zero-shot classification.

Each kind has a reader per *role*: ``captions`` (image–caption examples, :func:`parse_source`), ``labels``
(labelled images, :func:`clip_jax.data.benchmarks.load_labelled`) and ``pairs`` (parallel sentences,
:func:`clip_jax.data.parallel.read_pairs`). Adding a kind is one :class:`SourceKind` entry here.
Paths may be local or any fsspec URL (``gs://``, ``s3://``, ...).

An image–caption source is random access (``streaming = False``: ``len(source)``, ``source[i]``, a grain
source) or streamed (``streaming = True``: ``units(epoch, seed, process_index, process_count)`` and
``one_pass(process_index, process_count)``). Records are raw: ``{"image": bytes | None, "path": str,
"captions": list, "key": str}`` (``"error": (reason, detail)`` for a row that is not an example); decoding and
validation happen in :mod:`clip_jax.data.pipeline`, where bad examples are counted and skipped.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "json")
#: Default column names tried in order: CLIP-Italian's JSON and open_clip's CSV.
IMAGE_KEYS = ("image_path", "filepath", "image", "file_name")
CAPTION_KEYS = ("captions", "caption", "title", "text")


def _open(path: str, mode: str = "rb"):
    if "://" in path:
        import fsspec

        from clip_jax.extras import require_protocol

        require_protocol(path)
        return fsspec.open(path, mode).open()
    return open(path, mode)


def _join(base: str, relative: str) -> str:
    if "://" in relative or os.path.isabs(relative):
        return relative
    if "://" in base:
        return base.rsplit("/", 1)[0] + "/" + relative
    return os.path.join(os.path.dirname(os.path.abspath(base)), relative)


_BRACE = re.compile(r"\{(\d+\.\.\d+|[^{}]*,[^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """Brace patterns as WebDataset (and the shell) write them, left to right: ranges
    ``data-{000..002}.tar`` -> ``data-000.tar, data-001.tar, data-002.tar`` (zero padding kept) and lists
    ``{train,val}-{0..1}.tar`` -> ``train-0.tar, train-1.tar, val-0.tar, val-1.tar``. Other braces stay as
    they are."""
    match = _BRACE.search(pattern)
    if not match:
        return [pattern]
    body = match.group(1)
    if ".." in body and "," not in body:
        first, last = body.split("..")
        width = len(first) if first.startswith("0") else 0
        choices = [str(number).zfill(width) for number in range(int(first), int(last) + 1)]
    else:
        choices = body.split(",")
    out = []
    for choice in choices:
        out.extend(expand_braces(pattern[: match.start()] + choice + pattern[match.end() :]))
    return out


def split_outside_braces(text: str, separator: str = ",") -> list[str]:
    """``text`` split at ``separator`` where it is not inside ``{...}`` (a WebDataset brace list)."""
    parts, depth, current = [], 0, []
    for char in text:
        depth += (char == "{") - (char == "}")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


class _BadRow:
    """A listing row that cannot be an example: ``reason`` (for the counts) and where it is."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail


LISTING_FORMATS = ("jsonl", "json", "csv", "tsv")


def read_listing(path: str, fmt: str, what: str = "Data listing") -> tuple[list[Any], list[int]]:
    """The rows of a JSONL/JSON/CSV/TSV file (local or fsspec URL) and, for JSONL, each row's line number.

    A malformed JSON line or a value that is not an object becomes a :class:`_BadRow` (``malformed_line``,
    ``not_an_object``) naming file and line, so one bad line costs one row, not the file."""
    try:
        with _open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist — check the path") from None
    if data[:2] == b"\x1f\x8b":  # gzip, whatever the file is called
        data = gzip.decompress(data)
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark (Excel's CSV) is not part of the first column
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{what} {path} is not UTF-8 text ({error.reason} at byte {error.start}) — save it as UTF-8"
        ) from None
    lines: list[int] = []  # the line of each row (JSONL), for messages
    if fmt == "jsonl":
        rows: list[Any] = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            lines.append(number)
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                rows.append(_BadRow("malformed_line", f"{path}:{number}: {error.msg}"))
                continue
            if not isinstance(rows[-1], dict):
                rows[-1] = _BadRow(
                    "not_an_object", f"{path}:{number}: a JSON {type(rows[-1]).__name__}, not an object"
                )
    elif fmt == "json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{what} {path} is not valid JSON ({error}) — fix the file, or use a JSONL listing (one "
                "object per line; bad lines are then skipped)."
            ) from None
        if isinstance(rows, dict):  # {"data": [...]} or {"images": [...]}
            rows = next((v for v in rows.values() if isinstance(v, list)), [])
        rows = [
            r
            if isinstance(r, dict)
            else _BadRow("not_an_object", f"{path}: entry {i}: a {type(r).__name__}, not an object")
            for i, r in enumerate(rows if isinstance(rows, list) else [])
        ]
    else:
        rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if fmt == "tsv" else ","))
    if not rows:
        raise ValueError(f"{what} {path} has no records — check the file")
    return rows, lines


@dataclass
class FileSource:
    """A JSONL/JSON/CSV/TSV listing of image paths (relative to the listing, absolute, or URLs) and captions.

    Random access: ``len(source)`` and ``source[i]`` (a grain ``MapDataset`` source).
    """

    path: str
    fmt: str = ""
    image_key: str = ""
    caption_key: str = ""
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    _lines: list[int] = field(default_factory=list, repr=False)
    streaming: ClassVar[bool] = False

    def __post_init__(self):
        self.fmt = self.fmt or self.path.removesuffix(".gz").rsplit(".", 1)[-1].lower()
        if self.fmt not in LISTING_FORMATS:
            raise ValueError(
                f"Cannot tell the format of {self.path} — prefix it with jsonl:, json:, csv: or tsv:"
            )
        rows, lines = read_listing(self.path, self.fmt)
        objects = [r for r in rows[:1000] if isinstance(r, dict)]
        if not objects:
            raise ValueError(
                f"Data listing {self.path}: none of its first {min(len(rows), 1000)} rows is a JSON "
                f"object (first problem: {rows[0].detail}) — fix the file."
            )
        seen = {
            k for r in objects for k in r
        }  # the columns of the first rows: one row without a key is one bad row
        self.image_key = self.image_key or next((k for k in IMAGE_KEYS if k in seen), "")
        self.caption_key = self.caption_key or next((k for k in CAPTION_KEYS if k in seen), "")
        if not self.image_key or not self.caption_key:
            raise ValueError(
                f"{self.path}: cannot find the image/caption columns among {sorted(seen)}; set "
                f"data image_key / caption_key (defaults tried: {IMAGE_KEYS} / {CAPTION_KEYS})."
            )
        self.records, self._lines = rows, lines
        bad = [r for r in rows if isinstance(r, _BadRow)]
        if bad:
            logger.warning("%s: %d unusable line(s), skipped (first: %s)", self.path, len(bad), bad[0].detail)

    def __len__(self) -> int:
        return len(self.records)

    def _where(self, index: int) -> str:
        """``path:LINE`` (JSONL) or ``path: row N`` for messages."""
        if index < len(self._lines):
            return f"{self.path}:{self._lines[index]}"
        return f"{self.path}: row {index + 1}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.records[index]
        key = f"{self.path}:{index}"
        if isinstance(row, _BadRow):  # counted and skipped by the pipeline
            return {
                "image": None,
                "path": self.path,
                "captions": [],
                "key": key,
                "error": (row.reason, row.detail),
            }
        missing = [k for k in (self.image_key, self.caption_key) if k not in row]
        if missing:
            return {
                "image": None,
                "path": self.path,
                "captions": [],
                "key": key,
                "error": (
                    "missing_key",
                    f"{self._where(index)}: no {' / '.join(map(repr, missing))} (keys: {sorted(row)})",
                ),
            }
        image = row.get(self.image_key)
        captions = row.get(self.caption_key)
        captions = captions if isinstance(captions, list) else [captions]
        path = _join(self.path, image) if isinstance(image, str) and image else ""
        data = None
        if path:
            try:
                with _open(path, "rb") as f:
                    data = f.read()
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                data = None
        return {
            "image": data,
            "path": path or repr(image),
            "captions": captions,
            "key": f"{self.path}:{index}",
        }


@dataclass
class WebDatasetSource:
    """WebDataset tar shards, streamed member by member (never extracted; member names are only keys)."""

    pattern: str
    shards: list[str] = field(default_factory=list)
    streaming: ClassVar[bool] = True

    def __post_init__(self):
        self.shards = [s for p in self.pattern.split("::") for s in expand_braces(p)]
        if not self.shards:
            raise ValueError(f"No shards match {self.pattern} — check the pattern")

    def units(
        self, epoch: int, seed: int, process_index: int, process_count: int
    ) -> list[Callable[[], Iterator[dict[str, Any]]]]:
        """This process's shards of one epoch (all shards reshuffled with ``(seed, epoch)``), one reader each."""
        if len(self.shards) < process_count:
            raise ValueError(
                f"{len(self.shards)} shards cannot be split over {process_count} processes; "
                "write more shards (clip-jax to-webdataset --shard_size ...)."
            )
        order = np.random.default_rng([seed, epoch]).permutation(len(self.shards))
        mine = [self.shards[i] for i in order][process_index::process_count]
        return [functools.partial(self.read_shard, shard) for shard in mine]

    def one_pass(self, process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, Any]]:
        """One pass over this process's shards in their listed order."""
        for shard in self.shards[process_index::process_count]:
            yield from self.read_shard(shard)

    def read_shard(self, shard: str) -> Iterator[dict[str, Any]]:
        """Examples of one shard in order: members sharing a key (name up to the first dot) form one.

        A shard that is missing, not a tar file, or cut short ends with one record carrying
        ``error=(reason, detail)`` instead of raising: the pipeline counts it and moves on."""
        current_key, parts = None, {}
        try:
            with _open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = member.name.rsplit("/", 1)[-1]
                    key, _, ext = base.partition(".")
                    key = member.name[: len(member.name) - len(base)] + key
                    if key != current_key and current_key is not None:
                        yield self._example(shard, current_key, parts)
                        parts = {}
                    current_key = key
                    if ext.lower() in IMAGE_EXTENSIONS + CAPTION_EXTENSIONS:
                        parts[ext.lower()] = tar.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as error:
            reason = "missing_shard" if isinstance(error, FileNotFoundError) else "corrupt_shard"
            yield {
                "image": None,
                "path": shard,
                "captions": [],
                "key": shard,
                "error": (reason, f"{shard} after {current_key!r}: {error}"),
            }
            return
        if current_key is not None:
            yield self._example(shard, current_key, parts)

    @staticmethod
    def _example(shard: str, key: str, parts: dict[str, bytes]) -> dict[str, Any]:
        image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
        captions: list[Any] = []
        if "txt" in parts:
            captions = [parts["txt"].decode("utf-8", errors="replace")]
        elif "json" in parts:
            try:
                meta = json.loads(parts["json"])
                value = next((meta[k] for k in CAPTION_KEYS if k in meta), None)
                captions = value if isinstance(value, list) else [value]
            except (json.JSONDecodeError, TypeError):
                captions = [None]
        return {"image": image, "path": f"{shard}:{key}", "captions": captions, "key": f"{shard}:{key}"}


@dataclass
class HFSource:
    """A Hugging Face dataset (hub id, local ``save_to_disk`` directory, or local data files) with an
    image column and a caption column (text or list of texts), or, with ``label_column``, a label column.

    Not streaming: random access (a grain source). Streaming: ``units``/``one_pass``.
    """

    name: str
    image_column: str = "image"
    caption_column: str = "caption"
    split: str = "train"
    streaming: bool = False
    label_column: str = ""
    dataset: Any = field(default=None, repr=False)

    def __post_init__(self):
        data = load_hf_dataset(self.name, self.split, self.streaming)
        wanted = (self.image_column, self.label_column or self.caption_column)
        check_columns(
            data,
            self.name,
            wanted,
            "hf:{name}?image=COLUMN&" + ("label" if self.label_column else "caption") + "=COLUMN",
        )
        from datasets import Image as ImageFeature

        self.dataset = data.cast_column(self.image_column, ImageFeature(decode=False))

    def _record(self, row: dict, key: str) -> dict[str, Any]:
        image = row.get(self.image_column) or {}
        data = image.get("bytes") if isinstance(image, dict) else None
        path = image.get("path") if isinstance(image, dict) else None
        if data is None and path:
            try:
                with _open(path, "rb") as f:
                    data = f.read()
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                data = None
        if self.label_column:
            return {"image": data, "path": path or key, "label": row.get(self.label_column), "key": key}
        captions = row.get(self.caption_column)
        return {
            "image": data,
            "path": path or key,
            "captions": captions if isinstance(captions, list) else [captions],
            "key": key,
        }

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._record(self.dataset[int(index)], f"{self.name}:{index}")

    def class_names(self) -> list[str]:
        """The label column's class names (a ``ClassLabel`` feature), or ``[]``."""
        feature = (self.dataset.features or {}).get(self.label_column)
        return list(getattr(feature, "names", []) or [])

    def iterate(self, epoch: int, seed: int, process_index: int, process_count: int) -> Iterator[dict]:
        """This process's records of one epoch of a streaming dataset, shuffled with (seed, epoch)."""
        from datasets.distributed import split_dataset_by_node

        data = self.dataset.shuffle(seed=seed + epoch, buffer_size=10_000)
        data = split_dataset_by_node(data, rank=process_index, world_size=process_count)
        for i, row in enumerate(data):
            yield self._record(row, f"{self.name}:{epoch}:{i}")

    def units(
        self, epoch: int, seed: int, process_index: int, process_count: int
    ) -> list[Callable[[], Iterator[dict[str, Any]]]]:
        """One unit per epoch: this process's part of the stream, shuffled with ``(seed, epoch)``."""
        return [functools.partial(self.iterate, epoch, seed, process_index, process_count)]

    def one_pass(self, process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, Any]]:
        """One pass over this process's records (random access: every ``process_count``-th row)."""
        if self.streaming:
            return self.iterate(0, 0, process_index, process_count)
        return (self[i] for i in range(process_index, len(self), process_count))


def load_hf_dataset(name: str, split: str, streaming: bool = False) -> Any:
    """A Hugging Face dataset split: a ``save_to_disk`` directory, local data files or a hub id."""
    from clip_jax.extras import require

    datasets = require("datasets", "Hugging Face datasets (hf: sources)")
    saved = os.path.isdir(name) and any(
        os.path.exists(os.path.join(name, f)) for f in ("state.json", "dataset_dict.json")
    )
    if saved:
        data = datasets.load_from_disk(name)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise ValueError(
                    f"Dataset {name} has no split {split!r}; splits: {sorted(data)}. Set ?split=."
                )
            data = data[split]
        return data.to_iterable_dataset() if streaming else data
    return datasets.load_dataset(name, split=split, streaming=streaming)


def check_columns(data: Any, name: str, wanted: Sequence[str], how: str) -> None:
    """A :class:`ValueError` naming the missing columns, the dataset's columns and how to choose others."""
    columns = data.column_names or []
    missing = [c for c in wanted if columns and c not in columns]
    if missing:
        raise ValueError(
            f"Dataset {name} has no column(s) {missing}; columns: {columns}. Set them with {how.format(name=name)}."
        )


class ShapesSource:
    """The offline demo's synthetic scenes (:mod:`clip_jax.data.shapes`), one split, generated on first use
    into ``cache_dir``. Random access (records hold PNG bytes), and :meth:`arrays` for in-memory batching."""

    streaming = False

    def __init__(self, split: str = "train", spec: Any = None, cache_dir: str = "~/.cache/clip_jax"):
        from clip_jax.data.shapes import ShapesSpec, load_or_generate

        spec = spec if isinstance(spec, ShapesSpec) else ShapesSpec(**dict(spec or {}))
        data = load_or_generate(spec, cache_dir)
        if data.get(split) is None:
            raise ValueError(
                f"Unknown shapes split {split!r}; use shapes:train, shapes:val or shapes:heldout."
            )
        self.name, self.images, self.captions = (
            f"shapes:{split}",
            data[split]["images"],
            data[split]["captions"],
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.images[index]).save(buffer, "PNG")
        key = f"{self.name}:{index}"
        return {"image": buffer.getvalue(), "path": key, "captions": list(self.captions[index]), "key": key}

    def arrays(self) -> tuple[np.ndarray, list[list[str]]]:
        """All images (uint8 ``[N, H, W, 3]``) and their captions, for :class:`~clip_jax.data.memory.ArrayDataset`."""
        return self.images, [list(c) for c in self.captions]


@dataclass
class LabelledImages:
    """Labelled images for zero-shot classification: records ``{"image": bytes | uint8 array | None, "path",
    "label": int}`` (``"error": (reason, detail)`` for one that cannot be read), and the class names."""

    records: Iterable[dict[str, Any]]
    classes: list[str]


def one_pass(source: Any, process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, Any]]:
    """One pass over this process's part of an image–caption ``source``'s records, in source order."""
    if hasattr(source, "one_pass"):
        return source.one_pass(process_index, process_count)
    return (source[i] for i in range(process_index, len(source), process_count))


# ----------------------------------------------------------------------------- the registry and its parser

#: A reader: (the parsed spec, settings the spec does not carry: image_key, caption_key, teacher_column,
#: student_column, shapes, cache_dir, ...) -> a source; or ``"module:function"``, imported on first use.
Reader = Callable[["SourceSpec", dict[str, Any]], Any]
ROLES = {
    "captions": "image–caption examples",
    "labels": "labelled images",
    "pairs": "parallel sentences",
}


@dataclass(frozen=True)
class SourceKind:
    """One kind of source: its spec prefix, the ``?options`` it takes (``None``: everything after the prefix is a
    path), and a reader per role (``captions``, ``labels``, ``pairs``)."""

    prefix: str
    description: str
    readers: dict[str, Reader | str]
    options: tuple[str, ...] | None = None
    #: small data held in memory: its image–caption source has ``arrays()`` and trains without augmentation
    in_memory: bool = False


@dataclass(frozen=True)
class SourceSpec:
    """A parsed spec: ``kind:path?options``, with the spec as written (for messages)."""

    spec: str
    kind: str
    path: str
    options: dict[str, str]

    def option(self, name: str, default: str = "") -> str:
        return self.options.get(name, default)

    def flag(self, name: str) -> bool:
        return self.options.get(name, "0").lower() in ("1", "true", "yes")


SOURCES: dict[str, SourceKind] = {}


def register_source(kind: SourceKind) -> SourceKind:
    """Add (or replace) a source kind."""
    SOURCES[kind.prefix] = kind
    return kind


def _infer_kind(spec: str) -> str:
    if spec.endswith(".tar") or re.search(r"\.tar(\}|$)", spec) or ("{" in spec and ".tar" in spec):
        return "wds"
    if spec == "shapes":
        return "shapes"
    extension = spec.split("?", 1)[0].removesuffix(".gz").rsplit(".", 1)[-1].lower()
    if extension in LISTING_FORMATS:
        return extension
    raise ValueError(
        f"Cannot tell the format of {spec!r} — prefix it with jsonl:, json:, csv: or tsv: (a listing), or use "
        f"another kind of source: {', '.join(k + ':' for k in SOURCES)}."
    )


def split_spec(spec: str) -> SourceSpec:
    """The one spec parser: ``KIND:PATH?a=1&b=2`` (or a bare path, kind inferred) -> :class:`SourceSpec`.
    An option the kind does not take is an error listing the valid ones."""
    from urllib.parse import parse_qs

    spec = spec.strip()
    prefix, sep, rest = spec.partition(":")
    kind, rest = (prefix, rest) if sep and prefix in SOURCES else (_infer_kind(spec), spec)
    entry = SOURCES[kind]
    if kind == "shapes" and rest == "shapes":
        rest = ""
    if entry.options is None:
        return SourceSpec(spec, kind, rest, {})
    path, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} in {spec!r}; valid: {', '.join(entry.options)}.")
    return SourceSpec(spec, kind, path, options)


def kinds_for(role: str) -> list[str]:
    """The source kinds that can give ``role`` (``captions``, ``labels`` or ``pairs``)."""
    return [prefix for prefix, kind in SOURCES.items() if role in kind.readers]


def parse_source(spec: str, role: str = "captions", **settings: Any) -> Any:
    """The source a spec names, read for ``role`` (default: image–caption examples; see the module docstring).
    ``settings`` are what a spec does not carry (``image_key``/``caption_key`` of listings, ``shapes`` and
    ``cache_dir`` of the demo data, ``teacher_column``/``student_column`` of pairs); each reader takes those it
    needs."""
    if role not in ROLES:
        raise ValueError(f"Unknown source role {role!r}; one of {sorted(ROLES)}.")
    parsed = split_spec(spec)
    reader = SOURCES[parsed.kind].readers.get(role)
    if reader is None:
        raise ValueError(
            f"{spec!r}: {parsed.kind}: sources give no {ROLES[role]}; for those use "
            f"{', '.join(k + ':' for k in kinds_for(role))}."
        )
    if isinstance(reader, str):
        import importlib

        module, _, name = reader.partition(":")
        reader = getattr(importlib.import_module(module), name)
    return reader(parsed, {k: v for k, v in settings.items() if v is not None and v != ""})


def describe_sources() -> str:
    """One line per source kind: its prefix, what it is and the roles it serves."""
    return "\n".join(f"{k.prefix}: {k.description} ({', '.join(k.readers)})" for k in SOURCES.values())


def source_label(spec: str) -> str:
    """A short name for a data source in metric names: the file name of each source of a mixture, joined by '+'."""
    names = []
    for item, _ in parse_mixture(spec):
        path = item.split("?", 1)[0].rstrip("/")
        names.append(path.rsplit("/", 1)[-1].split(":", 1)[-1] or item)
    return re.sub(r"[^A-Za-z0-9_.\-+{}]", "_", "+".join(names))


def _listing(spec: SourceSpec, settings: dict[str, Any]) -> FileSource:
    return FileSource(
        spec.path,
        fmt=spec.kind,
        image_key=settings.get("image_key", ""),
        caption_key=settings.get("caption_key", ""),
    )


def _listing_pairs(spec: SourceSpec, settings: dict[str, Any]) -> list[dict[str, Any]]:
    rows, _ = read_listing(spec.path, spec.kind, "Parallel pairs file")
    return [r if isinstance(r, dict) else {"error": f"{r.reason} ({r.detail})"} for r in rows]


def _hf_captions(spec: SourceSpec, settings: dict[str, Any]) -> HFSource:
    return HFSource(
        spec.path,
        image_column=spec.option("image", "image"),
        caption_column=spec.option("caption", "caption"),
        split=spec.option("split", "train"),
        streaming=spec.flag("streaming"),
    )


def _hf_labels(spec: SourceSpec, settings: dict[str, Any]) -> LabelledImages:
    source = HFSource(
        spec.path,
        image_column=spec.option("image", "image"),
        label_column=spec.option("label", "label"),
        split=spec.option("split", "test"),
    )
    return LabelledImages(one_pass(source), source.class_names())


def _hf_pairs(spec: SourceSpec, settings: dict[str, Any]) -> list[dict[str, Any]]:
    teacher = spec.option("teacher", settings.get("teacher_column", "en"))
    student = spec.option("student", settings.get("student_column", "it"))
    data = load_hf_dataset(spec.path, spec.option("split", "train"))
    check_columns(data, spec.path, (teacher, student), "hf:{name}?teacher=COLUMN&student=COLUMN")
    return [{teacher: t, student: s} for t, s in zip(data[teacher], data[student])]


def _shapes(spec: SourceSpec, settings: dict[str, Any]) -> ShapesSource:
    return ShapesSource(
        spec.path or "train", settings.get("shapes"), settings.get("cache_dir", "~/.cache/clip_jax")
    )


def _shapes_pairs(spec: SourceSpec, settings: dict[str, Any]) -> list[dict[str, Any]]:
    from clip_jax.data.parallel import shapes_pairs
    from clip_jax.data.shapes import ShapesSpec

    shapes = settings.get("shapes")
    shapes = shapes if isinstance(shapes, ShapesSpec) else ShapesSpec(**dict(shapes or {}))
    teacher, student = settings.get("teacher_column", "en"), settings.get("student_column", "it")
    english, italian = shapes_pairs(shapes, spec.path or "train")
    return [{teacher: t, student: s} for t, s in zip(english, italian)]


_BENCHMARKS = "clip_jax.data.benchmarks:caption_benchmark"
for _kind in LISTING_FORMATS:
    register_source(
        SourceKind(
            _kind,
            f"a {_kind.upper()} listing of image paths and captions, or of parallel sentences",
            {"captions": _listing, "pairs": _listing_pairs},
        )
    )
register_source(
    SourceKind(
        "wds", "WebDataset tar shards (brace patterns)", {"captions": lambda s, _: WebDatasetSource(s.path)}
    )
)
register_source(
    SourceKind(
        "hf",
        "a Hugging Face dataset (hub id, save_to_disk directory or data files)",
        {"captions": _hf_captions, "labels": _hf_labels, "pairs": _hf_pairs},
        options=("image", "caption", "label", "teacher", "student", "split", "streaming"),
    )
)
register_source(
    SourceKind(
        "shapes",
        "the offline demo's synthetic scenes: shapes:train, shapes:val, shapes:heldout",
        {"captions": _shapes, "pairs": _shapes_pairs},
        in_memory=True,
    )
)
register_source(SourceKind("xm3600", "Crossmodal-3600", {"captions": _BENCHMARKS}, ("language", "captions")))
register_source(SourceKind("xtd10", "XTD10", {"captions": _BENCHMARKS}, ("language",)))
register_source(SourceKind("multi30k", "Multi30k task 1", {"captions": _BENCHMARKS}, ("language", "split")))
register_source(
    SourceKind(
        "imagefolder",
        "labelled images, one sub-folder per class",
        {"labels": "clip_jax.data.benchmarks:image_folder"},
    )
)
register_source(
    SourceKind(
        "tfds",
        "a TensorFlow Datasets data set, tfds:NAME[:SPLIT]",
        {"labels": "clip_jax.data.benchmarks:tfds_labelled"},
        ("data_dir", "image", "label"),
    )
)


def parse_mixture(specs: Sequence[str] | str) -> list[tuple[str, float]]:
    """``["wit.jsonl=0.5", "coco.jsonl=0.3", ...]`` or one comma-separated string -> (spec, weight) pairs."""
    if isinstance(specs, str):
        specs = [
            s for s in split_outside_braces(specs) if s.strip()
        ]  # "wds:{train,extra}-{0..9}.tar,x.jsonl"
    out = []
    for item in specs:
        item = item.strip()
        match = re.search(r"=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan))$", item, re.I)
        spec = item[: match.start()].strip() if match else item
        # `hf:x?split=1`: the number is an option's value, not a weight (a weight follows the last option)
        if match and "?" in spec and "=" not in re.split(r"[?&]", spec)[-1]:
            match, spec = None, item
        weight = float(match.group(1)) if match else 1.0
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(
                f"mixture weight {match.group(1)} of {spec} must be a number > 0 — fix it in data.train "
                f"(e.g. {spec}=0.5), or leave the source out"
            )
        out.append((spec, weight))
    return out
