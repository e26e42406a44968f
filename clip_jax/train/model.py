"""The dual encoder a config describes (``config.model`` and the loss's temperature settings)."""

from __future__ import annotations

from typing import Any

from flax import nnx
from ml_collections import ConfigDict

from clip_jax.clip_model import CLIPModel
from clip_jax.config import dtype_of
from clip_jax.hub import dual_encoder_builder
from clip_jax.loading import load_model
from clip_jax.loss import loss_kind
from clip_jax.models.dual_encoder import DualEncoder
from clip_jax.models.registry import normalised_config, tower_builder, tower_config
from clip_jax.weights.readers import read_architecture, resolve_named


def build_model(config: ConfigDict, *, abstract: bool = False) -> CLIPModel:
    """Pretrained towers (paths, hub ids, or ``demo:NAME`` for the offline demo's stand-ins, built on first
    use) or random ones (dicts of hyper-parameters) with fresh projections; or, with ``model.init_from``, a
    whole saved dual encoder (exported directory, hub id or training workdir).

    ``abstract=True``: the same model's shapes only (``nnx.eval_shape``: no weights read or initialised,
    nothing placed, no tokenizer), from the towers' ``config.json`` alone — what planning a pod needs."""
    m = config.model
    if abstract:
        return CLIPModel(nnx.eval_shape(dual_encoder_of(config)), max_length=m.max_length)
    if (
        m.init_from
    ):  # a whole saved dual encoder, e.g. a distillation's result (AltCLIP: distil, then fine-tune)
        model = load_model(m.init_from)
        model.module.vision.remat = model.module.text.remat = bool(m.remat)
        return model
    cache = config.data.cache_dir
    tokenizer = resolve_named(m.tokenizer, cache) or None
    tower = lambda spec: spec.to_dict() if isinstance(spec, ConfigDict) else resolve_named(spec, cache)
    text = _sized_vocabulary(tower(m.text), tokenizer)
    biased = loss_kind(config.loss.kind).uses_bias  # SigLIP-style: its own temperature and bias init
    model = CLIPModel.from_towers(
        vision=tower(m.vision),
        text=text,
        projection_dim=m.projection_dim,
        text_pooling=m.text_pooling,
        text_projection=m.text_projection,
        tokenizer=tokenizer,
        image_size=m.image_size or None,
        max_length=m.max_length,
        logit_scale_init=config.loss.sigmoid_scale_init if biased else m.logit_scale_init,
        logit_bias_init=config.loss.sigmoid_bias_init if biased else None,
        dtype=None if m.dtype == "float32" else dtype_of(m.dtype),
        param_dtype=dtype_of(m.param_dtype),
        seed=config.train.seed,
    )
    model.module.vision.remat = model.module.text.remat = bool(m.remat)
    return model


def _sized_vocabulary(text: Any, tokenizer: str | None) -> Any:
    """A random text tower's ``vocab_size='tokenizer'`` replaced by the tokenizer's size."""
    if isinstance(text, dict) and tokenizer and text.get("vocab_size") == "tokenizer":
        from transformers import AutoTokenizer

        return dict(text, vocab_size=len(AutoTokenizer.from_pretrained(tokenizer)))
    return text


def dual_encoder_of(config: ConfigDict):
    """A no-argument function building ``config``'s :class:`DualEncoder` with random weights (for
    ``nnx.eval_shape``), its towers' sizes read from their ``config.json`` only."""
    m = config.model
    dtype = None if m.dtype == "float32" else dtype_of(m.dtype)
    param_dtype = dtype_of(m.param_dtype)
    remat = bool(m.remat)
    if m.init_from:
        raw, source = _saved_model_config(m.init_from)
        build, _, _ = dual_encoder_builder(
            raw,
            dtype=dtype,
            param_dtype=param_dtype,
            has_logit_bias=loss_kind(config.loss.kind).uses_bias,
            source=source,
        )
        return _with_remat(build, remat)

    def architecture(spec: Any, kind: str):
        if isinstance(spec, ConfigDict):
            raw, source = spec.to_dict(), f"model.{kind}"
            if kind == "text":
                raw = _sized_vocabulary(raw, resolve_named(m.tokenizer, config.data.cache_dir) or None)
        else:
            raw, source = read_architecture(resolve_named(spec, config.data.cache_dir))
        arch, tower, _ = tower_config(normalised_config(raw, source), kind, source)
        if kind == "vision" and m.image_size:
            import dataclasses

            tower = dataclasses.replace(tower, image_size=int(m.image_size))
        return arch, tower

    (v_arch, v_cfg), (t_arch, t_cfg) = architecture(m.vision, "vision"), architecture(m.text, "text")
    biased = loss_kind(config.loss.kind).uses_bias

    def build() -> DualEncoder:
        return DualEncoder(
            tower_builder(v_arch, v_cfg, dtype, param_dtype)(),
            tower_builder(t_arch, t_cfg, dtype, param_dtype)(),
            projection_dim=m.projection_dim,
            text_pooling=m.text_pooling,
            text_projection_kind=m.text_projection,
            logit_scale_init=config.loss.sigmoid_scale_init if biased else m.logit_scale_init,
            logit_bias_init=config.loss.sigmoid_bias_init if biased else None,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=nnx.Rngs(0),
        )

    return _with_remat(build, remat)


def _with_remat(build, remat: bool):
    def built() -> DualEncoder:
        module = build()
        module.vision.remat = module.text.remat = remat
        return module

    return built


def _saved_model_config(spec: str) -> tuple[dict, str]:
    """The ``config.json`` of a saved dual encoder, without its weights: an export or hub id, a training workdir's
    ``model/``, or an open_clip model (:func:`clip_jax.openclip_layout.openclip_architecture`)."""
    from clip_jax import workdir as workdirs
    from clip_jax.openclip_layout import openclip_architecture

    if workdirs.is_training_workdir(spec):
        spec = workdirs.join(spec, "model")
    return openclip_architecture(spec) or read_architecture(spec)
