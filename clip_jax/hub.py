"""The Hugging Face hub format: writing a dual encoder as a directory that transformers (PyTorch)
loads with no custom code, a model card, and pushing it to the hub.

Layout: ``config.json`` (``model_type: vision-text-dual-encoder``), ``model.safetensors`` (or shards
plus ``model.safetensors.index.json``) with PyTorch parameter names, tokenizer files and
``preprocessor_config.json``. ``VisionTextDualEncoderModel`` pools text with the tower's
``pooler_output``; a model trained with another pooling (mean, cls, eos) would silently compute
different text embeddings there (transformers 5 loads a foreign ``model_type`` with only a warning), so
such models are written with ``model_type: clip_jax_dual_encoder`` and, in place of the integer
``projection_dim``, the reason transformers cannot compute them (:func:`transformers_compatible`), so that
``VisionTextDualEncoderModel.from_pretrained`` fails with that message; clip_jax reads the real value from
the ``clip_jax`` section and loads it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
CLIP_JAX_MODEL_TYPE = "clip_jax_dual_encoder"
DEFAULT_MAX_SHARD_SIZE = "5GB"


class ExportError(ValueError):
    """A model that cannot be written in the requested format."""


def parse_size(size: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"20KB"`` or a byte count -> bytes (decimal units, as transformers)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?B)\s*", size.upper())
    if not match:
        raise ValueError(f"Cannot read size {size!r}; use e.g. '5GB', '500MB' or a number of bytes.")
    return int(
        float(match.group(1)) * 1000 ** " KMGT".index(match.group(2)[0] if len(match.group(2)) > 1 else " ")
    )


def transformers_compatible(text_pooling: str, text_model_type: str) -> tuple[bool, str]:
    """Whether ``VisionTextDualEncoderModel`` computes exactly our text embeddings, and why not."""
    if text_pooling == "pooler":
        return True, ""
    return False, (
        f"clip_jax model, not loadable in transformers: it pools text with {text_pooling!r} but "
        f"transformers' VisionTextDualEncoderModel uses the {text_model_type} tower's pooler_output, so "
        "transformers would compute different text embeddings — load it with clip_jax "
        "(clip_jax.CLIPModel.from_pretrained), or train with model.text_pooling='pooler' for a "
        "transformers-loadable export"
    )


def hub_projection_dim(config: Mapping[str, Any]) -> Any:
    """The projection size of a hub-format ``config.json``: ``clip_jax.projection_dim`` where the top-level
    field holds the reason transformers cannot load the model (see the module docstring)."""
    return config.get("clip_jax", {}).get("projection_dim", config.get("projection_dim"))


def write_weights(
    tensors: Mapping[str, np.ndarray], directory: Path, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE
) -> list[str]:
    """``model.safetensors``, or numbered shards and an index when larger than ``max_shard_size``."""
    limit = parse_size(max_shard_size)
    for stale in list(directory.glob("model*.safetensors")) + list(directory.glob(SAFETENSORS_INDEX)):
        stale.unlink()
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, array in tensors.items():
        if shards[-1] and size + array.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = array
        size += array.nbytes
    if len(shards) == 1:
        _save_safetensors(shards[0], directory / SAFETENSORS_NAME)
        return [SAFETENSORS_NAME]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        _save_safetensors(shard, directory / name)
        weight_map.update({key: name for key in shard})
    index = {
        "metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))},
        "weight_map": weight_map,
    }
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return names


def _save_safetensors(tensors: Mapping[str, np.ndarray], path: Path) -> None:
    """``safetensors.numpy.save_file``, whose I/O failures (a full disk...) become ``OSError``."""
    from safetensors.numpy import save_file

    try:
        save_file(dict(tensors), str(path), metadata={"format": "pt"})
    except Exception as error:  # safetensors raises its own SafetensorError, not OSError, for a failed write
        if isinstance(error, OSError):
            raise
        text = str(error)
        cause = next(
            (w for w in ("No space left on device", "File too large", "Permission denied") if w in text), None
        )
        raise OSError(
            f"could not write {path}: {cause or text.splitlines()[0] if text else type(error).__name__}"
        ) from error


#: Data source schemes (eval.py / training specs) whose rest is a path or a hub / TFDS name.
_SCHEMES = ("imagefolder", "hf", "tfds", "jsonl", "json", "csv", "tsv", "wds")
_SPLITS = ("train", "val", "valid", "validation", "dev", "test")
#: eval.py's tasks -> (model-index task type, task name).
_TASKS = {
    "zeroshot_classification": ("zero-shot-image-classification", "Zero-shot image classification"),
    "zeroshot_retrieval": ("image-text-retrieval", "Image-text retrieval"),
    "retrieval": ("image-text-retrieval", "Image-text retrieval"),
}
_METRIC = re.compile(r"(acc1|acc5|mean_per_class_recall|(image|text)_retrieval_(recall|mrr)@\d+)")


def _metric_name(key: str) -> str:
    fixed = {
        "acc1": "Top-1 accuracy",
        "acc5": "Top-5 accuracy",
        "mean_per_class_recall": "Mean per-class recall",
    }
    if key in fixed:
        return fixed[key]
    kind, rest = key.split("_retrieval_")
    metric, k = rest.split("@")
    direction = "text->image" if kind == "image" else "image->text"
    return f"{direction} {'Recall' if metric == 'recall' else 'MRR'}@{k}"


def hub_ids(names: Iterable[Any]) -> list[str]:
    """The names that are Hugging Face hub ids (``user/name`` or ``name``), not local paths or configs."""
    out = []
    for name in names:
        if (
            isinstance(name, str)
            and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)
            and not name.startswith(".")
            and not os.path.exists(name)
            and name not in out
        ):
            out.append(name)
    return out


def dataset_entry(spec: str) -> tuple[str, str | None]:
    """(data set id, split) for a model card from an eval.py data spec, without local paths:
    ``hf:NAME?split=test`` -> (NAME, test); ``tfds:NAME:SPLIT``; ``jsonl:/data/mscoco-it/val.jsonl`` ->
    (mscoco-it, val); ``imagefolder:/data/cifar10/test`` -> (cifar10, test); any other text is a name."""
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in _SCHEMES:
        return spec, None
    rest, _, query = rest.partition("?")
    params = dict(part.partition("=")[::2] for part in query.split("&") if part)
    if scheme == "hf":
        return rest, params.get("split")
    if scheme == "tfds":
        name, _, split = rest.partition(":")
        return name, split or "test"
    path = rest.rstrip("/")
    parts = [p for p in path.split("/") if p]
    stem = re.sub(r"\{[^}]*\}", "", parts[-1] if parts else path).split(".")[0].strip("-_") if path else ""
    parent = parts[-2] if len(parts) > 1 else ""
    if stem.lower() in _SPLITS or re.sub(r"[-_]?\d+$", "", stem.lower()) in _SPLITS:
        return parent or stem, re.sub(r"[-_]?\d+$", "", stem.lower())
    return stem or parent or scheme, None


def eval_results(results: Iterable[Mapping[str, Any]], language: str | None = None) -> list[Any]:
    """``huggingface_hub.EvalResult`` entries (the card's ``model-index``) from eval.py's result records:
    one per metric of CLIP_benchmark's vocabulary; counts (images, skipped, ...) and embedding maps left out."""
    from huggingface_hub import EvalResult

    out = []
    for record in results:
        if record.get("task") not in _TASKS:
            continue
        task_type, task_name = _TASKS[record["task"]]
        dataset, split = dataset_entry(str(record.get("dataset", "")))
        for key, value in sorted(record.get("metrics", {}).items()):
            if _METRIC.fullmatch(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append(
                    EvalResult(
                        task_type=task_type,
                        task_name=task_name,
                        dataset_type=dataset,
                        dataset_name=dataset,
                        dataset_split=split,
                        dataset_config=record.get("language") or language or None,
                        metric_type=key,
                        metric_name=_metric_name(key),
                        metric_value=float(value),
                    )
                )
    return out


def _examples(language: str | None) -> tuple[list[str], str]:
    """Two labels and a prompt in ``language`` for the usage snippets (CIFAR-10's cat and dog, first template)."""
    from importlib import resources

    resource = resources.files("clip_jax.evaluate") / "resources" / f"cifar10_{language or 'en'}.json"
    if not resource.is_file():
        resource = resources.files("clip_jax.evaluate") / "resources" / "cifar10_en.json"
    data = json.loads(resource.read_text())
    return [data["classnames"][3], data["classnames"][5]], data["templates"][0]


def training_recipe(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a clip_jax training config that describe the recipe: towers (hub ids only), heads,
    loss, optimizer and phases. Data paths, work and cache directories are left out."""
    model, train = config.get("model", {}), config.get("train", {})
    tower = lambda v: v if hub_ids([v]) else ("random init" if isinstance(v, Mapping) else "local checkpoint")
    recipe = {
        "model": {
            "vision": tower(model.get("vision")),
            "text": tower(model.get("text")),
            **{k: model[k] for k in ("projection_dim", "text_pooling", "max_length", "dtype") if k in model},
        },
        "loss": config.get("loss", {}).get("kind"),
        "train": {
            k: train[k]
            for k in (
                "batch_size",
                "optimizer",
                "b1",
                "b2",
                "eps",
                "weight_decay",
                "weight_decay_towards",
                "layer_decay",
                "grad_clip_norm",
                "agc_clip",
            )
            if k in train
        },
        "phases": {
            name: {
                k: v
                for k, v in config.get("phases", {}).get(name, {}).items()
                if k
                in (
                    "steps",
                    "trainable",
                    "learning_rates",
                    "weight_decay",
                    "warmup_steps",
                    "decay",
                    "cache_features",
                )
            }
            for name in train.get("phases", ())
        },
    }
    return recipe


def model_card(
    *,
    config: Mapping[str, Any],
    language: str | None = None,
    license: str = "apache-2.0",
    datasets: Iterable[str] = (),
    base_models: Iterable[str] = (),
    results: Iterable[Mapping[str, Any]] | None = None,
    training_config: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    max_length: int | None = None,
) -> Any:
    """A ``huggingface_hub.ModelCard`` for an exported dual encoder.

    Metadata: languages, license, ``library_name``, ``pipeline_tag: zero-shot-image-classification``, tags,
    training data sets, ``base_model`` (the hub ids among ``base_models``) and a ``model-index`` from eval.py's
    result records. Body: what the model is, its results, usage with transformers (model and ``pipeline``
    with a prompt in ``language``) and clip_jax, and the training recipe. Local paths are never written:
    ``repo_id`` names the model in the snippets (a placeholder without it). ``max_length``: the text length
    the model was trained with (the tokenizer's ``model_max_length``).
    """
    from huggingface_hub import ModelCard, ModelCardData

    compatible = config.get("model_type") == "vision-text-dual-encoder"
    bases = hub_ids(base_models)
    name = model_name or (repo_id.split("/")[-1] if repo_id else f"clip-jax-{language or 'dual-encoder'}")
    evals = eval_results(results or [], language)
    data = ModelCardData(
        language=language,
        license=license,
        library_name="transformers" if compatible else "clip_jax",
        pipeline_tag="zero-shot-image-classification",
        tags=[
            "clip",
            "vision-text-dual-encoder",
            "clip_jax",
            "zero-shot-image-classification",
            "image-retrieval",
        ],
        datasets=[d for d in (dataset_entry(d)[0] for d in datasets) if d] or None,
        base_model=bases or None,
        model_name=name if evals else None,
        eval_results=evals or None,
    )
    vision, text = config["vision_config"], config["text_config"]
    labels, template = _examples(language)
    ref = repo_id or "REPO_ID"
    lines = [
        f"# {name}",
        "",
        f"A CLIP-style dual encoder{f' for `{language}`' if language else ''}: a {vision.get('model_type')} "
        f"vision tower ({vision.get('hidden_size')}-d, patch {vision.get('patch_size')}, "
        f"{vision.get('image_size')} px) and a {text.get('model_type')} text tower "
        f"({text.get('hidden_size')}-d), each projected to {hub_projection_dim(config)} dimensions, trained "
        "contrastively with clip_jax (the projections first with frozen towers, then "
        "everything).",
        "",
    ]
    if bases:
        lines += [
            "Initialised from " + " and ".join(f"[`{b}`](https://huggingface.co/{b})" for b in bases) + ".",
            "",
        ]
    if evals:
        lines += [
            "## Evaluation",
            "",
            "| task | data set | split | language | metric | value |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {e.task_name} | {e.dataset_name} | {e.dataset_split or ''} | {e.dataset_config or ''} | "
            f"{e.metric_name} | {e.metric_value:.4f} |"
            for e in evals
        ]
        lines.append("")
    if not repo_id:
        lines += ["`REPO_ID` below: this model's hub id or local directory.", ""]
    lines += ["## Usage", ""]
    if compatible:
        lines += [
            "With transformers (PyTorch), no custom code:",
            "",
            "```python",
            "from PIL import Image",
            "from transformers import pipeline",
            "",
            f'classifier = pipeline("zero-shot-image-classification", model="{ref}")',
            f'classifier(Image.open("photo.jpg"), candidate_labels={labels!r},',
            f"           hypothesis_template={template!r})",
            "```",
            "",
            "or the model itself:",
            "",
            "```python",
            "import torch",
            "from PIL import Image",
            "from transformers import VisionTextDualEncoderModel, VisionTextDualEncoderProcessor",
            "",
            f'model = VisionTextDualEncoderModel.from_pretrained("{ref}")',
            f'processor = VisionTextDualEncoderProcessor.from_pretrained("{ref}")',
            f"inputs = processor(text={[template.format(label) for label in labels]!r},",
            '                   images=Image.open("photo.jpg"), return_tensors="pt", padding=True, '
            "truncation=True)",
            "with torch.no_grad():",
            "    probs = model(**inputs).logits_per_image.softmax(dim=-1)",
            "```",
            "",
            f"`truncation=True` cuts texts at {max_length or 'the tokenizer’s `model_max_length`'} tokens, as "
            "the model was trained; transformers' pipeline does not truncate, so keep its labels short.",
            "",
        ]
    else:
        lines += [
            f"This model pools text with `{config.get('clip_jax', {}).get('text_pooling')}`, which "
            "transformers' VisionTextDualEncoderModel does not reproduce; load it with clip_jax.",
            "",
        ]
    lines += [
        "With clip_jax (JAX):",
        "",
        "```python",
        "from PIL import Image",
        "from clip_jax import CLIPModel",
        "",
        f'model = CLIPModel.from_pretrained("{ref}")',
        f'result = model.classify(Image.open("photo.jpg"), {labels!r}, templates=[{template!r}])',
        "result.top_k[0]     # [(label, probability), ...], most probable first",
        f"embeddings = model.encode_text({labels!r})  # L2-normalised",
        "```",
        "",
    ]
    if training_config:
        lines += [
            "## Training recipe",
            "",
            "```json",
            json.dumps(training_recipe(training_config), indent=2, default=str),
            "```",
            "",
        ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def write_model_card(directory: str | os.PathLike, **card: Any) -> Path:
    """Write ``README.md`` (:func:`model_card`) into an exported model directory, reading its ``config.json``;
    ``card`` takes :func:`model_card`'s arguments but ``config``."""
    directory = Path(directory)
    tokenizer_config = directory / "tokenizer_config.json"
    if "max_length" not in card and tokenizer_config.is_file():
        length = json.loads(tokenizer_config.read_text()).get("model_max_length")
        card["max_length"] = length if isinstance(length, int) and length < 1_000_000 else None
    path = directory / "README.md"
    model_card(config=json.loads((directory / "config.json").read_text()), **card).save(path)
    return path


def push_to_hub(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload CLIP dual encoder (clip_jax)",
    token: str | None = None,
) -> str:
    """Create (if needed) ``repo_id`` and upload ``directory``; returns the commit URL.

    The token comes from ``token``, ``HF_TOKEN`` or the user's ``huggingface-cli login``; it is never
    printed or logged.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        folder_path=str(directory),
        repo_id=repo_id,
        repo_type="model",
        revision=revision,
        commit_message=commit_message,
    )
    return str(getattr(info, "commit_url", info))
