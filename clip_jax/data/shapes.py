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

# noun: (singular, plural); colour: (masculine singular, masculine plural)
SHAPES = {"cerchio": ("cerchio", "cerchi"), "quadrato": ("quadrato", "quadrati"),
          "triangolo": ("triangolo", "triangoli")}
COLOURS = {"rosso": ((220, 30, 30), "rosso", "rossi"), "verde": ((30, 170, 40), "verde", "verdi"),
           "blu": ((30, 60, 220), "blu", "blu"), "giallo": ((235, 200, 20), "giallo", "gialli")}
COUNTS = {1: "un", 2: "due", 3: "tre"}
POSITIONS = {"a sinistra": (0.0, 0.0, 0.5, 1.0), "a destra": (0.5, 0.0, 1.0, 1.0),
             "in alto": (0.0, 0.0, 1.0, 0.5), "in basso": (0.0, 0.5, 1.0, 1.0)}


@dataclasses.dataclass(frozen=True)
class ShapesSpec:
    num_train: int = 2048
    num_val: int = 256
    image_size: int = 64
    seed: int = 0
    #: colour:shape pairs never shown in training, comma-separated
    holdout: str = "rosso:triangolo,blu:cerchio"

    def holdout_pairs(self) -> set[tuple[str, str]]:
        pairs = {tuple(p.split(":")) for p in self.holdout.split(",") if p}
        for colour, shape in pairs:
            if colour not in COLOURS or shape not in SHAPES:
                raise ValueError(f"Held-out pair {colour}:{shape} is not a colour:shape of {sorted(COLOURS)} x "
                                 f"{sorted(SHAPES)}.")
        return pairs


def caption(colour: str, shape: str, count: int, position: str) -> str:
    """The Italian caption, e.g. ``due cerchi rossi a sinistra``."""
    noun = SHAPES[shape][0 if count == 1 else 1]
    adjective = COLOURS[colour][1 if count == 1 else 2]
    return f"{COUNTS[count]} {noun} {adjective} {position}"


def draw(colour: str, shape: str, count: int, position: str, size: int, rs: np.random.RandomState) -> np.ndarray:
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
    """Train, validation and held-out splits: uint8 images, captions and attribute labels."""
    rs = np.random.RandomState(spec.seed)
    holdout = spec.holdout_pairs()
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    seen = [p for p in combos if p not in holdout]

    def split(n: int, pairs: list[tuple[str, str]]):
        images, captions, labels = [], [], []
        for _ in range(n):
            colour, shape = pairs[rs.randint(len(pairs))]
            count = int(rs.randint(1, 4))
            position = list(POSITIONS)[rs.randint(len(POSITIONS))]
            images.append(draw(colour, shape, count, position, spec.image_size, rs))
            captions.append([caption(colour, shape, count, position)])
            labels.append({"colour": colour, "shape": shape, "count": count, "position": position})
        return {"images": np.stack(images), "captions": captions, "labels": labels}

    return {"train": split(spec.num_train, seen), "val": split(spec.num_val, seen),
            "heldout": split(max(spec.num_val, 64), sorted(holdout)) if holdout else None}


def vocabulary() -> list[str]:
    """Every word the captions use (for building a demo tokenizer)."""
    words = set(COUNTS.values()) | {w for forms in SHAPES.values() for w in forms}
    words |= {w for _, sg, pl in COLOURS.values() for w in (sg, pl)}
    words |= {w for p in POSITIONS for w in p.split()}
    words |= {"una", "foto", "di", "immagine", "con", "forme", "colore", "forma"}
    return sorted(words)


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
            (path / f"{name}.json").write_text(json.dumps({"captions": split["captions"], "labels": split["labels"]}))
        (path / "done").write_text("ok")
    out = {}
    for name in ("train", "val", "heldout"):
        if (path / f"{name}.json").exists():
            meta = json.loads((path / f"{name}.json").read_text())
            out[name] = {"images": np.load(path / f"{name}_images.npy"), **meta}
    return out
