"""The dual encoder a config describes (``config.model`` and the loss's temperature settings)."""

from __future__ import annotations

from ml_collections import ConfigDict

from clip_jax.clip_model import CLIPModel
from clip_jax.config import dtype_of
from clip_jax.demo.standins import resolve as resolve_named
from clip_jax.loading import load_model
from clip_jax.loss import loss_kind


def build_model(config: ConfigDict) -> CLIPModel:
    """Pretrained towers (paths, hub ids, or ``demo:NAME`` for the offline demo's stand-ins, built on first
    use) or random ones (dicts of hyper-parameters) with fresh projections; or, with ``model.init_from``, a
    whole saved dual encoder (exported directory, hub id or training workdir)."""
    m = config.model
    if (
        m.init_from
    ):  # a whole saved dual encoder, e.g. a distillation's result (AltCLIP: distil, then fine-tune)
        model = load_model(m.init_from)
        model.module.vision.remat = model.module.text.remat = bool(m.remat)
        return model
    cache = config.data.cache_dir
    tokenizer = resolve_named(m.tokenizer, cache) or None
    tower = lambda spec: spec.to_dict() if isinstance(spec, ConfigDict) else resolve_named(spec, cache)
    text = tower(m.text)
    if isinstance(text, dict) and tokenizer and text.get("vocab_size") == "tokenizer":
        from transformers import AutoTokenizer

        text = dict(text, vocab_size=len(AutoTokenizer.from_pretrained(tokenizer)))
    biased = loss_kind(config.loss.kind).uses_bias  # SigLIP-style: its own temperature and bias init
    model = CLIPModel.from_towers(
        vision=tower(m.vision),
        text=text,
        projection_dim=m.projection_dim,
        text_pooling=m.text_pooling,
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
