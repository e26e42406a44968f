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

from clip_jax import openclip_layout, siglip_layout

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


#: Text towers that transformers' ``AutoModel`` has no class for (only whole SigLIP models hold them).
NO_AUTOMODEL_TEXT_TOWERS = ("siglip_text_model", "siglip2_text_model")


def transformers_compatible(
    text_pooling: str, text_model_type: str, text_projection: str = "linear"
) -> tuple[bool, str]:
    """Whether ``VisionTextDualEncoderModel`` computes exactly our text embeddings, and why not."""
    if text_projection != "linear":
        return False, (
            f"clip_jax model, not loadable in transformers: its text projection is open_clip's {text_projection!r} "
            "head (Linear-GELU-Linear) and transformers' VisionTextDualEncoderModel has one linear text projection "
            "— load it with clip_jax (clip_jax.CLIPModel.from_pretrained), or export it in open_clip's layout "
            "(format='open_clip')"
        )
    if text_model_type in NO_AUTOMODEL_TEXT_TOWERS:
        return False, (
            f"clip_jax model, not loadable in transformers: its text tower is a {text_model_type}, which "
            "transformers' AutoModel cannot build on its own, so VisionTextDualEncoderModel cannot hold it — load "
            "it with clip_jax (clip_jax.CLIPModel.from_pretrained)"
        )
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

    resource = resources.files("clip_jax") / "resources" / f"cifar10_{language or 'en'}.json"
    if not resource.is_file():
        resource = resources.files("clip_jax") / "resources" / "cifar10_en.json"
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
            **{
                k: model[k]
                for k in ("projection_dim", "text_pooling", "text_projection", "max_length", "dtype")
                if k in model
            },
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
    format: str = "transformers",
) -> Any:
    """A ``huggingface_hub.ModelCard`` for an exported dual encoder.

    Metadata: languages, license, ``library_name``, ``pipeline_tag: zero-shot-image-classification``, tags,
    training data sets, ``base_model`` (the hub ids among ``base_models``) and a ``model-index`` from eval.py's
    result records. Body: what the model is, its results, usage with transformers (model and ``pipeline``
    with a prompt in ``language``) — or, for ``format='open_clip'`` (an export in open_clip's layout; ``config``
    is then the model's dual encoder config, :func:`dual_encoder_config`), with open_clip — and clip_jax, and the
    training recipe. Local paths are never written: ``repo_id`` names the model in the snippets (a placeholder
    without it). ``max_length``: the text length the model was trained with (the tokenizer's
    ``model_max_length``).
    """
    from huggingface_hub import ModelCard, ModelCardData

    openclip = format == "open_clip"
    compatible = config.get("model_type") == "vision-text-dual-encoder" and not openclip
    mlp = config.get("clip_jax", {}).get("text_projection", "linear") == "mlp"
    bases = hub_ids(base_models)
    name = model_name or (repo_id.split("/")[-1] if repo_id else f"clip-jax-{language or 'dual-encoder'}")
    evals = eval_results(results or [], language)
    data = ModelCardData(
        language=language,
        license=license,
        library_name="open_clip" if openclip else "transformers" if compatible else "clip_jax",
        pipeline_tag="zero-shot-image-classification",
        tags=[
            "clip",
            "open_clip" if openclip else "vision-text-dual-encoder",
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
        f"({text.get('hidden_size')}-d{', through open_clip’s MLP text head' if mlp else ''}), each projected to "
        f"{hub_projection_dim(config)} dimensions, trained contrastively with clip_jax (the projections first with "
        "frozen towers, then everything).",
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
    if openclip:
        spec = f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH"
        lines += [
            "In open_clip's layout: open_clip (PyTorch) loads it with no custom code"
            + ("" if repo_id else " (`PATH`: this directory)")
            + ":",
            "",
            "```python",
            "import open_clip",
            "import torch",
            "from PIL import Image",
            "",
            f'model, _, preprocess = open_clip.create_model_and_transforms("{spec}")',
            f'tokenizer = open_clip.get_tokenizer("{spec}")',
            'image = preprocess(Image.open("photo.jpg")).unsqueeze(0)',
            f"text = tokenizer({[template.format(label) for label in labels]!r})",
            "with torch.no_grad():",
            "    image_features = model.encode_image(image, normalize=True)",
            "    text_features = model.encode_text(text, normalize=True)",
            "    probs = (model.logit_scale.exp() * image_features @ text_features.T).softmax(dim=-1)",
            "```",
            "",
        ]
    elif compatible:
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
    elif config.get("clip_jax", {}).get("text_projection", "linear") != "linear":
        lines += [
            "This model's text projection is open_clip's MLP head, which transformers' "
            "VisionTextDualEncoderModel does not have; load it with clip_jax, or export it in open_clip's layout "
            "(`clip-jax export --format open_clip`) for open_clip.",
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


def write_model_card(
    directory: str | os.PathLike, *, config: Mapping[str, Any] | None = None, **card: Any
) -> Path:
    """Write ``README.md`` (:func:`model_card`) into an exported model directory, for ``config`` (default: the
    directory's ``config.json``); ``card`` takes :func:`model_card`'s other arguments."""
    directory = Path(directory)
    tokenizer_config = directory / "tokenizer_config.json"
    if "max_length" not in card and tokenizer_config.is_file():
        length = json.loads(tokenizer_config.read_text()).get("model_max_length")
        card["max_length"] = length if isinstance(length, int) and length < 1_000_000 else None
    path = directory / "README.md"
    if config is None:
        config = json.loads((directory / "config.json").read_text())
    model_card(config=config, **card).save(path)
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


# ---------------------------------------------------------------------------------- dual encoders in and out
def dual_encoder_builder(
    raw_config: dict[str, Any],
    *,
    dtype: Any = None,
    param_dtype: Any = np.float32,
    has_logit_bias: bool = False,
    source: str = "",
):
    """From a dual encoder's ``config.json``: a function building the (random) ``DualEncoder``, and each
    tower's (architecture, key prefix of its composite)."""
    from flax import nnx

    from clip_jax.models.dual_encoder import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, DualEncoder
    from clip_jax.models.registry import COMPOSITES, normalised_config, tower_builder, tower_config
    from clip_jax.weights.readers import CheckpointError

    if raw_config.get("model_type") == CLIP_JAX_MODEL_TYPE:  # our own format: the same layout
        raw_config = dict(
            raw_config, model_type="vision-text-dual-encoder", projection_dim=hub_projection_dim(raw_config)
        )
    if raw_config.get("model_type") not in COMPOSITES:
        raise CheckpointError(
            f"{source} holds a {raw_config.get('model_type')!r} model, not a dual encoder "
            f"({sorted(COMPOSITES)}). To pair two towers, use CLIPModel.from_towers(vision=..., text=...)."
        )
    hf = normalised_config(raw_config, source)
    extra = raw_config.get("clip_jax", {})
    (v_arch, v_cfg, v_outer), (t_arch, t_cfg, t_outer) = (
        tower_config(hf, k, source) for k in ("vision", "text")
    )
    bias = extra.get("logit_bias_init")
    if has_logit_bias and bias is None:
        bias = 0.0

    def build() -> DualEncoder:
        return DualEncoder(
            tower_builder(v_arch, v_cfg, dtype, param_dtype)(),
            tower_builder(t_arch, t_cfg, dtype, param_dtype)(),
            projection_dim=int(hf.get("projection_dim", 512)),
            text_pooling=extra.get("text_pooling", "pooler"),
            text_projection_kind=extra.get("text_projection", "linear"),
            logit_scale_init=float(hf.get("logit_scale_init_value", LOGIT_SCALE_INIT)),
            logit_bias_init=bias,
            logit_scale_max=extra.get("logit_scale_max", LOGIT_SCALE_MAX),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=nnx.Rngs(0),
        )

    return build, (v_arch, v_outer), (t_arch, t_outer)


def read_dual_encoder(
    directory: Path, *, dtype: Any = None, param_dtype: Any = np.float32
) -> tuple[Any, Any]:
    """A saved dual encoder's module with its weights (our format, transformers' ``vision-text-dual-encoder``,
    an OpenAI-style ``clip``, SigLIP or open_clip checkpoint), and the ``max_length`` it was saved with (None if
    none)."""
    from clip_jax.models.dual_encoder import dual_encoder_key_map
    from clip_jax.models.registry import detect_prefix
    from clip_jax.weights.params import load_params
    from clip_jax.weights.readers import read_config, read_state_dict

    if openclip_layout.is_openclip_dir(directory):  # open_clip's hub layout, renamed to the dual encoder's
        config, state_dict = openclip_layout.openclip_as_dual_encoder(directory)
    else:
        state_dict = read_state_dict(directory)
        config = read_config(directory)
    if siglip_layout.is_siglip_model(config):  # SiglipModel / Siglip2Model: identity projections
        config, state_dict = siglip_layout.siglip_as_dual_encoder(config, state_dict, str(directory))
    build, (v_arch, v_outer), (t_arch, t_outer) = dual_encoder_builder(
        config,
        dtype=dtype,
        param_dtype=param_dtype,
        has_logit_bias="logit_bias" in state_dict,
        source=str(directory),
    )
    v_prefix = detect_prefix(state_dict, v_arch, v_outer, source=str(directory))
    t_prefix = detect_prefix(state_dict, t_arch, t_outer, source=str(directory))
    key_map = dual_encoder_key_map(v_arch.key_map, t_arch.key_map, v_prefix, t_prefix)
    ignore = tuple(re.escape(v_prefix) + p for p in v_arch.ignore) + tuple(
        re.escape(t_prefix) + p for p in t_arch.ignore
    )
    module = load_params(
        build,
        state_dict,
        key_map,
        ignore=ignore,
        allow_missing=tuple(f"vision\\.{p}" for p in v_arch.allow_missing)
        + tuple(f"text\\.{p}" for p in t_arch.allow_missing),
        source=f"dual encoder from {directory}",
    )
    return module, config.get("clip_jax", {}).get("max_length")


def read_inputs(directory: Path) -> tuple[Any, Any]:
    """A saved dual encoder's tokenizer (None if it has none) and image processor config (None if none)."""
    from clip_jax.data.preprocess import ImageProcessorConfig
    from clip_jax.weights.tokenizers import load_tokenizer

    if openclip_layout.is_openclip_dir(directory):
        return openclip_layout.openclip_inputs(directory)
    return load_tokenizer(directory), ImageProcessorConfig.from_pretrained(directory)


def dual_encoder_config(module: Any, max_length: int | None) -> dict[str, Any]:
    """The ``config.json`` of a dual encoder in the hub format: transformers' ``vision-text-dual-encoder``
    where transformers reproduces the model, clip_jax's own ``model_type`` (saying why) where it cannot."""
    from clip_jax.models.dual_encoder import LOGIT_SCALE_INIT

    compatible, why = transformers_compatible(
        module.text_pooling, module.text.config.to_hf()["model_type"], module.text_projection_kind
    )
    config = {
        "model_type": "vision-text-dual-encoder" if compatible else CLIP_JAX_MODEL_TYPE,
        "architectures": ["VisionTextDualEncoderModel"] if compatible else ["CLIPModel (clip_jax)"],
        "vision_config": module.vision.config.to_hf(),
        "text_config": module.text.config.to_hf(),
        "projection_dim": module.projection_dim,
        "logit_scale_init_value": LOGIT_SCALE_INIT,
        "clip_jax": {
            "text_pooling": module.text_pooling,
            "text_projection": module.text_projection_kind,
            "max_length": max_length,
            "logit_bias_init": (float(module.logit_bias[...]) if module.logit_bias is not None else None),
            "logit_scale_max": module.logit_scale_max,
        },
    }
    if not compatible:  # transformers' strict config check then fails on projection_dim with `why`
        config["clip_jax"]["why_not_transformers"] = why
        config["clip_jax"]["projection_dim"] = module.projection_dim
        config["projection_dim"] = why
    return config


#: ``save_pretrained``'s / ``clip-jax export``'s formats.
EXPORT_FORMATS = ("transformers", "open_clip")


def save_openclip(
    directory: str | os.PathLike,
    module: Any,
    *,
    tokenizer: Any,
    image_processor: Any,
    max_length: int | None,
    hf_model_name: str | None = None,
    card: Mapping[str, Any] | None = None,
) -> Path:
    """open_clip's hub layout: ``open_clip_config.json``, ``open_clip_model.safetensors``, and beside them the
    Hugging Face text tower's ``config.json``, the tokenizer and ``preprocessor_config.json``, so that
    ``open_clip.create_model_and_transforms("local-dir:DIR")`` and ``CLIPModel.from_pretrained(DIR)`` load it;
    with ``card`` (:func:`model_card`'s arguments), the model card ``README.md`` with open_clip's usage.

    ``hf_model_name`` is written as ``text_cfg.hf_model_name``, where open_clip reads the text tower's
    architecture: by default this directory's absolute path (it holds that ``config.json``); give the hub id
    the directory will be pushed to (or the tower's own hub id) for a copy that works elsewhere."""
    import jax

    from clip_jax import workdir as workdirs
    from clip_jax.models.dual_encoder import dual_encoder_key_map
    from clip_jax.models.registry import architecture_of
    from clip_jax.weights.params import flat_params
    from clip_jax.weights.tokenizers import save_tokenizer

    directory = Path(directory)
    max_length = max_length or module.text.config.max_length
    key_map = dual_encoder_key_map(
        architecture_of(module.vision).key_map, architecture_of(module.text).key_map
    )
    tensors = key_map.export({p: np.asarray(jax.device_get(v)) for p, v in flat_params(module).items()})
    try:
        config, weights, text_config = openclip_layout.openclip_export(
            module,
            tensors,
            image_processor,
            max_length,
            hf_model_name or str(directory.expanduser().resolve()),
        )
    except openclip_layout.OpenClipExportError as error:
        raise ExportError(str(error)) from None
    workdirs.check_replaceable(directory)
    with workdirs.replace_directory(directory) as new:
        (new / openclip_layout.CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        _save_safetensors(weights, new / openclip_layout.SAFETENSORS_NAME)
        if text_config is not None:  # where open_clip (AutoConfig) reads the text tower's architecture
            (new / "config.json").write_text(json.dumps(text_config, indent=2) + "\n")
        if tokenizer is not None:
            save_tokenizer(tokenizer, new, max_length)
        if image_processor is not None:
            image_processor.save_pretrained(new)
        if card is not None:
            write_model_card(new, config=dual_encoder_config(module, max_length), format="open_clip", **card)
    return directory


def save_dual_encoder(
    directory: str | os.PathLike,
    module: Any,
    *,
    tokenizer: Any,
    image_processor: Any,
    max_length: int | None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    weights: bool = True,
    require_transformers: bool = False,
    card: Mapping[str, Any] | None = None,
    format: str = "transformers",
    hf_model_name: str | None = None,
) -> Path:
    """``CLIPModel.save_pretrained``: config.json, weights, tokenizer, preprocessor config (and the model
    card), replacing ``directory`` whole and at once. ``format='open_clip'``: open_clip's layout instead
    (:func:`save_openclip`)."""
    if format == "open_clip":
        return save_openclip(
            directory,
            module,
            tokenizer=tokenizer,
            image_processor=image_processor,
            max_length=max_length,
            hf_model_name=hf_model_name,
            card=card,
        )
    if format != "transformers":
        raise ValueError(f"Unknown export format {format!r} — choose one of {', '.join(EXPORT_FORMATS)}")
    import jax

    from clip_jax import workdir as workdirs
    from clip_jax.models.dual_encoder import dual_encoder_key_map
    from clip_jax.models.registry import architecture_of
    from clip_jax.weights.params import flat_params
    from clip_jax.weights.tokenizers import save_tokenizer

    siglip = siglip_layout.siglip_export(module, max_length)  # a SigLIP model goes back to SigLIP's layout
    config = siglip[0] if siglip else dual_encoder_config(module, max_length)
    if require_transformers and config["model_type"] == CLIP_JAX_MODEL_TYPE:
        raise ExportError(
            "Cannot export in transformers' format: " + config["clip_jax"]["why_not_transformers"]
        )
    directory = Path(directory)
    workdirs.check_replaceable(directory)
    with workdirs.replace_directory(directory) as new:  # the old directory stays until this one is complete
        (new / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if weights and siglip:
            write_weights(siglip[1], new, max_shard_size)
        elif weights:
            key_map = dual_encoder_key_map(
                architecture_of(module.vision).key_map, architecture_of(module.text).key_map
            )
            write_weights(
                key_map.export({p: np.asarray(jax.device_get(v)) for p, v in flat_params(module).items()}),
                new,
                max_shard_size,
            )
        if tokenizer is not None:
            save_tokenizer(tokenizer, new, max_length)
        image_processor.save_pretrained(new)
        if card is not None:
            write_model_card(new, **card)
    return directory
