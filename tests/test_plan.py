"""`clip-jax plan` and the abstract train state: every step compiles for TPU topologies (libtpu's compile-only
devices), the reported numbers agree with independent counts, and the abstract state is the placed one's."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from train_helpers import REPO, subprocess_env, tiny_config

from clip_jax.config import HEAD, phase
from clip_jax.plan import plan, target
from clip_jax.plan.hlo import summarize
from clip_jax.sharding import MeshError, make_mesh
from clip_jax.train.model import build_model
from clip_jax.train.phase import phase_program, phases_of, start_phase

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
libtpu = pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu) compiles for TPU topologies")


def _plans(config, topology, steps=None, **kw):
    return {p.step: p for p in plan(config, target(topology), steps=steps, log=lambda _: None, **kw)}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """``compiled(step, **overrides)``: the plan of one step of the tiny config with ``overrides`` on v5e:2x2,
    each distinct step compiled once for the whole file (TPU compiles take seconds each, and tests read the
    same step: the softmax phase 2 at batch 32 is also the baseline of the micro-batch, remat and bfloat16
    comparisons)."""
    cache = tmp_path_factory.mktemp("plan")
    memo = {}

    def get(step, **overrides):
        key = (step, tuple(sorted(overrides.items())))
        if key not in memo:
            memo[key] = _plans(tiny_config(cache, **overrides), "v5e:2x2", [step])[step]
        return memo[key]

    return get


def _check(p, chips):
    assert p.chips == chips and p.fits is True
    assert p.memory["total"] > 0 and p.memory["argument"] > 0
    # the compiled program's matrix products against the analytic count (independent: shapes and the formula)
    assert p.flops_xla == pytest.approx(p.flops_analytic, rel=0.1), (p.step, p.flops_xla, p.flops_analytic)
    assert 0 < p.bound_seconds["step"] == max(p.bound_seconds[k] for k in ("compute", "memory", "collective"))


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_both_phases_and_eval_compile_for_a_v5e_slice(compiled, loss):
    changes = {"train.batch_size": 32} if loss == "softmax" else {"loss.kind": loss, "train.batch_size": 32}
    steps = ["warmup", "finetune", "eval"] if loss == "softmax" else ["warmup", "finetune"]
    plans = {step: compiled(step, **changes) for step in steps}
    assert [p.step for p in plans.values()] == steps
    for p in plans.values():
        _check(p, 4)
    warm, fine = plans["warmup"], plans["finetune"]
    assert warm.mesh == {"data": 4, "fsdp": 1} and warm.per_chip_batch == 8
    # phase 1 trains the head only: no tower gradients, so far fewer FLOPs and less memory than phase 2
    assert warm.flops_analytic < fine.flops_analytic / 2 and warm.memory["total"] < fine.memory["total"]
    assert "all-reduce" in fine.collectives  # data parallel: gradients are reduced over the chips


def test_micro_batches_remat_and_bfloat16_compile_and_change_what_they_should(compiled):
    def finetune(**changes):
        return compiled("finetune", **{"train.batch_size": 32, **changes})

    plain, micro = finetune(), finetune(**{"train.micro_batch_size": 8})  # 4 micro-batches, 2 rows a chip
    remat, bf16 = finetune(**{"model.remat": True}), finetune(**{"model.dtype": "bfloat16"})
    assert micro.micro_batch == 8 and plain.micro_batch == 0
    # gradient caching runs the towers' forward twice: the compiled products grow by about one forward pass,
    # counted through the scans' trip counts (XLA's own cost_analysis counts each loop body once)
    assert micro.flops_xla == pytest.approx(plain.flops_xla * 4 / 3, rel=0.08)
    assert micro.flops_xla_loops_once < micro.flops_xla / 2
    assert remat.flops_xla > plain.flops_xla * 1.15  # the recomputed forward
    assert bf16.dtype == "bfloat16" and bf16.flops_xla == pytest.approx(plain.flops_xla, rel=0.05)


def test_cached_feature_and_distillation_steps_compile(tmp_path):
    from transformers import CLIPConfig

    features = tiny_config(tmp_path, **{"train.batch_size": 32})
    features.phases.warmup = phase(3, HEAD, {"head": 1e-2}, cache_features=True)
    step = _plans(features, "v5e:2x2", ["warmup"])["warmup"]
    assert step.kind == "cached_features" and step.flops_xla == pytest.approx(step.flops_analytic, rel=0.1)

    teacher = tmp_path / "teacher"  # a CLIP's config.json and nothing else: planning reads no weights
    CLIPConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=99, max_position_embeddings=24),
        projection_dim=16,
    ).save_pretrained(teacher)  # fmt: skip
    assert sorted(p.name for p in teacher.iterdir()) == ["config.json"]
    distill = tiny_config(tmp_path, **{"train.objective": "distill", "train.batch_size": 32})
    with distill.model.ignore_type():
        distill.model.vision = str(teacher)
    distill.phases.warmup = phase(3, r"text_projection\..*", {"head": 1e-2})
    distill.phases.finetune = phase(3, r"(text|text_projection)\..*", {"head": 1e-3, "text": 1e-3})
    plans = _plans(distill, "v5e:2x2", ["warmup", "finetune"])
    for p in plans.values():
        assert p.kind == "distill" and p.fits
        assert p.flops_xla == pytest.approx(p.flops_analytic, rel=0.15)


def test_a_phase_compiles_for_256_chips_and_fsdp_shards_the_state(tmp_path):
    data = tiny_config(tmp_path, **{"train.batch_size": 256})
    fsdp = tiny_config(tmp_path, **{"train.batch_size": 256})
    fsdp.mesh.axes = {"data": 16, "fsdp": 16}
    a = _plans(data, "v5e:16x16", ["finetune"])["finetune"]
    b = _plans(fsdp, "v5e:16x16", ["finetune"])["finetune"]
    assert a.chips == b.chips == 256 and a.hosts == 64  # v5e: 4 chips per compile-only host here
    assert b.mesh == {"data": 16, "fsdp": 16}
    # parameters and Adam moments split 16 ways (the batch's share of the arguments stays the same)
    assert b.memory["argument"] < a.memory["argument"] / 2
    assert (
        "all-gather" in b.collectives
        and b.collectives["all-gather"]["count"] > a.collectives.get("all-gather", {"count": 0})["count"]
    )


def test_when_a_step_does_not_fit_plan_names_the_first_change_that_does(tmp_path, compiled):
    # at 128 examples the activations are a large enough share of the temporaries for micro-batches to pay
    config = tiny_config(tmp_path, **{"train.batch_size": 128})
    full = compiled("finetune", **{"train.batch_size": 128})
    assert full.fits
    limit = full.memory["total"] - full.memory["temporary"] // 3  # a chip with too little memory for it
    result = plan(config, target("v5e:2x2").with_memory(limit), steps=["finetune"], log=lambda _: None)[0]
    assert result.fits is False
    change = result.suggestion["change"]
    assert list(change) == ["train.micro_batch_size"]  # the smallest change comes first
    assert result.suggestion["memory"]["total"] <= 0.95 * limit
    assert 128 % change["train.micro_batch_size"] == 0


def test_a_step_already_micro_batched_is_offered_only_smaller_micro_batches(tmp_path, compiled):
    """Temporaries scale with the micro-batch's rows, not the step's: a step that does not fit at its micro-batch
    must not be offered a larger one (bench/plan_scale.py's ViT-L row was offered 16,384 and 8,192 for 4,096)."""
    overrides = {"train.batch_size": 128, "train.micro_batch_size": 64}
    config = tiny_config(tmp_path, **overrides)
    current = compiled("finetune", **overrides)
    limit = current.memory["total"] - current.memory["temporary"] // 3
    tried: list[str] = []
    result = plan(config, target("v5e:2x2").with_memory(limit), steps=["finetune"], log=tried.append)[0]
    assert result.fits is False
    offered = [int(line.rsplit("=", 1)[1].rstrip(".")) for line in tried if "micro_batch_size=" in line]
    assert offered and all(micro < 64 and 128 % micro == 0 for micro in offered), tried
    if result.suggestion and "train.micro_batch_size" in result.suggestion["change"]:
        assert result.suggestion["memory"]["total"] <= 0.95 * limit


def test_a_step_the_tpu_compiler_refuses_is_reported_as_not_fitting(tmp_path):
    """A program too large for the chip's HBM is refused by the TPU compiler itself (RESOURCE_EXHAUSTED), not
    measured: plan reports what the compiler said it needs instead of crashing (bench/plan_scale.py's
    fsdp-256 phase-2 row did). At 2**17 examples on 4 chips the loss's logits alone (32768 x 131072 float32
    per chip, 16 GiB) exceed a v5e chip, so no micro-batch size helps either (found by --search; not repeated
    here for time)."""
    config = tiny_config(tmp_path, **{"train.batch_size": 2**17, "train.phases": ("finetune",)})
    (result,) = plan(config, target("v5e:2x2"), steps=["finetune"], search=False, log=lambda _: None)
    assert result.fits is False and "Ran out of memory" in result.compiler_refused
    assert result.memory["temporary"] > result.hbm_bytes  # the compiler's own count, beyond the chip
    assert result.memory["total"] == result.memory["temporary"] and result.flops_xla is None
    from clip_jax.plan.cli import format_table

    text = format_table([result])
    assert "DOES NOT FIT" in text and "the TPU compiler refused it: RESOURCE_EXHAUSTED" in text


def test_compiler_out_of_memory_reads_the_compilers_message():
    from clip_jax.plan.planner import compiler_out_of_memory

    message = (
        "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required "
        "for HLO temporaries (26.01G) exceeds available HBM (15.75G)."
    )
    assert compiler_out_of_memory(RuntimeError(message)) == int(26.01 * 2**30)
    assert compiler_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: ... required for x (512.5M) ...")) is None
    assert compiler_out_of_memory(
        RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm, required for y (512.5M)")
    ) == int(512.5 * 2**20)
    assert compiler_out_of_memory(ValueError("shapes do not match")) is None


def test_hlo_summary_multiplies_loop_bodies_by_their_trip_counts():
    devices = target("v5e:2x2").devices
    mesh = Mesh(np.array(devices), ("data",))
    w = jax.ShapeDtypeStruct((256, 128), jnp.float32, sharding=NamedSharding(mesh, P()))
    x = jax.ShapeDtypeStruct((5, 64, 256), jnp.float32, sharding=NamedSharding(mesh, P(None, "data")))

    def loss(w, x):
        return jax.lax.scan(lambda c, xs: (c + jnp.tanh(xs @ w).sum(), None), 0.0, x)[0]

    compiled = jax.jit(jax.grad(loss)).trace(w, x).lower(lowering_platforms=("tpu",)).compile()
    summary = summarize(compiled.as_text(), 4)
    rows = 64 // 4  # per device
    assert summary.loops >= 1 and summary.unknown_trip_counts == 0
    assert summary.matmul_flops == 5 * 2 * (2 * rows * 256 * 128)  # forward + weight gradient, 5 trips
    assert summary.collectives["all-reduce"].bytes >= 256 * 128 * 4  # the weight gradient, reduced


def test_abstract_program_equals_the_placed_state(tmp_path):
    config = tiny_config(tmp_path)
    mesh = make_mesh({"data": 4, "fsdp": 2})
    model = build_model(config)
    abstract = build_model(config, abstract=True)
    for p in phases_of(config):
        placed = start_phase(config, model.module, p, mesh)
        program = phase_program(config, abstract.module, p, mesh)
        real = jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), placed.state)
        shapes = jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), program.abstract)
        assert jax.tree.structure(real) == jax.tree.structure(shapes) and real == shapes
        assert program.batch["pixel_values"].shape == (config.train.batch_size, 32, 32, 3)


def test_mesh_and_topology_errors_are_one_clear_line(tmp_path):
    devices = target("v4:2x2x2").devices  # 8 chips (megacore): not TensorCores
    assert len(devices) == 8 and devices[0].device_kind == "TPU v4"
    with pytest.raises(MeshError, match="cannot be laid out"):
        make_mesh({"data": 2, "fsdp": 2}, [devices[i] for i in (0, 3, 5, 6)])  # not a sub-slice
    with pytest.raises(ValueError, match="unknown topology"):
        target("v9:2x2")
    with pytest.raises(MeshError, match="3 processes"):  # the target's hosts, not this process's
        plan(tiny_config(tmp_path), target("v4:2x2x3"), log=lambda _: None)


def test_the_command_prints_json_and_reads_recipe_architectures_offline(tmp_path):
    env = dict(subprocess_env(), HF_HOME=str(tmp_path / "hf"))  # an empty cache: the shipped architectures
    cmd = [sys.executable, "-m", "clip_jax.plan", "--config", "clip_italian", "--topology", "v5e:2x2",
           "--phases", "eval", "--config.train.eval_batch_size=8", "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["step"] == "eval" and row["fits"] is True and row["global_batch"] == 8
    assert row["memory"]["argument"] > 4 * 150e6 / 2  # ViT-B/32 + BERT-base float32 weights (~200M params)


def test_every_shipped_recipe_builds_abstractly_offline(tmp_path):
    """Each recipe whose towers are hub ids builds its shapes with an empty Hugging Face cache and no network,
    from the architectures clip_jax ships — what `clip-jax plan --config NAME` needs first."""
    script = """
import json, sys
from clip_jax import configs
from clip_jax.commandline import load_config_file
from clip_jax.config import validate
from clip_jax.train.model import build_model
built = {}
for name in configs.names():
    config = load_config_file(configs.resolve(name))
    towers = [config.model.vision, config.model.text, config.model.init_from]
    if any(isinstance(t, str) and t.startswith("demo:") for t in towers) or name == "tiny":
        continue  # the offline demo's stand-ins, built from scratch, not read
    model = build_model(validate(config), abstract=True)
    built[name] = int(sum(x.size for x in __import__("jax").tree.leaves(__import__("flax").nnx.state(model.module))))
print(json.dumps(built))
"""
    env = dict(subprocess_env(), HF_HOME=str(tmp_path / "hf"))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    built = json.loads(done.stdout.splitlines()[-1])
    assert {"clip_italian", "siglip_italian", "openclip_xlmr_italian", "distill_italian"} <= set(built)
    assert all(count > 100e6 for count in built.values()), built  # full-size towers, not stand-ins


def test_the_command_says_what_it_cannot_plan_in_one_line(capsys):
    """Through the command's own entry point (the subprocess above proved the process end)."""
    from clip_jax.cli import main

    args = ["plan", "--config", "clip_italian", "--topology", "v5e:2x2"]
    assert main([*args, "--config.model.text=someone/unknown-bert"]) == 2
    err = capsys.readouterr().err
    assert "error: the architecture of someone/unknown-bert is not known offline" in err
    assert main(args[:3]) == 2 and "needs --topology" in capsys.readouterr().err
