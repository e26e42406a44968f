"""Evaluate CLIP models: zero-shot classification, image–text retrieval, embedding maps.

    clip-jax eval --model runs/it --task zeroshot --dataset imagefolder:/data/cifar10/test \\
        --classnames it:cifar10 --templates it:cifar10
    clip-jax eval --model runs/it --model openai/clip-vit-base-patch32 --task retrieval \\
        --data jsonl:/data/mscoco-it/val.jsonl --output results.json
    clip-jax eval --model runs/it --task embedmap --dataset imagefolder:/data/cifar10/test \\
        --classnames it:cifar10 --templates it:cifar10 --layers --map_out maps/cifar10.png

--model takes a training workdir (its latest checkpoint), an exported directory or a hub id; give it
several times to compare models in one table. Results are printed and, with --output, written as JSON.
(`python eval.py ...` in a checkout is the same command.)
"""

from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The eval command's arguments (the tasks' own options included); a missing option for the chosen task
    is a usage error."""
    from clip_jax.evaluate.tasks import add_options, check_common, tasks

    registered = tasks()
    parser = argparse.ArgumentParser(
        prog="clip-jax eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", action="append", required=True, help="workdir, directory or hub id (repeatable)"
    )
    parser.add_argument(
        "--task",
        choices=list(registered),
        required=True,
        help="; ".join(f"{name}: {task.summary}" for name, task in registered.items()),
    )
    parser.add_argument(
        "--output",
        default=None,
        help="write the results as a JSON list to this file, or into this "
        "directory (existing, or ending in /) one CLIP_benchmark JSON file per result",
    )
    add_options(parser, registered)
    args = parser.parse_args(argv)
    try:
        check_common(args)
    except ValueError as error:
        parser.error(str(error))
    if getattr(args, "reference", None) and args.task != "zeroshot":
        parser.error("--reference (forgetting) is for --task zeroshot.")
    missing = [f"--{n}" for n in registered[args.task].needs if getattr(args, n) is None]
    if missing:
        parser.error(f"--task {args.task} needs {' '.join(missing)}.")
    return args


def main(argv: list[str] | None = None) -> list:
    """``clip-jax eval``: evaluate every --model on the task; returns the result records."""
    args = parse_args(argv)
    repeated = sorted({m for m in args.model if args.model.count(m) > 1})
    if repeated:  # one result file per (data set, model): a repeated model would overwrite its own
        raise ValueError(f"--model {repeated[0]} is given more than once — give each model once")
    if args.output:
        from clip_jax.evaluate.run import check_output

        check_output(args.output)  # before the evaluation, not after it
    from clip_jax import load_model
    from clip_jax.evaluate.run import format_table
    from clip_jax.evaluate.tasks import TASKS

    task = TASKS[args.task]
    if args.reference:
        from clip_jax.evaluate.forgetting import reference_models

        models = reference_models(args.model, args.reference, args.logit_scale)
    else:
        models = ((spec, load_model(spec, logit_scale=args.logit_scale)) for spec in args.model)
    results = [task.run(model, spec, args, i) for i, (spec, model) in enumerate(models)]
    print(format_table(results))
    if args.reference:
        from clip_jax.evaluate.forgetting import forgetting_lines

        print("\n".join(forgetting_lines(results)))
    for r in results:
        if r.get("skipped") or (r["metrics"].get("skipped") if isinstance(r["metrics"], dict) else 0):
            print(
                f"{r['model']} on {r['dataset']}: skipped unusable examples: "
                f"{r.get('skipped') or r['metrics'].get('skipped')}"
            )
    for r in results:
        if r["task"] == "embedmap":
            print(f"{r['model']}: wrote {', '.join(r['metrics']['files'])}")
    if args.output:
        from clip_jax.evaluate.run import write_results

        written = write_results(results, args.output)
        print(f"Results written to {args.output}" + (f" ({len(written)} files)" if len(written) > 1 else ""))
    return results
