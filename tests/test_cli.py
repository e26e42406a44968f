"""The clip-jax command: subcommands, recipes by name, one-line errors for user mistakes, up-front value
checks, --print_config, the workdir lock. Real subprocesses where the command line itself is tested."""

import json
import os
import socket
import subprocess
import sys

import pytest
from train_helpers import CLI_TINY, REPO, subprocess_env, tiny_config

from clip_jax.cli import main


def cli(*args, env=None, timeout=240, cwd=REPO):
    """``python -m clip_jax.cli ARGS`` in a subprocess (what the console script runs)."""
    return subprocess.run(
        [sys.executable, "-m", "clip_jax.cli", *args],
        env=env or subprocess_env(1),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def assert_one_line_error(result, *needles):
    """Exit non-zero, no traceback, ``error: ...`` naming every needle."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_help_lists_the_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "export", "to-webdataset"):
        assert command in out
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_unknown_config_key_lists_the_valid_keys_of_its_section():
    result = cli("train", "--config.train.bach_size=3")
    line = assert_one_line_error(result, "train.bach_size", "batch_size", "log_every")
    assert (
        "phases" not in line.split("valid keys of train:")[1] or "warmup" not in line
    )  # that section's keys only
    assert_one_line_error(
        cli("train", "--config.phases.warmup.stepz=3"), "phases.warmup.stepz", "steps", "warmup_steps"
    )


def test_debug_shows_the_traceback():
    result = cli("train", "--config.train.bach_size=3", "--debug")
    assert (
        result.returncode == 2
        and "Traceback" in result.stderr
        and "error: unknown config key" in result.stderr
    )
    env = dict(subprocess_env(1), CLIP_JAX_DEBUG="1")
    assert "Traceback" in cli("train", "--config.train.bach_size=3", env=env).stderr


@pytest.mark.parametrize(
    "override, needle",
    [
        ("--config.phases.warmup.steps=-5", "phases.warmup.steps=-5"),
        ("--config.phases.warmup.steps=0", "phases.warmup.steps=0"),
        ("--config.train.batch_size=0", "train.batch_size=0"),
        ("--config.train.batch_size=-8", "train.batch_size=-8"),
        ("--config.phases.finetune.learning_rates.text=-0.001", "phases.finetune.learning_rates.text=-0.001"),
        ("--config.data.max_bad_fraction=1.5", "data.max_bad_fraction=1.5"),
        ("--config.data.max_bad_fraction=-0.1", "data.max_bad_fraction=-0.1"),
        ("--config.phases.warmup.trainable=(head", "phases.warmup.trainable"),
        ("--config.phases.warmup.warmup_steps=-1", "phases.warmup.warmup_steps=-1"),
        ("--config.train.batch_size=abc", "batch_size"),
        ("--config=no_such_recipe", "no built-in recipe 'no_such_recipe'"),
        ("--config=missing/file.py", "does not exist"),
        # issue 23: every value with a type and a range, named with its value and the fix
        ("--config.train.b2=1.5", "train.b2=1.5 is invalid: it must be a number in [0, 1) — fix it"),
        ("--config.model.image_size=-1", "model.image_size=-1 is invalid"),
        ("--config.phases.warmup.end_factor=5", "phases.warmup.end_factor=5.0 is invalid"),
        ("--config.model.projection_dim=-3", "model.projection_dim=-3 is invalid"),
        ("--config.model.projection_dim=0", "model.projection_dim=0 is invalid"),
        ("--config.data.shapes.num_train=0", "data.shapes.num_train=0 is invalid"),
        ("--config.data.crop_scale=abc", "data.crop_scale=('abc',) is invalid: it must be (low, high)"),
        ("--config.model.logit_scale_init=nan", "model.logit_scale_init=nan is invalid"),
        ("--config.train.phases=('warmup','warmup')", "train.phases=('warmup', 'warmup') is invalid"),
    ],
)
def test_values_that_make_no_sense_are_rejected_before_any_work(override, needle, tmp_path, capsys):
    status = main(["train", f"--workdir={tmp_path / 'w'}", override])
    err = capsys.readouterr().err
    assert status == 2 and "error: " in err and needle in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "w").exists()  # rejected before the workdir is touched


@pytest.mark.parametrize(
    "args, needle",
    [
        (
            ["tiny"],
            "clip-jax train takes no positional arguments (tiny) — name a recipe or file with --config",
        ),
        (["--config=tiny", "--config", "demo"], "--config is given 2 times (tiny, demo) — give one"),
        (["--workdir="], "--workdir is empty — give a run directory"),
        (["--workdir", "--print_config"], "--workdir --print_config looks like a flag"),
    ],
)
def test_command_line_mistakes_are_refused(args, needle, tmp_path, capsys, monkeypatch):
    """Issue 23: a positional `tiny` ran the full demo; of two --config flags the last won; --workdir ""
    trained into runs/<name>."""
    monkeypatch.chdir(tmp_path)
    status = main(["train", *args, "--print_config"])
    err = capsys.readouterr().err
    assert status == 2 and f"error: {needle}" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written


@pytest.mark.parametrize(
    "source, needle",
    [
        (
            "def get_config(:\n    pass\n",
            "config file {path}, line 1: invalid syntax — fix the Python syntax",
        ),
        (
            "x = 1\n",
            "config file {path} defines no get_config() — add one returning an ml_collections ConfigDict",
        ),
        (
            "def get_config():\n    return {'train': {}}\n",
            "config file {path}: get_config() returned a dict, not an ml_collections ConfigDict — return",
        ),
        (
            "def get_config():\n    return 1 / 0\n",
            "config file {path}, line 2: ZeroDivisionError: division by zero — fix the file",
        ),
    ],
)
def test_a_broken_config_file_is_one_line_naming_it(source, needle, tmp_path, capsys):
    """Issue 23: a config file's own errors were tracebacks; --print_config runs the file too."""
    path = tmp_path / "recipe.py"
    path.write_text(source)
    for extra in ([], ["--print_config"]):
        status = main(["train", f"--config={path}", f"--workdir={tmp_path / 'w'}", *extra])
        err = capsys.readouterr().err
        assert status == 2 and "error: " + needle.format(path=path) in err and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "w").exists()


def test_max_length_beyond_the_text_tower_is_an_error_not_a_clamp(tmp_path, capsys):
    """Issue 23: --config.model.max_length=1000 was clamped to the tower's 32 while config.json kept 1000."""
    status = main(
        [
            "train",
            f"--workdir={tmp_path / 'w'}",
            f"--config.data.cache_dir={tmp_path / 'c'}",
            *CLI_TINY,
            "--config.model.max_length=1000",
        ]
    )
    err = capsys.readouterr().err
    assert (
        status == 2
        and "error: max_length=1000 does not fit the text tower, which takes 1 to 32 tokens" in err
    )
    assert "--config.model.max_length=32 or less" in err and "Traceback" not in err
    assert not (tmp_path / "w" / "config.json").exists()


def test_recipes_by_name_and_print_config(capsys):
    assert main(["train", "--config", "clip_italian", "--print_config", "--config.train.batch_size=64"]) == 0
    out = capsys.readouterr().out
    assert "dbmdz/bert-base-italian-xxl-uncased" in out and "batch_size: 64" in out
    assert main(["train", "--print_config"]) == 0  # the default is the demo recipe
    assert "source: shapes" in capsys.readouterr().out
    path = REPO / "configs" / "clip_italian.py"  # a path works as well (the checkout's re-export)
    assert main(["train", f"--config={path}", "--print_config"]) == 0
    assert "adabelief" in capsys.readouterr().out


def test_a_config_file_runs_once_per_command(tmp_path, capsys):
    """Issue 26: the config file is Python; it ran twice per command (once to check the overrides, once for
    the flags). Now its get_config() result is the --config flag, overrides applied to it."""
    calls = tmp_path / "calls"
    config_file = tmp_path / "counted.py"
    config_file.write_text(
        "from clip_jax.configs.tiny import get_config as tiny\n"
        "def get_config():\n"
        f"    open({str(calls)!r}, 'a').write('x')\n"
        "    return tiny()\n"
    )
    assert main(["train", f"--config={config_file}", "--print_config", "--config.train.batch_size=48"]) == 0
    assert "batch_size: 48" in capsys.readouterr().out
    assert calls.read_text() == "x"
    assert main(["plan", f"--config={config_file}", "--topology", "cpu:1", "--phases", "none"]) != 0
    assert calls.read_text() == "xx"  # plan too: one run (it then refuses the unknown step)


def test_batch_size_not_divisible_by_devices_and_bad_workdirs(tmp_path):
    env = subprocess_env(8)
    result = cli("train", f"--workdir={tmp_path / 'w'}", *CLI_TINY, "--config.train.batch_size=12", env=env)
    assert_one_line_error(result, "12", "not divisible by the 8")
    (tmp_path / "file").write_text("x")
    result = cli("train", f"--workdir={tmp_path / 'file'}", *CLI_TINY, env=env)
    assert_one_line_error(result, "is a file", "--workdir")
    if os.geteuid() != 0:  # root writes anywhere
        readonly = tmp_path / "ro"
        readonly.mkdir()
        readonly.chmod(0o500)
        result = cli("train", f"--workdir={readonly / 'run'}", *CLI_TINY, env=env)
        assert_one_line_error(result, "cannot be written")


def test_a_damaged_checkpoint_in_a_workdir_is_one_line_naming_the_other_steps(tmp_path):
    """Truncated array files in the latest checkpoint of a real run: export and eval name the checkpoint and
    the steps that can be loaded instead; --step loads one of them."""
    from clip_jax.train import train

    workdir = tmp_path / "run"
    train(tiny_config(tmp_path / "cache"), str(workdir))  # keeps checkpoints 3 (phase end), 4 and 6
    for path in (workdir / "checkpoints" / "6" / "state" / "d").iterdir():
        path.write_bytes(path.read_bytes()[:100])
    for result in (
        cli("export", "--checkpoint", str(workdir), "--out", str(tmp_path / "out")),
        cli("eval", "--model", str(workdir), "--task", "retrieval", "--data", "jsonl:x.jsonl"),
    ):
        assert_one_line_error(result, "checkpoint 6", "could not be read", "--step", "[3, 4]")
    exported = cli("export", "--checkpoint", str(workdir), "--step", "4", "--out", str(tmp_path / "out"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "out" / "config.json").is_file()


def test_export_and_eval_of_a_corrupt_checkpoint_are_one_line(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    assert_one_line_error(
        cli("export", "--checkpoint", str(bad), "--out", str(tmp_path / "out")), "holds no weights"
    )
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{trunc")
    assert_one_line_error(
        cli("export", "--checkpoint", str(bad), "--out", str(tmp_path / "out")),
        "model.safetensors",
        "truncated or corrupt",
    )
    run = tmp_path / "run"  # looks like a workdir but holds no checkpoint
    (run / "checkpoints").mkdir(parents=True)
    assert_one_line_error(
        cli("eval", "--model", str(run), "--task", "retrieval", "--data", "jsonl:x.jsonl"),
        "config.json is missing",
    )
    assert_one_line_error(
        cli(
            "to-webdataset",
            "--input",
            f"jsonl:{tmp_path / 'none.jsonl'}",
            "--output",
            str(tmp_path / "shards"),
        ),
        "none.jsonl",
        "does not exist",
    )


def test_a_relative_path_that_does_not_exist_is_no_such_directory(tmp_path):
    (tmp_path / "runs").mkdir()  # runs/ exists here, so runs/it is a path, not the hub id of user "runs"
    result = cli("export", "--checkpoint", "runs/no_such_run", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(result, "No such checkpoint directory", "runs/no_such_run")
    # Shaped like a hub id and no local folder: the hub lookup fails (offline here) and says both.
    result = cli(
        "eval", "--model", "someone/no_such_model", "--task", "retrieval", "--data", "x.jsonl", cwd=tmp_path
    )
    assert_one_line_error(result, "someone/no_such_model", "no such local directory", "HF_HUB_OFFLINE")


# ------------------------------------------------------------------------------------------ workdir lock
def test_workdir_lock_refuses_a_second_run_and_takes_over_a_stale_one(tmp_path):
    from clip_jax.workdir import WorkdirInUse, WorkdirLock

    workdir = tmp_path / "w"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        workdir.mkdir()
        (workdir / "lock").write_text(
            json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "since": "earlier"})
        )
        with pytest.raises(WorkdirInUse, match=rf"pid {sleeper.pid} on host .* delete .*lock"):
            WorkdirLock(workdir).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with WorkdirLock(workdir) as lock:  # its holder is gone: stale, taken over
        assert json.loads((workdir / "lock").read_text())["pid"] == os.getpid() and lock.held
    assert not (workdir / "lock").exists()
    (workdir / "lock").write_text(json.dumps({"host": "another-host", "pid": 1, "since": "earlier"}))
    with pytest.raises(WorkdirInUse, match="another-host"):  # cannot be checked from here: refused
        WorkdirLock(workdir).acquire()


def test_second_train_on_a_running_workdir_is_refused(tmp_path):
    """A real run holds the lock; a second train.py on the same workdir exits with one line, its logs untouched."""
    env = subprocess_env(8)
    workdir, cache = tmp_path / "w", tmp_path / "cache"
    first = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "train.py"),
            f"--workdir={workdir}",
            f"--config.data.cache_dir={cache}",
            *CLI_TINY,
            "--config.phases.warmup.steps=400",
            "--config.phases.finetune.steps=1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import time

        deadline = time.time() + 180
        while not (workdir / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert first.poll() is None, first.stderr.read()[-3000:]
        holder = json.loads((workdir / "lock").read_text())
        assert holder["pid"] == first.pid
        second = subprocess.run(
            [
                sys.executable,
                str(REPO / "train.py"),
                f"--workdir={workdir}",
                f"--config.data.cache_dir={cache}",
                *CLI_TINY,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert_one_line_error(second, "in use by another run", f"pid {first.pid}")
    finally:
        first.terminate()  # SIGTERM: the first run checkpoints and exits, releasing the lock
        first.wait(timeout=120)
    assert not (workdir / "lock").exists()


# ------------------------------------------------------------------------------------- checkpoint writes
FAULTY_RUN = """
import resource, signal, sys
sys.path.insert(0, {tests!r})
from train_helpers import tiny_config
import clip_jax.cli
from clip_jax import checkpoint
from clip_jax.train import train

# A real write error from the OS: from the save of step 4 on, files may not grow past 20 kB (SIGXFSZ ignored, so
# writes fail with EFBIG, as they fail with ENOSPC on a full disk). Logs stay far below that; checkpoints do not.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
save = checkpoint.Checkpointer.save
def limited_save(self, step, state, meta):
    if step >= 4:
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.RLIM_INFINITY))
    return save(self, step, state, meta)
checkpoint.Checkpointer.save = limited_save
config = tiny_config({cache!r}, **{{"train.async_checkpoints": {use_async}}})
clip_jax.cli._HARD_EXIT = True
clip_jax.cli._quiet_background_errors()
sys.exit(clip_jax.cli.run_guarded(lambda: train(config, {workdir!r}), debug=False))
"""


@pytest.mark.parametrize("use_async", [True, False])
def test_a_failing_checkpoint_write_stops_the_run_with_one_line(tmp_path, use_async):
    workdir, cache = tmp_path / "w", tmp_path / "cache"
    script = tmp_path / "faulty.py"
    script.write_text(
        FAULTY_RUN.format(
            tests=str(REPO / "tests"), cache=str(cache), workdir=str(workdir), use_async=use_async
        )
    )
    result = subprocess.run(
        [sys.executable, str(script)], env=subprocess_env(8), capture_output=True, text=True, timeout=300
    )
    line = assert_one_line_error(
        result,
        "could not write the checkpoint of step 4",
        "File too large",
        "last complete checkpoint (step 3)",
    )
    assert len(result.stderr.splitlines()) < 40, result.stderr[-3000:]  # was 481 lines and 5 tracebacks
    assert line and not (workdir / "lock").exists()
    from clip_jax.checkpoint import Checkpointer

    assert (
        Checkpointer(str(workdir)).latest_step() == 3
    )  # the previous checkpoints are untouched: resume works
    resumed = subprocess.run(
        [
            sys.executable,
            str(REPO / "train.py"),
            f"--workdir={workdir}",
            f"--config.data.cache_dir={cache}",
            *CLI_TINY,
            "--config.phases.warmup.steps=3",
            "--config.phases.finetune.steps=3",
            "--config.train.checkpoint_every=2",
            # the faulty run's config (tiny_config) differs from the command line's in warm-up steps: safe changes
            "--config.train.allow_config_change=True",
        ],
        env=subprocess_env(8),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0 and "Resumed from step 3" in resumed.stdout + resumed.stderr, (
        resumed.stderr[-3000:]
    )


def snapshot(directory):
    """{relative path: bytes} of every file under ``directory``."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_a_resume_is_checked_against_its_workdir_before_anything_is_written(tmp_path):
    """A real run; then resumes that the checkpoint cannot take (tower shape, which parameters a phase trains), one
    that changes the run without train.allow_config_change, and one from a damaged latest checkpoint: each is one
    line and leaves every file of the workdir as it was. --step resumes from an earlier checkpoint; an allowed
    change is recorded; the workdir stays loadable throughout."""
    from clip_jax import load_model

    env, workdir = subprocess_env(8), tmp_path / "run"
    base = [
        f"--workdir={workdir}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        *CLI_TINY,
        "--config.phases.warmup.steps=2",
        "--config.phases.finetune.steps=4",
        "--config.train.checkpoint_every=2",
        "--config.train.async_checkpoints=False",
    ]
    first = cli("train", *base, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(workdir)
    assert "config.json" in before and "model/config.json" in before

    refused = [
        (
            ["--config.model.vision.hidden_size=48"],
            ["model.vision.hidden_size: 32 → 48", "another --workdir"],
        ),
        (["--config.phases.finetune.trainable=text.*"], ["phases.finetune.trainable: '.*' → 'text.*'"]),
        (["--config.loss.kind=sigmoid"], ["loss.kind: 'softmax' → 'sigmoid'"]),
        (["--config.train.grad_clip_norm=0"], ["train.grad_clip_norm: 1.0 → 0"]),
        (
            ["--config.phases.finetune.steps=6", "--config.train.eval_every=3"],
            [
                "phases.finetune.steps: 4 → 6",
                "train.eval_every: 0 → 3",
                "--config.train.allow_config_change=True",
            ],
        ),
    ]
    for overrides, needles in refused:
        assert_one_line_error(
            cli("train", *base, *overrides, env=env), "the workdir was not changed", *needles
        )
        assert snapshot(workdir) == before, overrides
    # Free changes (decoding threads, the mesh) need no flag: nothing to train, the run just ends.
    free = cli("train", *base, "--config.data.workers=2", "--config.mesh.axes.fsdp=2", env=env)
    assert free.returncode == 0, free.stderr[-3000:]
    assert "data.workers" in (workdir / "config_history.jsonl").read_text()  # recorded all the same

    # The latest checkpoint (6) damaged: one line naming it and the others; nothing written.
    for path in (workdir / "checkpoints" / "6" / "state" / "d").iterdir():
        path.write_bytes(path.read_bytes()[:100])
    damaged = snapshot(workdir)
    grow = ["--config.phases.finetune.steps=6", "--config.train.allow_config_change=True"]
    assert_one_line_error(
        cli("train", *base, *grow, env=env), "checkpoint 6", "could not be read", "--step 4", "[2, 4]"
    )
    assert snapshot(workdir) == damaged

    # --step 4 resumes from there; checkpoint 6 is moved aside, not deleted; the change is recorded.
    resumed = cli("train", *base, *grow, "--step=4", env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from step 4" in resumed.stderr + resumed.stdout
    assert [p.name[:13] for p in (workdir / "set_aside").iterdir()] == ["checkpoint-6-"]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == 8
    history = [json.loads(line) for line in (workdir / "config_history.jsonl").read_text().splitlines()]
    assert history[-1]["resumed_at_step"] == 4
    assert history[-1]["changes"]["phases.finetune.steps"] == [4, 6]
    assert json.loads((workdir / "config.json").read_text())["phases"]["finetune"]["steps"] == 6
    load_model(str(workdir))  # the workdir loads (its latest checkpoint, 8)
