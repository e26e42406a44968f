"""The Hugging Face hub format: writing a dual encoder as a directory that transformers (PyTorch)
loads with no custom code, a model card, and pushing it to the hub.

Layout: ``config.json`` (``model_type: vision-text-dual-encoder``), ``model.safetensors`` (or shards
plus ``model.safetensors.index.json``) with PyTorch parameter names, tokenizer files and
``preprocessor_config.json``. ``VisionTextDualEncoderModel`` pools text with the tower's
``pooler_output``; a model trained with another pooling (mean, cls, eos) would silently compute
different text embeddings there, so such models are written with ``model_type: clip_jax_dual_encoder``,
which transformers refuses to load, and clip_jax loads.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

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
    return int(float(match.group(1)) * 1000 ** " KMGT".index(match.group(2)[0] if len(match.group(2)) > 1 else " "))


def transformers_compatible(text_pooling: str, text_model_type: str) -> tuple[bool, str]:
    """Whether ``VisionTextDualEncoderModel`` computes exactly our text embeddings, and why not."""
    if text_pooling == "pooler":
        return True, ""
    return False, (f"this model pools text with {text_pooling!r} but transformers' VisionTextDualEncoderModel uses "
                   f"the {text_model_type} tower's pooler_output, so transformers would compute different text "
                   "embeddings. It is saved as a clip_jax model (model_type clip_jax_dual_encoder), which "
                   "transformers refuses to load rather than silently misusing it. Train with "
                   "text_pooling='pooler' for a transformers-loadable export.")


def write_weights(tensors: Mapping[str, np.ndarray], directory: Path,
                  max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> list[str]:
    """``model.safetensors``, or numbered shards and an index when larger than ``max_shard_size``."""
    from safetensors.numpy import save_file

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
        save_file(shards[0], str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})
        return [SAFETENSORS_NAME]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    index = {"metadata": {"total_size": int(sum(a.nbytes for a in tensors.values()))}, "weight_map": weight_map}
    (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return names


def model_card(*, config: Mapping[str, Any], language: str | None = None, license: str = "apache-2.0",
               datasets: Iterable[str] = (), base_models: Iterable[str] = (), results: list[dict] | None = None,
               training_config: Mapping[str, Any] | None = None, repo_id: str = "PATH_OR_REPO_ID") -> str:
    """A hub README: YAML metadata, what the model is, evaluation results, the recipe and usage snippets."""
    compatible = config.get("model_type") == "vision-text-dual-encoder"
    meta = ["---"]
    if language:
        meta.append(f"language: {language}")
    meta.append(f"license: {license}")
    meta.append(f"library_name: {'transformers' if compatible else 'clip_jax'}")
    meta.append("pipeline_tag: zero-shot-image-classification")
    meta.append("tags:\n" + "\n".join(f"- {t}" for t in ["clip", "vision-text-dual-encoder", "clip_jax",
                                                          "zero-shot-image-classification", "image-retrieval"]))
    if datasets:
        meta.append("datasets:\n" + "\n".join(f"- {d}" for d in datasets))
    bases = [b for b in base_models if b]
    if bases:
        meta.append("base_model:\n" + "\n".join(f"- {b}" for b in bases))
    meta.append("---")
    vision, text = config["vision_config"], config["text_config"]
    lines = ["\n".join(meta), "", f"# CLIP dual encoder ({language or 'multilingual'})", "",
             f"A {vision.get('model_type')} vision tower ({vision.get('hidden_size')}-d, patch "
             f"{vision.get('patch_size')}, {vision.get('image_size')} px) and a {text.get('model_type')} text "
             f"tower ({text.get('hidden_size')}-d), each projected to {config.get('projection_dim')} dimensions, "
             "trained contrastively with clip_jax "
             "(frozen-backbone warm-up of the projections, then full fine-tuning).", ""]
    if bases:
        lines += ["Initialised from: " + ", ".join(f"`{b}`" for b in bases) + ".", ""]
    if results:
        lines += ["## Evaluation", "", "| dataset | task | language | metric | value |", "|---|---|---|---|---|"]
        for r in results:
            for metric, value in sorted(r.get("metrics", {}).items()):
                shown = f"{value:.4f}" if isinstance(value, float) else str(value)
                lines.append(f"| {r.get('dataset', '')} | {r.get('task', '')} | {r.get('language', '')} | "
                             f"{metric} | {shown} |")
        lines.append("")
    lines += ["## Usage", ""]
    if compatible:
        lines += ["With transformers (PyTorch):", "", "```python", "import torch", "from PIL import Image",
                  "from transformers import VisionTextDualEncoderModel, VisionTextDualEncoderProcessor", "",
                  f'model = VisionTextDualEncoderModel.from_pretrained("{repo_id}")',
                  f'processor = VisionTextDualEncoderProcessor.from_pretrained("{repo_id}")',
                  'inputs = processor(text=["una foto di un gatto", "una foto di un cane"],',
                  '                   images=Image.open("photo.jpg"), return_tensors="pt", padding=True)',
                  "with torch.no_grad():", "    probs = model(**inputs).logits_per_image.softmax(dim=-1)",
                  "```", ""]
    else:
        lines += [f"This model pools text with `{config.get('clip_jax', {}).get('text_pooling')}`, which "
                  "transformers' VisionTextDualEncoderModel does not reproduce; load it with clip_jax.", ""]
    lines += ["With clip_jax (JAX):", "", "```python", "from PIL import Image", "from clip_jax import CLIPModel", "",
              f'model = CLIPModel.from_pretrained("{repo_id}")',
              'image = model.encode_image([Image.open("photo.jpg")])',
              'texts = model.encode_text(["una foto di un gatto", "una foto di un cane"])',
              "probs = (model.logit_scale * image @ texts.T)", "```", ""]
    if training_config:
        lines += ["## Training recipe", "", "The clip_jax config this model was trained with:", "", "```json",
                  json.dumps(training_config, indent=2, default=str), "```", ""]
    return "\n".join(lines)


def push_to_hub(directory: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str = "Upload CLIP dual encoder (clip_jax)", token: str | None = None) -> str:
    """Create (if needed) ``repo_id`` and upload ``directory``; returns the commit URL.

    The token comes from ``token``, ``HF_TOKEN`` or the user's ``huggingface-cli login``; it is never
    printed or logged.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model", revision=revision,
                             commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
