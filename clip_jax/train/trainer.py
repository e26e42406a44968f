"""The training loop: phases in order, sharded steps, periodic validation, checkpoints, resume.

A run is fully described by its config and workdir. Starting again with the same workdir resumes
from the latest checkpoint: parameters, optimizer state (hence learning-rate schedule position),
step, phase, RNG and data-iterator position are all restored, so the following losses equal those
of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from clip_jax import workdir as workdirs
from clip_jax.clip_model import CLIPModel
from clip_jax.config import validate
from clip_jax.data.memory import ArrayDataset, BatchIterator
from clip_jax.data.pipeline import (
    BadDataMonitor,
    ExampleStream,
    TrainBatches,
    Transform,
    load_eval_examples,
    process_examples,
)
from clip_jax.data.preprocess import ImageProcessorConfig, preprocess_images
from clip_jax.data.shapes import ShapesSpec, load_or_generate, vocabulary
from clip_jax.evaluate.retrieval import benchmark_names, retrieval_metrics
from clip_jax.models.dual_encoder import l2_normalize
from clip_jax.sharding import (
    batch_sharding,
    check_batch_size,
    check_micro_batch_size,
    make_mesh,
    shard_params,
)
from clip_jax.train import distill
from clip_jax.train import features as feature_cache
from clip_jax.train.checkpoint import Checkpointer
from clip_jax.train.logging import MetricsLogger, progress_bar, strict_json
from clip_jax.train.optim import learning_rates_at, make_optimizer
from clip_jax.train.state import (
    TrainState,
    initial_rng,
    jit_train_step,
    make_train_step,
    replicated,
    split_trainable,
)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _dtype(name: str) -> Any:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"Unknown dtype {name!r}; choose one of {sorted(DTYPES)}.") from None


def demo_tokenizer(cache_dir: str) -> str:
    """A WordPiece tokenizer over the shapes data set's Italian words, written once into ``cache_dir``."""
    from clip_jax.demo.standins import write_wordpiece_tokenizer

    directory = Path(cache_dir).expanduser() / "shapes-tokenizer-v2"
    if not (directory / "tokenizer_config.json").exists():
        write_wordpiece_tokenizer(vocabulary("it"), directory)
    return str(directory)


def build_model(config: ConfigDict) -> CLIPModel:
    """The dual encoder a config describes: pretrained towers (paths/hub ids; ``demo:NAME`` for the offline
    demo's stand-ins, built on first use) or random ones (dicts) with fresh projections; or, with
    ``model.init_from``, a whole saved dual encoder (exported directory, hub id or training workdir)."""
    from clip_jax.demo.standins import resolve

    m = config.model
    if (
        m.init_from
    ):  # a whole saved dual encoder, e.g. a distillation's result (AltCLIP: distil, then fine-tune)
        from clip_jax.evaluate.run import load_model

        model = load_model(m.init_from)
        model.module.vision.remat = model.module.text.remat = bool(m.remat)
        return model
    tokenizer = m.tokenizer or None
    if tokenizer == "shapes":
        tokenizer = demo_tokenizer(config.data.cache_dir)
    tower = lambda spec: (
        spec.to_dict() if isinstance(spec, ConfigDict) else resolve(spec, config.data.cache_dir)
    )
    text = tower(m.text)
    if isinstance(text, dict) and tokenizer and text.get("vocab_size") == "tokenizer":
        from transformers import AutoTokenizer

        text = dict(text, vocab_size=len(AutoTokenizer.from_pretrained(tokenizer)))
    sigmoid = config.loss.kind == "sigmoid"
    model = CLIPModel.from_towers(
        vision=tower(m.vision),
        text=text,
        projection_dim=m.projection_dim,
        text_pooling=m.text_pooling,
        tokenizer=tokenizer,
        image_size=m.image_size or None,
        max_length=m.max_length,
        logit_scale_init=config.loss.sigmoid_scale_init if sigmoid else m.logit_scale_init,
        logit_bias_init=config.loss.sigmoid_bias_init if sigmoid else None,
        dtype=None if m.dtype == "float32" else _dtype(m.dtype),
        param_dtype=_dtype(m.param_dtype),
        seed=config.train.seed,
    )
    model.module.vision.remat = model.module.text.remat = bool(m.remat)
    return model


@dataclasses.dataclass
class EvalSet:
    """Preprocessed validation images and all their captions."""

    pixels: np.ndarray
    captions: list[list[str]]

    def __len__(self) -> int:
        return len(self.pixels)


def build_data(config: ConfigDict, model: CLIPModel, tokenize) -> tuple[Any, EvalSet | None]:
    """This process's training batches and the validation set, as ``config.data`` says."""
    d, batch = config.data, config.train.batch_size
    if d.source == "shapes":
        data = load_or_generate(ShapesSpec(**d.shapes.to_dict()), d.cache_dir)
        train = BatchIterator(
            ArrayDataset(data["train"]["images"], data["train"]["captions"]),
            batch,
            tokenize=tokenize,
            image_processor=model.image_processor,
            seed=config.train.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        val = EvalSet(
            preprocess_images(list(data["val"]["images"]), model.image_processor), data["val"]["captions"]
        )
        return train, val
    if d.source == "files":
        if not d.train:
            raise ValueError("data.source='files' needs data.train (e.g. 'jsonl:/data/train.jsonl').")
        keys = dict(image_key=d.image_key, caption_key=d.caption_key)
        transform = Transform(
            model.image_processor,
            train=True,
            crop_scale=tuple(d.crop_scale),
            horizontal_flip=d.horizontal_flip,
        )
        stream = ExampleStream(
            d.train,
            transform,
            seed=config.train.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            workers=d.workers,
            worker_processes=d.worker_processes,
            **keys,
        )
        monitor = BadDataMonitor(stream.name, max_bad_fraction=d.max_bad_fraction)
        train = TrainBatches(stream, batch // jax.process_count(), tokenize, monitor)
        val = None
        if d.val:
            pixels, captions, _ = load_eval_examples(
                d.val,
                model.image_processor,
                limit=d.val_limit or None,
                max_bad_fraction=d.max_bad_fraction,
                workers=d.workers,
                **keys,
            )
            val = EvalSet(pixels, captions)
        return train, val
    raise ValueError(f"Unknown data.source {d.source!r}; choose 'shapes' (offline demo) or 'files'.")


def phase_optimizer(config: ConfigDict, phase: ConfigDict, params: Any):
    """The optimizer (and per-group schedules) of one phase (``config.phases[name]``) over ``params``."""
    t = config.train
    return make_optimizer(
        params,
        groups=[tuple(g) for g in t.param_groups],
        learning_rates=phase.learning_rates.to_dict(),
        steps=int(phase.steps),
        warmup_steps=phase.warmup_steps,
        decay=phase.decay,
        end_factor=phase.end_factor,
        optimizer=t.optimizer,
        settings=dict(
            b1=t.b1,
            b2=t.b2,
            eps=t.eps,
            weight_decay=t.weight_decay,
            grad_clip_norm=t.grad_clip_norm,
            agc_clip=t.agc_clip,
        ),
    )


@dataclasses.dataclass
class Phase:
    name: str
    index: int
    start: int  # global step at which it begins
    steps: int
    trainable: str
    settings: ConfigDict

    @property
    def end(self) -> int:
        return self.start + self.steps

    @property
    def cache_features(self) -> bool:
        return bool(self.settings.get("cache_features", False))


class Trainer:
    """Runs the phases of a config in a workdir, resuming from the latest checkpoint there."""

    def __init__(self, config: ConfigDict, workdir: str, *, devices: list | None = None):
        self.config = validate(config)
        self.workdir = workdir
        self.mesh = make_mesh(config.mesh.axes.to_dict(), devices)
        check_batch_size(config.train.batch_size, self.mesh)
        check_micro_batch_size(config.train.micro_batch_size, self.mesh)
        self.primary = jax.process_index() == 0
        self.lock = workdirs.WorkdirLock(workdir)
        if self.primary:  # one run per workdir; process 0 holds the lock for a multi-process run
            workdirs.check_writable(workdir)
            self.lock.acquire()
        try:
            self._setup(config, workdir)
        except BaseException:
            self.lock.release()
            raise

    def _setup(self, config: ConfigDict, workdir: str) -> None:
        self.distilling = config.train.objective == "distill"  # text-only: clip_jax/train/distill.py
        self.model = distill.build_model(config) if self.distilling else build_model(config)
        if self.primary:  # what export and evaluation need to rebuild the model from a checkpoint
            workdirs.write_text(
                workdirs.join(workdir, "config.json"),
                json.dumps(config.to_dict(), indent=2, default=list) + "\n",
            )
            if workdirs.is_remote(workdir):
                with tempfile.TemporaryDirectory() as local:
                    self.model.save_pretrained(local, weights=False)
                    workdirs.upload_dir(local, workdirs.join(workdir, "model"))
            else:
                self.model.save_pretrained(Path(workdir, "model"), weights=False)
        self.graphdef = nnx.graphdef(self.model.module)
        self.phases, start = [], 0
        for index, name in enumerate(config.train.phases):
            p = config.phases[name]
            self.phases.append(Phase(name, index, start, int(p.steps), p.trainable, p))
            start += int(p.steps)
        self.total_steps = start
        self.train_iter, self.val = (distill.build_data if self.distilling else build_data)(
            config, self.model, self._tokenize
        )
        self.batch_sharding = batch_sharding(self.mesh)
        self.checkpointer = Checkpointer(
            workdir, keep=config.train.keep_checkpoints, use_async=config.train.async_checkpoints
        )
        self.logger = MetricsLogger(
            workdir, enabled=self.primary, wandb_project=config.train.wandb_project, config=config.to_dict()
        )
        self._stop_requested = False
        self.last_val: dict[str, float] = {}
        self._feature_batches: dict[str, feature_cache.FeatureBatches] = {}
        self._restored_feature_state: dict[str, dict] = {}

    # ------------------------------------------------------------------ helpers
    def _tokenize(self, texts: list[str]) -> dict[str, np.ndarray]:
        return self.model.tokenize(texts, fixed_length=True)

    def phase_at(self, step: int) -> Phase:
        for phase in self.phases:
            if step < phase.end:
                return phase
        return self.phases[-1]

    def _optimizer(self, phase: Phase, params: nnx.State):
        return phase_optimizer(self.config, phase.settings, params)

    def _state_sharding(self, abstract: TrainState) -> TrainState:
        rules = [tuple(r) for r in self.config.mesh.rules]
        place = lambda tree: shard_params(tree, self.mesh, rules, self.config.mesh.fsdp_min_size)
        return TrainState(
            step=replicated(self.mesh),
            params=place(abstract.params),
            frozen=place(abstract.frozen),
            opt_state=place(abstract.opt_state),
            rng=replicated(self.mesh),
        )

    def _prepare_phase(
        self, phase: Phase, module: nnx.Module, step: int, opt_state: Any = None, rng: Any = None
    ) -> tuple[TrainState, Any, dict]:
        """Split the module for ``phase``, build its optimizer and jitted step, place the state on the mesh."""
        _, params, frozen = split_trainable(module, phase.trainable)
        if not jax.tree.leaves(params):
            raise ValueError(
                f"Phase {phase.name!r}: trainable regex {phase.trainable!r} matches no parameter."
            )
        if phase.cache_features:
            feature_cache.check_cacheable(phase.name, params)
        tx, schedules = self._optimizer(phase, params)
        rng = initial_rng(self.config.train.seed) if rng is None else rng

        def make_state(params, frozen):
            return TrainState(
                step=jnp.asarray(step, jnp.int32),
                params=params,
                frozen=frozen,
                opt_state=tx.init(params),
                rng=rng,
            )

        abstract = jax.eval_shape(make_state, params, frozen)
        sharding = self._state_sharding(abstract)
        state = jax.jit(make_state, out_shardings=sharding)(params, frozen)
        graphdef = nnx.graphdef(module)
        if self.distilling:
            step = distill.make_distill_step(
                graphdef, tx, self.mesh, loss_kind=self.config.distill.loss, dropout=self.config.model.dropout
            )
        elif (
            phase.cache_features
        ):  # projections on cached features: no tower activations, no micro-batches needed
            step = feature_cache.make_feature_train_step(
                graphdef, tx, self.mesh, loss_kind=self.config.loss.kind, negatives=self.config.loss.negatives
            )
        else:
            step = make_train_step(
                graphdef,
                tx,
                self.mesh,
                loss_kind=self.config.loss.kind,
                negatives=self.config.loss.negatives,
                dropout=self.config.model.dropout,
                micro_batch_size=self.config.train.micro_batch_size,
            )
        step_fn = jit_train_step(step, sharding, self.batch_sharding, self.mesh)
        self.graphdef = graphdef
        return state, step_fn, {"schedules": schedules, "sharding": sharding, "abstract": abstract}

    def _module(self, state: TrainState) -> nnx.Module:
        return nnx.merge(self.graphdef, state.params, state.frozen)

    def _global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, v)
            for k, v in batch.items()
            if k != "index"
        }

    def _meta(self, phase: Phase, step: int) -> dict:
        meta = {
            "step": step,
            "phase": phase.name,
            "phase_index": phase.index,
            "data": self.train_iter.get_state(),
        }
        if self._feature_batches:
            meta["features"] = {name: it.get_state() for name, it in self._feature_batches.items()}
        return meta

    def _cache_examples(self):
        """Chunks of (eval-preprocessed pixels, all captions) of this process's training examples."""
        local_batch = self.config.train.batch_size // jax.process_count()
        if isinstance(
            self.train_iter, BatchIterator
        ):  # in-memory data: already preprocessed without augmentation
            rows = np.arange(jax.process_index(), len(self.train_iter.dataset), jax.process_count())
            for start in range(0, len(rows), local_batch):
                chunk = rows[start : start + local_batch]
                yield self.train_iter._pixels[chunk], [self.train_iter.dataset.captions[i] for i in chunk]
            return
        d = self.config.data
        keys = {k: v for k, v in (("image_key", d.image_key), ("caption_key", d.caption_key)) if v}
        yield from process_examples(
            d.train,
            self.model.image_processor,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            chunk=local_batch,
            workers=d.workers,
            **keys,
        )

    def _batches(self, phase: Phase, state: TrainState):
        """The batch iterator of ``phase``: the data pipeline, or cached features (computed on first use)."""
        if not phase.cache_features:
            return self.train_iter
        if phase.name not in self._feature_batches:
            path = feature_cache.feature_cache_path(self.workdir, phase.name, jax.process_index())
            store = feature_cache.FeatureStore.load(path)
            if (
                jax.process_count() > 1
            ):  # recompute together unless every process has its part (lock-step pass)
                from jax.experimental import multihost_utils

                if not np.all(multihost_utils.process_allgather(np.array(store is not None))):
                    store = None
            if store is None:
                self.logger.message(
                    f"Phase {phase.name!r}: caching the frozen towers' features "
                    "(one pass over the training data)..."
                )
                tick = time.perf_counter()
                image_fn, text_fn = feature_cache.pooled_feature_fns(self.graphdef, self.mesh)
                store = feature_cache.compute_features(
                    lambda x: image_fn(state.params, state.frozen, x),
                    lambda i, m: text_fn(state.params, state.frozen, i, m),
                    self._cache_examples,
                    self._tokenize,
                    self.config.train.batch_size // jax.process_count(),
                    self.mesh,
                )
                store.save(path)
                self.logger.message(
                    f"Cached {feature_cache.describe(store)} in {time.perf_counter() - tick:.1f}s at {path}."
                )
            batches = feature_cache.FeatureBatches(
                store,
                self.config.train.batch_size // jax.process_count(),
                self.config.train.seed,
                jax.process_index(),
            )
            if phase.name in self._restored_feature_state:
                batches.set_state(self._restored_feature_state[phase.name])
            self._feature_batches[phase.name] = batches
        return self._feature_batches[phase.name]

    def _handle_sigterm(self, signum, frame) -> None:
        self._stop_requested = True

    # ------------------------------------------------------------------ evaluation
    def _embed_fns(self):
        """Jitted image and text embedding functions for the current graph (compiled once per phase)."""
        graphdef = self.graphdef
        if getattr(self, "_embed_graphdef", None) is not graphdef:
            out = replicated(self.mesh)

            def images(params, frozen, pixels):
                return l2_normalize(nnx.merge(graphdef, params, frozen).image_features(pixels))

            def texts(params, frozen, ids, mask):
                return l2_normalize(nnx.merge(graphdef, params, frozen).text_features(ids, mask))

            self._embed = (jax.jit(images, out_shardings=out), jax.jit(texts, out_shardings=out))
            self._embed_graphdef = graphdef
        return self._embed

    def _in_batches(self, fn, arrays: list[np.ndarray], batch: int) -> np.ndarray:
        """``fn`` over fixed-size batches of ``arrays`` (the last one padded), results concatenated."""
        out, n = [], len(arrays[0])
        for start in range(0, n, batch):
            chunk = [a[start : start + batch] for a in arrays]
            size = len(chunk[0])
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch - size, axis=0)]) for c in chunk]
            out.append(np.asarray(fn(*(jax.device_put(c, replicated(self.mesh)) for c in chunk)))[:size])
        return np.concatenate(out)

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """Validation loss (each image against the first captions) and retrieval recall (all captions)."""
        if self.val is None or len(self.val) == 0:
            return {}
        if self.distilling:
            return distill.evaluate(
                self.graphdef,
                state,
                self.val,
                self._tokenize,
                self._in_batches,
                max(1, self.config.train.eval_batch_size),
                self.config.distill.loss,
            )
        embed_images, embed_texts = self._embed_fns()
        batch = max(1, self.config.train.eval_batch_size)
        texts = [c for caps in self.val.captions for c in caps]
        text_image = np.array([i for i, caps in enumerate(self.val.captions) for _ in caps])
        first = np.concatenate([[0], np.cumsum([len(c) for c in self.val.captions])[:-1]])
        tokens = self.model.tokenize(texts, fixed_length=True)
        image_embeds = self._in_batches(
            lambda x: embed_images(state.params, state.frozen, x), [self.val.pixels], batch
        )
        text_embeds = self._in_batches(
            lambda i, m: embed_texts(state.params, state.frozen, i, m),
            [tokens["input_ids"], tokens["attention_mask"]],
            batch,
        )
        logits = float(self._module(state).scale()) * image_embeds @ text_embeds[first].T
        diag = np.diag(logits)
        lse = lambda x, axis: np.log(np.exp(x - x.max(axis, keepdims=True)).sum(axis)) + x.max(axis)
        loss = float(((lse(logits, 1) - diag).mean() + (lse(logits, 0) - diag).mean()) / 2)
        metrics = retrieval_metrics(image_embeds, text_embeds, text_image, ks=(1, 5))
        return {
            "val/loss": loss,
            **{f"val/{k}": v for k, v in benchmark_names(metrics).items() if "mrr" not in k},
        }

    def skipped(self) -> dict[str, dict[str, int]]:
        """Training examples skipped so far (this process's share), ``{source: {reason: count}}``."""
        monitor = getattr(self.train_iter, "monitor", None)
        if monitor is None or not monitor.counts:
            return {}
        return {source_label(monitor.source): dict(sorted(monitor.counts.items()))}

    def _skip_scalars(self) -> dict[str, int]:
        return {
            f"data/skipped/{source}/{reason}": n
            for source, counts in self.skipped().items()
            for reason, n in counts.items()
        }

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        """Train to the end of the last phase (or until SIGTERM); return a summary."""
        step = 0
        phase = self.phases[0]
        restored = None
        latest = self.checkpointer.latest_step()
        if latest is not None:
            meta = self.checkpointer.restore_meta(latest)
            phase = self.phases[meta["phase_index"]]
            restored = (latest, meta)
        state, step_fn, info = self._prepare_phase(phase, self.model.module, step)
        if restored is not None:
            latest, meta = restored
            target = jax.tree.map(
                lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                info["abstract"],
                info["sharding"],
            )
            state = self.checkpointer.restore_state(latest, target)
            self.train_iter.set_state(meta["data"])
            self._restored_feature_state = meta.get("features", {})
            step = latest
            self.logger.message(f"Resumed from step {step} ({phase.name}) in {self.workdir}.")
        previous_handler = signal.signal(signal.SIGTERM, self._handle_sigterm) if _in_main_thread() else None
        summary: dict[str, Any] = {"workdir": self.workdir, "preempted": False}
        failing = False
        try:
            while step < self.total_steps:
                if step >= phase.end:  # phase boundary: hand the parameters over to the next phase
                    module = self._module(state)
                    next_phase = self.phase_at(step)
                    self.logger.message(
                        f"Step {step}: phase {phase.name!r} done; starting {next_phase.name!r} "
                        f"(trainable: {next_phase.trainable})."
                    )
                    phase = next_phase
                    state, step_fn, info = self._prepare_phase(phase, module, step, rng=state.rng)
                step, state = self._run_phase(phase, state, step_fn, info, step)
                if self._stop_requested:
                    self.checkpointer.save(step, state, self._meta(phase, step))
                    self.checkpointer.wait()
                    self.logger.message(f"SIGTERM: saved a checkpoint at step {step}; exiting.")
                    summary["preempted"] = True
                    break
            summary.update(step=step, phase=phase.name, val=self.last_val, skipped=self.skipped())
            monitor = getattr(self.train_iter, "monitor", None)
            if monitor is not None and self.primary:
                monitor.report(f"End of run at step {step}")  # also when the run stops mid-epoch
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
            if previous_handler is not None:
                closers.append(lambda: signal.signal(signal.SIGTERM, previous_handler))
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
        self, phase: Phase, state: TrainState, step_fn, info: dict, step: int
    ) -> tuple[int, TrainState]:
        t = self.config.train
        batches = self._batches(phase, state)
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
                batch = self._global_batch(next(batches))
                state, metrics = step_fn(state, batch)
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
                lrs = learning_rates_at(info["schedules"], step - 1 - phase.start)
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


def source_label(spec: str) -> str:
    """A short name for a data source in metric names: the file name of each source of a mixture, joined by '+'."""
    import re

    from clip_jax.data.sources import parse_mixture

    names = []
    for item, _ in parse_mixture(spec):
        path = item.split("?", 1)[0].rstrip("/")
        names.append(path.rsplit("/", 1)[-1].split(":", 1)[-1] or item)
    return re.sub(r"[^A-Za-z0-9_.\-+{}]", "_", "+".join(names))


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def model_from_checkpoint(workdir: str, step: int | None = None) -> CLIPModel:
    """The model saved in a training workdir's checkpoint (latest, or ``step``), with its tokenizer and
    image processor. Needs no network: the architecture comes from ``<workdir>/model/config.json``."""
    from clip_jax.clip_model import dual_encoder_builder

    for needed in ("config.json", "model/config.json"):
        if not workdirs.exists(workdirs.join(workdir, *needed.split("/"))):
            raise FileNotFoundError(f"{workdir} is not a clip_jax training workdir: {needed} is missing.")
    config = ConfigDict(json.loads(workdirs.read_text(workdirs.join(workdir, "config.json"))))
    m = config.model
    with workdirs.local_copy(workdirs.join(workdir, "model")) as model_dir:
        build, _, _ = dual_encoder_builder(
            json.loads((model_dir / "config.json").read_text()),
            dtype=None if m.dtype == "float32" else _dtype(m.dtype),
            param_dtype=_dtype(m.param_dtype),
            source=str(model_dir),
        )
        checkpointer = Checkpointer(workdir, keep=1_000_000, use_async=False)
        step = step if step is not None else checkpointer.latest_step()
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {workdir}/checkpoints.")
        meta = checkpointer.restore_meta(step)
        phase = config.phases[meta["phase"]]
        abstract = nnx.eval_shape(build)
        graphdef, params, frozen = split_trainable(abstract, phase.trainable)
        tx, _ = phase_optimizer(config, phase, params)
        single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.eval_shape(
            lambda p, f: TrainState(
                step=jnp.zeros((), jnp.int32), params=p, frozen=f, opt_state=tx.init(p), rng=initial_rng(0)
            ),
            params,
            frozen,
        )
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=single), target)
        state = checkpointer.restore_state(step, target)
        checkpointer.close()
        module = nnx.merge(graphdef, state.params, state.frozen)
        from clip_jax.clip_model import _load_tokenizer

        return CLIPModel(
            module,
            tokenizer=_load_tokenizer(model_dir),
            image_processor=ImageProcessorConfig.from_pretrained(model_dir),
            max_length=m.max_length,
        )


def train(config: ConfigDict, workdir: str) -> dict[str, Any]:
    """Train as ``config`` says in ``workdir`` (resuming if it holds checkpoints); returns a summary."""
    trainer = Trainer(config, workdir)
    summary = trainer.run()
    if trainer.primary:
        summary = json.loads(json.dumps(summary, default=float))  # NumPy scalars -> floats
        workdirs.write_text(workdirs.join(workdir, "summary.json"), strict_json(summary, indent=2) + "\n")
    return summary
