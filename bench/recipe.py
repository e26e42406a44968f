"""Recipe ablation on the offline transfer task: which way of teaching the (stand-in) English CLIP Italian works?

    python bench/recipe.py [--seeds 0 1 2] [--recipes a_two_phase b_all_from_start ...]  # ~1.5 min a run on 2 cores
    python bench/recipe.py --smoke                                                       # tiny stand-ins, CI
    python bench/recipe.py --smoke --standins EN_DIR IT_DIR   # on stand-ins already built (the tests' own)

Same task, data, total number of steps and global batch for every recipe (the demo's: the stand-in English
CLIP's vision tower + the stand-in Italian MLM BERT, Italian captions of coloured shapes, two colour–shape
pairs held out). Everything runs on a mesh of 8 fake CPU devices so that the per-device loss of (e) has
devices to be per-device on. Columns: Italian zero-shot on the held-out pairs, validation retrieval,
**forgetting** (the English CLIP's English zero-shot with its vision tower replaced by the transferred one:
how much the recipe damaged the pretrained tower), wall time. Mean ± std over seeds (the seed changes the
projections' initialisation, the data order and dropout; the stand-ins are the same).
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine, write_result
from clip_jax.config import HEAD, override, phase

LIT = r"(?!vision\.).*"  # everything but the vision tower
COLUMNS = ("colour", "shape", "count", "colour+shape")


def _two_phase(c: ConfigDict, s: dict) -> None:
    c.phases.warmup = phase(s["phase1"], HEAD, {"head": 1e-2}, warmup_steps=s["phase1"] // 20)
    c.phases.finetune = phase(s["phase2"], ".*", dict(s["lrs"]), warmup_steps=s["phase2"] // 10)


def _one_phase(trainable: str, lrs: Callable[[dict], dict]) -> Callable[[ConfigDict, dict], None]:
    def configure(c: ConfigDict, s: dict) -> None:
        total = s["phase1"] + s["phase2"]
        c.train.phases = ("only",)
        c.phases = ConfigDict({"only": phase(total, trainable, lrs(s), warmup_steps=total // 10)})

    return configure


def _variant(base: Callable, **changes) -> Callable[[ConfigDict, dict], None]:
    def configure(c: ConfigDict, s: dict) -> None:
        base(c, s)
        override(c, **changes)

    return configure


def _steps(base: Callable, **changes) -> Callable[[ConfigDict, dict], None]:
    """``base`` with some of the run's step settings (``phase1``, ``phase2``) changed."""

    def configure(c: ConfigDict, s: dict) -> None:
        base(c, {**s, **changes})

    return configure


RECIPES: dict[str, tuple[str, Callable[[ConfigDict, dict], None]]] = {
    "a_two_phase": ("(a) warm-up, then fine-tune everything (CLIP-Italian)", _two_phase),
    "b_all_from_start": (
        "(b) fine-tune everything from step 0, fresh projections",
        _one_phase(".*", lambda s: dict(s["lrs"])),
    ),
    "c_lit": ("(c) LiT: vision locked, text tower + heads train", _one_phase(LIT, lambda s: dict(s["lrs"]))),
    "d_heads_only": (
        "(d) heads only (both towers frozen throughout)",
        _one_phase(HEAD, lambda s: {"head": 1e-2}),
    ),
    "e_per_device_loss": (
        "(e) (a) with CLIP-Italian's per-device loss (8 devices: 7 negatives, not 63)",
        _variant(_two_phase, **{"loss.negatives": "local"}),
    ),
    "f_cached_phase1": (
        "(f) (a) with phase 1 on cached tower features",
        _variant(_two_phase, **{"phases.warmup.cache_features": True}),
    ),
    "a_pooler": (
        "(a) with text_pooling='pooler' (the transformers-loadable export)",
        _variant(_two_phase, **{"model.text_pooling": "pooler"}),
    ),
}

STUDENT = r"(text|text_projection)\..*"


def _distill(c: ConfigDict, s: dict, steps: tuple[int, int] | None = None) -> None:
    """Text-only distillation (configs/distill_demo.py): projection warm-up, then the whole student."""
    warmup, full = steps or (s["phase1"], s["phase2"])
    c.train.objective = "distill"
    c.distill.train, c.distill.val = "shapes", "shapes:heldout"
    c.phases.warmup = phase(warmup, r"text_projection\..*", {"head": 1e-2}, warmup_steps=max(1, warmup // 20))
    c.phases.finetune = phase(full, STUDENT, {"head": 1e-3, "text": 5e-4}, warmup_steps=max(1, full // 10))


def _distilled_first(c: ConfigDict, s: dict) -> None:
    """The first run of (h): distillation in phase1 steps (half warm-up, half the whole student)."""
    _distill(c, s, steps=(s["phase1"] // 2, s["phase1"] - s["phase1"] // 2))


# Rows added by issue 24: which part of (a) makes it change the vision tower more than (b)?
RECIPES.update(
    {
        "a_fixed_temp": (
            "(a) with the temperature fixed through phase 1 (learned in phase 2 only)",
            _variant(_two_phase, **{"phases.warmup.trainable": r"(visual_projection|text_projection)\..*"}),
        ),
        "a_no_rewarm": (
            "(a) without the phase-2 learning-rate warm-up (full rate from phase 2's first step)",
            _variant(_two_phase, **{"phases.finetune.warmup_steps": 0}),
        ),
        "a_tower_wd0": (
            "(a) without weight decay on the towers in phase 2 (heads keep train.weight_decay)",
            _variant(_two_phase, **{"phases.finetune.weight_decay": {"vision": 0.0, "text": 0.0}}),
        ),
        "a_l2sp": (
            "(a) with L2-SP: phase-2 weight decay towards the pretrained weights, not zero",
            _variant(_two_phase, **{"train.weight_decay_towards": "start"}),
        ),
        "a_l2sp_vision10": (
            "(a) with strong L2-SP on the vision tower: phase-2 decay 10 towards the pretrained weights",
            _variant(
                _two_phase,
                **{"train.weight_decay_towards": "start", "phases.finetune.weight_decay": {"vision": 10.0}},
            ),
        ),
        "a_layer_decay": (
            "(a) with layer-wise learning-rate decay 0.65 in the towers",
            _variant(_two_phase, **{"train.layer_decay": 0.65}),
        ),
        "a_phase1_50": (
            "(a) with a 50-step phase 1 (phase 2 unchanged: 400 steps)",
            _steps(_two_phase, phase1=50),
        ),
        "a_phase1_50_layer_decay": (
            "(a) with a 50-step phase 1 and layer-wise learning-rate decay 0.65 (the two best rows combined)",
            _steps(_variant(_two_phase, **{"train.layer_decay": 0.65}), phase1=50),
        ),
    }
)

# Rows added by issue 17; a third element is a first run whose export the row's run starts from (model.init_from).
RECIPES.update(
    {
        "g_distill": (
            "(g) text-only distillation (M-CLIP): no images; the teacher's vision side unchanged",
            _distill,
        ),
        "h_distill_then_lit": (
            "(h) distillation (phase-1 steps), then contrastive fine-tune, vision locked (AltCLIP-like)",
            _one_phase(LIT, lambda s: dict(s["lrs"])),
            _distilled_first,
        ),
    }
)


def run_recipe(name: str, seed: int, settings: dict, cache_dir: str, workdir: str, standins: dict) -> dict:
    """Train one recipe with one seed; its metrics after training and its wall time."""
    from clip_jax import load_model
    from clip_jax.demo import demo_config, evaluate_transfer
    from clip_jax.train import train

    def base() -> ConfigDict:
        c = demo_config()
        c.model.vision, c.model.text = standins["english-clip"], standins["italian-bert"]
        c.model.projection_dim = settings["projection_dim"]
        c.data.cache_dir = cache_dir
        c.data.shapes.update(**settings["shapes"])
        c.train.update(
            seed=seed,
            batch_size=settings["batch"],
            log_every=25,
            checkpoint_every=100_000,
            keep_checkpoints=3,
            async_checkpoints=False,
            eval_every=0,
        )
        return c

    _, configure, *first = RECIPES[name]
    c = base()
    configure(c, settings)
    tick = time.perf_counter()
    if first:  # a sequence: the first run's result is where this run starts
        c0 = base()
        first[0](c0, settings)
        train(c0, str(Path(workdir, "first")))
        c.model.init_from = str(
            load_model(str(Path(workdir, "first"))).save_pretrained(Path(workdir, "first", "exported"))
        )
    train(c, str(Path(workdir, "run")))
    workdir = str(Path(workdir, "run"))
    wall = time.perf_counter() - tick
    # evaluate_transfer knows the English CLIP only by its demo: name; give it the stand-in directly.
    transfer = evaluate_transfer(c, workdir, english_clip=standins["english-clip"])
    rows = transfer["rows"]
    final = rows[[k for k in rows if k.startswith("after_")][-1]]
    cosine = float(
        "nan"
    )  # student(it) vs teacher(en) on held-out pairs: only where the teacher's space is kept
    if c.train.objective == "distill" or c.model.init_from:
        from clip_jax import CLIPModel
        from clip_jax.data.parallel import shapes_pairs
        from clip_jax.data.shapes import ShapesSpec

        english, italian = shapes_pairs(ShapesSpec(**c.data.shapes.to_dict()), "heldout")
        teacher = CLIPModel.from_pretrained(standins["english-clip"])
        cosine = float(
            np.mean(np.sum(transfer["model"].encode_text(italian) * teacher.encode_text(english), axis=1))
        )
    from clip_jax.clip_model import CLIPModel as _CLIP

    start = _CLIP.from_pretrained(standins["english-clip"]).module.vision
    diagnostics = {
        "logit_scale_at_phase_end": _logit_scales(c, workdir),
        "visual_projection_norm_at_phase_end": _projection_norms(c, workdir),
        "vision_drift": vision_drift(start, transfer["model"].module.vision),
    }
    if c.train.objective == "contrastive" and diagnostics["vision_drift"]["all"] > 0:
        diagnostics["wise_ft"] = wise_ft_sweep(workdir, transfer, standins["english-clip"])
    losses = [json.loads(line) for line in Path(workdir, "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in losses if "train/loss" in r]
    return {
        "zero_shot": {k: final["heldout_zero_shot"][k]["acc1"] for k in COLUMNS},
        "retrieval": {
            k: final["val_retrieval"][k]
            for k in (
                "text_retrieval_recall@1",
                "text_retrieval_recall@5",
                "image_retrieval_recall@1",
                "image_retrieval_recall@5",
            )
        },
        "forgetting_en": {k: final["forgetting_en"][k]["acc1"] for k in COLUMNS},
        "reference_en": {k: rows["english_clip_en"]["heldout_zero_shot"][k]["acc1"] for k in COLUMNS},
        "first_loss": float(np.mean(losses[:2])),
        "final_loss": float(np.mean(losses[-4:])),
        "cosine_it_en": cosine,
        "wall_s": wall,
        **diagnostics,
    }


#: WiSE-FT weights of the fine-tuned towers measured for every run that changed the vision tower.
WISE_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def wise_ft_sweep(workdir: str, transfer: dict, english_clip: str) -> dict[str, dict[str, float]]:
    """Italian held-out colour+shape and forgetting (the English CLIP's English colour+shape with the vision
    tower) of the run's towers interpolated with its start (``clip-jax export --interpolate``), per alpha."""
    from clip_jax.clip_model import CLIPModel
    from clip_jax.demo import with_vision_tower, zero_shot_heldout
    from clip_jax.wise_ft import interpolate_towers, run_start

    start, tuned, data = run_start(workdir), transfer["model"], transfer["data"]
    english = CLIPModel.from_pretrained(english_clip)
    heldout = data["heldout"] or data["val"]
    out = {}
    for alpha in WISE_ALPHAS:
        model = interpolate_towers(start, tuned, alpha)
        out[str(alpha)] = {
            "colour+shape": zero_shot_heldout(model, heldout, "it")["colour+shape"]["acc1"],
            "forgetting_en": zero_shot_heldout(
                with_vision_tower(english, model.module.vision), heldout, "en"
            )["colour+shape"]["acc1"],
        }
    return out


def _projection_norms(config: ConfigDict, workdir: str) -> dict[str, float]:
    """The Frobenius norm of the visual projection at the end of each phase."""
    from clip_jax import load_model
    from clip_jax.train.phase import phases_of

    return {
        p.name: float(
            np.linalg.norm(np.asarray(load_model(workdir, step=p.end).module.visual_projection.kernel[...]))
        )
        for p in phases_of(config)
    }


def _logit_scales(config: ConfigDict, workdir: str) -> dict[str, float]:
    """The learned log inverse temperature at the end of each phase (phase 1's is what phase 2 starts with)."""
    from clip_jax import load_model
    from clip_jax.train.phase import phases_of

    return {p.name: float(load_model(workdir, step=p.end).module.logit_scale[...]) for p in phases_of(config)}


def vision_drift(start, end) -> dict[str, float]:
    """Relative L2 distance ||end - start|| / ||start|| of the vision tower's parameters, per transformer
    layer (``layers.N``), for the rest (``embeddings``: everything outside the layers) and over all."""
    import re

    import jax
    from flax import nnx

    from clip_jax.sharding import path_string

    def flat(module):
        leaves = jax.tree_util.tree_flatten_with_path(nnx.state(module, nnx.Param))[0]
        return {path_string(p): np.asarray(x, np.float64) for p, x in leaves}

    a, b = flat(start), flat(end)
    sums: dict[str, list[float]] = {}
    for name, x in a.items():
        layer = re.search(r"layers\.(\d+)\.", name)
        for part in (f"layer_{layer.group(1)}" if layer else "embeddings", "all"):
            acc = sums.setdefault(part, [0.0, 0.0])
            acc[0] += float(np.sum((b[name] - x) ** 2))
            acc[1] += float(np.sum(x**2))
    return {k: float(np.sqrt(d / n)) for k, (d, n) in sorted(sums.items())}


def summarise(runs: list[dict]) -> dict:
    """Mean and std over seeds of every number of ``run_recipe``'s result."""

    def stat(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    out = {}
    for key in ("zero_shot", "retrieval", "forgetting_en", "reference_en"):
        out[key] = {k: stat([r[key][k] for r in runs]) for k in runs[0][key]}
    for key in ("first_loss", "final_loss", "cosine_it_en", "wall_s"):
        out[key] = stat([r[key] for r in runs])
    for key in ("logit_scale_at_phase_end", "visual_projection_norm_at_phase_end", "vision_drift"):
        having = [r[key] for r in runs if key in r]  # results written before a key existed lack it
        if having:
            out[key] = {k: stat([h[k] for h in having]) | {"runs": len(having)} for k in having[0]}
    swept = [r["wise_ft"] for r in runs if "wise_ft" in r]
    if swept:
        out["wise_ft"] = {
            a: {m: stat([w[a][m] for w in swept]) for m in swept[0][a]} | {"runs": len(swept)}
            for a in swept[0]
        }
    return out


def markdown(result: dict) -> str:
    fmt = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}"
    lines = [
        "| recipe | colour | shape | count | colour+shape | i→t R@1 | i→t R@5 | forgetting: EN colour+shape "
        "(EN shape) | cosine it/en (held-out pairs) | final loss | wall (s) |",
        "|---" * 11 + "|",
    ]
    for name, summary in result["recipes"].items():
        z, r, f = summary["zero_shot"], summary["retrieval"], summary["forgetting_en"]
        lines.append(
            f"| {RECIPES[name][0]} | "
            + " | ".join(fmt(z[k]) for k in COLUMNS)
            + f" | {fmt(r['text_retrieval_recall@1'])} | {fmt(r['text_retrieval_recall@5'])} | "
            f"{fmt(f['colour+shape'])} ({fmt(f['shape'])}) | "
            f"{fmt(summary['cosine_it_en']) if np.isfinite(summary['cosine_it_en']['mean']) else '—'} | "
            f"{fmt(summary['final_loss'])} | {summary['wall_s']['mean']:.0f} |"
        )
    reference = next(iter(result["recipes"].values()))["reference_en"]
    lines.append(
        "| English CLIP itself, English prompts (reference) | "
        + " | ".join(f"{reference[k]['mean']:.3f}" for k in COLUMNS)
        + " | | | | | | |"
    )
    return "\n".join(lines)


def mechanism_markdown(result: dict) -> str:
    """The issue-24 columns: transfer, forgetting, the temperature phase 2 starts with, the tower's drift."""
    fmt = lambda s: f"{s['mean']:.3f} ± {s['std']:.3f}"
    lines = [
        "| recipe | seeds | colour+shape | i→t R@1 | forgetting: EN colour+shape | logit scale after phase 1 "
        "(exp) | vision drift: all | embeddings | layer 0 | layer 1 |",
        "|---" * 10 + "|",
    ]
    for name, summary in result["recipes"].items():
        scales = summary.get("logit_scale_at_phase_end", {})
        first = scales[next(iter(scales))] if len(scales) > 1 else None
        drift = summary.get("vision_drift", {})
        lines.append(
            f"| {RECIPES[name][0]} | {len(result['runs'][name])} | {fmt(summary['zero_shot']['colour+shape'])} | "
            f"{fmt(summary['retrieval']['text_retrieval_recall@1'])} | {fmt(summary['forgetting_en']['colour+shape'])} | "
            + (f"{fmt(first)} ({np.exp(first['mean']):.1f})" if first else "— (one phase)")
            + " | "
            + " | ".join(
                fmt(drift[k]) if k in drift else "" for k in ("all", "embeddings", "layer_0", "layer_1")
            )
            + " |"
        )
    return "\n".join(lines)


def pareto_plot(result: dict, path: str) -> str:
    """Transfer (Italian held-out colour+shape) against forgetting (English colour+shape with the tower): one
    point per recipe (mean over seeds, error bars: std), and each WiSE-FT sweep as a line from alpha 0 to 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    for i, (name, summary) in enumerate(result["recipes"].items()):
        x, y = summary["zero_shot"]["colour+shape"], summary["forgetting_en"]["colour+shape"]
        ax.errorbar(
            x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="os^Dv<>"[i % 7], color=plt.cm.tab20(i),
            capsize=2, label=name,
        )  # fmt: skip
        sweep = summary.get("wise_ft")
        if sweep and name in ("a_two_phase", "b_all_from_start"):
            alphas = sorted(sweep, key=float)
            ax.plot(
                [sweep[a]["colour+shape"]["mean"] for a in alphas],
                [sweep[a]["forgetting_en"]["mean"] for a in alphas],
                "--",
                alpha=0.6,
                label=f"{name} WiSE-FT α=0…1 ({sweep[alphas[0]]['runs']} seeds)",
            )
    reference = next(iter(result["recipes"].values()))["reference_en"]["colour+shape"]["mean"]
    ax.axhline(reference, color="grey", lw=0.8, ls=":", label="English CLIP untouched")
    ax.set_xlabel("Italian zero-shot colour+shape, held-out pairs (transfer)")
    ax.set_ylabel("English CLIP's English colour+shape with the tower (higher: less forgetting)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def merge(paths: list[str]) -> dict:
    """Result files of separate invocations (e.g. one seed each) as one result, runs pooled per recipe; a
    recipe's run with a seed that an earlier file also ran replaces that run (a rerun, e.g. with more measured)."""
    files = [json.loads(Path(p).read_text()) for p in paths]
    by_seed: dict[str, dict[int, dict]] = {}
    for f in files:
        for name, rs in f["runs"].items():
            for seed, run in zip(f["args"]["seeds"], rs):
                by_seed.setdefault(name, {})[seed] = run
    runs = {name: [seeds[s] for s in sorted(seeds)] for name, seeds in by_seed.items()}
    order = [n for n in RECIPES if n in runs]
    return {
        "merged_from": [str(p) for p in paths],
        "args": [f["args"] for f in files],
        "machine": files[0]["machine"],
        "settings": files[0]["settings"],
        "standins": files[0]["standins"],
        "recipes": {n: summarise(runs[n]) for n in order},
        "runs": {n: runs[n] for n in order},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument(
        "--phase1", type=int, default=300, help="phase-1 steps (one-phase recipes: phase1 + phase2)"
    )
    parser.add_argument("--phase2", type=int, default=400)
    parser.add_argument("--cache_dir", default="~/.cache/clip_jax")
    parser.add_argument(
        "--holdout",
        default=None,
        help="held-out colour:shape pairs instead of the demo's (e.g. a second holdout)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny stand-ins and runs (CI)")
    parser.add_argument(
        "--standins",
        nargs=2,
        default=None,
        metavar=("ENGLISH_CLIP", "ITALIAN_BERT"),
        help="directories of stand-ins already built (e.g. the tests' own) instead of building them",
    )
    parser.add_argument("--out", default=None, help="results folder (default bench/results)")
    parser.add_argument("--name", default="recipe_cpu", help="results file name, without .json")
    parser.add_argument(
        "--merge", nargs="+", default=None, help="only pool these result files (runs per recipe)"
    )
    parser.add_argument(
        "--plot", default=None, help="with --merge: write the transfer/forgetting plot (PNG) here"
    )
    args = parser.parse_args()
    if args.merge:
        result = merge(args.merge)
        result["markdown"], result["mechanism_markdown"] = markdown(result), mechanism_markdown(result)
        print(result["markdown"] + "\n\n" + result["mechanism_markdown"])
        if args.plot:
            print(f"plot written to {pareto_plot(result, args.plot)}")
        write_result(args.name, result, args.out)
        return
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    from clip_jax.demo import standins as standin_lib

    settings = {
        "phase1": args.phase1,
        "phase2": args.phase2,
        "batch": 64,
        "projection_dim": 64,
        "lrs": {"head": 5e-4, "vision": 2e-4, "text": 5e-4},
        "shapes": {"num_train": 4096, "num_val": 256},
    }
    cache_dir = args.cache_dir
    if args.holdout:
        settings["shapes"]["holdout"] = args.holdout
    english, italian = standin_lib.EnglishCLIPSettings(), standin_lib.ItalianBertSettings()
    if args.smoke:
        cache_dir = tempfile.mkdtemp(prefix="recipe-smoke-")
        english = standin_lib.EnglishCLIPSettings(
            image_size=32,
            vision_width=32,
            text_width=32,
            projection_dim=32,
            num_train=256,
            steps=20,
            batch_size=32,
        )
        italian = standin_lib.ItalianBertSettings(width=32, num_other_sentences=200, steps=20, batch_size=32)
        settings.update(
            phase1=4,
            phase2=4,
            batch=32,
            projection_dim=16,
            shapes={"num_train": 128, "num_val": 32, "image_size": 32},
        )
        args.seeds, args.recipes = args.seeds[:1], ["e_per_device_loss", "f_cached_phase1"]
    if args.standins:
        standins = dict(zip(("english-clip", "italian-bert"), args.standins))
    else:
        standins = {
            "english-clip": str(standin_lib.english_clip(cache_dir, english)),
            "italian-bert": str(standin_lib.italian_bert(cache_dir, italian)),
        }
    result = {
        "args": {**vars(args), "smoke": args.smoke},
        "machine": machine(),
        "settings": settings,
        "standins": {
            k: json.loads(Path(v, "standin.json").read_text())["settings"] for k, v in standins.items()
        },
        "recipes": {},
        "runs": {},
    }
    for name in args.recipes:
        runs = []
        for seed in args.seeds:
            workdir = tempfile.mkdtemp(prefix=f"recipe-{name}-{seed}-")
            try:
                runs.append(run_recipe(name, seed, settings, cache_dir, workdir, standins))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            print(
                f"{name} seed {seed}: {json.dumps(runs[-1]['zero_shot'])} forgetting "
                f"{json.dumps(runs[-1]['forgetting_en'])} logit scales "
                f"{json.dumps(runs[-1]['logit_scale_at_phase_end'])} drift {json.dumps(runs[-1]['vision_drift'])} "
                f"wall {runs[-1]['wall_s']:.0f}s",
                flush=True,
            )
        result["runs"][name] = runs
        result["recipes"][name] = summarise(runs)
    if args.smoke:
        shutil.rmtree(cache_dir, ignore_errors=True)
    result["markdown"] = markdown(result)
    print(result["markdown"])
    if any("vision_drift" in r for r in result["recipes"].values()):
        result["mechanism_markdown"] = mechanism_markdown(result)
        print(result["mechanism_markdown"])
    write_result(args.name, result, args.out)


if __name__ == "__main__":
    main()
