"""A small synthetic image–caption data set in Italian, generated offline: coloured shapes whose
captions say what is in the picture ("due cerchi rossi a sinistra"). Some colour–shape pairs are
held out of training, so zero-shot accuracy on them measures generalisation, not memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Scenes are described by Italian ids (colour, shape, count, position); each language says them its own way.
# noun: (singular, plural); colour: (RGB, masculine singular, masculine plural)
SHAPES = {
    "cerchio": ("cerchio", "cerchi"),
    "quadrato": ("quadrato", "quadrati"),
    "triangolo": ("triangolo", "triangoli"),
}
COLOURS = {
    "rosso": ((220, 30, 30), "rosso", "rossi"),
    "verde": ((30, 170, 40), "verde", "verdi"),
    "blu": ((30, 60, 220), "blu", "blu"),
    "giallo": ((235, 200, 20), "giallo", "gialli"),
}
COUNTS = {1: "un", 2: "due", 3: "tre"}
POSITIONS = {
    "a sinistra": (0.0, 0.0, 0.5, 1.0),
    "a destra": (0.5, 0.0, 1.0, 1.0),
    "in alto": (0.0, 0.0, 1.0, 0.5),
    "in basso": (0.0, 0.5, 1.0, 1.0),
}
LANGUAGES = ("it", "en")

#: English words for the same scenes.
SHAPES_EN = {
    "cerchio": ("circle", "circles"),
    "quadrato": ("square", "squares"),
    "triangolo": ("triangle", "triangles"),
}
COLOURS_EN = {"rosso": "red", "verde": "green", "blu": "blue", "giallo": "yellow"}
COUNTS_EN = {1: "one", 2: "two", 3: "three"}
POSITIONS_EN = {
    "a sinistra": "on the left",
    "a destra": "on the right",
    "in alto": "at the top",
    "in basso": "at the bottom",
}


def _italian(colour: str, shape: str, count: int, position: str) -> list[str]:
    noun = SHAPES[shape][0 if count == 1 else 1]
    adjective = COLOURS[colour][1 if count == 1 else 2]
    number = COUNTS[count]
    there = (
        f"{position} c'è un {noun} {adjective}"
        if count == 1
        else f"{position} ci sono {number} {noun} {adjective}"
    )
    return [
        f"{number} {noun} {adjective} {position}",
        there,
        f"una foto di {number} {noun} {adjective} {position}",
        f"{number} {noun} di colore {COLOURS[colour][1]} {position}",
    ]


def _english(colour: str, shape: str, count: int, position: str) -> list[str]:
    noun = SHAPES_EN[shape][0 if count == 1 else 1]
    number, adjective, where = COUNTS_EN[count], COLOURS_EN[colour], POSITIONS_EN[position]
    be = "is" if count == 1 else "are"
    return [
        f"{number} {adjective} {noun} {where}",
        f"{where} there {be} {number} {adjective} {noun}",
        f"a photo of {number} {adjective} {noun} {where}",
        f"{number} {noun} coloured {adjective} {where}",
    ]


def captions(colour: str, shape: str, count: int, position: str, language: str = "it") -> list[str]:
    """Every phrasing of a scene in ``language`` ('it' or 'en'); the first is the canonical caption."""
    if language == "it":
        return _italian(colour, shape, count, position)
    if language == "en":
        return _english(colour, shape, count, position)
    raise ValueError(f"Unknown caption language {language!r}; choose one of {LANGUAGES}.")


def caption(colour: str, shape: str, count: int, position: str, language: str = "it") -> str:
    """The canonical caption, e.g. ``due cerchi rossi a sinistra`` / ``two red circles on the left``."""
    return captions(colour, shape, count, position, language)[0]


def all_scenes() -> list[tuple[str, str, int, str]]:
    """Every (colour, shape, count, position) the generator can draw."""
    return [(c, s, n, p) for c in COLOURS for s in SHAPES for n in COUNTS for p in POSITIONS]


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
    num_train: int = 2048
    num_val: int = 256
    image_size: int = 64
    seed: int = 0
    #: colour:shape pairs never shown in training, comma-separated
    holdout: str = "rosso:triangolo,blu:cerchio"
    #: the captions' language: 'it' or 'en'
    language: str = "it"

    def holdout_pairs(self) -> set[tuple[str, str]]:
        pairs = {tuple(p.split(":")) for p in self.holdout.split(",") if p}
        for colour, shape in pairs:
            if colour not in COLOURS or shape not in SHAPES:
                raise ValueError(
                    f"Held-out pair {colour}:{shape} is not a colour:shape of {sorted(COLOURS)} x "
                    f"{sorted(SHAPES)}."
                )
        return pairs


def draw(
    colour: str, shape: str, count: int, position: str, size: int, rs: np.random.RandomState
) -> np.ndarray:
    """A ``size x size`` RGB uint8 picture of ``count`` shapes of one colour inside the named region."""
    background = tuple(int(v) for v in rs.randint(200, 256, 3))
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    x0, y0, x1, y1 = (v * size for v in POSITIONS[position])
    radius = size / 10
    rgb = np.clip(np.array(COLOURS[colour][0]) + rs.randint(-25, 26, 3), 0, 255)
    placed: list[tuple[float, float]] = []
    for _ in range(count):
        for _attempt in range(50):  # keep shapes apart so they can be counted
            cx, cy = rs.uniform(x0 + radius, x1 - radius), rs.uniform(y0 + radius, y1 - radius)
            if all((cx - px) ** 2 + (cy - py) ** 2 > (2.1 * radius) ** 2 for px, py in placed):
                break
        placed.append((cx, cy))
        r = radius * rs.uniform(0.8, 1.0)
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = tuple(int(v) for v in rgb)
        if shape == "cerchio":
            pen.ellipse(box, fill=fill)
        elif shape == "quadrato":
            pen.rectangle(box, fill=fill)
        else:
            pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return np.asarray(image)


def generate(spec: ShapesSpec) -> dict[str, object]:
    """Train, validation and held-out splits: uint8 images, every phrasing of their caption (the canonical
    one first) and attribute labels."""
    if spec.language not in LANGUAGES:
        raise ValueError(f"Unknown caption language {spec.language!r}; choose one of {LANGUAGES}.")
    rs = np.random.RandomState(spec.seed)
    holdout = spec.holdout_pairs()
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    seen = [p for p in combos if p not in holdout]

    def split(n: int, pairs: list[tuple[str, str]]):
        images, texts, labels = [], [], []
        for _ in range(n):
            colour, shape = pairs[rs.randint(len(pairs))]
            count = int(rs.randint(1, 4))
            position = list(POSITIONS)[rs.randint(len(POSITIONS))]
            images.append(draw(colour, shape, count, position, spec.image_size, rs))
            texts.append(captions(colour, shape, count, position, spec.language))
            labels.append({"colour": colour, "shape": shape, "count": count, "position": position})
        return {"images": np.stack(images), "captions": texts, "labels": labels}

    return {
        "train": split(spec.num_train, seen),
        "val": split(spec.num_val, seen),
        "heldout": split(max(spec.num_val, 64), sorted(holdout)) if holdout else None,
    }


def load_or_generate(spec: ShapesSpec, cache_dir: str | os.PathLike) -> dict[str, object]:
    """The data set from ``cache_dir`` (generated and written there on first use)."""
    key = hashlib.sha1(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir).expanduser() / f"shapes-{key}"
    if not (path / "done").exists():
        path.mkdir(parents=True, exist_ok=True)
        data = generate(spec)
        for name, split in data.items():
            if split is None:
                continue
            np.save(path / f"{name}_images.npy", split["images"])
            (path / f"{name}.json").write_text(
                json.dumps({"captions": split["captions"], "labels": split["labels"]})
            )
        (path / "done").write_text("ok")
    out = {}
    for name in ("train", "val", "heldout"):
        if (path / f"{name}.json").exists():
            meta = json.loads((path / f"{name}.json").read_text())
            out[name] = {"images": np.load(path / f"{name}_images.npy"), **meta}
    return out
