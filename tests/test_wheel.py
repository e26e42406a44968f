"""The pip user's path: build the wheel, install it into a fresh virtualenv, run `clip-jax train --config demo`
for a few steps and `clip-jax export` from outside any checkout.

The fresh virtualenv sees the test environment's dependencies through a .pth entry (nothing is downloaded) but
not its clip_jax: .pth files of a directory added that way are not run, so the editable install of the checkout
stays out, and the test checks that clip_jax is imported from the wheel."""

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from train_helpers import CLI_TINY, REPO


def test_wheel_installs_a_working_clip_jax_command(tmp_path, small_standins):
    source, dist = tmp_path / "source", tmp_path / "dist"  # built from a copy: the build writes into its tree
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "runs", "build", "dist", "*.egg-info", "__pycache__", ".venv", "notebooks"
        ),
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(dist),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    (wheel,) = dist.glob("clip_jax-*.whl")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )

    env.update(HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    where = subprocess.run(
        [str(python), "-c", "import clip_jax; print(clip_jax.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(site), (
        where.stdout + where.stderr[-3000:]
    )  # the wheel's clip_jax, not the checkout's

    command = str(env_dir / "bin" / "clip-jax")
    help_text = subprocess.run(
        [command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    ).stdout
    assert all(c in help_text for c in ("train", "eval", "export", "to-webdataset"))
    # The demo recipe itself, with the test-size stand-ins (the default ones take minutes to build).
    _, english, italian = small_standins
    train = subprocess.run(
        [
            command,
            "train",
            "--config",
            "demo",
            "--workdir",
            "run",
            f"--config.model.vision={english}",
            f"--config.model.text={italian}",
            f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.data.shapes.image_size=32",
            "--config.data.shapes.num_train=64",
            "--config.data.shapes.num_val=16",
            "--config.train.batch_size=16",
            "--config.phases.warmup.steps=2",
            "--config.phases.finetune.steps=1",
            "--config.train.checkpoint_every=3",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Done: step 3 (finetune)" in train.stdout and "after phase warmup" in train.stdout
    tiny = subprocess.run(
        [
            command,
            "train",
            "--workdir",
            "tiny",
            *CLI_TINY,
            f"--config.data.cache_dir={tmp_path / 'cache'}",
            "--config.phases.warmup.steps=1",
            "--config.phases.finetune.steps=1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert tiny.returncode == 0 and "Done: step 2 (finetune)" in tiny.stdout, tiny.stderr[-3000:]
    export = subprocess.run(
        [command, "export", "--checkpoint", "run", "--out", "exported"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert (tmp_path / "exported" / "config.json").exists() and list(
        (tmp_path / "exported").glob("*.safetensors")
    )
