"""Parallel sentences for text-only distillation: the same sentence in the teacher's language (English for
CLIP) and in the student's (the target language), and the resumable batch iterator over them.

A *pairs spec* is any source spec whose kind reads pairs (:mod:`clip_jax.data.sources`, the same parser as
images): ``jsonl:PATH``, ``json:PATH``, ``csv:PATH``, ``tsv:PATH`` or a bare path whose extension says which;
each row holds the two sentences in two columns (default ``en`` and ``it``:
``{"en": "two red circles", "it": "due cerchi rossi"}``); ``hf:NAME_OR_PATH?teacher=COL&student=COL&split=S``,
a Hugging Face dataset with the two sentences in two columns (the spec's columns, else the configured ones);
or ``shapes`` / ``shapes:heldout`` for the
offline demo's parallel captions of the synthetic scenes (every phrasing of every scene, paired phrasing
by phrasing; ``shapes`` the scenes of the training colour–shape pairs, ``shapes:heldout`` the held-out pairs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from clip_jax.data.memory import EpochBatches
from clip_jax.data.shapes import COLOURS, COUNTS, POSITIONS, SHAPES, ShapesSpec, captions
from clip_jax.data.sources import parse_source, split_spec


def shapes_pairs(spec: ShapesSpec, split: str = "train") -> tuple[list[str], list[str]]:
    """(English, Italian) phrasings of every scene of the training (``train``) or held-out (``heldout``)
    colour–shape pairs of ``spec``, paired phrasing by phrasing."""
    if split not in ("train", "heldout"):
        raise ValueError(f"Unknown shapes pairs split {split!r}; use 'shapes' (train) or 'shapes:heldout'.")
    holdout = spec.holdout_pairs()
    english, italian = [], []
    for colour in COLOURS:
        for shape in SHAPES:
            if ((colour, shape) in holdout) != (split == "heldout"):
                continue
            for count in COUNTS:
                for position in POSITIONS:
                    en, it = (
                        captions(colour, shape, count, position, "en"),
                        captions(colour, shape, count, position),
                    )
                    english += en
                    italian += it
    return english, italian


def read_pairs(
    spec: str,
    teacher_column: str = "en",
    student_column: str = "it",
    *,
    shapes: ShapesSpec | None = None,
) -> tuple[list[str], list[str]]:
    """(teacher-language sentences, student-language sentences) of a pairs spec (see the module docstring),
    read through the source registry (:func:`clip_jax.data.sources.parse_source` with ``role="pairs"``)."""
    rows = parse_source(
        spec, role="pairs", teacher_column=teacher_column, student_column=student_column, shapes=shapes
    )
    where = split_spec(spec).path or spec
    if not rows:
        raise ValueError(f"Parallel pairs {where} have no rows.")
    columns = next((r for r in rows if "error" not in r), rows[0])
    if hf := spec.startswith("hf:"):  # the spec may name the columns itself
        options = split_spec(spec).options
        teacher_column = options.get("teacher", teacher_column)
        student_column = options.get("student", student_column)
    missing = [c for c in (teacher_column, student_column) if c not in columns]
    if missing:
        raise ValueError(
            f"{where}: no column(s) {missing} (columns: {sorted(columns)}); set distill.teacher_column "
            "/ distill.student_column" + (" or ?teacher=COLUMN&student=COLUMN." if hf else ".")
        )
    bad = [
        i
        for i, r in enumerate(rows)
        if not all(isinstance(r.get(c), str) and r[c].strip() for c in (teacher_column, student_column))
    ]
    if bad:
        first = next((rows[i]["error"] for i in bad if "error" in rows[i]), "")
        raise ValueError(
            f"{where}: rows {bad[:5]}{' ...' if len(bad) > 5 else ''} lack a non-empty text in "
            f"{teacher_column!r} or {student_column!r}{f' (first unreadable line: {first})' if first else ''}."
        )
    return [r[teacher_column] for r in rows], [r[student_column] for r in rows]


class PairBatches(EpochBatches):
    """Global batches of (student sentence, teacher embedding) pairs drawn without replacement, reshuffled each
    epoch with ``seed``; this process yields its ``batch_size / process_count`` rows. Batches hold
    ``input_ids``, ``attention_mask`` (the student's tokens) and ``target`` (float32 ``[B, D]``).
    ``get_state``/``set_state`` make the position resumable (as :class:`clip_jax.data.memory.BatchIterator`)."""

    def __init__(
        self,
        texts: Sequence[str],
        targets: np.ndarray,
        batch_size: int,
        *,
        tokenize: Callable[[list[str]], dict],
        seed: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if len(texts) != len(targets):
            raise ValueError(f"{len(texts)} sentences but {len(targets)} teacher embeddings.")
        super().__init__(
            len(texts),
            batch_size,
            seed=seed,
            process_index=process_index,
            process_count=process_count,
            noun="sentence pairs",
        )
        self.texts, self.targets = list(texts), np.asarray(targets, np.float32)
        self.tokenize = tokenize

    def __next__(self) -> dict[str, np.ndarray]:
        rows, _ = self.next_rows()
        return {**self.tokenize([self.texts[i] for i in rows]), "target": self.targets[rows]}
