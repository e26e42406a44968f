"""One way to load a trained dual encoder, wherever it lives.

``load_model(spec)`` takes a training workdir (its latest checkpoint, or ``step``), a directory written by
``save_pretrained`` / ``clip-jax export``, a transformers checkpoint or a hub id — local or on ``gs://``.
eval.py, the export command, the demo and the notebooks all load through it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from ml_collections import ConfigDict

from clip_jax import workdir as workdirs
from clip_jax.checkpoint import Checkpointer
from clip_jax.clip_model import CLIPModel
from clip_jax.config import dtype_of
from clip_jax.data.preprocess import ImageProcessorConfig
from clip_jax.hub import dual_encoder_builder
from clip_jax.models.freezing import split_trainable
from clip_jax.weights.readers import CheckpointError
from clip_jax.weights.tokenizers import load_tokenizer


def load_model(spec: str, *, step: int | None = None, logit_scale: float | None = None) -> CLIPModel:
    """The model ``spec`` names, with its tokenizer and image processor.

    ``step`` picks a checkpoint of a training workdir (default: the latest). ``logit_scale`` overrides the
    stored temperature with this multiplier (e.g. ``20`` for a model trained with a fixed scale of 20).
    """
    if workdirs.is_training_workdir(spec):
        model = _from_workdir(str(spec), step)
    elif (
        not workdirs.is_remote(spec)
        and Path(spec).expanduser().is_dir()
        and not Path(spec, "config.json").expanduser().exists()
        and not Path(spec, "open_clip_config.json").expanduser().exists()
    ):
        raise CheckpointError(
            f"{spec} is neither a clip_jax training workdir (no checkpoints/) nor a saved model (no config.json) "
            "— give a training workdir, an exported directory or a hub id"
        )
    elif step is not None:
        raise ValueError(
            f"step={step} needs a training workdir; {spec} is a saved model (it has one set of weights)."
        )
    else:
        model = CLIPModel.from_pretrained(spec)
    if logit_scale is not None:
        model.logit_multiplier = logit_scale
    return model


def training_config(workdir: str) -> ConfigDict:
    """The config a training workdir was trained with (``<workdir>/config.json``)."""
    path = workdirs.join(workdir, "config.json")
    if not workdirs.exists(path):
        raise FileNotFoundError(
            f"{workdir} is not a clip_jax training workdir: config.json is missing — pass a training run's --workdir or an exported directory"
        )
    return ConfigDict(read_json(workdirs.read_text(path), path))


def read_json(text: str, path: str) -> Any:
    """``text`` (the contents of ``path``) parsed as JSON; a file that is not JSON is an error naming it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"{path} is not valid JSON ({error}) — the file is damaged; restore it or retrain"
        ) from None


def _from_workdir(workdir: str, step: int | None) -> CLIPModel:
    """The parameters of a workdir's checkpoint (no optimizer state is read), in the architecture its
    ``model/config.json`` records: no network needed."""
    config = training_config(workdir)
    if not workdirs.exists(workdirs.join(workdir, "model", "config.json")):
        raise FileNotFoundError(
            f"{workdir} is not a clip_jax training workdir: model/config.json is missing — pass a training run's --workdir or an exported directory"
        )
    m = config.model
    with workdirs.local_copy(workdirs.join(workdir, "model")) as model_dir:
        build, _, _ = dual_encoder_builder(
            read_json((model_dir / "config.json").read_text(), str(model_dir / "config.json")),
            dtype=None if m.dtype == "float32" else dtype_of(m.dtype),
            param_dtype=dtype_of(m.param_dtype),
            source=str(model_dir),
        )
        checkpointer = Checkpointer(workdir, keep=1_000_000, use_async=False)
        try:
            step = step if step is not None else checkpointer.latest_step()
            if step is None:
                raise FileNotFoundError(
                    f"No checkpoint in {workdir}/checkpoints — train until the first checkpoint (train.checkpoint_every), or pass an exported directory"
                )
            if step not in checkpointer.all_steps():
                raise FileNotFoundError(
                    f"No checkpoint of step {step} in {workdir}/checkpoints; it has {checkpointer.all_steps()}."
                )
            phase = config.phases[checkpointer.restore_meta(step)["phase"]]
            # The checkpoint stores the phase's trainable and frozen parameters apart: split the same way.
            graphdef, params, frozen = split_trainable(nnx.eval_shape(build), phase.trainable)
            single = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            place = lambda tree: jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=single), tree
            )
            try:
                restored = checkpointer.restore_subtrees(
                    step, {"params": place(params), "frozen": place(frozen)}
                )
            except Exception as error:  # orbax / tensorstore raise many types for a damaged checkpoint
                others = [s for s in checkpointer.all_steps() if s != step]
                cause = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
                raise CheckpointError(
                    f"checkpoint {step} in {workdir}/checkpoints could not be read ({type(error).__name__}: "
                    f"{cause}) — it is incomplete or damaged; "
                    + (f"load another step with --step (this workdir has {others})" if others else "retrain")
                    + f", or delete {workdir}/checkpoints/{step}"
                ) from error
        finally:
            checkpointer.close()
        module = nnx.merge(graphdef, restored["params"], restored["frozen"])
        return CLIPModel(
            module,
            tokenizer=load_tokenizer(model_dir),
            image_processor=ImageProcessorConfig.from_pretrained(model_dir),
            # a workdir from before max_length was checked may record more than the tower takes: it trained
            # with the tower's limit
            max_length=min(m.max_length, module.text.config.max_length),
        )
