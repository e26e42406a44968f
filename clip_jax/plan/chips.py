"""TPU chips and topologies: compile-only devices for a slice, and each chip's published peak numbers.

The numbers are the vendor's per-chip specifications (Google Cloud's TPU system-architecture pages, as read
on 2026-12-05: docs.cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e); they bound a step's time from below,
they do not measure it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip's memory and published peaks (bf16 matrix FLOP/s; bytes/s)."""

    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    ici_bandwidth: float  # bidirectional inter-chip interconnect, per chip
    megacore: bool  # two TensorCores that jax drives as one device with chip_config_name="megacore"
    source: str


CHIPS: dict[str, Chip] = {
    "v4": Chip(
        "v4", 32 * GiB, 275e12, 1200e9, 300e9, True,
        "docs.cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB at 1200 GB/s); ICI: 6 links x 50 GB/s per "
        "the TPU v4 paper (Jouppi et al. 2023) — the page gives no per-chip figure",
    ),
    "v5e": Chip(
        "v5e", 16 * GiB, 197e12, 819e9, 400e9, False,
        "docs.cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GiB at 819 GB/s, ICI 400 GB/s)",
    ),
    "v5p": Chip(
        "v5p", 95 * GiB, 459e12, 2765e9, 1200e9, True,
        "docs.cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16, 95 GiB at 2765 GB/s, ICI 1200 GB/s)",
    ),
    "v6e": Chip(
        "v6e", 32 * GiB, 918e12, 1638e9, 800e9, False,
        "docs.cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB at 1638 GB/s, ICI 800 GB/s)",
    ),
}  # fmt: skip

#: jax's ``device_kind`` of each chip.
DEVICE_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p", "TPU v6 lite": "v6e"}


class TopologyError(ValueError):
    """A topology name that cannot be compiled for here."""


@dataclasses.dataclass
class Target:
    """What ``plan`` compiles for: its devices (compile-only for a TPU slice), platform and chip."""

    name: str
    devices: list[Any]
    platform: str
    chip: Chip | None

    @property
    def hosts(self) -> int:
        return len({d.process_index for d in self.devices})

    def with_memory(self, hbm_bytes: int) -> Target:
        """The same target planned against ``hbm_bytes`` per chip (headroom, or a smaller chip's budget)."""
        if self.chip is None:
            raise TopologyError(f"--hbm_gib needs a TPU topology; {self.name} has no device memory limit")
        return dataclasses.replace(self, chip=dataclasses.replace(self.chip, hbm_bytes=hbm_bytes))


def target(name: str) -> Target:
    """``v5e:16x16``, ``v4:2x2x2`` (chips; megacore), ``v5p:4x4x4``, ``v6e:8x8`` (what
    ``jax.experimental.topologies`` takes), ``cpu:N`` (this host's CPU devices) or ``local``."""
    import jax

    if name == "local":
        devices = jax.devices()
        return Target(
            name, devices, devices[0].platform, CHIPS.get(DEVICE_KINDS.get(devices[0].device_kind, ""))
        )
    if name.startswith("cpu:"):
        count = _positive(name[4:], name)
        devices = jax.devices("cpu")
        if count > len(devices):
            raise TopologyError(
                f"--topology {name}: this process has {len(devices)} CPU devices — start it with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={count}"
            )
        return Target(name, devices[:count], "cpu", None)
    generation, _, shape = name.partition(":")
    chip = CHIPS.get(generation)
    if chip is None or not shape:
        raise TopologyError(
            f"unknown topology {name!r} — use GENERATION:SHAPE with a generation of {', '.join(CHIPS)} "
            f"(e.g. v5e:16x16, v4:2x2x4, v5p:4x4x4, v6e:8x8), cpu:N or local"
        )
    if importlib.util.find_spec("libtpu") is None:
        raise TopologyError(
            "compiling for a TPU topology needs libtpu (no TPU needed) — pip install 'clip_jax[tpu]' "
            "(libtpu==0.0.42.*, the version jax 0.10.2's tpu extra pins)"
        )
    # Compile-only devices never touch a TPU: several planning processes may load libtpu at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    options = {"chip_config_name": "megacore"} if chip.megacore else {}
    try:
        devices = list(topologies.get_topology_desc(platform="tpu", topology_name=name, **options).devices)
    except Exception as error:  # libtpu's errors are RuntimeError / XlaRuntimeError with its own text
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TopologyError(
            f"libtpu cannot build topology {name!r}: {first} — check the shape (v5e/v6e: AxB, v4/v5p: AxBxC, "
            f"in chips) and that no other program holds the TPU"
        ) from None
    kind = DEVICE_KINDS.get(devices[0].device_kind)
    if kind != generation:
        raise TopologyError(f"topology {name!r} gave {devices[0].device_kind!r} devices, not {generation}")
    return Target(name, devices, "tpu", chip)


def _positive(text: str, name: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise TopologyError(f"--topology {name}: expected cpu:N with N a positive whole number")
    return int(text)
