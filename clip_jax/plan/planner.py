"""Plan a run for a slice before renting it: compile each step of a recipe ahead of time for a TPU topology
(libtpu's compile-only devices; no TPU, no weights) and report what each chip holds, whether it fits, the
FLOPs, the collectives and a step-time bound.

Every number except the bound comes from the TPU compiler itself (``memory_analysis()``, the optimised HLO).
The bound is ``max(compute, HBM traffic, interconnect traffic)`` at the chip's published peaks
(:mod:`~clip_jax.plan.chips`): a floor under the step time, not a measurement.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from clip_jax.config import override, validate
from clip_jax.embedding import feature_function
from clip_jax.models.freezing import split_trainable
from clip_jax.plan.chips import Target
from clip_jax.plan.hlo import summarize
from clip_jax.sharding import (
    batch_sharding,
    check_batch_size,
    check_micro_batch_size,
    data_parallel_size,
    make_mesh,
    path_string,
    shard_params,
)
from clip_jax.train.model import build_model
from clip_jax.train.objectives import objective_of
from clip_jax.train.phase import Phase, phase_program, phases_of

#: The share of a chip's memory a plan may fill and still "fit" (the runtime and fragmentation need the rest).
USABLE_MEMORY = 0.95


@dataclasses.dataclass
class StepPlan:
    """One compiled step on one target. Memory, FLOPs and collective bytes are per chip and step except where
    named global; ``bound_*`` are lower bounds from published peaks, not measurements."""

    step: str  # a phase name, or "eval" (the validation embedding step)
    kind: str  # train | cached_features | distill | eval_embed
    topology: str
    chips: int
    hosts: int
    mesh: dict[str, int]
    global_batch: int
    per_chip_batch: float
    micro_batch: int
    dtype: str
    remat: bool
    memory: dict[str, int]  # argument, output, temporary, aliased, code, total (bytes)
    hbm_bytes: int | None
    fits: bool | None
    flops_analytic: float  # global, model FLOPs of one step (no recomputation)
    flops_xla: (
        float | None
    )  # global: the compiled program's matrix-multiply FLOPs, loops x trip counts, x chips
    flops_xla_loops_once: (
        float | None
    )  # global: XLA's cost_analysis() flops (loop bodies counted once), x chips
    collectives: dict[str, dict[str, float]]  # kind -> count, bytes (produced per chip), wire_bytes
    compile_seconds: float
    bound_seconds: dict[str, float] = dataclasses.field(
        default_factory=dict
    )  # compute, memory, collective, step
    bound_images_per_s: float | None = None
    bound_mfu: float | None = None
    suggestion: dict[str, Any] | None = None  # when it does not fit: the first change that fits
    #: the TPU compiler's own refusal when the step cannot fit at all (memory then holds what it said it
    #: needed, as temporaries; the FLOPs and collectives of a program that was never built are absent)
    compiler_refused: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan(
    config: ConfigDict, target: Target, *, steps: list[str] | None = None, search: bool = True, log=print
) -> list[StepPlan]:
    """Compile ``steps`` (phase names and/or ``eval``; default: every phase, then ``eval``) of ``config`` for
    ``target``; for a step that does not fit, also the first of the usual changes that does (``search``)."""
    config = validate(config)
    names = [p.name for p in phases_of(config)] + ["eval"]
    steps = steps or names
    unknown = [s for s in steps if s not in names]
    if unknown:
        raise ValueError(
            f"--phases {','.join(unknown)}: not a step of this recipe — choose from {', '.join(names)}"
        )
    plans = []
    for name in steps:
        log(f"compiling {name} for {target.name} ({len(target.devices)} devices)...")
        result = compile_step(config, target, name)
        if search and result.fits is False:
            result.suggestion = find_fit(config, target, name, result, log)
        plans.append(result)
    return plans


def compile_step(config: ConfigDict, target: Target, name: str) -> StepPlan:
    """Compile one step (a phase's train step, or ``eval``) of ``config`` for ``target`` and report it."""
    module = build_model(config, abstract=True).module
    mesh = make_mesh(config.mesh.axes.to_dict(), target.devices)
    batch = int(config.train.batch_size)
    micro = int(config.train.micro_batch_size)
    if name == "eval":
        kind, micro = "eval_embed", 0
        batch = -(-int(config.train.eval_batch_size) // data_parallel_size(mesh)) * data_parallel_size(mesh)
        fn, args = _eval_program(config, module, mesh, batch)
        phase = None
    else:
        check_batch_size(batch, mesh)
        check_micro_batch_size(micro, mesh)
        phase = next(p for p in phases_of(config) if p.name == name)
        program = phase_program(config, module, phase, mesh)
        fn, args = program.step_fn, (program.abstract, program.batch)
        kind = objective_of(config).step_kind(phase)
        micro = micro if kind == "train" and 0 < micro < batch else 0
    start = time.perf_counter()
    hbm = target.chip.hbm_bytes if target.chip else None
    common = dict(
        step=name,
        kind=kind,
        topology=target.name,
        chips=len(target.devices),
        hosts=target.hosts,
        mesh=dict(mesh.shape),
        global_batch=batch,
        per_chip_batch=batch / data_parallel_size(mesh),
        micro_batch=micro,
        dtype=str(config.model.dtype),
        remat=bool(config.model.remat),
        hbm_bytes=hbm,
        flops_analytic=analytic_flops(module, config, kind, phase, batch),
    )
    try:
        compiled = fn.trace(*args).lower(lowering_platforms=(target.platform,)).compile()
    except Exception as error:  # the TPU compiler refuses a program that cannot fit its HBM at all
        needed = compiler_out_of_memory(error)
        if needed is None:
            raise
        memory = dict.fromkeys(("argument", "output", "aliased", "code"), 0)
        memory.update(temporary=needed, total=needed)
        return StepPlan(
            **common,
            memory=memory,
            fits=False,
            flops_xla=None,
            flops_xla_loops_once=None,
            collectives={},
            compile_seconds=time.perf_counter() - start,
            compiler_refused=str(error).strip().splitlines()[-1][:300],
        )
    seconds = time.perf_counter() - start
    stats = compiled.memory_analysis()
    memory = {
        "argument": int(stats.argument_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
        "temporary": int(stats.temp_size_in_bytes),
        "aliased": int(stats.alias_size_in_bytes),
        "code": int(stats.generated_code_size_in_bytes),
    }
    memory["total"] = memory["argument"] + memory["output"] - memory["aliased"] + memory["temporary"]
    memory["total"] += memory["code"]
    chips = len(target.devices)
    hlo = summarize(compiled.as_text(), chips)
    costs = compiled.cost_analysis() or {}
    costs = costs[0] if isinstance(costs, list) else costs
    result = StepPlan(
        **common,
        memory=memory,
        fits=None if hbm is None else memory["total"] <= USABLE_MEMORY * hbm,
        flops_xla=hlo.matmul_flops * chips,
        flops_xla_loops_once=float(costs.get("flops", 0.0)) * chips,
        collectives={k: dataclasses.asdict(c) for k, c in hlo.collectives.items()},
        compile_seconds=seconds,
    )
    if target.chip is not None:
        _bound(result, target, hlo.matmul_flops, hlo.wire_bytes)
    return result


_OUT_OF_MEMORY = re.compile(r"Ran out of memory .*?required for .*?\((\d+(?:\.\d+)?)([KMGT]?)\)", re.S | re.I)


def compiler_out_of_memory(error: BaseException) -> int | None:
    """The bytes the TPU compiler said a program needs when it refused it for want of HBM
    (``RESOURCE_EXHAUSTED: Ran out of memory ... required for HLO temporaries (26.01G) exceeds available HBM
    (15.75G)``); None for any other error."""
    match = _OUT_OF_MEMORY.search(str(error))
    if not match or "RESOURCE_EXHAUSTED" not in str(error):
        return None
    return int(float(match.group(1)) * 1024 ** "_KMGT".index(match.group(2) or "_"))


def _bound(result: StepPlan, target: Target, chip_flops: float, wire_bytes: float) -> None:
    """The step-time floor at the chip's published peaks: the slowest of compute (the compiled matrix
    products), HBM (every argument read and every output written once) and the interconnect (the collectives'
    ring traffic), assuming perfect overlap of the three."""
    chip = target.chip
    compute = chip_flops / chip.peak_flops
    memory = (result.memory["argument"] + result.memory["output"]) / chip.hbm_bandwidth
    collective = wire_bytes / chip.ici_bandwidth
    step = max(compute, memory, collective)
    result.bound_seconds = {"compute": compute, "memory": memory, "collective": collective, "step": step}
    if step > 0 and result.kind != "eval_embed":
        result.bound_images_per_s = result.global_batch / step
        result.bound_mfu = result.flops_analytic / (result.chips * chip.peak_flops * step)


def _eval_program(config: ConfigDict, module: nnx.Module, mesh, rows: int):
    """The validation embedding step (both towers and projections, normalised), as the evaluator runs it: the
    feature functions of :func:`~clip_jax.embedding.feature_function` on the sharded state."""
    graphdef, state = nnx.split(module)
    rules = [tuple(r) for r in config.mesh.rules]
    sharding = shard_params(state, mesh, rules, config.mesh.fsdp_min_size)
    batched = batch_sharding(mesh)
    image = feature_function(graphdef, "image", mesh=mesh, normalize=True)
    text = feature_function(graphdef, "text", mesh=mesh, normalize=True)

    def embed(state, pixels, ids, mask):
        return image((state,), pixels), text((state,), ids, mask)

    fn = jax.jit(embed, in_shardings=(sharding, batched, batched, batched), out_shardings=batched)
    size = int(module.vision.config.image_size)
    length = min(int(config.model.max_length), int(module.text.config.max_length))
    spec = lambda shape, dtype: jax.ShapeDtypeStruct((rows, *shape), dtype, sharding=batched)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, sharding)
    args = (
        abstract,
        spec((size, size, 3), jnp.float32),
        spec((length,), jnp.int32),
        spec((length,), jnp.int32),
    )
    return fn, args


def tower_flops(config: Any, sequence: int, patch_pixels: int = 0) -> float:
    """Forward matrix-multiply FLOPs of one example through a transformer tower: per layer the four attention
    maps and the MLP (``2 s (4 d^2 + 2 d m)``), the two attention products (``4 s^2 d``); plus the patch
    embedding (``2 patches (3 p^2) d``) for a vision tower."""
    d, m, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 2 * sequence * (4 * d * d + 2 * d * m) + 4 * sequence * sequence * d
    return layers * per_layer + 2 * (sequence - 1) * patch_pixels * d


def analytic_flops(
    module: nnx.Module, config: ConfigDict, kind: str, phase: Phase | None, batch: int
) -> float:
    """Model FLOPs of one global step (the MFU convention: no recomputation for remat or gradient caching): a
    trained part costs three forward passes (forward, input and weight gradients), a frozen one a forward."""
    v, t = module.vision.config, module.text.config
    patches = (v.image_size // v.patch_size) ** 2
    length = min(int(config.model.max_length), int(t.max_length))
    vision = tower_flops(v, patches + 1, 3 * v.patch_size**2)
    text = tower_flops(t, length)
    dim = module.projection_dim
    loss = 2 * 2 * batch * dim  # two B x B logit blocks, per example
    # a projection's multiply-adds per example: its matrices' sizes (one matrix, or open_clip's MLP text head)
    size = lambda projection: sum(
        math.prod(p.shape) for p in jax.tree_util.tree_leaves(nnx.state(projection, nnx.Param))
    )
    widths = {"vision": size(module.visual_projection), "text": size(module.text_projection)}
    if kind == "eval_embed":
        return batch * (vision + text + 2 * (widths["vision"] + widths["text"]))
    _, params, _ = split_trainable(module, phase.trainable)
    trained = {path_string(path).split(".")[0] for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    passes = lambda tower: 3 if tower in trained else 1  # forward, input and weight gradients; or forward
    # a projection: forward and weight gradient, plus its input's gradient when the tower below it trains
    head = lambda tower: 2 * widths[tower] * (3 if tower in trained else 2)
    if kind == "distill":
        return batch * (passes("text") * text + head("text"))
    towers = 0.0 if kind == "cached_features" else passes("vision") * vision + passes("text") * text
    heads = head("vision") + head("text")
    return batch * (towers + heads + 3 * loss)


#: The changes tried when a step does not fit, smallest first.
FIT_CHANGES = ("train.micro_batch_size", "mesh.axes", "model.remat", "model.dtype")


def find_fit(config: ConfigDict, target: Target, name: str, failed: StepPlan, log=print) -> dict | None:
    """The first change of :data:`FIT_CHANGES` whose compiled step fits, with its memory; ``None`` if none."""
    hbm = USABLE_MEMORY * failed.hbm_bytes
    dp = data_parallel_size(make_mesh(config.mesh.axes.to_dict(), target.devices))
    batch = int(config.train.batch_size)
    candidates: list[dict[str, Any]] = []
    if failed.kind == "train":
        fixed = failed.memory["total"] - failed.memory["temporary"]
        share = (hbm - fixed) / max(failed.memory["temporary"], 1)  # temporaries scale with rows per chip
        # the rows each chip holds at once: its micro-batch's when the step already uses micro-batches
        per_pass = (failed.micro_batch or batch) // dp
        rows = min(2 ** max(int(math.log2(max(share * per_pass, 1))), 0), per_pass // 2)
        for per_chip in dict.fromkeys((rows, rows // 2)):
            micro = per_chip * dp
            if per_chip >= 1 and batch % micro == 0:
                candidates.append({"train.micro_batch_size": micro})
    chips = len(target.devices)
    if config.mesh.axes.to_dict() != {"data": 1, "fsdp": chips}:
        candidates.append({"mesh.axes": {"data": 1, "fsdp": chips}})
    if not config.model.remat and failed.kind in ("train", "distill"):
        candidates.append({"model.remat": True})
    if config.model.dtype != "bfloat16":
        candidates.append({"model.dtype": "bfloat16"})
    for change in candidates:
        trial = copy.deepcopy(config)
        with trial.unlocked():
            for key, value in change.items():
                override(trial, **{key: ConfigDict(value) if isinstance(value, dict) else value})
        log(f"  {name} does not fit; trying {_describe(change)}...")
        try:
            result = compile_step(trial, target, name)
        except ValueError as error:  # e.g. a mesh or micro-batch the batch does not divide
            log(f"    not possible: {error}")
            continue
        if result.fits:
            return {"change": {k: v for k, v in change.items()}, "memory": result.memory}
    return None


def _describe(change: dict[str, Any]) -> str:
    return ", ".join(f"--config.{k}={v}" for k, v in change.items())
