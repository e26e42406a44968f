"""The offline demo: teach a *pretrained* (stand-in) English CLIP Italian, as CLIP-Italian did.

``python train.py`` pairs the vision tower of an English CLIP with an Italian BERT pretrained on text
only (both built offline on first use, see :mod:`clip_jax.demo.standins`), adds fresh projections and
trains the two phases on Italian captions of coloured shapes; two colour–shape pairs never appear in
that training. :func:`report` then measures zero-shot classification of the held-out pairs and
retrieval after each phase, the English CLIP's own English zero-shot as the reference, and how much
the transfer changed the vision tower (the English CLIP's English zero-shot with the transferred
vision tower in place of its own).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from clip_jax.data.shapes import COLOURS, COUNTS, POSITIONS, SHAPES, ShapesSpec, captions, load_or_generate
from clip_jax.demo import standins  # noqa: F401 (registers the demo: model names)
from clip_jax.evaluate.forgetting import with_vision_tower
from clip_jax.evaluate.retrieval import benchmark_names, retrieval_metrics
from clip_jax.evaluate.zeroshot import classification_metrics
from clip_jax.prompts import ensemble_embeddings

ATTRIBUTES = {"colour": list(COLOURS), "shape": list(SHAPES), "count": list(COUNTS)}
KEYS = ("colour", "shape", "count", "position")


def _scene(label: dict) -> tuple:
    return tuple(label[k] for k in KEYS)


def _captions_with(condition: dict[str, Any], language: str) -> list[str]:
    """Every phrasing of every scene that matches ``condition`` (the prompt ensemble of a class)."""
    scenes = itertools.product(COLOURS, SHAPES, COUNTS, POSITIONS)
    return [
        text
        for scene in scenes
        if all(dict(zip(KEYS, scene))[k] == v for k, v in condition.items())
        for text in captions(*scene, language)
    ]


def zero_shot_heldout(model, split: dict, language: str = "it") -> dict[str, dict[str, float]]:
    """Per attribute (and for the colour+shape pair), zero-shot accuracy on ``split``'s images with prompt
    ensembles in ``language`` (every phrasing of every matching scene), with chance."""
    image_embeds = model.encode_image(split["images"])
    out = {}
    for attribute, values in ATTRIBUTES.items():
        classes = ensemble_embeddings(model, [_captions_with({attribute: v}, language) for v in values])
        labels = np.array([values.index(lab[attribute]) for lab in split["labels"]])
        metrics = classification_metrics(image_embeds @ classes.T, labels, len(values))
        out[attribute] = {"acc1": metrics["acc1"], "chance": 1 / len(values)}
    pairs = list(itertools.product(COLOURS, SHAPES))
    texts = [_captions_with({"colour": c, "shape": s}, language) for c, s in pairs]
    labels = np.array([pairs.index((lab["colour"], lab["shape"])) for lab in split["labels"]])
    metrics = classification_metrics(image_embeds @ ensemble_embeddings(model, texts).T, labels, len(pairs))
    out["colour+shape"] = {"acc1": metrics["acc1"], "chance": 1 / len(pairs)}
    return out


def retrieval_on(model, split: dict, language: str = "it") -> dict[str, float]:
    """Recall@k on a split with each image's canonical caption in ``language`` (CLIP_benchmark's names:
    ``text_retrieval_recall@k`` is image->text); identical captions of different images all count as correct."""
    own_texts = [captions(*_scene(lab), language)[0] for lab in split["labels"]]
    unique = sorted(set(own_texts))
    image_embeds, text_embeds = model.encode_image(split["images"]), model.encode_text(unique)
    scores = image_embeds @ text_embeds.T
    own = np.array([unique.index(t) for t in own_texts])
    i2t_rank = (scores > scores[np.arange(len(own)), own][:, None]).sum(axis=1) + 1
    metrics = {f"i2t_R@{k}": float(np.mean(i2t_rank <= k)) for k in (1, 5)}
    t2i = retrieval_metrics(image_embeds, text_embeds[own], np.arange(len(own)), ks=(1, 5))
    metrics.update({k: v for k, v in t2i.items() if k.startswith("t2i_R")})
    return {**benchmark_names(metrics), "text_retrieval_chance@1": 1 / len(unique)}


def _shapes_run() -> ConfigDict:
    """What both demo configs share: the shapes data, batch 64, logging and checkpoint cadence."""
    from clip_jax.config import base_config

    c = base_config()
    c.model.projection_dim = 64
    c.data.source = "shapes"
    c.data.shapes.num_train = 4096
    c.train.batch_size = 64
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.checkpoint_every = 500
    c.train.weight_decay = 0.01
    return c


def demo_config() -> ConfigDict:
    """The offline demo's config (``configs/demo.py`` returns this): the transfer of the English CLIP
    stand-in's vision tower and the Italian BERT stand-in to Italian captions, in two phases."""
    from clip_jax.config import HEAD, phase

    c = _shapes_run()
    c.model.vision = "demo:english-clip"  # built on first use, then loaded like a hub checkpoint
    c.model.text = "demo:italian-bert"
    c.model.max_length = 24
    # An MLM-only BERT's [CLS] state (and the untrained tanh pooler on it) says little about the sentence:
    # phase 1 on 'pooler' reaches a loss of ~3 (ln 64 = 4.16) and colour zero-shot 0.43, on 'mean' ~1.4 and
    # 0.99 (bench/recipe.py). The price: the export is clip_jax's format, which transformers does not load.
    c.model.text_pooling = "mean"
    c.train.keep_checkpoints = 5  # keeps both phase ends: report() evaluates after each phase
    c.train.weight_decay = 0.01
    # Phase 1 trains only the projections and the temperature, so it runs on cached tower features
    # (one forward pass over the data, then ~5 ms a step): many cheap steps at a high learning rate.
    c.phases.warmup = phase(1000, HEAD, {"head": 1e-2}, warmup_steps=50, cache_features=True)
    c.phases.finetune = phase(600, ".*", {"head": 5e-4, "vision": 2e-4, "text": 5e-4}, warmup_steps=60)
    return c


def random_towers_config() -> ConfigDict:
    """Tiny *random* towers on the same data (tests and smoke runs: fast, but phase 1 has nothing to align)."""
    from clip_jax.config import HEAD, phase

    c = _shapes_run()
    with c.model.ignore_type():  # towers given as configs (random init) instead of checkpoint paths
        c.model.vision = dict(
            model_type="clip_vision_model",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=8,
        )
        c.model.text = dict(
            model_type="bert",
            vocab_size="tokenizer",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    c.model.tokenizer = "demo:shapes-tokenizer"
    c.model.max_length = 16
    c.model.text_pooling = "pooler"
    c.phases.warmup = phase(100, HEAD, {"head": 3e-3}, warmup_steps=10)
    c.phases.finetune = phase(1200, ".*", {"head": 1e-3, "vision": 1e-3, "text": 1e-3}, warmup_steps=100)
    return c


def demo_model(workdir: str | None = None):
    """``(model, config, data)`` of the demo in ``workdir`` (default ``$CLIP_JAX_DEMO_WORKDIR`` or
    ``runs/demo``), training it first if the workdir holds no checkpoint (a few minutes on 2 cores)."""
    from clip_jax import load_model
    from clip_jax.train import train

    workdir = workdir or os.environ.get("CLIP_JAX_DEMO_WORKDIR", "runs/demo")
    if not (Path(workdir) / "checkpoints").is_dir():
        train(demo_config(), workdir)
    config = ConfigDict(json.loads((Path(workdir) / "config.json").read_text()))
    data = load_or_generate(ShapesSpec(**config.data.shapes.to_dict()), config.data.cache_dir)
    return load_model(workdir), config, data


def _phase_ends(config: ConfigDict) -> list[tuple[str, int]]:
    ends, step = [], 0
    for name in config.train.phases:
        step += int(config.phases[name].steps)
        ends.append((name, step))
    return ends


def evaluate_transfer(config: ConfigDict, workdir: str, english_clip: str | None = None) -> dict[str, Any]:
    """Zero-shot (held-out pairs) and retrieval (validation) after each phase whose checkpoint is in
    ``workdir``. With the English CLIP whose vision tower was transferred (``english_clip``, a directory;
    found by itself when the config names ``demo:english-clip``): its own English zero-shot as the
    reference, and the forgetting of the vision tower (its English zero-shot with the transferred tower)."""
    from clip_jax import load_model
    from clip_jax.checkpoint import Checkpointer
    from clip_jax.clip_model import CLIPModel
    from clip_jax.demo.standins import resolve

    data = load_or_generate(ShapesSpec(**config.data.shapes.to_dict()), config.data.cache_dir)
    checkpointer = Checkpointer(workdir, keep=1_000_000, use_async=False)
    saved = set(checkpointer.all_steps())
    checkpointer.close()
    rows: dict[str, dict] = {}
    english = None
    if english_clip is None and config.model.vision == "demo:english-clip":
        english_clip = resolve(config.model.vision, config.data.cache_dir)
    if english_clip is not None:
        english = CLIPModel.from_pretrained(english_clip)
        rows["english_clip_en"] = _metrics(english, data, "en")
    model = None
    for name, step in _phase_ends(config):
        if step not in saved:
            continue
        model = load_model(workdir, step=step)
        rows[f"after_{name}"] = _metrics(model, data, "it")
        if english is not None:
            rows[f"after_{name}"]["forgetting_en"] = zero_shot_heldout(
                with_vision_tower(english, model.module.vision), data["heldout"] or data["val"], "en"
            )
    return {"rows": rows, "model": model, "data": data}


def _metrics(model, data: dict, language: str) -> dict[str, Any]:
    out = {"val_retrieval": retrieval_on(model, data["val"], language)}
    if data.get("heldout") is not None:
        out["heldout_zero_shot"] = zero_shot_heldout(model, data["heldout"], language)
    return out


def format_table(rows: dict[str, dict], holdout: str = "") -> str:
    """The report's rows as an aligned text table (zero-shot accuracy on held-out pairs, retrieval)."""
    columns = ["colour", "shape", "count", "colour+shape"]
    header = f"  {'':34s}" + "".join(f"{c:>13s}" for c in columns) + f"{'i->t R@1':>10s}{'i->t R@5':>10s}"
    lines = [header]
    names = {"english_clip_en": "English CLIP, English prompts (ref.)"}
    for key, row in rows.items():
        label = names.get(key, key.replace("after_", "after phase ") + " (Italian)")
        zs = row.get("heldout_zero_shot", {})
        r = row["val_retrieval"]
        lines.append(
            f"  {label:34s}"
            + "".join(f"{zs[c]['acc1']:13.3f}" if c in zs else f"{'-':>13s}" for c in columns)
            + f"{r['text_retrieval_recall@1']:10.3f}"
            f"{r['text_retrieval_recall@5']:10.3f}"
        )
        if "forgetting_en" in row:
            f = row["forgetting_en"]
            lines.append(
                f"  {'  English CLIP w/ this vision tower':34s}"
                + "".join(f"{f[c]['acc1']:13.3f}" for c in columns)
            )
    chance = {
        "colour": 1 / len(COLOURS),
        "shape": 1 / len(SHAPES),
        "count": 1 / len(COUNTS),
        "colour+shape": 1 / (len(COLOURS) * len(SHAPES)),
    }
    lines.append(f"  {'chance':34s}" + "".join(f"{chance[c]:13.3f}" for c in columns))
    return "\n".join(lines)


def report(
    config: ConfigDict, workdir: str, *, export: bool = True, english_clip: str | None = None
) -> dict[str, Any]:
    """Evaluate the demo run in ``workdir`` after each phase (see :func:`evaluate_transfer`), export the
    final model, print and return a summary."""
    result = evaluate_transfer(config, workdir, english_clip)
    rows, model, data = result["rows"], result["model"], result["data"]
    final = rows[[k for k in rows if k.startswith("after_")][-1]]
    summary: dict[str, Any] = {"rows": rows, "val_retrieval": final["val_retrieval"]}
    if "heldout_zero_shot" in final:
        summary["heldout_zero_shot"] = final["heldout_zero_shot"]
    lines = [
        "",
        "Demo results",
        f"  zero-shot accuracy on {len(data['heldout']['images']) if data.get('heldout') else 0} pictures of "
        f"colour-shape pairs held out of the Italian training ({config.data.shapes.holdout}); retrieval on "
        f"{len(data['val']['images'])} validation pictures:",
        format_table(rows),
    ]
    if export:
        out = Path(workdir) / "exported"
        model.save_pretrained(out)
        summary["exported"] = str(out)
        kind = (
            "transformers VisionTextDualEncoderModel" if model.module.text_pooling == "pooler" else "clip_jax"
        )
        lines.append(f"  exported ({kind} format) to {out}")
    print("\n".join(lines))
    return summary
