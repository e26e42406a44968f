"""The training loop: phases in order, sharded steps, periodic validation, checkpoints, resume.

A run is fully described by its config and workdir. Starting again with the same workdir resumes
from the latest checkpoint: parameters, optimizer state (hence learning-rate schedule position),
step, phase, RNG and data-iterator position are all restored, so the following losses equal those
of an uninterrupted run.

The pieces, each in its own module: the model a config describes (:mod:`~clip_jax.train.model`), a phase's
optimizer, state and jitted step (:mod:`~clip_jax.train.phase`, :mod:`~clip_jax.train.step`), the feature
cache (:mod:`~clip_jax.train.features`), validation (:mod:`~clip_jax.train.evaluator`). The loop here only
sequences phases and steps, logging, checkpoints and signals.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from clip_jax import workdir as workdirs
from clip_jax.checkpoint import Checkpointer
from clip_jax.config import check_init_from, validate
from clip_jax.data import cache_examples
from clip_jax.sharding import batch_sharding, check_batch_size, check_micro_batch_size, make_mesh
from clip_jax.train import features as feature_cache
from clip_jax.train import resume
from clip_jax.train.evaluator import Evaluator
from clip_jax.train.metrics_logger import MetricsLogger, progress_bar, strict_json
from clip_jax.train.objectives import objective_of
from clip_jax.train.optim import learning_rates_at
from clip_jax.train.phase import Phase, StartedPhase, phases_of, start_phase
from clip_jax.train.signals import StopSignals
from clip_jax.train.step import TrainState


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Trainer:
    """Runs the phases of a config in a workdir, resuming from the latest checkpoint there."""

    def __init__(
        self, config: ConfigDict, workdir: str, *, devices: list | None = None, resume_step: int | None = None
    ):
        """``resume_step``: resume from this checkpoint instead of the latest (later ones are set aside)."""
        self.config = validate(config)
        self.objective = objective_of(config)  # checks the objective's own settings
        self.workdir = workdir
        self.resume_step = resume_step
        self.mesh = make_mesh(config.mesh.axes.to_dict(), devices)
        check_batch_size(config.train.batch_size, self.mesh)
        check_micro_batch_size(config.train.micro_batch_size, self.mesh)
        self.primary = jax.process_index() == 0
        self.lock = workdirs.WorkdirLock(workdir)
        if self.primary:  # one run per workdir; process 0 holds the lock for a multi-process run
            workdirs.check_writable(workdir)
            self.lock.acquire()
        try:
            # Before anything is written: a config the workdir's checkpoints cannot resume under is refused.
            self.config_changes = resume.check_resume(self.config, workdir)
            self._setup(config, workdir)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, config: ConfigDict, workdir: str) -> None:
        self.model = self.objective.build_model(config)
        if config.model.init_from:  # the saved model's own settings: config.json must not record others
            m = self.model
            check_init_from(
                config,
                m.module.projection_dim,
                m.module.text_pooling,
                m.max_length,
                m.module.text_projection_kind,
            )
        self.graphdef = nnx.graphdef(self.model.module)
        self.phases = phases_of(config)
        self.total_steps = self.phases[-1].end
        self.train_iter, self.val = self.objective.build_data(config, self.model, self.tokenize)
        self.evaluator = Evaluator(config, self.val, self.mesh, self.model)
        self.batch_sharding = batch_sharding(self.mesh)
        self.checkpointer = Checkpointer(
            workdir, keep=config.train.keep_checkpoints, use_async=config.train.async_checkpoints
        )
        self.logger = MetricsLogger(
            workdir, enabled=self.primary, wandb_project=config.train.wandb_project, config=config.to_dict()
        )
        self._stop_requested = False
        self._stop_reason = ""
        self.last_val: dict[str, float] = {}
        self._feature_batches: dict[str, feature_cache.FeatureBatches] = {}
        self._restored_feature_state: dict[str, dict] = {}

    def _write_run_files(self) -> None:
        """What evaluation and export need to rebuild the model from a checkpoint, without the network:
        ``config.json`` and ``model/`` (architecture, tokenizer, image processor; no weights)."""
        workdirs.write_text(
            workdirs.join(self.workdir, "config.json"),
            json.dumps(self.config.to_dict(), indent=2, default=list) + "\n",
        )
        if workdirs.is_remote(self.workdir):
            with tempfile.TemporaryDirectory() as local:
                self.model.save_pretrained(local, weights=False)
                workdirs.upload_dir(local, workdirs.join(self.workdir, "model"))
        else:
            self.model.save_pretrained(Path(self.workdir, "model"), weights=False)

    # ------------------------------------------------------------------ pieces a step needs
    def tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Token ids and masks padded to ``model.max_length`` (one shape for every training batch)."""
        return self.model.tokenize(texts, fixed_length=True)

    def phase_at(self, step: int) -> Phase:
        for phase in self.phases:
            if step < phase.end:
                return phase
        return self.phases[-1]

    def start_phase(self, phase: Phase, module: nnx.Module, step: int = 0, rng: Any = None) -> StartedPhase:
        """``phase``'s state (parameters from ``module``) and jitted step, placed on the mesh."""
        started = start_phase(self.config, module, phase, self.mesh, step=step, rng=rng)
        self.graphdef = started.graphdef
        return started

    def module(self, state: TrainState) -> nnx.Module:
        """The model's module with ``state``'s parameters."""
        return nnx.merge(self.graphdef, state.params, state.frozen)

    def global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's part of a batch as global arrays split over the mesh."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in batch.items()
            if k != "index"
        }

    def _meta(self, phase: Phase, step: int) -> dict:
        """A checkpoint's metadata: its phase and every process's data positions (``data`` is process 0's)."""
        data = resume.gather_states(self.train_iter.get_state())
        meta = {
            "step": step,
            "phase": phase.name,
            "phase_index": phase.index,
            "data": data[0],
            "data_by_process": data,
        }
        if self._feature_batches:
            features = {
                name: resume.gather_states(it.get_state()) for name, it in self._feature_batches.items()
            }
            meta["features"] = {name: states[0] for name, states in features.items()}
            meta["features_by_process"] = features
        return meta

    def _carried_positions(self, meta: dict, step: int, phase: Phase) -> tuple[dict, dict[str, dict]]:
        """This process's (data position, cached-feature positions) from a checkpoint's ``meta``, carried over to
        this run's process count (:func:`~clip_jax.train.resume.carried_state`). Before ``data_by_process``,
        checkpoints held process 0's positions only, which every process took."""
        count = jax.process_count()
        data = resume.carried_state(
            meta.get("data_by_process") or [meta["data"]] * count,
            self.train_iter.carry_state,
            "the training data",
            step,
            self.workdir,
        )
        by_process = meta.get("features_by_process") or {
            k: [v] * count for k, v in meta.get("features", {}).items()
        }
        features = {}
        if phase.name in by_process and step < phase.end:  # only the running phase reads its position again
            features[phase.name] = resume.carried_state(
                by_process[phase.name],
                feature_cache.FeatureBatches.carry_state,
                f"the cached features of phase {phase.name!r}",
                step,
                self.workdir,
            )
        return data, features

    def _cache_examples(self):
        """Chunks of (eval-preprocessed pixels, all captions) of this process's training examples."""
        local_batch = self.config.train.batch_size // jax.process_count()
        yield from cache_examples(self.config, self.train_iter, self.model.image_processor, local_batch)

    def batches(self, phase: Phase, state: TrainState):
        """The batch iterator of ``phase``: the data pipeline, or cached features (computed on first use)."""
        if not phase.cache_features:
            return self.train_iter
        if phase.name not in self._feature_batches:
            batches = feature_cache.feature_batches(
                self.config,
                self.workdir,
                phase.name,
                state,
                self.graphdef,
                self.mesh,
                self._cache_examples,
                self.tokenize,
                self.logger.message,
            )
            if phase.name in self._restored_feature_state:
                batches.set_state(self._restored_feature_state[phase.name])
            self._feature_batches[phase.name] = batches
        return self._feature_batches[phase.name]

    def request_stop(self, reason: str = "stop requested") -> None:
        """Stop at the end of the current step with a checkpoint (what SIGTERM and a first Ctrl-C do)."""
        self._stop_reason = reason
        self._stop_requested = True

    def _restore_or_start(self) -> tuple[int, Phase, StartedPhase, TrainState]:
        """(step, phase, its started state and step function, state): from the checkpoint to resume, else fresh.
        The workdir is written to (run files, config history) only once the checkpoint has been restored."""
        step = 0
        phase = self.phases[0]
        restored = None
        latest = resume.resume_step(self.checkpointer, self.workdir, self.resume_step)
        if latest is not None:
            meta = resume.read_checkpoint(
                self.checkpointer, self.workdir, latest, self.checkpointer.restore_meta
            )
            phase = self.phases[meta["phase_index"]]
            restored = (latest, meta, *self._carried_positions(meta, latest, phase))
        started = self.start_phase(phase, self.model.module, step)
        state = started.state
        if restored is not None:
            latest, meta, data_state, feature_states = restored
            state = resume.read_checkpoint(
                self.checkpointer,
                self.workdir,
                latest,
                lambda s: self.checkpointer.restore_state(s, started.abstract),
            )
            self.train_iter.set_state(data_state)
            self._restored_feature_state = feature_states
            step = latest
            resume.set_aside_later(self.checkpointer, self.workdir, step, self.logger.message)
            self.logger.message(f"Resumed from step {step} ({phase.name}) in {self.workdir}.")
        if self.primary:
            self._write_run_files()
            resume.record_changes(self.workdir, step, self.config_changes)
        return step, phase, started, state

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """Validation metrics of ``state`` (see :class:`~clip_jax.train.evaluator.Evaluator`)."""
        return self.evaluator(state, self.graphdef)

    def skipped(self) -> dict[str, dict[str, int]]:
        """Training examples skipped so far (this process's share), ``{source: {reason: count}}``."""
        return self.train_iter.skipped()

    def _skip_scalars(self) -> dict[str, int]:
        return {
            f"data/skipped/{source}/{reason}": n
            for source, counts in self.skipped().items()
            for reason, n in counts.items()
        }

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        """Train to the end of the last phase (or until SIGTERM / Ctrl-C); return a summary."""
        stop_signals = StopSignals(self.request_stop).__enter__()
        summary: dict[str, Any] = {"workdir": self.workdir, "preempted": False}
        failing = False
        try:
            step, phase, started, state = self._restore_or_start()
            while step < self.total_steps:
                if step >= phase.end:  # phase boundary: hand the parameters over to the next phase
                    module = self.module(state)
                    next_phase = self.phase_at(step)
                    self.logger.message(
                        f"Step {step}: phase {phase.name!r} done; starting {next_phase.name!r} "
                        f"(trainable: {next_phase.trainable})."
                    )
                    phase = next_phase
                    started = self.start_phase(phase, module, step, rng=state.rng)
                    state = started.state
                step, state = self._run_phase(phase, state, started, step)
                if self._stop_requested:
                    self.checkpointer.save(step, state, self._meta(phase, step))
                    self.checkpointer.wait()
                    self.logger.message(f"{self._stop_reason}: saved a checkpoint at step {step}; exiting.")
                    summary["preempted"] = True
                    summary["interrupted"] = self._stop_reason == "SIGINT"
                    break
            summary.update(step=step, phase=phase.name, val=self.last_val, skipped=self.skipped())
            if self.primary:  # also when the run stops mid-epoch
                self.train_iter.report_skipped(f"End of run at step {step}")
            self.state = state
            return summary
        except BaseException:
            failing = True
            raise
        finally:
            closers = [
                self.checkpointer.close,
                self.logger.close,
                getattr(self.train_iter, "close", lambda: None),
            ]
            closers.append(lambda: stop_signals.__exit__(None, None, None))
            try:
                for close in closers:
                    try:
                        close()
                    except Exception as error:
                        if not failing:  # when the run already failed, its error is the one to report
                            raise
                        self.logger.message(f"(while stopping: {type(error).__name__}: {error})")
            finally:
                self.lock.release()

    def _run_phase(
        self, phase: Phase, state: TrainState, started: StartedPhase, step: int
    ) -> tuple[int, TrainState]:
        t = self.config.train
        batches = self.batches(phase, state)
        bar = progress_bar(
            phase.end,
            step,
            f"{phase.name}" + (" (cached features)" if phase.cache_features else ""),
            self.primary,
        )
        images = 0
        tick = time.perf_counter()
        try:
            while step < phase.end and not self._stop_requested:
                state, metrics = started.step_fn(state, self.global_batch(next(batches)))
                step += 1
                self.checkpointer.check()  # an asynchronous save that failed stops the run here
                metrics = jax.device_get(metrics)
                if not all(math.isfinite(float(metrics[k])) for k in ("loss", "grad_norm", "param_norm")):
                    self.checkpointer.wait()
                    raise TrainingDiverged(
                        f"Loss is {float(metrics['loss'])} (gradient norm {float(metrics['grad_norm'])}, parameter "
                        f"norm {float(metrics['param_norm'])}) at step {step} (phase {phase.name!r}). The last good "
                        f"checkpoint (step {self.checkpointer.latest_step()}) is kept in {self.workdir}. Lower "
                        f"the learning rate, enable train.grad_clip_norm, or check the data."
                    )
                images += t.batch_size
                lrs = learning_rates_at(started.schedules, step - 1 - phase.start)
                if step % t.log_every == 0 or step == phase.end:
                    elapsed = time.perf_counter() - tick
                    rate = images / elapsed if elapsed > 0 else 0.0
                    scalars = {
                        **{f"train/{k}": v for k, v in metrics.items()},
                        **{f"lr/{g}": v for g, v in lrs.items()},
                        **self._skip_scalars(),
                        "train/images_per_s": rate,
                        "train/images_per_s_per_device": rate / self.mesh.size,
                        "phase": phase.index,
                    }
                    self.logger.write(step, scalars)
                    bar.set_postfix(
                        loss=f"{float(metrics['loss']):.4f}",
                        lr=f"{max(lrs.values()):.2e}",
                        img_s=f"{rate:.1f}",
                    )
                    images, tick = 0, time.perf_counter()
                bar.update(1)
                if t.eval_every and step % t.eval_every == 0 and step != phase.end:
                    self.logger.write(step, self.evaluate(state))
                if step % t.checkpoint_every == 0 or step == phase.end:
                    self.checkpointer.save(step, state, self._meta(phase, step))
        finally:
            bar.close()
        if step == phase.end:
            val = self.last_val = self.evaluate(state)
            self.logger.write(step, val)
            if val:
                self.logger.message(
                    f"End of {phase.name!r} at step {step}: "
                    + ", ".join(f"{k}={v:.4f}" for k, v in val.items())
                )
        return step, state


def train(config: ConfigDict, workdir: str, *, resume_step: int | None = None) -> dict[str, Any]:
    """Train as ``config`` says in ``workdir`` (resuming if it holds checkpoints, from ``resume_step`` if given);
    returns a summary."""
    trainer = Trainer(config, workdir, resume_step=resume_step)
    summary = trainer.run()
    if trainer.primary:
        summary = json.loads(json.dumps(summary, default=float))  # NumPy scalars -> floats
        workdirs.write_text(workdirs.join(workdir, "summary.json"), strict_json(summary, indent=2) + "\n")
    return summary
