"""The input pipeline: decode, validate, augment, tokenise and batch image–caption examples,
deterministically and resumably, each JAX process reading its own disjoint part.

Random-access sources (file listings, Hugging Face datasets) run through grain (``MapDataset``:
global shuffle per epoch, per-process slice, decoding in a thread pool and, with
``worker_processes``, in grain's worker processes). Streaming sources (WebDataset shards,
streaming datasets) decode in a thread pool or a pool of worker processes, shards split between
JAX processes. Bad examples (missing or corrupt image, empty or non-text caption, decompression
bomb) are skipped and counted by reason, never fatal alone; the counts are reported every
``report_every`` examples and at the end of every epoch of every source.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import hashlib
import io
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from clip_jax.data.memory import DataPositionError
from clip_jax.data.preprocess import ImageProcessorConfig, normalize, preprocess_image, to_rgb
from clip_jax.data.sources import one_pass, parse_mixture, parse_source, source_label

logger = logging.getLogger(__name__)


class BadExample(Exception):
    """An example that cannot be used; ``reason`` names why (for the counts)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class DataError(RuntimeError):
    """Too much of the data is bad, or none of it is usable."""


def check_pixel_count(image: Image.Image, path: str = "") -> None:
    """Raise :class:`BadExample` ``decompression_bomb`` if ``image`` (opened, not yet decoded) has more pixels
    than ``PIL.Image.MAX_IMAGE_PIXELS``. An explicit check, not PIL's warning turned into an error: warning
    filters are process-wide, so doing that in decoding threads let some bombs through."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        raise BadExample(
            "decompression_bomb",
            f"{path}: {width}x{height} = {width * height} pixels, more than "
            f"PIL.Image.MAX_IMAGE_PIXELS={limit}",
        )


def decode_image(data: bytes | None, path: str = "") -> Image.Image:
    """RGB image from encoded bytes: EXIF orientation applied, any mode (L, LA, P, RGBA, CMYK, 16-bit) to RGB."""
    if data is None:
        raise BadExample("missing_file", path)
    if len(data) == 0:
        raise BadExample("empty_file", path)
    try:
        # No warning filters are touched here: they are process-wide, so changing them in decoding threads
        # races with every other thread. The guard is the explicit size check after open(); PIL's own
        # warning for such images may show once, or be raised where warnings are errors (caught below).
        image = Image.open(io.BytesIO(data))
        check_pixel_count(image, path)  # from the header, before any pixel is decoded
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise BadExample("decompression_bomb", f"{path}: {error}") from None
    except (
        OSError,
        SyntaxError,
        ValueError,
    ) as error:  # PIL's errors for truncated / corrupt / unknown files
        raise BadExample("corrupt_image", f"{path}: {error}") from None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit greyscale: scale to 8 bits
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "CMYK":
        image = image.convert("RGB")
    return to_rgb(image)


def valid_captions(captions: Sequence[Any], key: str) -> list[str]:
    """The non-empty text captions; raises :class:`BadExample` if there are none."""
    if any(c is not None and not isinstance(c, str) for c in captions):
        raise BadExample("caption_not_text", key)
    good = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    if not good:
        raise BadExample("empty_caption", key)
    return good


def random_resized_crop(
    image: Image.Image,
    size: int | tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    rng: np.random.Generator,
) -> Image.Image:
    """A random crop of ``scale`` x area and ``ratio`` aspect, resized (bicubic) to ``size``: an int for a
    square, or ``(width, height)``; as torchvision's ``RandomResizedCrop``."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return image.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    side = min(width, height)  # fallback: central square
    left, top = (width - side) // 2, (height - side) // 2
    return image.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))


@dataclass
class ExampleTransform:
    """Raw record -> example: for training ``{"pixel_values", "caption"}`` (augmented, one random caption), for
    evaluation ``{"pixel_values", "captions"}`` (CLIP's eval preprocessing, every caption).

    Training augmentation is a random resized crop to ``crop_height x crop_width`` (and an optional flip);
    ``augment=False`` gives evaluation's pixels. Rescaling and normalisation are always
    :func:`~clip_jax.data.preprocess.normalize`'s, the ones :func:`~clip_jax.data.preprocess.preprocess_image`
    uses (``rescale_factor``, ``do_normalize``, mean, std)."""

    processor: ImageProcessorConfig
    train: bool
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: bool = False  # off by default: captions say "a sinistra"
    augment: bool = True

    def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        captions = valid_captions(record["captions"], record["key"])
        image = decode_image(record["image"], record["path"])
        if not self.train:
            return {"pixel_values": preprocess_image(image, self.processor), "captions": captions}
        if self.augment:
            size = (self.processor.crop_width, self.processor.crop_height)
            image = random_resized_crop(image, size, self.crop_scale, self.crop_ratio, rng)
            if self.horizontal_flip and rng.random() < 0.5:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            pixels = normalize(np.asarray(image), self.processor)
        else:
            pixels = preprocess_image(image, self.processor)
        return {"pixel_values": pixels, "caption": captions[int(rng.integers(len(captions)))]}


class BadDataMonitor:
    """Counts skipped examples by reason, in total and per source of a mixture; warns periodically; stops when
    too much is bad (the fraction is over all sources together)."""

    def __init__(
        self, source: str, max_bad_fraction: float = 0.1, report_every: int = 10000, min_seen: int = 100
    ):
        self.source, self.max_bad_fraction = source, max_bad_fraction
        self.report_every, self.min_seen = report_every, min_seen
        self.counts: collections.Counter = collections.Counter()
        self.by_source: dict[str, collections.Counter] = {}
        self.seen = 0
        self.first: list[str] = []

    def good(self) -> None:
        self.seen += 1
        self._maybe_report()

    def bad(self, error: BadExample, source: str = "") -> None:
        """Count one skipped example of ``source`` (a spec of the mixture; default: the monitor's source)."""
        self.seen += 1
        self.counts[error.reason] += 1
        self.by_source.setdefault(source or self.source, collections.Counter())[error.reason] += 1
        if len(self.first) < 5:
            self.first.append(str(error))
        bad = sum(self.counts.values())
        if self.seen >= self.min_seen and bad / self.seen > self.max_bad_fraction:
            raise DataError(
                f"{bad} of {self.seen} examples from {self.source} are bad ({dict(self.counts)}), more "
                f"than data.max_bad_fraction={self.max_bad_fraction}. First failures: {self.first}"
            )
        self._maybe_report()

    def _maybe_report(self) -> None:
        if self.counts and self.seen % self.report_every == 0:
            self.report()

    def report(self, when: str = "") -> None:
        """Log the skip counts so far (if any), ``when`` saying what prompted it (e.g. an epoch end)."""
        if self.counts:
            logger.warning(
                "%sSkipped %d of %d examples from %s so far: %s",
                f"{when}: " if when else "",
                sum(self.counts.values()),
                self.seen,
                self.source,
                dict(self.counts),
            )

    def skipped(self) -> dict[str, dict[str, int]]:
        """The skip counts so far, ``{source label: {reason: count}}`` (one entry per source of a mixture that
        skipped anything; labels from :func:`~clip_jax.data.sources.source_label`, as metric names use them)."""
        out: dict[str, collections.Counter] = {}
        for source, counts in self.by_source.items():
            if sum(counts.values()):
                out.setdefault(source_label(source), collections.Counter()).update(counts)
        return {label: dict(sorted(counts.items())) for label, counts in sorted(out.items())}

    def state(self) -> dict:
        by_source = {k: dict(v) for k, v in self.by_source.items()}
        return {"seen": self.seen, "counts": dict(self.counts), "by_source": by_source}

    def set_state(self, state: dict) -> None:
        self.seen, self.counts = int(state["seen"]), collections.Counter(state["counts"])
        by_source = state.get("by_source")  # absent in checkpoints written before per-source counts
        if by_source is None:
            by_source = {self.source: state["counts"]} if state["counts"] else {}
        self.by_source = {k: collections.Counter(v) for k, v in by_source.items()}


class _Named:
    """A random-access source whose records say which spec of the mixture they came from (``"source"``)."""

    def __init__(self, source: Any, name: str):
        self.source, self.name = source, name

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        return {**self.source[index], "source": self.name}


def _element_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


class _Failed:
    """A skipped example: why, and the spec of the source it came from (empty if unknown)."""

    def __init__(self, error: BadExample, source: str = ""):
        self.error, self.source = error, source


def _safe(transform: ExampleTransform, record: dict, rng: np.random.Generator):
    if record.get("error"):  # the source could not produce this example (e.g. a corrupt shard)
        return _Failed(BadExample(*record["error"]), record.get("source", ""))
    try:
        return transform(record, rng)
    except BadExample as error:
        return _Failed(error, record.get("source", ""))


class _Positioned:
    """A transformed example (or a :class:`_Failed`) with the epoch of the source it came from."""

    __slots__ = ("epoch", "value")

    def __init__(self, epoch: int, value: Any):
        self.epoch, self.value = epoch, value


def _transform_at(
    transform: ExampleTransform,
    seed: int,
    process_index: int,
    process_count: int,
    epoch_length: int,
    index: int,
    record: dict,
) -> _Positioned:
    """Transform the ``index``-th example of this process's share (picklable for worker processes)."""
    position = index * process_count + process_index
    return _Positioned(position // epoch_length, _safe(transform, record, _element_rng(seed, position)))


def _transform_streamed(transform: ExampleTransform, record: dict, rng: np.random.Generator) -> Any:
    return _safe(transform, record, rng)


class ExampleStream:
    """Transformed examples of this process's share of the mixture, in a deterministic order.

    ``workers`` threads decode; ``worker_processes`` > 0 adds that many worker processes (each with
    ``workers`` threads) so decoding is not bound by one interpreter. The order of examples does not
    depend on either. State: ``{"grain": ...}``, ``{"stream": ...}`` or ``{"mixed": ...}``;
    ``set_state`` resumes at the same example. :meth:`epoch_ends` lists the epochs of each source
    that ended since it was last called.
    """

    def __init__(
        self,
        specs: Sequence[str] | str,
        transform: ExampleTransform,
        *,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        workers: int = 4,
        worker_processes: int = 0,
        image_key: str = "",
        caption_key: str = "",
        settings: dict[str, Any] | None = None,
    ):
        import functools

        import grain

        if worker_processes < 0 or workers < 1:
            raise ValueError(
                f"data.workers must be >= 1 and data.worker_processes >= 0; got {workers} and "
                f"{worker_processes}."
            )
        self.transform, self.seed, self.workers = transform, seed, workers
        self.process_count = process_count
        self._epoch: int | None = None
        self._ended: list[tuple[str, int]] = []
        mixture = parse_mixture(specs)
        options = dict(settings or {}, image_key=image_key, caption_key=caption_key)
        sources = [(parse_source(spec, **options), weight) for spec, weight in mixture]
        self.name = ", ".join(spec for spec, _ in mixture)
        streaming = [s for s, _ in sources if getattr(s, "streaming", False)]
        if streaming and len(sources) > 1:  # weighted interleaving of one stream per source
            streams = [
                ExampleStream(
                    spec,
                    transform,
                    seed=seed + i,
                    process_index=process_index,
                    process_count=process_count,
                    workers=workers,
                    worker_processes=worker_processes,
                    image_key=image_key,
                    caption_key=caption_key,
                    settings=settings,
                )
                for i, (spec, _) in enumerate(mixture)
            ]
            self._wds, self._iter = _MixedStream(streams, [w for _, w in mixture], seed), None
            return
        if streaming:
            self._wds = _SequentialStream(
                sources[0][0],
                transform,
                seed,
                process_index,
                process_count,
                workers,
                worker_processes,
                name=self.name,
            )
            self._iter = None
            return
        self._wds = None
        datasets = [
            grain.MapDataset.source(_Named(s, spec)).shuffle(seed=seed + i).repeat(None)
            for i, ((s, _), (spec, _)) in enumerate(zip(sources, mixture))
        ]
        mixed = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(datasets, [w for _, w in sources])
        mine = mixed[process_index::process_count]
        epoch_length = max(1, sum(len(s) for s, _ in sources))  # one pass over every source's examples
        mapped = mine.map_with_index(
            functools.partial(_transform_at, transform, seed, process_index, process_count, epoch_length)
        )
        dataset = mapped.to_iter_dataset(
            grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(2 * workers, 8))
        )
        if worker_processes:
            from absl import flags

            if (
                not flags.FLAGS.is_parsed()
            ):  # grain reads its absl flags; outside an absl app use their defaults
                flags.FLAGS.mark_as_parsed()
            dataset = dataset.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=worker_processes, per_worker_buffer_size=max(2 * workers, 8)
                )
            )
        self._iter = iter(dataset)

    def __iter__(self):
        return self

    def __next__(self) -> Any:
        if self._wds is not None:
            return next(self._wds)
        item = next(self._iter)
        if self._epoch is not None and item.epoch > self._epoch:
            self._ended.append((self.name, self._epoch))
        self._epoch = item.epoch
        return item.value

    def epoch_ends(self) -> list[tuple[str, int]]:
        """``(source, epoch)`` for every epoch that ended since the last call (epochs count from 0)."""
        if self._wds is not None:
            return self._wds.epoch_ends()
        ended, self._ended = self._ended, []
        return ended

    def close(self) -> None:
        """Stop worker threads and processes."""
        if self._wds is not None:
            self._wds.close()
        elif hasattr(self._iter, "close"):
            self._iter.close()

    def get_state(self) -> dict:
        return self._wds.get_state() if self._wds is not None else {"grain": self._iter.get_state()}

    def set_state(self, state: dict) -> None:
        if self._wds is not None:
            self._wds.set_state(state)
        else:
            self._iter.set_state(state["grain"])


class _MixedStream:
    """Interleaves several example streams, drawing the source of each example with probability
    proportional to its weight from a generator seeded by (seed, draw number): deterministic, resumable."""

    def __init__(self, streams: list, weights: Sequence[float], seed: int):
        total = float(sum(weights))
        if total <= 0 or any(w < 0 for w in weights):
            raise ValueError(f"Mixture weights must be non-negative and not all zero; got {list(weights)}.")
        self.streams, self.probabilities, self.seed, self.draws = (
            streams,
            np.asarray(weights) / total,
            seed,
            0,
        )

    def __next__(self) -> Any:
        choice = np.random.default_rng([self.seed, 7919, self.draws]).choice(
            len(self.streams), p=self.probabilities
        )
        self.draws += 1
        return next(self.streams[choice])

    def get_state(self) -> dict:
        return {"mixed": {"draws": self.draws, "streams": [s.get_state() for s in self.streams]}}

    def set_state(self, state: dict) -> None:
        self.draws = int(state["mixed"]["draws"])
        for stream, sub in zip(self.streams, state["mixed"]["streams"]):
            stream.set_state(sub)

    def epoch_ends(self) -> list[tuple[str, int]]:
        return [end for stream in self.streams for end in stream.epoch_ends()]

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


class _SequentialStream:
    """Streams a non-random-access source epoch after epoch in the *units* it gives (``source.units``;
    WebDataset: this process's shards, reshuffled per epoch; streaming HF datasets: one unit per epoch),
    decoding in a thread pool or in worker processes; resumable by (epoch, unit, example)."""

    def __init__(
        self,
        source: Any,
        transform: ExampleTransform,
        seed: int,
        process_index: int,
        process_count: int,
        workers: int,
        worker_processes: int = 0,
        name: str = "",
    ):
        source.units(0, seed, process_index, process_count)  # a source that cannot be split says so now
        self.source, self.transform, self.seed = source, transform, seed
        self.process_index, self.process_count = process_index, process_count
        self.name = name or type(source).__name__
        if worker_processes:  # spawned, not forked: the parent has JAX's threads running
            import multiprocessing

            self.workers = worker_processes
            self.pool = futures.ProcessPoolExecutor(
                worker_processes, mp_context=multiprocessing.get_context("spawn")
            )
        else:
            self.workers = max(1, workers)
            self.pool = futures.ThreadPoolExecutor(self.workers)
        self._ended: list[tuple[str, int]] = []
        self.epoch, self.unit, self.example = 0, 0, 0
        self._consumed = (0, 0, 0)
        self._buffer: collections.deque = collections.deque()
        self._reader: Iterator | None = None

    def _units(self) -> list[Callable[[], Iterator[dict]]]:
        return self.source.units(self.epoch, self.seed, self.process_index, self.process_count)

    def _records(self) -> Iterator[tuple[tuple[int, int, int], dict]]:
        while True:
            units = self._units()
            while self.unit < len(units):
                for i, record in enumerate(units[self.unit]()):
                    if i >= self.example:
                        yield (self.epoch, self.unit, i), record
                self.unit, self.example = self.unit + 1, 0
            self.epoch, self.unit = self.epoch + 1, 0

    def __next__(self) -> Any:
        if self._reader is None:
            self._reader = self._records()
        while len(self._buffer) < 2 * self.workers:
            position, record = next(self._reader)
            rng = np.random.default_rng([self.seed, *position, self.process_index])
            self._buffer.append(
                (position, self.pool.submit(_transform_streamed, self.transform, record, rng))
            )
        (epoch, unit, i), future = self._buffer.popleft()
        if epoch > self._consumed[0]:
            self._ended.append((self.name, self._consumed[0]))
        self._consumed = (epoch, unit, i + 1)
        result = future.result()
        if isinstance(result, _Failed) and not result.source:
            result.source = self.name
        return result

    def epoch_ends(self) -> list[tuple[str, int]]:
        ended, self._ended = self._ended, []
        return ended

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def get_state(self) -> dict:
        epoch, unit, example = self._consumed
        return {"stream": {"epoch": epoch, "unit": unit, "example": example}}

    def set_state(self, state: dict) -> None:
        s = state["stream"]
        self.epoch, self.unit, self.example = s["epoch"], s["unit"], s["example"]
        self._consumed = (self.epoch, self.unit, self.example)
        self._buffer.clear()
        self._reader = None


class TrainBatches:
    """Per-process training batches: skipped examples are replaced by the next good ones.

    Yields ``pixel_values`` float32 ``[b, S, S, 3]``, ``input_ids``, ``attention_mask``.
    """

    def __init__(
        self,
        stream: ExampleStream,
        local_batch: int,
        tokenize: Callable[[list[str]], dict],
        monitor: BadDataMonitor,
    ):
        self.stream, self.local_batch, self.tokenize, self.monitor = stream, local_batch, tokenize, monitor

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        pixels, captions = [], []
        while len(pixels) < self.local_batch:
            example = next(self.stream)
            for source, epoch in self.stream.epoch_ends():
                self.monitor.report(f"End of epoch {epoch} of {source}")
            if isinstance(example, _Failed):
                self.monitor.bad(example.error, example.source)
                continue
            self.monitor.good()
            pixels.append(example["pixel_values"])
            captions.append(example["caption"])
        return {"pixel_values": np.stack(pixels), **self.tokenize(captions)}

    def skipped(self) -> dict[str, dict[str, int]]:
        """This process's skipped examples so far, ``{source label: {reason: count}}``, per source of a
        mixture (see :meth:`BadDataMonitor.skipped`)."""
        return self.monitor.skipped()

    def report_skipped(self, when: str = "") -> None:
        """Log the skip counts so far, ``when`` saying what prompted it (e.g. the end of the run)."""
        self.monitor.report(when)

    def get_state(self) -> dict:
        return {"stream": self.stream.get_state(), "bad": self.monitor.state()}

    def set_state(self, state: dict) -> None:
        self.stream.set_state(state["stream"])
        self.monitor.set_state(state["bad"])

    def carry_state(self, states: list[dict]) -> dict:
        """This process's state continuing where the processes that saved ``states`` (one each, in process order)
        stopped, under this iterator's process count; :class:`DataPositionError` says why it cannot.

        Random-access sources read a global order (the same for any process count), process ``i`` of ``n`` its
        every ``n``-th example: while no process has skipped an example, all have read the same number, so the
        first ``n * next_index`` examples are read and any process count continues exactly. A skipped example is
        replaced by the process's next one, so positions then differ per process; streamed sources (WebDataset,
        streaming datasets) split their shards per process, and worker processes keep per-worker positions."""
        if any(sum(s["bad"]["counts"].values()) for s in states):
            skipped = [sum(s["bad"]["counts"].values()) for s in states]
            raise DataPositionError(
                f"the processes had skipped {skipped} bad examples, and each replaces its skipped examples with "
                "its own next ones, so their positions are their own"
            )
        streams = [s["stream"] for s in states]
        if not all(set(s) == {"grain"} and set(s["grain"]) == {"next_index"} for s in streams):
            kind = (
                "worker processes (data.worker_processes)" if "grain" in streams[0] else "a streamed source"
            )
            raise DataPositionError(f"{kind} keep{'s' if kind[0] == 'a' else ''} a position per process")
        read = {s["grain"]["next_index"] for s in streams}
        if len(read) != 1:
            raise DataPositionError(f"the processes had read different numbers of examples ({sorted(read)})")
        total = read.pop() * len(states)
        count = self.stream.process_count
        if total % count:
            raise DataPositionError(f"the {total} examples read do not divide among {count} processes")
        return {
            "stream": {"grain": {"next_index": total // count}},
            "bad": {"seen": total // count, "counts": {}},
        }

    def close(self) -> None:
        self.stream.close()


def image_identity(record: dict) -> tuple[str, bytes] | None:
    """What makes two records the same image: the same path and the same bytes (``None`` for a record
    without image bytes). An open_clip-style listing has one row per caption, so an image repeats."""
    data = record.get("image")
    if not isinstance(data, bytes | bytearray):
        return None
    return str(record.get("path", "")), hashlib.sha1(data).digest()


def _eval_examples(
    records: Iterator[dict], processor: ImageProcessorConfig, workers: int, counts: collections.Counter
) -> Iterator[tuple[np.ndarray, list[str], tuple[str, bytes] | None]]:
    """``(pixels, captions, image identity)`` of the usable records in order (eval preprocessing), decoded
    ``workers`` at a time with at most ``4 * workers`` in flight (memory stays bounded on any data size);
    skips counted."""
    transform = ExampleTransform(processor, train=False)
    window = 4 * max(1, workers)
    with futures.ThreadPoolExecutor(max(1, workers)) as pool:
        pending: collections.deque = collections.deque()
        records = iter(records)
        while True:
            for record in records:
                pending.append((image_identity(record), pool.submit(_safe, transform, record, None)))
                if len(pending) >= window:
                    break
            if not pending:
                return
            identity, future = pending.popleft()
            result = future.result()
            if isinstance(result, _Failed):
                counts[result.error.reason] += 1
                continue
            yield result["pixel_values"], result["captions"], identity


def process_examples(
    specs: Sequence[str] | str,
    processor: ImageProcessorConfig,
    *,
    process_index: int = 0,
    process_count: int = 1,
    chunk: int = 64,
    workers: int = 4,
    **settings: Any,
) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
    """One pass over this process's part of every source of a mixture (weights ignored), with eval
    preprocessing and every caption: chunks of ``(pixels, captions)``. Bad examples are skipped and
    counted (a warning at the end); none usable is a :class:`DataError`."""
    counts: collections.Counter = collections.Counter()
    total = 0
    for spec, _ in parse_mixture(specs):
        records = one_pass(parse_source(spec, **settings), process_index, process_count)
        pixels, captions = [], []
        for image, caps, _ in _eval_examples(records, processor, workers, counts):
            pixels.append(image)
            captions.append(caps)
            if len(pixels) == chunk:
                total += chunk
                yield np.stack(pixels), captions
                pixels, captions = [], []
        if pixels:
            total += len(pixels)
            yield np.stack(pixels), captions
    if counts:
        logger.warning("Skipped %d examples of %s: %s", sum(counts.values()), specs, dict(counts))
    if not total:
        raise DataError(
            f"No usable example in this process's part of {specs} (skipped: {dict(counts)}) — check the image paths "
            "and the image/caption keys (data.image_key, data.caption_key)"
        )


def check_bad_fraction(spec: str, skipped: dict, used: int, max_bad_fraction: float | None) -> None:
    """Raise :class:`DataError` if the skipped examples are more than ``max_bad_fraction`` of those seen
    (metrics computed on what is left would not describe the data set). ``None``: no limit."""
    bad = sum(skipped.values())
    seen = bad + used
    if max_bad_fraction is not None and seen and bad / seen > max_bad_fraction:
        raise DataError(
            f"{bad} of {seen} examples of {spec} could not be used ({dict(skipped)}), more than the "
            f"allowed fraction {max_bad_fraction} — fix the data (or its image/caption keys), or raise "
            "the limit (eval: --max_bad_fraction; training: data.max_bad_fraction)"
        )


def load_eval_examples(
    spec: str,
    processor: ImageProcessorConfig,
    *,
    limit: int | None = None,
    workers: int = 4,
    max_bad_fraction: float | None = None,
    **settings: Any,
) -> tuple[np.ndarray, list[list[str]], dict]:
    """All usable examples of a source in order (eval preprocessing, every caption): pixels, captions, skip
    counts. More skipped than ``max_bad_fraction`` of the rows seen is a :class:`DataError`.

    Rows naming the same image (same path, same bytes: an open_clip-style listing has one row per caption)
    are one example with the captions of all its rows, where the image first appears: retrieval ranks
    images, so a repeated image must not count as several (a per-caption CSV gives the numbers of the
    JSONL listing with a ``captions`` list). ``limit`` counts images; rows of images beyond it are not
    decoded, but captions of the first ``limit`` images are gathered from every row."""
    pixels: list[np.ndarray] = []
    captions: list[list[str]] = []
    counts: collections.Counter = collections.Counter()
    where: dict[tuple[str, bytes], int] = {}  # image identity -> its example
    rows = 0
    records = one_pass(parse_source(spec, **settings))
    if limit:  # once full, only rows of images already taken are worth decoding
        records = (r for r in records if len(pixels) < limit or image_identity(r) in where)
    for image, caps, identity in _eval_examples(records, processor, workers, counts):
        if identity is not None and identity in where:
            captions[where[identity]].extend(caps)
        elif limit and len(pixels) >= limit:
            continue
        else:
            if identity is not None:
                where[identity] = len(pixels)
            pixels.append(image)
            captions.append(list(caps))
        rows += 1
    if not pixels:
        raise DataError(
            f"No usable example in {spec} (skipped: {dict(counts)}) — check the image paths and the image/caption keys"
        )
    check_bad_fraction(spec, counts, rows, max_bad_fraction)
    if counts:
        logger.warning("Skipped %d examples of %s: %s", sum(counts.values()), spec, dict(counts))
    return np.stack(pixels), captions, dict(counts)
