"""Zero-shot classification with prompt ensembles.

A class's embedding is the mean of the L2-normalised embeddings of every template filled with its
name, renormalised (OpenAI CLIP's prompt ensembling). Images are classified by scaled cosine.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

PLACEHOLDER = re.compile(r"\{c?\}")


def builtin() -> list[str]:
    """The built-in ``LANG:NAME`` specs: one ``resources/NAME_LANG.json`` each (provenance inside)."""
    files = (resources.files("clip_jax.evaluate") / "resources").iterdir()
    return sorted(
        ":".join(f.name[: -len(".json")].rsplit("_", 1)[::-1]) for f in files if f.name.endswith(".json")
    )


def load_resource(spec: str, kind: str) -> list[str]:
    """Class names or templates from ``LANG:NAME`` (built in: en/it x cifar10/cifar100/imagenet), a JSON file
    (``{"classnames": [...], "templates": [...]}``) or a text file (one per line)."""
    lang, sep, name = spec.partition(":")
    builtin_spec = bool(sep) and not os.path.exists(spec)
    if builtin_spec:
        resource = resources.files("clip_jax.evaluate") / "resources" / f"{name}_{lang}.json"
        if not resource.is_file():
            raise ValueError(
                f"No built-in {kind} {spec!r} — use one of {builtin()}, or pass a JSON/text file"
            )
        values = json.loads(resource.read_text())[kind]
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(
                f"{kind} file {spec} does not exist — check the path, or use a built-in: {builtin()}"
            )
        if path.suffix == ".json":
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(f"{spec} is not valid JSON ({error}) — fix the file") from None
            if not isinstance(data, dict) or kind not in data:
                raise ValueError(
                    f'{spec} has no {kind!r} list — write {{"{kind}": ["...", ...]}} (or a text file, '
                    "one per line)"
                )
            values = data[kind]
        else:
            values = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not isinstance(values, list) or not all(isinstance(v, str) and v.strip() for v in values):
        wrong = (
            type(values).__name__ if not isinstance(values, list) else "a list holding non-strings or blanks"
        )
        raise ValueError(f"{spec}: {kind} must be a list of non-empty strings, not {wrong} — fix the file")
    if kind == "templates":
        bad = [t for t in values if not PLACEHOLDER.search(t)]
        if bad:
            raise ValueError(
                f"Template(s) without a {{}} / {{c}} placeholder: {bad[:3]} — put {{}} where the class name goes"
            )
    if not values:
        raise ValueError(f"{spec} holds no {kind} — add at least one")
    if kind == "classnames" and not builtin_spec:  # built-in lists keep their sources' known duplicates
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(
                f"{spec} names {repeated[:5]} more than once — each class needs its own name (two classes "
                "with one name cannot be told apart)"
            )
    return list(values)


def fill(template: str, classname: str) -> str:
    return PLACEHOLDER.sub(lambda _: classname, template, count=1)


#: The built-in general-purpose prompt ensemble of each language: its ImageNet templates.
GENERAL_TEMPLATES = "imagenet"


def resolve_templates(templates: str | Sequence[str] | None = None, language: str | None = None) -> list[str]:
    """The prompts for a zero-shot classifier.

    ``templates``: prompts with ``{}`` (or ``{c}``) where the class name goes, one such prompt, or a spec
    for :func:`load_resource` (``it:cifar10``, a file). ``language``: the built-in general-purpose
    ensemble of that language (``LANG:imagenet``). Neither: ``["{}"]``, the class names as given.
    """
    if templates is not None and language is not None:
        raise ValueError("Give templates or language, not both: language only picks the built-in templates.")
    if language is not None:
        spec = f"{language}:{GENERAL_TEMPLATES}"
        if spec not in builtin():
            languages = sorted({s.split(":")[0] for s in builtin() if s.endswith(f":{GENERAL_TEMPLATES}")})
            raise ValueError(
                f"No built-in templates for language {language!r}; built in: {languages}. "
                "Pass your own: templates=['una foto di {}', ...]."
            )
        return load_resource(spec, "templates")
    if templates is None:
        return ["{}"]
    if isinstance(templates, str):
        return [templates] if PLACEHOLDER.search(templates) else load_resource(templates, "templates")
    templates = list(templates)
    bad = [t for t in templates if not isinstance(t, str) or not PLACEHOLDER.search(t)]
    if bad or not templates:
        raise ValueError(
            f"Templates must be strings with a {{}} where the class name goes; got {bad[:3] or 'none'}."
        )
    return templates


def model_fingerprint(model) -> str:
    """A digest of everything a text embedding depends on: every parameter (values, shapes, dtypes), the
    text pooling, ``max_length`` and the tokenizer's vocabulary. Two models with the same fingerprint embed
    every text identically; retraining or re-exporting to the same path changes it."""
    import jax
    from flax import nnx

    digest = hashlib.blake2b(digest_size=16)
    state = nnx.state(model.module, nnx.Param)
    for path, leaf in sorted(jax.tree_util.tree_flatten_with_path(state)[0], key=lambda kv: str(kv[0])):
        array = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(
        f"pooling={getattr(model.module, 'text_pooling', '')}|max_length={model.max_length}".encode()
    )
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
        digest.update(type(tokenizer).__name__.encode())
    return digest.hexdigest()


class ClassEmbeddingCache:
    """Class embeddings per (model, class names, templates), computed once, kept in memory and on disk.

    Keyed by :func:`model_fingerprint` (the parameters, tokenizer and ``max_length``), not by the model's name,
    so a workdir trained further or an export overwritten at the same path never reuses stale embeddings."""

    def __init__(self, directory: str | os.PathLike | None = None):
        self.directory = Path(directory).expanduser() if directory else None
        self.memory: dict[str, np.ndarray] = {}

    def get(self, model, model_id: str, classnames: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """The class embeddings of ``model``; ``model_id`` is only a label (the key is the model's fingerprint)."""
        del model_id
        key = hashlib.sha1(
            json.dumps([model_fingerprint(model), list(classnames), list(templates)]).encode()
        ).hexdigest()[:20]
        if key in self.memory:
            return self.memory[key]
        path = self.directory / f"classes-{key}.npy" if self.directory else None
        if path is not None and path.exists():
            value = np.load(path)
        else:
            value = class_embeddings(model, classnames, templates)
            if path is not None:  # atomically: a concurrent or killed eval never leaves half a file
                from clip_jax import workdir as workdirs

                buffer = io.BytesIO()
                np.save(buffer, value)
                workdirs.write_bytes(path, buffer.getvalue())
        self.memory[key] = value
        return value


def class_embeddings(model, classnames: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """``[classes, dim]``: per class, the renormalised mean of its normalised template embeddings."""
    return ensemble_embeddings(model, [[fill(t, c) for t in templates] for c in classnames])


def ensemble_embeddings(model, texts_per_class: Sequence[Sequence[str]]) -> np.ndarray:
    """``[classes, dim]``: per class, the renormalised mean of the normalised embeddings of its texts."""
    flat = [t for texts in texts_per_class for t in texts]
    embeds = model.encode_text(flat)
    out, start = [], 0
    for texts in texts_per_class:
        mean = embeds[start : start + len(texts)].mean(axis=0)
        out.append(mean / np.linalg.norm(mean))
        start += len(texts)
    return np.stack(out)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    """Top-1 and top-5 accuracy and mean per-class recall (classes with no example are left out).

    Top-5 accuracy is absent with 5 classes or fewer: every label is then in the top 5, so it would
    read 1.0 whatever the model (CLIP_benchmark leaves it out too)."""
    labels = np.asarray(labels)
    order = np.argsort(-logits, axis=1, kind="stable")
    top1 = order[:, 0] == labels
    present = [c for c in range(num_classes) if (labels == c).any()]
    recall = float(np.mean([top1[labels == c].mean() for c in present]))
    metrics = {"acc1": float(top1.mean())}
    if num_classes > 5:
        metrics["acc5"] = float((order[:, :5] == labels[:, None]).any(axis=1).mean())
    metrics["mean_per_class_recall"] = recall
    return metrics


def zero_shot(
    model,
    images: np.ndarray | Sequence,
    labels: Sequence[int],
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    cache: ClassEmbeddingCache | None = None,
    model_id: str = "",
    batch_size: int = 64,
) -> dict[str, float]:
    """Zero-shot metrics of ``model`` on images with integer labels into ``classnames``."""
    labels = np.asarray(labels)
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classnames)):
        raise ValueError(
            f"Labels go up to {labels.max()} but there are only {len(classnames)} class names; "
            "the class list does not match the data set."
        )
    classes = (cache or ClassEmbeddingCache()).get(model, model_id or str(id(model)), classnames, templates)
    image_embeds = model.encode_image(images, batch_size=batch_size)
    return classification_metrics(model.logit_scale * image_embeds @ classes.T, labels, len(classnames))
