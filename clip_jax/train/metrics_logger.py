"""Training logs: a tqdm progress bar, ``metrics.jsonl`` and TensorBoard event files in the workdir
(local or ``gs://``), and optionally Weights & Biases. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from clip_jax import workdir as workdirs


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN/inf float (in nested dicts and lists too) replaced by ``None``."""
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """JSON that every parser reads: NaN and infinities become ``null`` (Python's ``NaN`` is not JSON)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


class MetricsLogger:
    """Writes scalar metrics by step; a no-op on processes other than 0.

    For a remote workdir, ``metrics.jsonl`` and the TensorBoard events are kept in a local spool
    (``metrics.jsonl`` seeded with the remote file when resuming) and uploaded at most every
    ``upload_every_s`` seconds and on close."""

    def __init__(
        self,
        workdir: str,
        *,
        enabled: bool,
        wandb_project: str = "",
        config: dict | None = None,
        upload_every_s: float = 60.0,
    ):
        self.enabled = enabled
        self.workdir = workdir
        self.upload_every_s = upload_every_s
        self._tb = self._wandb = self._jsonl = self._spool = None
        self._uploaded = 0.0
        self._wandb_project, self._config = wandb_project, config
        self._opened = False  # files are created at the first write: a run that fails before leaves none
        if enabled and wandb_project:
            from clip_jax.extras import require

            require("wandb", "train.wandb_project")  # a missing extra is said up front

    def _open(self) -> None:
        self._opened = True
        workdir, wandb_project, config = self.workdir, self._wandb_project, self._config
        from tensorboardX import FileWriter

        remote = workdirs.is_remote(workdir)
        metrics_path = workdirs.join(workdir, "metrics.jsonl")
        if remote:  # spooled locally, uploaded periodically: object stores cannot append
            self._spool = tempfile.TemporaryDirectory(prefix="clip_jax-logs-")
            local = Path(self._spool.name, "metrics.jsonl")
            local.write_text(workdirs.read_text(metrics_path) if workdirs.exists(metrics_path) else "")
            metrics_path = str(local)
            self._tb = FileWriter(os.path.join(self._spool.name, "tensorboard"))
        else:
            os.makedirs(workdir, exist_ok=True)
            self._tb = FileWriter(os.path.join(workdir, "tensorboard"))
        self._jsonl = open(metrics_path, "a")  # noqa: SIM115 (kept open for the run)
        if wandb_project:
            from clip_jax.extras import require

            wandb = require("wandb", "train.wandb_project")
            self._wandb = wandb.init(
                project=wandb_project, config=config, dir=None if remote else workdir, resume="allow"
            )

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if not self._opened:
            self._open()
        from tensorboardX.proto.summary_pb2 import Summary

        scalars = {k: float(v) for k, v in metrics.items()}
        # Tags exactly as in metrics.jsonl (``val/text_retrieval_recall@1``): SummaryWriter.add_scalar would
        # rewrite '@' (a character TensorFlow op names lack, not TensorBoard tags), so write the summary itself.
        self._tb.add_summary(
            Summary(
                value=[
                    Summary.Value(tag=key, simple_value=value)
                    for key, value in scalars.items()
                    if math.isfinite(value)
                ]
            ),
            step,
        )
        if self._jsonl is not None:
            self._jsonl.write(strict_json({"step": step, **scalars}) + "\n")
            self._jsonl.flush()
            if self._spool is not None and time.monotonic() - self._uploaded > self.upload_every_s:
                self._upload()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def _upload(self) -> None:
        self._tb.flush()
        workdirs.upload_file(self._jsonl.name, workdirs.join(self.workdir, "metrics.jsonl"))
        workdirs.upload_dir(Path(self._spool.name, "tensorboard"), workdirs.join(self.workdir, "tensorboard"))
        self._uploaded = time.monotonic()

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            if self._spool is not None:
                self._upload()
        if self._tb is not None:
            self._tb.close()
        if self._spool is not None:
            self._spool.cleanup()
        if self._wandb is not None:
            self._wandb.finish()


def progress_bar(total: int, initial: int, description: str, enabled: bool) -> tqdm:
    """A per-phase bar with ETA; metrics go into its postfix."""
    return tqdm(
        total=total, initial=initial, desc=description, disable=not enabled, dynamic_ncols=True, unit="step"
    )
