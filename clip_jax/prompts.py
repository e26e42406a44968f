"""Zero-shot class prompts: the built-in class names and templates, and prompt ensembling.

A class's embedding is the mean of the L2-normalised embeddings of every template filled with its name,
renormalised (OpenAI CLIP's prompt ensembling). Used by :meth:`clip_jax.CLIPModel.classify` and by
``clip-jax eval --task zeroshot`` alike.
"""

from __future__ import annotations

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
    files = (resources.files("clip_jax") / "resources").iterdir()
    return sorted(
        ":".join(f.name[: -len(".json")].rsplit("_", 1)[::-1]) for f in files if f.name.endswith(".json")
    )


def load_resource(spec: str, kind: str) -> list[str]:
    """Class names or templates from ``LANG:NAME`` (built in: en/it x cifar10/cifar100/imagenet), a JSON file
    (``{"classnames": [...], "templates": [...]}``) or a text file (one per line)."""
    lang, sep, name = spec.partition(":")
    builtin_spec = bool(sep) and not os.path.exists(spec)
    if builtin_spec:
        resource = resources.files("clip_jax") / "resources" / f"{name}_{lang}.json"
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
