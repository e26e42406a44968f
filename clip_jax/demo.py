"""What `python train.py` shows after the offline demo trains: zero-shot classification of the
held-out colour–shape combinations (never seen together in training), retrieval on the validation
split, an export that transformers loads, and where everything was written."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from clip_jax.data.shapes import COLOURS, COUNTS, POSITIONS, SHAPES, ShapesSpec, caption, load_or_generate
from clip_jax.evaluate.retrieval import retrieval_metrics
from clip_jax.evaluate.zeroshot import classification_metrics, ensemble_embeddings

ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "count": list(COUNTS)}


def _captions_with(attribute: str, value: Any) -> list[str]:
    """Every caption the data set can say with ``attribute == value`` (the prompt ensemble of the class)."""
    combos = itertools.product(COLOURS, SHAPES, COUNTS, POSITIONS)
    keys = ("colour", "shape", "count", "position")
    return [caption(*c) for c in combos if dict(zip(keys, c))[attribute] == value]


def zero_shot_heldout(model, split: dict) -> dict[str, dict[str, float]]:
    """Per attribute (and for the colour+shape pair), zero-shot metrics on the held-out images, with chance."""
    image_embeds = model.encode_image(split["images"])
    out = {}
    for attribute, values in ATTRIBUTES.items():
        classes = ensemble_embeddings(model, [_captions_with(attribute, v) for v in values])
        labels = np.array([values.index(lab[attribute]) for lab in split["labels"]])
        metrics = classification_metrics(image_embeds @ classes.T, labels, len(values))
        out[attribute] = {"acc1": metrics["acc1"], "chance": 1 / len(values)}
    pairs = list(itertools.product(COLOURS, SHAPES))
    texts = [[caption(c, s, n, p) for n in COUNTS for p in POSITIONS] for c, s in pairs]
    labels = np.array([pairs.index((lab["colour"], lab["shape"])) for lab in split["labels"]])
    metrics = classification_metrics(image_embeds @ ensemble_embeddings(model, texts).T, labels, len(pairs))
    out["colour+shape"] = {"acc1": metrics["acc1"], "chance": 1 / len(pairs)}
    return out


def retrieval_on(model, split: dict) -> dict[str, float]:
    """Recall@k on a split; identical captions of different images all count as correct."""
    unique = sorted({c for caps in split["captions"] for c in caps})
    image_embeds, text_embeds = model.encode_image(split["images"]), model.encode_text(unique)
    scores = image_embeds @ text_embeds.T
    own = np.array([unique.index(caps[0]) for caps in split["captions"]])
    i2t_rank = (scores > scores[np.arange(len(own)), own][:, None]).sum(axis=1) + 1
    metrics = {f"i2t_R@{k}": float(np.mean(i2t_rank <= k)) for k in (1, 5)}
    metrics["i2t_chance@1"] = 1 / len(unique)
    t2i = retrieval_metrics(image_embeds, text_embeds[own], np.arange(len(own)), ks=(1, 5))
    metrics.update({k: v for k, v in t2i.items() if k.startswith("t2i_R")})
    return metrics


def demo_config() -> ConfigDict:
    """The offline demo's config (``configs/demo.py`` returns this)."""
    from clip_jax.config import HEAD, base_config, phase

    c = base_config()
    with c.model.ignore_type():  # towers given as configs (random init) instead of checkpoint paths
        c.model.vision = dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8)
        c.model.text = dict(model_type="bert", vocab_size="tokenizer", hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    c.model.tokenizer = "shapes"
    c.model.projection_dim = 64
    c.model.max_length = 16
    c.model.text_pooling = "pooler"  # as VisionTextDualEncoderModel: the export loads in transformers
    c.data.source = "shapes"
    c.data.shapes.num_train = 4096
    c.train.batch_size = 64
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.checkpoint_every = 500
    c.train.weight_decay = 0.01
    c.phases.warmup = phase(100, HEAD, {"head": 3e-3}, warmup_steps=10)
    c.phases.finetune = phase(1200, ".*", {"head": 1e-3, "vision": 1e-3, "text": 1e-3}, warmup_steps=100)
    return c


def demo_model(workdir: str | None = None):
    """``(model, config, data)`` of the demo in ``workdir`` (default ``$CLIP_JAX_DEMO_WORKDIR`` or
    ``runs/demo``), training it first if the workdir holds no checkpoint (about 1.5 minutes on 2 cores)."""
    import json
    import os

    from clip_jax.train import model_from_checkpoint, train

    workdir = workdir or os.environ.get("CLIP_JAX_DEMO_WORKDIR", "runs/demo")
    if not (Path(workdir) / "checkpoints").is_dir():
        train(demo_config(), workdir)
    config = ConfigDict(json.loads((Path(workdir) / "config.json").read_text()))
    data = load_or_generate(ShapesSpec(**config.data.shapes.to_dict()), config.data.cache_dir)
    return model_from_checkpoint(workdir), config, data


def report(config: ConfigDict, workdir: str, *, export: bool = True) -> dict[str, Any]:
    """Evaluate the demo model in ``workdir``, export it, print and return a summary."""
    from clip_jax.train import model_from_checkpoint

    model = model_from_checkpoint(workdir)
    data = load_or_generate(ShapesSpec(**config.data.shapes.to_dict()), config.data.cache_dir)
    summary: dict[str, Any] = {"val_retrieval": retrieval_on(model, data["val"])}
    if data.get("heldout") is not None:
        summary["heldout_zero_shot"] = zero_shot_heldout(model, data["heldout"])
    lines = ["", "Demo results",
             f"  retrieval on {len(data['val']['images'])} validation images (seen combinations, new pictures):",
             "    " + ", ".join(f"{k}={v:.3f}" for k, v in summary["val_retrieval"].items())]
    if "heldout_zero_shot" in summary:
        lines.append(f"  zero-shot on {len(data['heldout']['images'])} pictures of held-out combinations "
                     f"({config.data.shapes.holdout}):")
        for attribute, m in summary["heldout_zero_shot"].items():
            lines.append(f"    {attribute:13s} accuracy {m['acc1']:.3f}   (chance {m['chance']:.3f})")
    if export:
        out = Path(workdir) / "exported"
        model.save_pretrained(out)
        summary["exported"] = str(out)
        kind = "transformers VisionTextDualEncoderModel" if model.module.text_pooling == "pooler" else "clip_jax"
        lines.append(f"  exported ({kind} format) to {out}")
    print("\n".join(lines))
    return summary
