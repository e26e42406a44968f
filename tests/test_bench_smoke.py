"""Every benchmark script runs in ``--smoke`` mode (tiny configs, a few seconds) and writes real numbers.

No benchmark is a test; these only keep the scripts from rotting. Each runs as a subprocess, as a user
would run it, with its result JSON sent to a temporary folder (never ``bench/results``). The scripts share
a persistent JAX compilation cache: three of them compile the same tiny clip_jax train steps.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def recorded_results() -> dict:
    return {p.name: p.stat().st_mtime_ns for p in (ROOT / "bench" / "results").iterdir()}


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jax_compilation_cache")


def run_smoke(
    script: str, tmp_path: Path, name: str, cache: Path, timeout: int = 300, args: tuple[str, ...] = ()
) -> dict:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    env.pop("XLA_FLAGS", None)  # the tests' 8 fake devices are not the scripts' default
    before = recorded_results()
    proc = subprocess.run(
        [sys.executable, f"bench/{script}", "--smoke", "--out", str(tmp_path), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{script} --smoke failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert recorded_results() == before, "a smoke run must not write bench/results"
    path = tmp_path / f"{name}.json"
    assert path.exists(), f"{script} --smoke wrote no {path.name}; stdout:\n{proc.stdout[-2000:]}"
    result = json.loads(path.read_text())
    assert result["args"]["smoke"] is True
    assert result["machine"]["platform"] == "cpu"
    return result


def check_phases(phases: dict) -> None:
    for phase in ("1", "2"):
        assert phases[phase]["step_s"] > 0
        assert phases[phase]["images_per_s"] > 0


def test_train_step_smoke(tmp_path, jax_cache):
    result = run_smoke("train_step.py", tmp_path, "train_step_cpu", jax_cache)
    check_phases(result["phases"])
    assert (
        result["phases"]["2"]["analytic_tflop_per_step"]
        > result["phases"]["1"]["analytic_tflop_per_step"]
        > 0
    )
    assert result["phases"]["1"]["mfu"] > 0 and result["matmul_peak_tflops"] > 0
    assert result["matmul_peak_tflops"] == max(result["matmul_peak_samples_tflops"])
    assert len(result["matmul_peak_samples_tflops"]) == 3  # before phase 1, after each phase
    assert result["phase2_over_phase1_step_time"] > 0


def test_train_step_compare_dtypes_smoke(tmp_path, jax_cache):
    result = run_smoke(
        "train_step.py",
        tmp_path,
        "train_step_cpu_dtypes",
        jax_cache,
        args=("--compare_dtypes", "float32,bfloat16"),
    )
    for phase in ("1", "2"):
        entry = result["phases"][phase]
        assert entry["float32"]["speedup_over_float32"] == 1.0
        assert entry["bfloat16"]["step_s"] > 0 and entry["bfloat16"]["speedup_over_float32"] > 0
        assert len(entry["bfloat16"]["times"]) == len(entry["float32"]["times"]) == 2


def test_loss_memory_smoke(tmp_path, jax_cache):
    result = run_smoke("loss_memory.py", tmp_path, "loss_memory", jax_cache)
    assert result["devices"] == 8
    assert [row["global_batch"] for row in result["rows"]] == [64, 128]
    for row in result["rows"]:
        assert row["ours_bytes_per_device"] > 0 and row["naive_bytes_one_device"] > 0
        assert row["ours_s"] > 0 and row["naive_s"] > 0


def test_input_pipeline_smoke(tmp_path, jax_cache):
    result = run_smoke("input_pipeline.py", tmp_path, "input_pipeline", jax_cache)
    assert result["runs"] and all(run["images_per_s"] > 0 for run in result["runs"])
    assert any(run["worker_processes"] > 0 for run in result["runs"])  # the worker-process path ran too


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vs_pytorch_smoke(tmp_path, jax_cache, dtype):
    name = "vs_pytorch_cpu" if dtype == "float32" else f"vs_pytorch_cpu_{dtype}"
    result = run_smoke("vs_pytorch.py", tmp_path, name, jax_cache, args=("--dtype", dtype))
    assert result["args"]["dtype"] == dtype and result["args"]["settle"] == 1
    check_phases(result["clip_jax"])
    check_phases(result["pytorch"])
    assert all(ratio > 0 for ratio in result["pytorch_over_clip_jax"].values())
    assert result["matmul_peak_tflops"] == max(result["matmul_peak_samples_tflops"]) > 0
    for side in ("clip_jax", "pytorch"):
        assert all(result[side][phase]["mfu"] > 0 for phase in ("1", "2"))
    assert set(result["load_average"]["2"]) == {"start", "end"}
    steps = result["args"]["steps"]
    for side in ("clip_jax", "pytorch"):
        for phase in ("1", "2"):
            out = result[side][phase]
            assert len(out["times"]) == len(out["after_switch"]["times"]) == steps
            assert out["after_switch"]["step_s"] > 0 and out["faults_per_step"] >= 0
    assert all(ratio > 0 for ratio in result["pytorch_over_clip_jax_after_switch"].values())


def test_cpu_pages_smoke(tmp_path, jax_cache):
    result = run_smoke("cpu_pages.py", tmp_path, "cpu_pages", jax_cache)
    # the script re-executed itself under glibc's huge-page tunable, and timed both kinds of turn
    assert "glibc.malloc.hugetlb=1" in result["glibc_tunables"].split(":")
    assert result["thp_mode"] in {"always", "madvise", "never", "n/a"}
    for phase in ("1", "2"):
        out = result["phases"][phase]
        for kind in ("4k", "huge"):
            assert len(out[kind]["times"]) == len(out[kind]["faults"]) == result["args"]["steps"]
            assert out[kind]["step_s"] > 0 and out[kind]["faults_per_step"] >= 0
        assert out["ratio"] == out["4k"]["step_s"] / out["huge"]["step_s"]


def test_allocators_smoke(tmp_path, jax_cache):
    """Three worker processes, one per allocator, alternating; the mimalloc one really runs under mimalloc."""
    result = run_smoke(
        "allocators.py", tmp_path, "allocators_cpu_phase2_bfloat16", jax_cache,
        args=("--allocators", "glibc,hugetlb,mimalloc"),
    )  # fmt: skip
    entries = result["allocators"]
    assert list(entries) == ["glibc", "hugetlb", "mimalloc"]
    assert [e["mimalloc_loaded"] for e in entries.values()] == [False, False, True]
    assert entries["hugetlb"]["env"] == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    for entry in entries.values():
        assert entry["step_s"] > 0 and entry["after_switch"]["step_s"] > 0
        assert len(entry["worker"]["settled_faults"]) == len(entry["times"]) == 2


def test_speed_changes_smoke(tmp_path, jax_cache):
    result = run_smoke("speed_changes.py", tmp_path, "speed_changes_cpu", jax_cache)
    dtypes = {name: change["dtype"] for name, change in result["changes"].items()}
    assert dtypes == {
        "residual_fence": "float32",
        "bfloat16_products": "bfloat16",
        "frozen_rounding": "bfloat16",
    }
    for change in result["changes"].values():
        for phase in ("1", "2"):
            entry = change[phase]
            assert entry["before"]["step_s"] > 0 and entry["after"]["step_s"] > 0
            assert entry["before_over_after"] > 0 and entry["load_start"]


def test_vs_legacy_flax_smoke(tmp_path, jax_cache):
    result = run_smoke("vs_legacy_flax.py", tmp_path, "vs_legacy_flax_cpu", jax_cache)
    check_phases(result["clip_jax"])
    assert "skipped" in result["legacy"]  # smoke never builds the legacy virtualenv
    negatives = result["negatives"]
    assert negatives["devices"] == 8 and negatives["global_batch"] == 64
    legacy, ours = negatives["legacy_per_device_loss"], negatives["clip_jax_global_loss"]
    assert legacy["every_positive_seen"] and ours["every_positive_seen"]
    assert legacy["negatives_per_example"] == {"min": 7, "max": 7, "mean": 7.0}  # local batch 8 - 1
    assert legacy["negatives_from_other_devices"]["max"] == 0
    assert ours["negatives_per_example"] == {"min": 63, "max": 63, "mean": 63.0}  # global batch 64 - 1
    assert ours["negatives_from_other_devices"]["min"] == 56


def test_feature_cache_smoke(tmp_path, jax_cache):
    result = run_smoke("feature_cache.py", tmp_path, "feature_cache", jax_cache)
    for key in (
        "phase1_full_step_s",
        "caching_pass_s_per_batch",
        "cached_step_s",
        "full_over_cached_step_time",
    ):
        assert result[key] > 0, key


def test_recipe_smoke(tmp_path, jax_cache, small_standins):
    # trains two recipes (~1.5 min of CPU time) on the session's stand-ins: building its own took another minute
    _, english, italian = small_standins
    args = ("--standins", str(english), str(italian))
    result = run_smoke("recipe.py", tmp_path, "recipe_cpu", jax_cache, timeout=600, args=args)
    assert set(result["recipes"]) == {"e_per_device_loss", "f_cached_phase1"}
    for summary in result["recipes"].values():
        assert set(summary["zero_shot"]) == {"colour", "shape", "count", "colour+shape"}
        assert summary["wall_s"]["mean"] > 0 and np.isfinite(summary["final_loss"]["mean"])
        # issue 24's diagnostics: the temperature phase 2 starts with, the vision tower's drift, WiSE-FT
        assert set(summary["logit_scale_at_phase_end"]) == {"warmup", "finetune"}
        drift = summary["vision_drift"]
        assert {"all", "embeddings", "layer_0"} <= set(drift) and drift["all"]["mean"] > 0
        assert set(summary["wise_ft"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
        # alpha=1 is the fine-tuned tower: its forgetting column is the run's own
        assert (
            summary["wise_ft"]["1.0"]["forgetting_en"]["mean"]
            == summary["forgetting_en"]["colour+shape"]["mean"]
        )
    assert "| (e)" in result["markdown"] and "vision drift" in result["mechanism_markdown"]
    assert (
        result["standins"]["english-clip"] == json.loads((english / "standin.json").read_text())["settings"]
    )


def test_grad_cache_smoke(tmp_path, jax_cache):
    # four compilations (~1 min of CPU time); on a loaded 2-core machine they took 4.6 min of wall time
    result = run_smoke("grad_cache.py", tmp_path, "grad_cache_cpu", jax_cache, timeout=600)
    rows = {(r["batch"], r["micro_batch_size"]): r for r in result["memory"]}
    assert set(rows) == {(16, 0), (16, 4)}
    assert all(r["temp_mib"] > 0 and r["argument_mib"] > 0 for r in rows.values())
    assert set(result["time"]) == {"0", "4"} and all(t["step_s"] > 0 for t in result["time"].values())


@pytest.mark.parametrize(
    ("dtype", "libraries"),
    [("float32", {"xla", "pytorch", "numpy"}), ("bfloat16", {"xla", "pytorch", "clip_jax"})],
)
def test_matmul_libs_smoke(tmp_path, jax_cache, dtype, libraries):
    result = run_smoke(
        "matmul_libs.py", tmp_path, f"matmul_libs_cpu_{dtype}", jax_cache, args=("--dtype", dtype)
    )
    kinds = [row["kind"] for row in result["shapes"]]
    assert kinds == ["x @ W", "dy @ W.T", "x.T @ dy"]  # one dense map's three products
    for row in result["shapes"]:
        for library in libraries:
            assert row[library]["min_gflops"] <= row[library]["gflops"] <= row[library]["max_gflops"]
        assert row["xla"]["over_xla"] == 1.0
    assert set(result["step_weighted_gflops"]) == libraries
