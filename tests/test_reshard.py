"""A run resumes on another mesh: a checkpoint saved on 8 devices (or by 2 processes) restores onto 4 devices
(or 1 process) into the new shardings, and the losses after the resume follow an uninterrupted run on the new
mesh; the data position carries over, or the resume says why it cannot."""

import json
import time

import numpy as np
import pytest
from train_helpers import launch_two_processes, losses, run, subprocess_env, train_command

from clip_jax.data.memory import DataPositionError
from clip_jax.data.pipeline import BadDataMonitor, TrainBatches

# Phase 1 (heads) for 2 steps, phase 2 (everything) for 4; checkpoints at 2 (phase end), 3 and 6. The resume from
# step 3 lands inside phase 2, so Adam's moments of the sharded tower weights are restored too, and steps 5-6
# start the data's second epoch (64 examples, 16 a batch). A larger Adam eps keeps the update proportional to the
# gradient (at eps 1e-8 the first steps are lr * sign(g), where rounding noise may flip a sign).
STEPS = [
    "--config.phases.warmup.steps=2",
    "--config.phases.finetune.steps=4",
    "--config.train.checkpoint_every=3",
    "--config.train.eps=1e-3",
]
MESH_8 = ["--config.mesh.axes.data=4", "--config.mesh.axes.fsdp=2"]
MESH_4 = ["--config.mesh.axes.data=1", "--config.mesh.axes.fsdp=4"]
# Gradients are reduced in another order on another mesh (fsdp=2 vs fsdp=4), so the steps before the resume differ
# from the reference's by float32 rounding, and so do the losses after it (measured: ~2e-7 relative). Consecutive
# steps' losses differ by ~3e-3 relative, so a resume that restarted the data (or lost the optimizer state) fails.
RTOL = 1e-5


@pytest.fixture(scope="module")
def listing(tmp_path_factory):
    """Flags reading 64 real image files through a JSONL listing (the random-access pipeline, with augmentation)."""
    from test_data import write_images

    root = tmp_path_factory.mktemp("listing")
    write_images(root, n=64)
    return ["--config.data.source=files", f"--config.data.train=jsonl:{root / 'train.jsonl'}"]


@pytest.fixture(scope="module")
def on_4_devices(tmp_path_factory, listing):
    """{step: loss} of the uninterrupted run on the new mesh: 1 process, 4 devices, fsdp=4."""
    root = tmp_path_factory.mktemp("straight")
    run(train_command(root / "run", root / "cache", *listing, *STEPS, *MESH_4), subprocess_env(devices=4))
    reference = losses(root / "run")
    assert sorted(reference) == [1, 2, 3, 4, 5, 6]
    return reference


def resume_on_4_devices(workdir, cache, flags, reference):
    """Resume ``workdir`` from step 3 on 1 process with 4 devices (fsdp=4); its steps 4-6 must match
    ``reference``'s."""
    result = run(
        train_command(workdir, cache, *flags, *STEPS, *MESH_4, "--step=3"), subprocess_env(devices=4)
    )
    assert "Resumed from step 3" in result.stdout + result.stderr
    resumed = losses(workdir)
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(reference[step], rel=RTOL), step


def test_checkpoint_of_8_devices_fsdp2_resumes_on_4_devices_fsdp4(tmp_path, listing, on_4_devices):
    tick = time.perf_counter()
    workdir = tmp_path / "run"
    run(train_command(workdir, tmp_path / "cache", *listing, *STEPS, *MESH_8), subprocess_env(devices=8))
    assert (workdir / "checkpoints" / "3").exists()
    resume_on_4_devices(workdir, tmp_path / "cache", listing, on_4_devices)
    print(f"8 devices -> 4: {time.perf_counter() - tick:.1f}s")


def test_checkpoint_of_2_processes_resumes_on_1_process(tmp_path, listing, on_4_devices):
    """2 processes (jax.distributed over gloo, 4 CPU devices each, fsdp=2) save; 1 process with 4 devices resumes,
    at the next unread example of the listing (each of the 2 read every other one)."""
    tick = time.perf_counter()
    workdir = tmp_path / "run"
    for status, err in launch_two_processes(workdir, tmp_path / "cache", *listing, *STEPS, *MESH_8):
        assert status == 0, err[-3000:]
    meta = json.loads((workdir / "checkpoints" / "3" / "meta" / "metadata").read_text())
    positions = [state["stream"]["grain"]["next_index"] for state in meta["data_by_process"]]
    assert positions == [24, 24]  # 3 steps of 16 examples, half each
    resume_on_4_devices(workdir, tmp_path / "cache", listing, on_4_devices)
    print(f"2 processes -> 1: {time.perf_counter() - tick:.1f}s")


# ---------------------------------------------------------------- data positions, on the real iterators
def _tokenize(texts):
    return {"input_ids": np.array([[len(t)] for t in texts])}


def _batches(spec, process_index, process_count, batch=4, worker_processes=0):
    """The per-process training batches of ``spec`` (global batch ``batch``) as build_training_data makes them."""
    from test_data import stream

    s = stream(spec, process_index, process_count, worker_processes=worker_processes)
    return TrainBatches(s, batch // process_count, _tokenize, BadDataMonitor(spec))


def _states(iterators, steps):
    """Each iterator's state after ``steps`` batches, through JSON as a checkpoint stores it."""
    for it in iterators:
        for _ in range(steps):
            next(it)
    return [json.loads(json.dumps(it.get_state())) for it in iterators]


def _assert_same_batches(got, want):
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a["pixel_values"], b["pixel_values"])
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"])


@pytest.mark.parametrize("old, new", [(2, 1), (1, 2), (2, 4)])
def test_file_data_position_carries_over_exactly_to_another_process_count(tmp_path, old, new):
    """A listing of files (random access) is read in one global order: after 3 steps of 4 examples on ``old``
    processes, ``new`` processes continue with exactly the batches (augmented pixels, captions) an uninterrupted run
    on ``new`` processes reads, into the next epoch (12 examples)."""
    from test_data import write_images

    write_images(tmp_path, n=12)
    spec = str(tmp_path / "train.jsonl")
    states = _states([_batches(spec, i, old) for i in range(old)], 3)
    for i in range(new):
        straight = _batches(spec, i, new)
        _states([straight], 3)
        resumed = _batches(spec, i, new)
        resumed.set_state(resumed.carry_state(states))
        _assert_same_batches([next(resumed) for _ in range(4)], [next(straight) for _ in range(4)])


def test_in_memory_data_position_carries_over(tmp_path):
    """The demo's in-memory batches count global batches: any process count continues at the same one."""
    from clip_jax.data.memory import EpochBatches

    saved = []
    for i in range(2):
        it = EpochBatches(64, 16, seed=0, process_index=i, process_count=2, noun="examples")
        for _ in range(5):
            it.next_rows()
        saved.append(it.get_state())
    one = EpochBatches(64, 16, seed=0, process_index=0, process_count=1, noun="examples")
    straight = EpochBatches(64, 16, seed=0, process_index=0, process_count=1, noun="examples")
    for _ in range(5):
        straight.next_rows()
    one.set_state(one.carry_state(saved))
    np.testing.assert_array_equal(one.next_rows()[0], straight.next_rows()[0])


def test_positions_that_cannot_carry_over_say_why(tmp_path):
    from test_data import write_images

    from clip_jax.data.to_webdataset import convert
    from clip_jax.train.features import FeatureBatches

    rows = write_images(tmp_path, n=12)
    rows.insert(3, {"image_path": "img/missing.jpg", "captions": ["manca"]})
    (tmp_path / "bad.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = str(tmp_path / "bad.jsonl")
    states = _states([_batches(spec, i, 2) for i in range(2)], 3)  # one process met the missing image
    with pytest.raises(DataPositionError, match=r"skipped \[\d, \d\] bad examples.*their own"):
        _batches(spec, 0, 1).carry_state(states)

    shards = "wds:" + convert(str(tmp_path / "train.jsonl"), str(tmp_path / "s" / "t"), shard_size=3)[0]
    states = _states([_batches(shards, i, 2) for i in range(2)], 2)
    with pytest.raises(DataPositionError, match="a streamed source keeps a position per process"):
        _batches(shards, 0, 1).carry_state(states)

    workers = [_batches(str(tmp_path / "train.jsonl"), i, 2, worker_processes=1) for i in range(2)]
    try:
        states = _states(workers, 2)
    finally:
        for it in workers:
            it.close()
    with pytest.raises(
        DataPositionError, match=r"worker processes \(data.worker_processes\) keep a position"
    ):
        _batches(str(tmp_path / "train.jsonl"), 0, 1, worker_processes=1).carry_state(states)

    with pytest.raises(DataPositionError, match="its own examples, in its own order"):
        FeatureBatches.carry_state([{"epoch": 0, "position": 1}] * 2)


def _files(workdir):
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


def test_cached_features_position_cannot_carry_over_and_the_resume_says_so(tmp_path):
    """Inside a cache_features phase each process trains on its own cached examples in its own order: a resume on
    another process count stops with one line naming that, the saved count and the ways out, before writing."""
    tick = time.perf_counter()
    flags = [
        "--config.phases.warmup.steps=4",
        "--config.phases.finetune.steps=1",
        "--config.train.checkpoint_every=3",
        "--config.phases.warmup.cache_features=True",
        "--config.model.dropout=False",
    ]
    workdir = tmp_path / "run"
    run(train_command(workdir, tmp_path / "cache", *flags), subprocess_env(devices=8))  # checkpoints 3, 4, 5
    before = _files(workdir)
    for status, err in launch_two_processes(workdir, tmp_path / "cache", *flags, "--step=3"):
        assert status == 2, err[-3000:]
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, err[-3000:]
        assert (
            "on 2 process(es): the position of the cached features of phase 'warmup' was saved by 1"
            in lines[0]
        )
        assert "its own examples, in its own order" in lines[0]
        assert "resume on 1 process(es), or from a checkpoint where it is not needed (--step)" in lines[0]
    assert _files(workdir) == before  # nothing written, no checkpoint set aside
    print(f"cached features, 1 process -> 2: {time.perf_counter() - tick:.1f}s")
