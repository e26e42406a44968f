"""The configuration schema: every key a config file may set, with its default.

Config files (``configs/*.py``) define ``get_config()`` returning ``base_config()`` modified;
command-line overrides (``--config.train.batch_size=4096``) go through ``ml_collections``.
Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import math
from typing import Any

from ml_collections import ConfigDict

#: Keys whose value is free-form: a path/hub id string or a dict of tower hyper-parameters.
FREE_FORM = {"model.vision", "model.text"}

HEAD = r"(visual_projection|text_projection|logit_scale|logit_bias)(\..*)?"

#: ``model.dtype`` / ``model.param_dtype`` names.
DTYPES = ("float32", "bfloat16")


def dtype_of(name: str) -> Any:
    """The JAX dtype of a ``model.dtype`` / ``model.param_dtype`` name."""
    import jax.numpy as jnp

    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; choose one of {list(DTYPES)}.")
    return getattr(jnp, name)


def override(config: ConfigDict, **changes: Any) -> ConfigDict:
    """``config`` with dotted keys set in place (``override(c, **{"train.batch_size": 8})``); returns it."""
    for key, value in changes.items():
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


def phase(
    steps: int,
    trainable: str,
    learning_rates: dict[str, float],
    warmup_steps: int = 0,
    decay: str = "cosine",
    end_factor: float = 0.0,
    cache_features: bool = False,
) -> ConfigDict:
    """One training phase: how long, which parameters train (regex on paths), and their learning rates.

    ``cache_features`` (only for phases that leave both towers frozen): compute the towers' pooled
    features once, then train the heads on them (LiT-style; see ``clip_jax.train.features``)."""
    return ConfigDict(
        dict(
            steps=steps,
            trainable=trainable,
            learning_rates=ConfigDict(learning_rates),
            warmup_steps=warmup_steps,
            decay=decay,
            end_factor=end_factor,
            cache_features=cache_features,
        )
    )


def base_config() -> ConfigDict:
    """Every configurable key with its default value."""
    c = ConfigDict()
    c.model = ConfigDict(
        dict(
            vision="openai/clip-vit-base-patch32",  # local dir, hub id, a dict config (random init), or demo:NAME
            text="dbmdz/bert-base-italian-xxl-uncased",
            # A whole saved dual encoder to start from instead (exported dir, hub id or training workdir; its towers,
            # projections, pooling and temperature; vision/text/projection_dim/text_pooling are then unused), e.g. a
            # distillation's export: AltCLIP's "distil, then fine-tune contrastively"
            init_from="",
            tokenizer="",  # default: the text tower's own
            projection_dim=512,
            text_pooling="pooler",  # pooler | cls | mean | eos
            image_size=0,  # 0: the vision tower's; else interpolate position embeddings
            max_length=64,
            logit_scale_init=math.log(1 / 0.07),
            dtype="float32",  # compute dtype: float32 or bfloat16
            param_dtype="float32",  # master weights
            remat=False,  # recompute each transformer layer in the backward pass (saves memory)
            dropout=True,  # the towers' own dropout rates, in training only
        )
    )
    c.loss = ConfigDict(
        dict(
            kind="softmax",  # a name in clip_jax.loss.LOSSES: softmax (CLIP) | sigmoid (SigLIP)
            sigmoid_bias_init=-10.0,
            sigmoid_scale_init=math.log(10.0),
            negatives="global",  # global: the whole global batch (recommended) | local: own device only (CLIP-Italian)
        )
    )
    c.data = ConfigDict(
        dict(
            source="shapes",  # shapes: the offline synthetic demo data set | files: listings / WebDataset shards
            # Training sources, comma-separated, each optionally weighted: "jsonl:/d/wit.jsonl=0.4,csv:/d/cc.csv=0.6"
            # or "wds:/d/train-{00000..00099}.tar". See clip_jax/data/sources.py.
            train="",
            val="",  # one source, evaluated in order with every caption
            val_limit=5000,  # at most this many validation images (0: all)
            image_key="",  # column/key names; default: the first of image_path, filepath, image, file_name
            caption_key="",  # default: the first of captions, caption, title, text
            workers=4,  # decoding threads per process (per worker process, if any)
            worker_processes=0,  # >0: decode in this many worker processes per JAX process (not bound by one GIL)
            crop_scale=(0.9, 1.0),  # random resized crop: range of the crop's area fraction
            horizontal_flip=False,  # off by default: captions say "a sinistra"
            max_bad_fraction=0.1,  # stop if more of the examples than this are unusable
            cache_dir="~/.cache/clip_jax",
            shapes=ConfigDict(
                dict(
                    num_train=2048,
                    num_val=256,
                    image_size=64,
                    seed=0,
                    holdout="rosso:triangolo,blu:cerchio",
                    language="it",
                )
            ),
        )
    )
    c.train = ConfigDict(
        dict(
            # contrastive: images + captions | distill: text-only, into the CLIP model.vision's embedding space
            # (parallel sentences; see clip_jax/train/distill.py and the `distill` section)
            objective="contrastive",
            batch_size=128,  # global, over all devices and processes
            # >0: exact gradient caching, tower activations for only this many examples at once (a multiple of
            # the data-parallel device count dividing batch_size); costs one extra forward pass. 0: off.
            micro_batch_size=0,
            seed=0,
            phases=("warmup", "finetune"),  # the order of the entries of `phases`
            param_groups=(("head", HEAD), ("vision", r"vision\..*"), ("text", r"text\..*")),
            optimizer="adamw",  # adamw | adabelief
            b1=0.9,
            b2=0.98,
            eps=1e-6,
            weight_decay=0.2,
            grad_clip_norm=1.0,  # 0: off
            agc_clip=0.0,  # adaptive gradient clipping (CLIP-Italian used 0.1 with adabelief); 0: off
            log_every=10,
            checkpoint_every=500,
            keep_checkpoints=3,
            async_checkpoints=True,
            eval_every=500,  # 0: only at the end of each phase
            eval_batch_size=256,
            wandb_project="",  # set to log to Weights & Biases as well
            # Resuming a workdir with a config that changes what the run computes (learning rates, steps, eval
            # cadence... see clip_jax/train/resume.py) is refused unless this is set; the changes are then recorded
            # in <workdir>/config_history.jsonl. Changes the checkpoint cannot restore under are refused regardless.
            allow_config_change=False,
        )
    )
    c.phases = ConfigDict(
        dict(
            warmup=phase(500, HEAD, {"head": 1e-3}, warmup_steps=50),
            finetune=phase(2000, ".*", {"head": 1e-4, "vision": 1e-5, "text": 1e-5}, warmup_steps=200),
        )
    )
    c.distill = ConfigDict(
        dict(  # train.objective='distill' only; the teacher CLIP is model.vision
            train="",  # parallel pairs: jsonl:/json:/csv:/tsv:PATH, or 'shapes' (the offline demo's captions)
            val="",  # held-out pairs, same forms ('shapes:heldout': the held-out colour-shape pairs)
            val_limit=5000,  # at most this many held-out pairs (0: all)
            teacher_column="en",  # the column holding the teacher's language (English for OpenAI's CLIP)
            student_column="it",  # the column holding the target language
            loss="mse",  # mse (M-CLIP) | cosine (1 - cosine similarity)
            student_sees_teacher_language=False,  # also map the English sentence to its own embedding (as M-CLIP)
        )
    )
    c.mesh = ConfigDict(
        dict(
            axes=ConfigDict(dict(data=-1, fsdp=1)),
            rules=(
                (".*", "fsdp"),
            ),  # (regex searched in the parameter path, 'fsdp' | 'replicate' | spec tuple)
            fsdp_min_size=2**16,  # arrays with fewer elements stay replicated under the 'fsdp' rule
        )
    )
    return c


def _flat_keys(config: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, (ConfigDict, dict)) and name not in FREE_FORM and not name.startswith("phases."):
            out.update(_flat_keys(value, name + "."))
        else:
            out[name] = value
    return out


def validate(config: ConfigDict) -> ConfigDict:
    """Raise ``ValueError`` naming every unknown key (and the valid ones); check the phase list."""
    schema = _flat_keys(base_config())
    given = _flat_keys(config)
    unknown = sorted(k for k in given if k not in schema and not k.startswith("phases."))
    if unknown:
        sections = sorted({k.rsplit(".", 1)[0] for k in unknown})
        valid = {s: sorted(k.rsplit(".", 1)[1] for k in schema if k.rsplit(".", 1)[0] == s) for s in sections}
        raise ValueError(f"Unknown config key(s) {unknown}. Valid keys: {valid}.")
    phase_keys = set(phase(1, "", {}).keys())
    for name in config.train.phases:
        if name not in config.phases:
            raise ValueError(
                f"train.phases names {name!r}, which is not in phases ({sorted(config.phases)})."
            )
        extra = set(config.phases[name].keys()) - phase_keys
        if extra:
            raise ValueError(f"Unknown key(s) {sorted(extra)} in phases.{name}; valid: {sorted(phase_keys)}.")
    if config.loss.negatives not in ("global", "local"):
        raise ValueError(f"loss.negatives must be 'global' or 'local', not {config.loss.negatives!r}.")
    micro, batch = config.train.micro_batch_size, config.train.batch_size
    if not isinstance(micro, int) or micro < 0 or (micro and batch % micro):
        raise ValueError(
            f"train.micro_batch_size={micro!r} must be 0 (off) or a positive divisor of "
            f"train.batch_size={batch}, e.g. {batch // 2 if batch % 2 == 0 else batch}."
        )
    if config.train.objective not in ("contrastive", "distill"):
        raise ValueError(
            f"train.objective must be 'contrastive' or 'distill', not {config.train.objective!r}."
        )
    if config.distill.loss not in ("mse", "cosine"):
        raise ValueError(f"distill.loss must be 'mse' or 'cosine', not {config.distill.loss!r}.")
    if config.train.objective == "distill" and any(
        config.phases[n].cache_features for n in config.train.phases
    ):
        raise ValueError(
            "phases.*.cache_features is for contrastive phases; train.objective='distill' caches the "
            "teacher's embeddings instead: set cache_features=False."
        )
    from clip_jax.loss import LOSSES

    if config.loss.kind not in LOSSES:
        raise ValueError(f"loss.kind must be one of {sorted(LOSSES)}, not {config.loss.kind!r}.")
    _check_values(config)
    return config


def _check_values(config: ConfigDict) -> None:
    """Raise ``ValueError`` naming the key of the first value that makes no sense (before any work is done)."""
    import re

    def need(ok: bool, key: str, value: Any, rule: str) -> None:
        if not ok:
            raise ValueError(
                f"{key}={value!r} is invalid: it must be {rule} — fix it in the config or with "
                f"--config.{key}=..."
            )

    t, d = config.train, config.data
    for key in ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "eval_batch_size"):
        need(isinstance(t[key], int) and t[key] >= 1, f"train.{key}", t[key], "a whole number >= 1")
    need(t.eval_every >= 0, "train.eval_every", t.eval_every, ">= 0 (0: only at the end of each phase)")
    for key in ("grad_clip_norm", "agc_clip", "weight_decay", "eps"):
        need(t[key] >= 0, f"train.{key}", t[key], ">= 0")
    need(0 <= d.max_bad_fraction <= 1, "data.max_bad_fraction", d.max_bad_fraction, "between 0 and 1")
    need(d.val_limit >= 0, "data.val_limit", d.val_limit, ">= 0 (0: all)")
    need(d.workers >= 1, "data.workers", d.workers, ">= 1")
    need(d.worker_processes >= 0, "data.worker_processes", d.worker_processes, ">= 0")
    low, high = tuple(d.crop_scale)
    need(
        0 < low <= high <= 1, "data.crop_scale", tuple(d.crop_scale), "(low, high) with 0 < low <= high <= 1"
    )
    need(
        config.model.max_length >= 2,
        "model.max_length",
        config.model.max_length,
        ">= 2 (room for the special tokens)",
    )
    if not config.train.phases:
        raise ValueError(
            "train.phases is empty — name at least one entry of phases, e.g. ('warmup', 'finetune')."
        )
    for name in config.train.phases:
        p, key = config.phases[name], f"phases.{name}"
        need(
            isinstance(p.steps, int) and p.steps >= 1,
            f"{key}.steps",
            p.steps,
            "a whole number >= 1 (leave the phase out of train.phases to skip it)",
        )
        need(p.warmup_steps >= 0, f"{key}.warmup_steps", p.warmup_steps, ">= 0")
        need(
            p.decay in ("cosine", "linear", "constant"), f"{key}.decay", p.decay, "cosine, linear or constant"
        )
        need(p.end_factor >= 0, f"{key}.end_factor", p.end_factor, ">= 0")
        try:
            re.compile(p.trainable)
        except (re.error, TypeError) as error:
            raise ValueError(
                f"{key}.trainable={p.trainable!r} is not a valid regular expression ({error}) — fix "
                f"it with --config.{key}.trainable=..."
            ) from None
        for group, rate in p.learning_rates.items():
            need(
                isinstance(rate, (int, float)) and math.isfinite(rate) and rate >= 0,
                f"{key}.learning_rates.{group}",
                rate,
                "a finite number >= 0",
            )
    for group, pattern in config.train.param_groups:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise ValueError(
                f"train.param_groups: the pattern {pattern!r} of group {group!r} is not a valid "
                f"regular expression ({error})."
            ) from None
