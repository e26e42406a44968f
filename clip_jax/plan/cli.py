"""``clip-jax plan``: the command line of :func:`clip_jax.plan.plan`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from clip_jax.commandline import define_config_flag

HELP = """\
clip-jax plan: compile a recipe's steps for a TPU slice (no TPU needed) and report what each chip holds.

    clip-jax plan --config clip_italian --topology v5e:4x4
    clip-jax plan --config clip_italian --topology v5e:16x16 --config.train.batch_size=32768 --json
    clip-jax plan --config tiny --topology cpu:8 --phases warmup

--topology: v4:AxBxC, v5e:AxB, v5p:AxBxC, v6e:AxB (in chips, as jax.experimental.topologies takes them; needs
pip install 'clip_jax[tpu]'), cpu:N (this host's CPU devices) or local. Hub ids resolve to their architecture
offline (local directory, Hugging Face cache, or the copies clip_jax ships for its recipes); no weights are read.
"""


def _flags(argv: Sequence[str], config=None):
    from absl import flags

    values = flags.FlagValues()
    define_config_flag(values, argv, config)
    flags.DEFINE_string("topology", None, "What to compile for (see above).", flag_values=values)
    flags.DEFINE_string("phases", "", "Comma-separated steps to compile (phase names, eval); default all.",
                        flag_values=values)  # fmt: skip
    flags.DEFINE_bool(
        "json", False, "Print one JSON object per step instead of the table.", flag_values=values
    )
    flags.DEFINE_float("hbm_gib", 0.0, "Plan for this much memory per chip instead of the chip's HBM (0: all).",
                       flag_values=values)  # fmt: skip
    flags.DEFINE_bool("search", True, "When a step does not fit, find the first change that does.",
                      flag_values=values)  # fmt: skip
    return values


def main(argv: Sequence[str]) -> list[dict]:
    """Parse ``argv``, plan, print the table (or JSON lines); returns the plans as dicts."""

    from clip_jax.commandline import UsageError, parse_config_command

    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(HELP)
        print("\n".join(f"  --{name}: {flag.help}" for name, flag in _flags(["plan"]).items()))
        return []
    values, _ = parse_config_command("plan", argv, _flags)
    if not values.topology:
        raise UsageError("clip-jax plan needs --topology — e.g. v5e:4x4, v4:2x2x2, cpu:8 (see --help)")
    from clip_jax.plan import plan, target

    steps = [s for s in values.phases.split(",") if s] or None
    log = (lambda text: print(text, file=sys.stderr)) if values.json else print
    where = target(values.topology)
    if values.hbm_gib:
        where = where.with_memory(int(values.hbm_gib * 2**30))
    plans = plan(values.config, where, steps=steps, search=values.search, log=log)
    rows = [p.as_dict() for p in plans]
    if values.json:
        for row in rows:
            print(json.dumps(row))
    else:
        print(format_table(plans))
    return rows


def _gib(n: float | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def format_table(plans) -> str:
    """The plans as the text ``clip-jax plan`` prints: one block per step."""
    lines = []
    for p in plans:
        mem = p.memory
        fits = {True: "fits", False: "DOES NOT FIT", None: "(no HBM limit)"}[p.fits]
        lines += [
            f"== {p.step} ({p.kind}) on {p.topology}: {p.chips} chips, {p.hosts} host(s), mesh {p.mesh}",
            f"   batch {p.global_batch} global, {p.per_chip_batch:g} per chip"
            + (f", micro-batch {p.micro_batch}" if p.micro_batch else "")
            + f"; dtype {p.dtype}"
            + (", remat" if p.remat else ""),
            (
                f"   memory per chip: at least {_gib(mem['total'])} of {_gib(p.hbm_bytes)} — {fits}"
                " (the TPU compiler's count of temporaries alone; it built no program)"
                if p.compiler_refused
                else f"   memory per chip: {_gib(mem['total'])} of {_gib(p.hbm_bytes)} — {fits}"
                f"  (arguments {_gib(mem['argument'])}, outputs {_gib(mem['output'])}, aliased "
                f"{_gib(mem['aliased'])}, temporaries {_gib(mem['temporary'])}, code {_gib(mem['code'])})"
            ),
            f"   FLOPs per step: {p.flops_analytic:.3e} analytic"
            + (
                ""
                if p.compiler_refused
                else f", {p.flops_xla:.3e} compiled matmuls (loops x trip counts; XLA's cost_analysis, "
                f"loops once: {p.flops_xla_loops_once:.3e})"
            ),
            "   collectives per chip and step: "
            + (
                ", ".join(
                    f"{k} {int(c['count'])}x {c['bytes'] / 2**20:.1f} MiB" for k, c in p.collectives.items()
                )
                or "none"
            ),
            f"   compile: {p.compile_seconds:.1f} s",
        ]
        if p.bound_seconds:
            b = p.bound_seconds
            lines.append(
                f"   step-time BOUND (published peaks, not a measurement): {b['step'] * 1e3:.2f} ms "
                f"(compute {b['compute'] * 1e3:.2f}, HBM {b['memory'] * 1e3:.2f}, interconnect "
                f"{b['collective'] * 1e3:.2f})"
                + (
                    f" -> at most {p.bound_images_per_s:,.0f} images/s, MFU {p.bound_mfu:.0%}"
                    if p.bound_images_per_s
                    else ""
                )
            )
        if p.compiler_refused:
            lines.append(f"   the TPU compiler refused it: {p.compiler_refused}")
        if p.fits is False:
            if p.suggestion:
                change = " ".join(f"--config.{k}={v}" for k, v in p.suggestion["change"].items())
                lines.append(f"   fits with: {change} ({_gib(p.suggestion['memory']['total'])} per chip)")
            else:
                lines.append(
                    "   no single change of micro-batch, fsdp, remat or bfloat16 fits: use more chips"
                )
    return "\n".join(lines)
