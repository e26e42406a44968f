"""The ``clip-jax`` command: ``train``, ``eval``, ``export`` and ``to-webdataset``.

    clip-jax train [--config demo|clip_italian|FILE.py] [--workdir DIR] [--config.KEY=VALUE ...]
    clip-jax eval --model runs/it --task zeroshot --dataset imagefolder:DIR --classnames it:cifar10 ...
    clip-jax export --checkpoint runs/it --out exported/it
    clip-jax to-webdataset --input jsonl:train.jsonl --output shards/train

A user's mistake (a bad value, a missing file, an unknown config key...) ends in one line,
``error: <what> — <how to fix>``, and exit status 2 (1 for a failure while running, such as a
diverged loss or a full disk); ``--debug`` anywhere on the command line, or ``CLIP_JAX_DEBUG=1``,
shows the traceback as well. ``train.py`` and ``eval.py`` in a checkout are this command's
``train`` and ``eval``.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from clip_jax.commandline import UsageError, define_config_flag, parse_config_command

COMMANDS = {
    "train": "train a dual encoder (a recipe by name or a config file; resumes in its workdir)",
    "eval": "zero-shot classification, retrieval or embedding maps of workdirs, exports or hub ids",
    "plan": "compile a recipe for a TPU slice (no TPU needed): memory per chip, fit, FLOPs, collectives",
    "export": "write a checkpoint in the Hugging Face format (and push it to the hub)",
    "to-webdataset": "convert an image-caption listing to WebDataset tar shards",
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the input is wrong" (or the environment is), not "clip_jax has a bug"."""
    from clip_jax.weights.readers import CheckpointError
    from clip_jax.workdir import WorkdirInUse

    errors: list[type[BaseException]] = [
        UsageError,
        ValueError,
        CheckpointError,
        OSError,
        ImportError,
        WorkdirInUse,
    ]
    try:
        from clip_jax.data.pipeline import DataError

        errors.append(DataError)
    except ImportError:
        pass
    for module, name in (("clip_jax.train.trainer", "TrainingDiverged"), ("clip_jax.export", "PushError")):
        loaded = sys.modules.get(module)  # only if already imported: nothing raises it otherwise
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def _message(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    if (
        isinstance(error, OSError)
        and not isinstance(error, (FileNotFoundError,))
        and error.strerror
        and "—" not in text
    ):
        text += " — check the path, its permissions and the free disk space"
    if isinstance(error, ModuleNotFoundError) and "pip install" not in text:
        text += ' — install the missing package (see the extras in the README: pip install "clip_jax[...]")'
    return text


_HARD_EXIT = False  # set by the console entry points: see run_guarded


def run_guarded(fn: Callable[[], object], *, debug: bool) -> int:
    """Run ``fn``; a user error becomes ``error: ...`` on stderr and a non-zero status (traceback if ``debug``).

    After a failed checkpoint write, orbax's and tensorstore's background tasks print hundreds of lines of
    tracebacks while the interpreter shuts down; a console command (not an in-process call) therefore ends
    at once (``os._exit``) once the error is reported, the workdir lock released and the logs closed."""
    try:
        fn()
        return 0
    except KeyboardInterrupt as stop:
        print(f"error: interrupted{f': {stop}' if str(stop) else ''}", file=sys.stderr)
        return 130
    except SystemExit as stop:  # argparse / absl usage errors already printed their message
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
    except _user_errors() as error:
        if debug:
            traceback.print_exc()
        # A mistake in the inputs is 2; a failure while running (diverged loss, disk full, network) is 1.
        mistake = (UsageError, ValueError, FileNotFoundError, NotADirectoryError, ImportError)
        status = 2 if isinstance(error, mistake) else 1
        print(f"error: {_message(error)}", file=sys.stderr)
        if not debug:
            print("(run again with --debug for the traceback)", file=sys.stderr)
        if _HARD_EXIT and type(error).__name__ == "CheckpointWriteError":
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
        return status


def _quiet_background_errors() -> None:
    """Without --debug: an exception in a background thread (a log writer failing on a full disk...) is one
    line, and orbax's error logs with tracebacks are dropped (the failure reaches the main thread, which
    reports it as ``error: ...``)."""
    import logging
    import threading

    def hook(args):
        print(
            f"warning: background thread {args.thread.name if args.thread else '?'}: "
            f"{args.exc_type.__name__}: {args.exc_value}",
            file=sys.stderr,
        )

    threading.excepthook = hook
    previous = sys.excepthook

    def quiet_closed_loop(kind, value, tb):
        # tensorstore's I/O threads report into orbax's closed event loop after a failed save (via
        # PyErr_Print, i.e. this hook): noise once the failure itself has been reported.
        if kind is RuntimeError and str(value) == "Event loop is closed":
            return
        previous(kind, value, tb)

    sys.excepthook = quiet_closed_loop
    previous_unraisable = sys.unraisablehook

    def quiet_unraisable(unraisable):  # the same noise, when it arrives as an "unraisable" exception
        if (
            isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"
        ):
            return
        previous_unraisable(unraisable)

    sys.unraisablehook = quiet_unraisable

    class DropOrbaxErrors(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)

    from absl import logging as absl_logging

    # On the handlers that print, not on the logger: clip_jax's Checkpointer still sees the records (it quotes
    # their cause in its error).
    for handler in {absl_logging.get_absl_handler(), *logging.getLogger().handlers}:
        handler.addFilter(DropOrbaxErrors())


def _pop_debug(argv: list[str]) -> tuple[list[str], bool]:
    debug = os.environ.get("CLIP_JAX_DEBUG", "").lower() in ("1", "true", "yes", "on")
    rest = [a for a in argv if a not in ("--debug", "--debug=true", "--debug=1")]
    return rest, debug or len(rest) != len(argv)


def _usage() -> str:
    lines = [
        "usage: clip-jax {" + ",".join(COMMANDS) + "} [options]   (clip-jax COMMAND --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<15}{text}" for name, text in COMMANDS.items()]
    lines += ["", "--debug (anywhere) shows the traceback of an error."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clip-jax`` console script; returns the exit status."""
    argv, debug = _pop_debug(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r} — choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    if not debug:
        _quiet_background_errors()
    if command == "train":
        return run_guarded(lambda: train_main(rest), debug=debug)
    if command == "eval":
        from clip_jax.evaluate.cli import main as eval_main

        return run_guarded(lambda: eval_main(rest), debug=debug)
    if command == "plan":
        from clip_jax.plan.cli import main as plan_main

        return run_guarded(lambda: plan_main(rest), debug=debug)
    if command == "export":
        from clip_jax.export import main as export_main

        return run_guarded(lambda: export_main(rest), debug=debug)
    from clip_jax.data.to_webdataset import main as convert_main

    return run_guarded(lambda: convert_main(rest), debug=debug)


# ---------------------------------------------------------------------------------------------- train
TRAIN_HELP = """\
clip-jax train: train a CLIP dual encoder.

    clip-jax train                                   # the offline demo recipe, in runs/demo
    clip-jax train --config clip_italian --workdir runs/it --config.data.train=wds:/data/it-{00000..00279}.tar
    clip-jax train --config my_recipe.py --config.train.batch_size=4096 --print_config

--config takes a built-in recipe ({recipes}) or a Python file with get_config(). Running again with
the same --workdir resumes from its latest checkpoint; one run at a time may use a workdir.
"""


def _define_train_flags(argv: Sequence[str] = (), config: Any = None):
    """A fresh set of the train command's flags (not absl's global FLAGS, so it can be parsed more than once);
    ``argv`` (with the program name first) tells ml_collections which ``--config.KEY`` overrides to define
    on ``config`` (the loaded recipe; None: only the flags' help)."""
    from absl import flags

    values = flags.FlagValues()
    define_config_flag(values, argv, config)
    flags.DEFINE_string(
        "workdir", None, "Run directory (local or gs://); default runs/<config name>.", flag_values=values
    )
    flags.DEFINE_integer(
        "step",
        None,
        "Resume from this checkpoint instead of the latest (e.g. when the latest is damaged); the later "
        "ones are moved to <workdir>/set_aside.",
        flag_values=values,
    )
    flags.DEFINE_bool(
        "print_config", False, "Print the resolved config (recipe + overrides) and exit.", flag_values=values
    )
    flags.DEFINE_string(
        "coordinator",
        None,
        "host:port of process 0, for multi-process runs off TPU/SLURM.",
        flag_values=values,
    )
    flags.DEFINE_integer(
        "num_processes", None, "Number of processes in a multi-process run.", flag_values=values
    )
    flags.DEFINE_integer(
        "process_id", None, "This process's index in a multi-process run.", flag_values=values
    )
    flags.DEFINE_bool(
        "distributed",
        False,
        "Call jax.distributed.initialize() with automatic settings (TPU pods, SLURM).",
        flag_values=values,
    )
    return values


def train_main(argv: Sequence[str]) -> dict | None:
    """``clip-jax train``: parse flags, check the config, train, print a summary."""

    from clip_jax import configs

    argv = list(argv)
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv):
        FLAGS = _define_train_flags()
        print(TRAIN_HELP.replace("{recipes}", ", ".join(configs.names())))
        print("\n".join(f"  --{name}: {FLAGS[name].help}" for name in FLAGS))
        print(
            "  --config.KEY=VALUE: override any key of the config (see --print_config)\n  --debug: show tracebacks"
        )
        return None
    FLAGS, config_file = parse_config_command("train", argv, _define_train_flags)
    if FLAGS.workdir is not None and not FLAGS.workdir.strip():
        raise UsageError(
            "--workdir is empty — give a run directory, or leave --workdir out for runs/<config name>"
        )
    if FLAGS.workdir is not None and FLAGS.workdir.startswith("-"):  # `--workdir --print_config`
        raise UsageError(
            f"--workdir {FLAGS.workdir} looks like a flag, not a directory — give --workdir a value "
            "(--workdir=DIR), or use ./-name for a directory whose name starts with '-'"
        )
    config = FLAGS.config
    if FLAGS.print_config:  # a bad config is refused here too; a run is validated once, by the Trainer
        from clip_jax.config import validate

        print(validate(config))
        return None
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    from clip_jax.sharding import initialize_distributed

    initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id, auto=FLAGS.distributed)
    from clip_jax.train import train

    config_name = os.path.splitext(os.path.basename(config_file.partition(":")[0]))[0]
    workdir = FLAGS.workdir or os.path.join("runs", config_name)
    summary = train(config, workdir, resume_step=FLAGS.step)
    import jax

    # The demo report reloads the checkpoint on one process; in a multi-process run orbax would wait for
    # the others, so it is skipped there.
    if jax.process_count() == 1 and config.data.source == "shapes" and not summary["preempted"]:
        from clip_jax.demo import report

        summary["demo"] = report(config, workdir)
    if jax.process_index() == 0:
        print(f"\nDone: step {summary['step']} ({summary['phase']}), preempted={summary['preempted']}.")
        for key, value in (summary.get("val") or {}).items():
            print(f"  {key}: {value:.4f}")
        skipped = summary.get("skipped") or {}
        if skipped:
            print(f"  skipped examples: {skipped}")
        print(f"Checkpoints, TensorBoard logs and metrics.jsonl are in {workdir}.")
    if summary.get("interrupted"):  # Ctrl-C: checkpointed, but the command did not finish (status 130)
        raise KeyboardInterrupt(
            f"saved a checkpoint at step {summary['step']} in {workdir} — run the same command to resume"
        )
    return summary


def console(argv: Sequence[str] | None = None) -> None:
    """The console script (``clip-jax``) and the checkout's ``train.py`` / ``eval.py``: :func:`main`, then exit."""
    global _HARD_EXIT
    _HARD_EXIT = True
    sys.exit(main(argv))


if __name__ == "__main__":
    console()
