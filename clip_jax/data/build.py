"""The data a training config describes: this process's training batches, the validation set, and the
one pass over the training examples that the feature cache needs — so the trainer knows no source kinds.

``data.source='shapes'`` reads the offline demo's synthetic scenes (``shapes:train`` / ``shapes:val``, in
memory: preprocessed once, no augmentation); ``data.source='files'`` reads ``data.train`` / ``data.val``, any
source spec or weighted mixture (:mod:`clip_jax.data.sources`), through the streaming pipeline.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from clip_jax.data.memory import ArrayDataset, BatchIterator
from clip_jax.data.pipeline import (
    BadDataMonitor,
    ExampleStream,
    ExampleTransform,
    TrainBatches,
    load_eval_examples,
    process_examples,
)
from clip_jax.data.preprocess import ImageProcessorConfig, preprocess_images
from clip_jax.data.sources import SOURCES, parse_mixture, parse_source, split_spec

Tokenize = Callable[[list[str]], dict]


@dataclasses.dataclass
class EvalSet:
    """Preprocessed validation images and all their captions."""

    pixels: np.ndarray
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.pixels)


def _processes() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def source_settings(config: Any) -> dict[str, Any]:
    """What a source spec does not carry, from ``config.data``: listing columns, the demo data's settings."""
    d = config.data
    return {
        "image_key": d.image_key,
        "caption_key": d.caption_key,
        "shapes": d.shapes.to_dict(),
        "cache_dir": d.cache_dir,
    }


def in_memory(spec: str) -> bool:
    """Whether ``spec`` is one source of a kind held in memory (batched from preprocessed arrays)."""
    mixture = parse_mixture(spec)
    return len(mixture) == 1 and SOURCES[split_spec(mixture[0][0]).kind].in_memory


def training_specs(config: Any) -> tuple[str, str]:
    """(training spec, validation spec or ``""``) of ``config.data``; an unknown ``data.source`` is an error."""
    d = config.data
    if d.source == "shapes":
        return "shapes:train", "shapes:val"
    if d.source == "files":
        if not d.train:
            raise ValueError(
                "data.source='files' needs data.train — set it, e.g. --config.data.train=jsonl:/data/train.jsonl"
            )
        return d.train, d.val
    raise ValueError(f"Unknown data.source {d.source!r}; choose 'shapes' (offline demo) or 'files'.")


def build_training_data(
    config: Any, image_processor: ImageProcessorConfig, tokenize: Tokenize
) -> tuple[BatchIterator | TrainBatches, EvalSet | None]:
    """This process's training batches and the validation set (or None), as ``config.data`` says.

    A source held in memory (one with ``arrays()``, such as the demo's) gives a :class:`BatchIterator` over
    images preprocessed once; any other a :class:`TrainBatches` over the streaming pipeline with augmentation
    and skip counting. Both have ``get_state``/``set_state``, ``skipped()`` and ``report_skipped(when)``."""
    d, batch = config.data, config.train.batch_size
    process_index, process_count = _processes()
    train_spec, val_spec = training_specs(config)
    settings = source_settings(config)
    if in_memory(train_spec):
        train = BatchIterator(
            ArrayDataset(*parse_source(train_spec, **settings).arrays()),
            batch,
            tokenize=tokenize,
            image_processor=image_processor,
            seed=config.train.seed,
            process_index=process_index,
            process_count=process_count,
        )
        if not val_spec:
            return train, None
        if in_memory(val_spec):
            images, captions = parse_source(val_spec, **settings).arrays()
            return train, EvalSet(preprocess_images(list(images), image_processor), captions)
        return train, _eval_set(config, val_spec, image_processor, settings)
    transform = ExampleTransform(
        image_processor, train=True, crop_scale=tuple(d.crop_scale), horizontal_flip=d.horizontal_flip
    )
    stream = ExampleStream(
        train_spec,
        transform,
        seed=config.train.seed,
        process_index=process_index,
        process_count=process_count,
        workers=d.workers,
        worker_processes=d.worker_processes,
        image_key=d.image_key,
        caption_key=d.caption_key,
        settings={k: v for k, v in settings.items() if k not in ("image_key", "caption_key")},
    )
    monitor = BadDataMonitor(stream.name, max_bad_fraction=d.max_bad_fraction)
    train = TrainBatches(stream, batch // process_count, tokenize, monitor)
    return train, (_eval_set(config, val_spec, image_processor, settings) if val_spec else None)


def _eval_set(config: Any, spec: str, image_processor: ImageProcessorConfig, settings: dict) -> EvalSet:
    d = config.data
    pixels, captions, _ = load_eval_examples(
        spec,
        image_processor,
        limit=d.val_limit or None,
        max_bad_fraction=d.max_bad_fraction,
        workers=d.workers,
        **settings,
    )
    return EvalSet(pixels, captions)


def cache_examples(
    config: Any, train_batches: Any, image_processor: ImageProcessorConfig, chunk: int
) -> Iterator[tuple[np.ndarray, list[list[str]]]]:
    """Chunks of ``chunk`` (eval-preprocessed pixels, all captions) of this process's training examples, one
    pass (what the feature cache embeds). In-memory data reuses the batches' preprocessed images."""
    if isinstance(train_batches, BatchIterator):
        yield from train_batches.examples(chunk)
        return
    process_index, process_count = _processes()
    d = config.data
    yield from process_examples(
        training_specs(config)[0],
        image_processor,
        process_index=process_index,
        process_count=process_count,
        chunk=chunk,
        workers=d.workers,
        **source_settings(config),
    )
