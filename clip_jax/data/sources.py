"""Where image–caption examples come from.

A *source spec* is a string: ``jsonl:PATH``, ``json:PATH``, ``csv:PATH``, ``tsv:PATH`` (a listing of
image paths and captions), ``wds:PATTERN`` (WebDataset tar shards, brace ranges ``{000..099}`` and lists ``{train,val}``),
``hf:NAME_OR_PATH?image=COL&caption=COL&split=train&streaming=1`` (a Hugging Face dataset),
``xm3600:DIR?language=it``, ``xtd10:DIR?language=it``, ``multi30k:DIR?language=de&split=test`` (multilingual
benchmarks as distributed: :mod:`clip_jax.evaluate.datasets`), or a bare
path whose extension says which. Paths may be local or any fsspec URL (``gs://``, ``s3://``, ...).

Records are raw: ``{"image": bytes | None, "path": str, "captions": list, "key": str}``; decoding
and validation happen in :mod:`clip_jax.data.pipeline`, where bad examples are counted and skipped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

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

    def __post_init__(self):
        self.fmt = self.fmt or self.path.rsplit(".", 1)[-1].lower()
        if self.fmt not in ("jsonl", "json", "csv", "tsv"):
            raise ValueError(
                f"Cannot tell the format of {self.path}; prefix it with jsonl:, json:, csv: or tsv:."
            )
        try:
            with _open(self.path, "rb") as f:
                text = f.read().decode("utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"Data listing {self.path} does not exist.") from None
        lines: list[int] = []  # the line of each row (JSONL), for messages
        if self.fmt == "jsonl":
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                lines.append(number)
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    rows.append(_BadRow("malformed_line", f"{self.path}:{number}: {error.msg}"))
                    continue
                if not isinstance(rows[-1], dict):
                    rows[-1] = _BadRow(
                        "not_an_object",
                        f"{self.path}:{number}: a JSON {type(rows[-1]).__name__}, not an object",
                    )
        elif self.fmt == "json":
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"Data listing {self.path} is not valid JSON ({error}) — fix the file, or use a "
                    "JSONL listing (one object per line; bad lines are then skipped)."
                ) from None
            if isinstance(rows, dict):  # {"data": [...]} or {"images": [...]}
                rows = next((v for v in rows.values() if isinstance(v, list)), [])
            rows = [
                r
                if isinstance(r, dict)
                else _BadRow("not_an_object", f"{self.path}: entry {i}: a {type(r).__name__}, not an object")
                for i, r in enumerate(rows if isinstance(rows, list) else [])
            ]
        else:
            rows = list(csv.DictReader(io.StringIO(text), delimiter="\t" if self.fmt == "tsv" else ","))
        if not rows:
            raise ValueError(f"Data listing {self.path} has no records.")
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

    def __post_init__(self):
        self.shards = [s for p in self.pattern.split("::") for s in expand_braces(p)]
        if not self.shards:
            raise ValueError(f"No shards match {self.pattern}.")

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
    image column and a caption column (text or list of texts).

    Not streaming: random access (a grain source). Streaming: ``iterate(epoch, index, count)``.
    """

    name: str
    image_column: str = "image"
    caption_column: str = "caption"
    split: str = "train"
    streaming: bool = False
    dataset: Any = field(default=None, repr=False)

    def __post_init__(self):
        from clip_jax.extras import require

        datasets = require("datasets", "Hugging Face datasets (hf: sources)")
        local = os.path.isdir(self.name)
        if local and any(
            os.path.exists(os.path.join(self.name, f)) for f in ("state.json", "dataset_dict.json")
        ):
            data = datasets.load_from_disk(self.name)
            data = data[self.split] if isinstance(data, datasets.DatasetDict) else data
            if self.streaming:
                data = data.to_iterable_dataset()
        else:
            data = datasets.load_dataset(self.name, split=self.split, streaming=self.streaming)
        columns = data.column_names or []
        missing = [c for c in (self.image_column, self.caption_column) if columns and c not in columns]
        if missing:
            raise ValueError(
                f"Dataset {self.name} has no column(s) {missing}; columns: {columns}. Set them with "
                f"hf:{self.name}?image=COLUMN&caption=COLUMN."
            )
        self.dataset = data.cast_column(self.image_column, datasets.Image(decode=False))

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

    def iterate(self, epoch: int, seed: int, process_index: int, process_count: int) -> Iterator[dict]:
        """This process's records of one epoch of a streaming dataset, shuffled with (seed, epoch)."""
        from datasets.distributed import split_dataset_by_node

        data = self.dataset.shuffle(seed=seed + epoch, buffer_size=10_000)
        data = split_dataset_by_node(data, rank=process_index, world_size=process_count)
        for i, row in enumerate(data):
            yield self._record(row, f"{self.name}:{epoch}:{i}")


def _parse_hf(rest: str) -> HFSource:
    from urllib.parse import parse_qs

    name, _, query = rest.partition("?")
    options = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(options) - {"image", "caption", "split", "streaming"}
    if unknown:
        raise ValueError(
            f"Unknown option(s) {sorted(unknown)} in hf:{rest}; valid: image, caption, split, streaming."
        )
    return HFSource(
        name,
        image_column=options.get("image", "image"),
        caption_column=options.get("caption", "caption"),
        split=options.get("split", "train"),
        streaming=options.get("streaming", "0").lower() in ("1", "true", "yes"),
    )


def parse_source(spec: str, **keys: str) -> FileSource | WebDatasetSource | HFSource:
    """A source from its spec string (see the module docstring)."""
    prefix, sep, rest = spec.partition(":")
    if sep and prefix == "hf":
        return _parse_hf(rest)
    if sep and prefix in ("jsonl", "json", "csv", "tsv"):
        return FileSource(rest, fmt=prefix, **keys)
    if sep and prefix == "wds":
        return WebDatasetSource(rest)
    if sep and prefix in (
        "xm3600",
        "xtd10",
        "multi30k",
    ):  # multilingual benchmarks, read where eval sets live
        from clip_jax.evaluate.datasets import caption_benchmark

        return caption_benchmark(spec)
    if spec.endswith(".tar") or re.search(r"\.tar(\}|$)", spec) or ("{" in spec and ".tar" in spec):
        return WebDatasetSource(spec)
    return FileSource(spec, **keys)


def parse_mixture(specs: Sequence[str] | str) -> list[tuple[str, float]]:
    """``["wit.jsonl=0.5", "coco.jsonl=0.3", ...]`` or one comma-separated string -> (spec, weight) pairs."""
    if isinstance(specs, str):
        specs = [
            s for s in split_outside_braces(specs) if s.strip()
        ]  # "wds:{train,extra}-{0..9}.tar,x.jsonl"
    out = []
    for item in specs:
        spec, _, weight = (
            item.strip().rpartition("=") if re.search(r"=[\d.]+$", item.strip()) else (item, "", "1")
        )
        out.append((spec.strip(), float(weight)))
    return out
