"""A tiny training config and helpers for running train.py in real subprocesses."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from clip_jax.config import HEAD, override, phase, resolve_loss_kind

REPO = Path(__file__).resolve().parent.parent


def tiny_config(cache_dir, **overrides):
    """Tiny random towers (the `tiny` recipe) shrunk: 32px images, 64 training examples, 3 + 3 steps."""
    from clip_jax.demo import random_towers_config

    c = random_towers_config()
    c.model.vision["image_size"] = 32
    c.model.vision["hidden_size"] = c.model.text["hidden_size"] = 32
    c.model.projection_dim = 16
    c.data.cache_dir = str(cache_dir)
    c.data.shapes.update(num_train=64, num_val=16, image_size=32)
    c.train.update(
        batch_size=16, log_every=1, checkpoint_every=2, eval_batch_size=16, async_checkpoints=False
    )
    c.phases.warmup = phase(3, HEAD, {"head": 1e-2})
    c.phases.finetune = phase(3, ".*", {"head": 1e-3, "vision": 1e-3, "text": 1e-3})
    c.mesh.fsdp_min_size = 0
    # loss.kind='auto' resolved as validate() does, for the tests that build pieces without validating
    return resolve_loss_kind(override(c, **overrides))


CLI_TINY = [
    "--config=tiny",  # the built-in recipe of tiny random towers (clip_jax/configs/tiny.py)
    "--config.model.vision.image_size=32",
    "--config.model.vision.hidden_size=32",
    "--config.model.text.hidden_size=32",
    "--config.model.projection_dim=16",
    "--config.data.shapes.num_train=64",
    "--config.data.shapes.num_val=16",
    "--config.data.shapes.image_size=32",
    "--config.train.batch_size=16",
    "--config.train.log_every=1",
    "--config.train.eval_batch_size=16",
    "--config.mesh.fsdp_min_size=0",
]


def shrunk_recipe(config, tmp_path, **overrides):
    """A shipped recipe shrunk to the offline shapes data: 64 training examples at 32px, batch 16, 2 + 2 steps,
    checkpoints and validation every 2 steps, in ``tmp_path``; ``overrides`` set its towers and sizes."""
    config = override(
        config,
        **{
            "data.source": "shapes",
            "data.cache_dir": str(tmp_path / "cache"),
            "data.worker_processes": 0,
            "train.batch_size": 16,
            "train.eval_batch_size": 16,
            "train.log_every": 1,
            "train.checkpoint_every": 2,
            "train.eval_every": 2,
            "train.async_checkpoints": False,
            "phases.warmup.steps": 2,
            "phases.finetune.steps": 2,
            "mesh.fsdp_min_size": 0,
            **overrides,
        },
    )
    config.data.shapes.update(num_train=64, num_val=16, image_size=32)
    return config


def numpy_params(module) -> dict:
    """``module``'s parameters as ``{"dotted.path": numpy array}``."""
    import jax

    from clip_jax.weights.params import flat_params

    return {".".join(map(str, k)): np.asarray(jax.device_get(v)) for k, v in flat_params(module).items()}


def train_command(workdir, cache_dir, *extra):
    return [
        sys.executable,
        str(REPO / "train.py"),
        f"--workdir={workdir}",
        f"--config.data.cache_dir={cache_dir}",
        *CLI_TINY,
        *extra,
    ]


def subprocess_env(devices=8, compilation_cache=True):
    """The environment of a train.py subprocess on ``devices`` CPU devices; ``compilation_cache=False`` leaves out
    the session's persistent compilation cache (conftest.py), for a test that needs the process compiling."""
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_PLATFORMS="cpu",
    )
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if not compilation_cache:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def run(cmd, env, timeout=300):
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def launch_two_processes(workdir, cache_dir, *extra):
    """Both processes of a real 2-process run of train.py (jax.distributed over gloo on localhost, 4 CPU
    devices each): ``[(returncode, stderr)]``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            train_command(
                workdir,
                cache_dir,
                *extra,
                f"--coordinator=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            env=subprocess_env(devices=4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    return [(p.returncode, err) for p, (_out, err) in zip(procs, [p.communicate(timeout=300) for p in procs])]


def losses(workdir):
    """{step: loss} from metrics.jsonl; a step logged twice (re-run after a crash) keeps its last value."""
    out = {}
    for line in Path(workdir, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            out[record["step"]] = record["train/loss"]
    return out


def tensorboard_scalars(directory) -> dict[str, dict[int, float]]:
    """Every scalar in the TensorBoard event files under ``directory``, read back from the TFRecord
    framing (u64 length, u32 crc, payload, u32 crc): {tag: {step: value}}."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for path in sorted(Path(directory).rglob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def tiny_xlmr_mlp_model(paths: dict, vision: str | Path | None = None):
    """A tiny dual encoder of the published open_clip XLM-R model's architecture: an XLM-R text tower mean-pooled
    under open_clip's MLP head (``paths``: the ``checkpoints`` fixture's; ``vision``: another image tower)."""
    from clip_jax import CLIPModel

    return CLIPModel.from_towers(
        vision=vision or paths["vision"],
        text=paths["xlm-roberta"],
        tokenizer=paths["bert"],
        projection_dim=16,
        text_pooling="mean",
        text_projection="mlp",
        max_length=12,
    )
