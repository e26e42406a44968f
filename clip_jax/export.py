"""Export a trained model to the Hugging Face format, with a model card, and optionally push it.

    clip-jax export --checkpoint runs/it --out exported/it --language it \\
        --datasets wit mscoco-it --results results.json [--push_to_hub USER/REPO --private --revision BRANCH]

``--checkpoint`` is a training workdir (its latest checkpoint, or ``--step``) or a saved model
directory / hub id. The output loads with ``VisionTextDualEncoderModel.from_pretrained`` (PyTorch)
and with ``clip_jax.CLIPModel.from_pretrained``. The hub token comes from ``HF_TOKEN`` or
``huggingface-cli login`` and is never printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clip_jax.evaluate.run import read_results
from clip_jax.hub import DEFAULT_MAX_SHARD_SIZE, EXPORT_FORMATS, push_to_hub


class PushError(RuntimeError):
    """The export was written but could not be pushed to the hub."""


def load_for_export(checkpoint: str, step: int | None = None, logit_scale: float | None = None):
    """(model, training config or None, base model names) from a workdir, a directory or a hub id."""
    from clip_jax import workdir
    from clip_jax.loading import load_model, training_config

    model = load_model(checkpoint, step=step, logit_scale=logit_scale)
    if workdir.is_training_workdir(checkpoint):
        config = training_config(checkpoint).to_dict()
        bases = [config["model"][k] for k in ("vision", "text") if isinstance(config["model"][k], str)]
        return model, config, bases
    return model, None, []


def check_out(out: str) -> None:
    """Raise ``ValueError`` (before any work) for an ``--out`` that is a training workdir or lies inside one, or
    that holds files other than an earlier export."""
    from clip_jax import workdir

    inside = workdir.enclosing_workdir(out)
    if inside is not None:
        raise ValueError(
            f"--out {out} is "
            + (
                "a training workdir"
                if inside == Path(out).expanduser().resolve()
                else f"inside the training workdir {inside}"
            )
            + "; an export there would damage the run — choose a directory outside it, e.g. --out exported/"
            + inside.name
        )
    workdir.check_replaceable(out)


def _save(model, args: argparse.Namespace, bases: list[str], results, config):
    return model.save_pretrained(
        args.out,
        max_shard_size=args.max_shard_size,
        format=args.format,
        hf_model_name=(args.hf_model_name or args.push_to_hub) if args.format == "open_clip" else None,
        card=dict(
            language=args.language,
            license=args.license,
            datasets=args.datasets,
            base_models=bases or model.base_models,
            results=results,
            training_config=config,
            repo_id=args.push_to_hub,
        ),
    )


def _interpolated(model, args: argparse.Namespace):
    """WiSE-FT: ``model``'s towers interpolated with the start's (``clip_jax.wise_ft``)."""
    from clip_jax import workdir
    from clip_jax.loading import load_model
    from clip_jax.wise_ft import interpolate_towers, run_start

    if args.start:
        start = load_model(args.start)
    elif workdir.is_training_workdir(args.checkpoint):
        start = run_start(args.checkpoint)
    else:
        raise ValueError(
            f"--interpolate needs the start weights: {args.checkpoint} is not a training workdir, so it does not "
            "record them — pass --start MODEL (the pretrained model the fine-tuning started from)"
        )
    print(
        f"Towers interpolated: {1 - args.interpolate:g} x start + {args.interpolate:g} x fine-tuned (WiSE-FT)."
    )
    return interpolate_towers(start, model, args.interpolate)


def main(argv: list[str] | None = None) -> str:
    """``clip-jax export``: write the export (and push it); returns the output directory."""
    parser = argparse.ArgumentParser(
        prog="clip-jax export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, help="training workdir, saved model directory or hub id"
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument(
        "--results",
        default=None,
        help="eval.py's --output (a JSON file or a directory of "
        "CLIP_benchmark result files): the model card's model-index",
    )
    parser.add_argument("--language", default=None, help="ISO code for the card's metadata, e.g. it")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument(
        "--datasets", nargs="*", default=[], help="training data sets for the card's metadata"
    )
    parser.add_argument("--max_shard_size", default=DEFAULT_MAX_SHARD_SIZE)
    parser.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="transformers",
        help="transformers: vision-text-dual-encoder (transformers' VisionTextDualEncoderModel, or clip_jax's own "
        "model_type where transformers cannot reproduce the model); open_clip: open_clip's hub layout "
        '(open_clip.create_model_and_transforms("local-dir:OUT") or "hf-hub:USER/REPO")',
    )
    parser.add_argument(
        "--hf_model_name",
        default=None,
        help="with --format open_clip: where open_clip reads the text tower's architecture (default: the "
        "--push_to_hub repo, else OUT's absolute path; both hold its config.json)",
    )
    parser.add_argument("--logit_scale", type=float, default=None, help="override the temperature's scale")
    parser.add_argument(
        "--interpolate",
        type=float,
        default=None,
        metavar="ALPHA",
        help="WiSE-FT: towers (1-ALPHA)*start + ALPHA*fine-tuned (start: the run's initial weights; see --start)",
    )
    parser.add_argument(
        "--start", default=None, help="with --interpolate: the model to start from (default: the run's own)"
    )
    parser.add_argument("--push_to_hub", default=None, metavar="USER/REPO")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--commit_message", default="Upload CLIP dual encoder (clip_jax)")
    args = parser.parse_args(argv)

    check_out(args.out)
    if args.interpolate is not None and not 0.0 <= args.interpolate <= 1.0:
        raise ValueError(
            f"--interpolate {args.interpolate} is outside [0, 1] — give the fine-tuned share, e.g. 0.5"
        )
    if args.start and args.interpolate is None:
        raise ValueError("--start is only used with --interpolate — add --interpolate ALPHA or drop --start")
    model, config, bases = load_for_export(args.checkpoint, args.step, args.logit_scale)
    if args.interpolate is not None:
        model = _interpolated(model, args)
    results = read_results(args.results) if args.results else None
    try:
        out = _save(model, args, bases, results, config)
    except OSError as error:
        raise OSError(
            f"exporting to {args.out} failed: {error} — {args.out} is as it was; free disk space (or fix the "
            "permissions) and run again"
        ) from error
    if args.format == "open_clip":
        print(
            f"Exported to {out} (open_clip's layout: open_clip.create_model_and_transforms('local-dir:{out}'))."
        )
    else:
        compatible = json.loads((out / "config.json").read_text())["model_type"] == "vision-text-dual-encoder"
        print(
            f"Exported to {out} ({'transformers VisionTextDualEncoderModel' if compatible else 'clip_jax-only'} format)."
        )
    if args.push_to_hub:
        try:
            url = push_to_hub(
                out,
                args.push_to_hub,
                private=args.private,
                revision=args.revision,
                commit_message=args.commit_message,
            )
        except Exception as error:  # huggingface_hub raises many types (HTTP, connection, auth, validation)
            raise PushError(
                f"pushing {out} to {args.push_to_hub} failed: {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''} — the export itself is in "
                f"{out}; check the network, `huggingface-cli login` / HF_TOKEN and that the repo id "
                "is yours, then run again"
            ) from error
        print(f"Pushed to {args.push_to_hub}: {url}")
    return str(out)
