"""Training logs: a tqdm progress bar, ``metrics.jsonl`` and TensorBoard event files in the workdir,
and optionally Weights & Biases. Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm import tqdm


class MetricsLogger:
    """Writes scalar metrics by step; a no-op on processes other than 0."""

    def __init__(self, workdir: str, *, enabled: bool, wandb_project: str = "", config: dict | None = None):
        self.enabled = enabled
        self.workdir = workdir
        self._tb = self._wandb = self._jsonl = None
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True) if "://" not in workdir else None
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        if "://" not in workdir:
            self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")
        if wandb_project:
            import wandb

            self._wandb = wandb.init(project=wandb_project, config=config, dir=workdir if "://" not in workdir
                                     else None, resume="allow")

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        scalars = {k: float(v) for k, v in metrics.items()}
        for key, value in scalars.items():
            if math.isfinite(value):
                self._tb.add_scalar(key.replace("@", "_at_"), value, step)  # '@' is not a legal tag character
        if self._jsonl is not None:
            self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
            self._jsonl.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()


def progress_bar(total: int, initial: int, description: str, enabled: bool) -> tqdm:
    """A per-phase bar with ETA; metrics go into its postfix."""
    return tqdm(total=total, initial=initial, desc=description, disable=not enabled, dynamic_ncols=True,
                unit="step")
