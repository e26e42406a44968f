"""Training runs as real processes: resume after kill -9, SIGTERM and Ctrl-C save a checkpoint and exit, and a
2-process jax.distributed run equals a 1-process one. (Split from test_train.py so that xdist's whole-file
workers share the long files evenly.)"""

import json
import signal
import subprocess
import time

import pytest
from train_helpers import launch_two_processes, losses, run, subprocess_env, train_command


def test_resume_after_kill_9_continues_with_identical_losses(tmp_path):
    env = subprocess_env()
    steps = [
        "--config.phases.warmup.steps=6",
        "--config.phases.finetune.steps=14",
        "--config.train.checkpoint_every=3",
    ]
    run(train_command(tmp_path / "straight", tmp_path / "cache", *steps), env)
    reference = losses(tmp_path / "straight")
    assert sorted(reference) == list(range(1, 21))

    workdir = tmp_path / "killed"
    process = subprocess.Popen(
        train_command(workdir, tmp_path / "cache", *steps),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (workdir / "checkpoints" / "9").exists():
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before_kill = max(losses(workdir))
    assert done_before_kill < 20
    result = run(train_command(workdir, tmp_path / "cache", *steps), env)
    assert "Resumed from step" in result.stderr + result.stdout
    resumed = losses(workdir)
    assert sorted(resumed) == list(range(1, 21))
    for step in range(1, 21):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step


def long_run_command(workdir, cache):
    """A run long enough to interrupt: 3 + 400 steps, no checkpoint until it is stopped."""
    return train_command(
        workdir,
        cache,
        "--config.phases.warmup.steps=3",
        "--config.phases.finetune.steps=400",
        "--config.train.checkpoint_every=1000",
    )


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    env = subprocess_env()
    workdir = tmp_path / "run"
    cmd = long_run_command(workdir, tmp_path / "cache")
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:  # wait until phase 2 runs (step 5)
        try:
            if max(losses(workdir), default=0) >= 5:
                break
        except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or a line half-written
            pass
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err[-3000:]
    assert "preempted=True" in out
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] > 3 and steps[-1] == max(losses(workdir))


def test_two_processes_match_one_process(tmp_path):
    """A real 2-process jax.distributed run (gloo, 4 CPU devices each) = a 1-process 8-device run."""
    extra = [
        "--config.phases.warmup.steps=2",
        "--config.phases.finetune.steps=3",
        "--config.mesh.axes.fsdp=2",
    ]
    run(train_command(tmp_path / "single", tmp_path / "cache", *extra), subprocess_env(8))
    workdir = tmp_path / "multi"
    for status, err in launch_two_processes(workdir, tmp_path / "cache", *extra):
        assert status == 0, err[-3000:]
    single, multi = losses(tmp_path / "single"), losses(workdir)
    assert sorted(multi) == sorted(single) == [1, 2, 3, 4, 5]
    for step in single:
        assert multi[step] == pytest.approx(single[step], abs=1e-5)
    assert (workdir / "checkpoints" / "5").exists()


def _interrupt_at_the_phase_switch(tmp_path, name, presses):
    """Start a run, press Ctrl-C (SIGINT) ``presses`` times as soon as it says the second phase starts (its step
    is being compiled then); returns (exit status, stdout, stderr, seconds from the first press to the exit)."""
    workdir = tmp_path / name
    cmd = long_run_command(workdir, tmp_path / "cache")
    with open(tmp_path / f"{name}.err", "w") as err:
        # no compilation cache: the second phase's step must be compiling when the signal comes
        env = subprocess_env(compilation_cache=False)
        process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "starting 'finetune'" in line:
                break
        tick = time.monotonic()
        for _ in range(presses):
            process.send_signal(signal.SIGINT)
            time.sleep(0.2)
        out = "".join(lines) + process.stdout.read()
        process.wait(timeout=240)
    return process.returncode, out, (tmp_path / f"{name}.err").read_text(), time.monotonic() - tick


def test_ctrl_c_saves_a_checkpoint_and_a_second_one_exits_at_once_even_during_a_compile(tmp_path):
    status, _out, err, _ = _interrupt_at_the_phase_switch(tmp_path, "once", 1)
    assert status == 130, err[
        -3000:
    ]  # (a KeyboardInterrupt during this compile once ended in a segfault, 139)
    assert "Ctrl-C: saving a checkpoint" in err
    saved = sorted(int(p.name) for p in (tmp_path / "once" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] >= 3 and saved[-1] == max(losses(tmp_path / "once"))  # no step is lost
    assert f"error: interrupted: saved a checkpoint at step {saved[-1]}" in err
    assert "Traceback" not in err

    status, _, err, seconds = _interrupt_at_the_phase_switch(tmp_path, "twice", 2)
    assert status == 130, err[-3000:]
    assert "Ctrl-C again: stopping at once, without saving" in err
    assert "Traceback" not in err and "saved a checkpoint at step" not in err
    print(f"second Ctrl-C: exited {seconds:.2f}s after the first press")
