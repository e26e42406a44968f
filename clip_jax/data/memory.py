"""An in-memory image–caption data set and its deterministic, resumable, per-process batch iterator."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from clip_jax.data.preprocess import ImageProcessorConfig, preprocess_images


class DataPositionError(ValueError):
    """A data position saved by one number of processes cannot continue under another."""


class ArrayDataset:
    """Images (uint8 ``[N, H, W, 3]``) with one or more captions each."""

    def __init__(self, images: np.ndarray, captions: Sequence[Sequence[str]]):
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} caption lists.")
        if any(len(c) == 0 for c in captions):
            raise ValueError("Every image needs at least one caption.")
        self.images = images
        self.captions = [list(c) for c in captions]

    def __len__(self) -> int:
        return len(self.images)


class EpochBatches:
    """Global batches of ``batch_size`` of ``size`` rows, drawn without replacement and reshuffled each epoch with
    ``seed``; this process takes its ``batch_size / process_count`` rows of each. ``get_state``/``set_state``
    make the position resumable: a restored iterator yields exactly the batch the original would have.
    Subclasses turn the rows of :meth:`next_rows` into a batch; in-memory data skips nothing."""

    def __init__(
        self, size: int, batch_size: int, *, seed: int, process_index: int, process_count: int, noun: str
    ):
        if batch_size % process_count:
            raise ValueError(f"Batch size {batch_size} is not divisible by {process_count} processes.")
        if batch_size > size:
            raise ValueError(
                f"Batch size {batch_size} exceeds the {size} {noun} — lower train.batch_size or use more data"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.local = slice(
            process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count
        )
        self.process_index, self.process_count = process_index, process_count
        self.epoch, self.position = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.size // self.batch_size

    def epoch_generator(self) -> np.random.RandomState | np.random.Generator:
        """The random generator of the current epoch (its permutation first, then any per-epoch draws)."""
        return np.random.RandomState([self.seed, self.epoch])

    def next_rows(self) -> tuple[np.ndarray, np.random.RandomState | np.random.Generator]:
        """This process's rows of the next global batch, and the epoch's generator after the permutation
        (for further per-epoch draws)."""
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        rs = self.epoch_generator()
        order = rs.permutation(self.size)
        rows = order[self.position * self.batch_size : (self.position + 1) * self.batch_size][self.local]
        self.position += 1
        return rows, rs

    def skipped(self) -> dict[str, dict[str, int]]:
        """Skipped examples by source and reason: none (in-memory data is checked when built)."""
        return {}

    def report_skipped(self, when: str = "") -> None:
        """Log the skip counts (none here)."""

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    def carry_state(self, states: list[dict[str, int]]) -> dict[str, int]:
        """This process's state continuing where the processes that saved ``states`` (one each, in process order,
        any count) stopped: the position counts global batches and the order does not depend on the process
        count, so every process's state is the same and carries over exactly."""
        if any(s != states[0] for s in states):
            raise DataPositionError(f"the processes saved different positions ({states})")
        return dict(states[0])

    def __iter__(self) -> EpochBatches:
        return self


class BatchIterator(EpochBatches):
    """:class:`EpochBatches` of an :class:`ArrayDataset`, preprocessed once: each batch holds ``pixel_values``
    (float32, channels-last), ``input_ids``, ``attention_mask`` and ``index``; one caption is drawn at random
    per image per epoch."""

    def __init__(
        self,
        dataset: ArrayDataset,
        batch_size: int,
        *,
        tokenize: Callable[[list[str]], dict],
        image_processor: ImageProcessorConfig,
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        super().__init__(
            len(dataset),
            batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            noun="examples of the data set",
        )
        self.dataset, self.tokenize, self.image_processor = dataset, tokenize, image_processor
        self._pixels = preprocess_images(list(dataset.images), image_processor)

    def examples(self, chunk: int) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
        """One pass over this process's examples (every ``process_count``-th, in order) in chunks of
        ``chunk``: (preprocessed pixels, all captions) — what the feature cache embeds."""
        rows = np.arange(self.process_index, len(self.dataset), self.process_count)
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            yield self._pixels[part], [self.dataset.captions[i] for i in part]

    def __next__(self) -> dict[str, np.ndarray]:
        rows, rs = self.next_rows()
        choice = rs.randint(0, 1 << 30, len(self.dataset))
        texts = [self.dataset.captions[i][choice[i] % len(self.dataset.captions[i])] for i in rows]
        tokens = self.tokenize(texts)
        return {"pixel_values": self._pixels[rows], "index": rows.astype(np.int32), **tokens}
