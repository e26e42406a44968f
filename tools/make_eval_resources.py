"""Write the built-in ImageNet-1k zero-shot resources (clip_jax/resources/imagenet_{en,it}.json)
from CLIP_benchmark's released wheel, so the lists are copied, never retyped:

    pip download clip-benchmark==1.6.2 --no-deps -d /tmp/cb
    pip download open-clip-torch==3.3.0 --no-deps -d /tmp/oc      # optional: a second copy of the English lists
    python tools/make_eval_resources.py /tmp/cb/clip_benchmark-1.6.2-py2.py3-none-any.whl \\
        --open_clip_wheel /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl

The wheels are read as zip files (nothing is installed). The lists are checked (1000 class names, OpenAI's 80
English templates, one placeholder per template), written verbatim except that CLIP_benchmark's ``{c}``
placeholder becomes ``{}`` (what OpenAI's and CLIP-Italian's originals use), and each file records where it
came from: package, version, the wheel's sha256, the file inside it, the licence and its notice.
"""

from __future__ import annotations

import argparse
import ast
import collections
import hashlib
import json
import re
import zipfile
from email.parser import Parser
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "clip_jax" / "resources"
DATA = "clip_benchmark/datasets"
KEY = "imagenet1k"

OPENAI_NOTEBOOK = "https://github.com/openai/CLIP/blob/main/notebooks/Prompt_Engineering_for_ImageNet.ipynb"
OPENAI_NOTICE = "Copyright (c) 2021 OpenAI (MIT License, https://github.com/openai/CLIP/blob/main/LICENSE)"
CLIP_ITALIAN = "https://github.com/clip-italian/clip-italian/tree/master/evaluation"

# Duplicates that are in the upstream lists themselves (kept: the lists stay comparable with published numbers).
EN_DUPLICATES = {"missile", "sunglasses"}  # OpenAI's notebook: 'missile' (657, 744), 'sunglasses' (836, 837)


def wheel_info(wheel: zipfile.ZipFile, path: Path) -> dict:
    dist_info = next(n.split("/")[0] for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info"))
    meta = Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
    licence = next(
        (n for n in wheel.namelist() if n.startswith(f"{dist_info}/") and "LICENSE" in n.upper()), None
    )
    return {
        "package": meta["Name"],
        "version": meta["Version"],
        "wheel": path.name,
        "wheel_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "license_file": licence,
        "license_text": wheel.read(licence).decode().strip() if licence else None,
    }


def read_json(wheel: zipfile.ZipFile, name: str) -> list[str]:
    return json.loads(wheel.read(f"{DATA}/{name}"))[KEY]


def braces(templates: list[str], source: str) -> list[str]:
    """``{c}`` -> ``{}``, after checking each template has exactly one placeholder and no other braces."""
    out = []
    for t in templates:
        if t.count("{c}") != 1 or re.sub(r"\{c\}", "", t).count("{") or "}" in re.sub(r"\{c\}", "", t):
            raise ValueError(f"{source}: template {t!r} needs exactly one {{c}} placeholder.")
        out.append(t.replace("{c}", "{}"))
    return out


def duplicates(values: list[str]) -> dict[str, list[int]]:
    counts = collections.Counter(values)
    return {v: [i for i, x in enumerate(values) if x == v] for v in sorted(counts) if counts[v] > 1}


def check_classnames(names: list[str], source: str) -> None:
    if len(names) != 1000 or not all(isinstance(n, str) and n.strip() == n and n for n in names):
        raise ValueError(f"{source}: expected 1000 non-empty, stripped class names, got {len(names)}.")


def open_clip_lists(path: Path) -> tuple[list[str], list[str]]:
    """IMAGENET_CLASSNAMES and OPENAI_IMAGENET_TEMPLATES (lambdas of f-strings, read with ``ast``, not run)."""
    with zipfile.ZipFile(path) as wheel:
        tree = ast.parse(wheel.read("open_clip/zero_shot_metadata.py").decode())
    values = {node.targets[0].id: node.value for node in tree.body if isinstance(node, ast.Assign)}
    names = list(ast.literal_eval(values["IMAGENET_CLASSNAMES"]))
    templates = []
    for fn in values["OPENAI_IMAGENET_TEMPLATES"].elts:
        parts = [p.value if isinstance(p, ast.Constant) else "{}" for p in fn.body.values]
        templates.append("".join(parts))
    return names, templates


def notice(info: dict) -> str:
    return f"{info['package']} {info['version']} ({info['license_file']}):\n{info['license_text']}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("clip_benchmark_wheel", type=Path)
    parser.add_argument(
        "--open_clip_wheel", type=Path, help="cross-check the English lists against open_clip's copy"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    with zipfile.ZipFile(args.clip_benchmark_wheel) as wheel:
        info = wheel_info(wheel, args.clip_benchmark_wheel)
        en_names, it_names = read_json(wheel, "en_classnames.json"), read_json(wheel, "it_classnames.json")
        en_templates = braces(read_json(wheel, "en_zeroshot_classification_templates.json"), "en templates")
        it_templates = braces(read_json(wheel, "it_zeroshot_classification_templates.json"), "it templates")
    if (info["package"].lower().replace("_", "-"), info["license_text"] is not None) != (
        "clip-benchmark",
        True,
    ):
        raise ValueError(f"{args.clip_benchmark_wheel} is not a clip-benchmark wheel with a licence file.")
    check_classnames(en_names, "en_classnames.json")
    check_classnames(it_names, "it_classnames.json")
    if set(duplicates(en_names)) != EN_DUPLICATES:
        raise ValueError(f"English class names: duplicates {duplicates(en_names)}, expected {EN_DUPLICATES}.")
    if len(en_templates) != 80 or len(set(en_templates)) != 80:
        raise ValueError(f"Expected OpenAI's 80 distinct ImageNet templates, got {len(en_templates)}.")
    cross_check = None
    if args.open_clip_wheel:
        oc_names, oc_templates = open_clip_lists(args.open_clip_wheel)
        if oc_names != en_names or oc_templates != en_templates:
            raise ValueError(
                "open_clip's IMAGENET_CLASSNAMES / OPENAI_IMAGENET_TEMPLATES differ from clip_benchmark's."
            )
        with zipfile.ZipFile(args.open_clip_wheel) as wheel:
            oc = wheel_info(wheel, args.open_clip_wheel)
        cross_check = (
            "identical to IMAGENET_CLASSNAMES and OPENAI_IMAGENET_TEMPLATES in "
            f"open_clip/zero_shot_metadata.py of {oc['package']} {oc['version']} "
            f"({oc['wheel']}, sha256 {oc['wheel_sha256']})"
        )

    source = {k: info[k] for k in ("package", "version", "wheel", "wheel_sha256")}
    license_ = "MIT (clip_benchmark); copyright notices below."
    en = {
        "dataset": "imagenet",
        "language": "en",
        "provenance": {
            **source,
            "files": {
                "classnames": f"{DATA}/en_classnames.json [{KEY!r}]",
                "templates": f"{DATA}/en_zeroshot_classification_templates.json [{KEY!r}]",
            },
            "upstream": (
                "OpenAI CLIP's ImageNet class names (edited ImageNet labels) and its 80 prompt templates, "
                f"from {OPENAI_NOTEBOOK} (its cell prints '1000 classes, 80 templates')."
            ),
            **({"cross_check": cross_check} if cross_check else {}),
            "changes": "none, except that the {c} placeholder is written {} as in OpenAI's notebook.",
            "duplicates": {
                "classnames": duplicates(en_names),
                "note": "as in OpenAI's list; such classes get identical text embeddings.",
            },
            "license": license_,
            "license_notice": [notice(info), OPENAI_NOTICE],
            "generated_by": "tools/make_eval_resources.py",
        },
        "classnames": en_names,
        "templates": en_templates,
    }
    it = {
        "dataset": "imagenet",
        "language": "it",
        "provenance": {
            **source,
            "files": {
                "classnames": f"{DATA}/it_classnames.json [{KEY!r}]",
                "templates": f"{DATA}/it_zeroshot_classification_templates.json [{KEY!r}]",
            },
            "upstream": (
                "clip_benchmark does not say where its Italian lists come from. They match CLIP-Italian's "
                f"evaluation files ({CLIP_ITALIAN}): the class names are the query_short_translated column of "
                "imagenet_labels_IT.tsv (WordNet's first synonym with an article, machine-translated with "
                "DeepL per CLIP-Italian's README, no manual editing), the templates are "
                "italian_templates_IT.txt (49 lines, an Italian adaptation of part of OpenAI's 80, with "
                "masculine/feminine variants). "
                "Checked by hand on the 49 templates and on about 130 class names at the start and the end."
            ),
            "changes": "none, except that the {c} placeholder is written {} as in CLIP-Italian's file.",
            "duplicates": {
                "classnames": duplicates(it_names),
                "templates": duplicates(it_templates),
                "note": (
                    "as in the source: different ImageNet classes translated to the same Italian "
                    "words get identical text embeddings (and the first index wins a tie); repeated "
                    "templates weigh twice in the ensemble. Kept, so that numbers match "
                    "CLIP-Italian's and CLIP_benchmark's Italian ImageNet setup."
                ),
            },
            "quality": (
                "machine translations of the raw WordNet names, not of OpenAI's edited names: some are wrong "
                "(e.g. 'kite' -> 'un aquilone', the toy; 'tick' -> 'un segno di spunta'), some untranslated "
                "('a agama'). Class order is the same as the English list (the standard ImageNet-1k order)."
            ),
            "license": license_,
            "license_notice": [notice(info)],
            "generated_by": "tools/make_eval_resources.py",
        },
        "classnames": it_names,
        "templates": it_templates,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for data in (en, it):
        path = args.out / f"imagenet_{data['language']}.json"
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {path}: {len(data['classnames'])} class names, {len(data['templates'])} templates")


if __name__ == "__main__":
    main()
