"""The configuration schema: every key a config file may set, with its default.

Config files (``configs/*.py``) define ``get_config()`` returning ``base_config()`` modified;
command-line overrides (``--config.train.batch_size=4096``) go through ``ml_collections``.
Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ml_collections import ConfigDict

#: Keys whose value is free-form: a path/hub id string or a dict of tower hyper-parameters.
FREE_FORM = {"model.vision", "model.text", "train.evals"}

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
    weight_decay: dict[str, float] | None = None,
) -> ConfigDict:
    """One training phase: how long, which parameters train (regex on paths), and their learning rates.

    ``weight_decay``: per parameter group, overriding ``train.weight_decay`` for the groups it names.

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
            weight_decay=ConfigDict(weight_decay or {}),
        )
    )


#: ``loss.kind``'s default: chosen from ``model.init_from`` by :func:`resolve_loss_kind`.
AUTO = "auto"


def base_config() -> ConfigDict:
    """Every configurable key with its default value."""
    c = ConfigDict()
    c.model = ConfigDict(
        dict(
            vision="openai/clip-vit-base-patch32",  # local dir, hub id, a dict config (random init), or demo:NAME
            text="dbmdz/bert-base-italian-xxl-uncased",
            # A whole saved dual encoder to start from instead (exported dir, hub id or training workdir; its towers,
            # projections, pooling and temperature; vision/text are then unused, and projection_dim/text_pooling/
            # text_projection/max_length must be the saved model's), e.g. a
            # distillation's export: AltCLIP's "distil, then fine-tune contrastively"
            init_from="",
            tokenizer="",  # default: the text tower's own
            projection_dim=512,
            text_pooling="pooler",  # pooler | cls | mean | eos
            # linear (one matrix; transformers' format) | mlp (open_clip's Linear-GELU-Linear text head, its default
            # for Hugging Face text towers; exports in clip_jax's and open_clip's layouts only)
            text_projection="linear",
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
            # a name in clip_jax.loss.LOSSES: softmax (CLIP) | sigmoid (SigLIP), or "auto": sigmoid when
            # model.init_from is a model trained with it (SigLIP / SigLIP 2, an open_clip model with a logit bias, a
            # clip_jax model or workdir trained with sigmoid), else softmax. validate() writes the choice in.
            kind=AUTO,
            sigmoid_bias_init=-10.0,
            sigmoid_scale_init=math.log(10.0),
            negatives="global",  # global: the whole global batch (recommended) | local: own device only (CLIP-Italian)
            # how devices share the global batch's embeddings: all_gather | ring (the same loss and gradients, fewer
            # bytes on TPU pods: see clip_jax/loss.py and docs/benchmarks.md)
            exchange="all_gather",
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
            weight_decay=0.2,  # on matrices; per group and phase with phases.<name>.weight_decay.<group>
            weight_decay_towards="zero",  # zero | start: L2-SP, towards the weights each phase starts from
            layer_decay=1.0,  # <1: the towers' layer-wise learning-rate decay, lr * layer_decay**(depth+1-layer)
            grad_clip_norm=1.0,  # 0: off
            agc_clip=0.0,  # adaptive gradient clipping (CLIP-Italian used 0.1 with adabelief); 0: off
            log_every=10,
            checkpoint_every=500,
            keep_checkpoints=3,
            async_checkpoints=True,
            eval_every=500,  # 0: only at the end of each phase
            eval_batch_size=256,
            # eval tasks run at each validation, as `clip-jax eval` runs them: {name: dict(task=..., its options)},
            # e.g. {"forgetting": dict(task="zeroshot", dataset=..., classnames=..., templates=..., reference=...)}
            # (clip_jax/train/evaluator.py); logged as val/<name>/<metric>
            evals=ConfigDict(),
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
    """Raise ``ValueError`` naming every unknown key (and the valid ones), then the first value that breaks
    its rule in :data:`RULES` (key, value, rule and how to fix it)."""
    schema = _flat_keys(base_config())
    given = _flat_keys(config)
    unknown = sorted(k for k in given if k not in schema and not k.startswith("phases."))
    if unknown:
        sections = sorted({k.rsplit(".", 1)[0] for k in unknown})
        valid = {s: sorted(k.rsplit(".", 1)[1] for k in schema if k.rsplit(".", 1)[0] == s) for s in sections}
        raise ValueError(
            f"Unknown config key(s) {unknown} — valid keys: {valid}; fix the name in the config file or the "
            "--config.KEY override"
        )
    names = config.train.phases
    if not RULES["train.phases"].ok(names):
        raise invalid_value("train.phases", names, RULES["train.phases"].text)
    phase_keys = set(phase(1, "", {}).keys())
    for name in names:
        if name not in config.phases:
            raise ValueError(
                f"train.phases names {name!r}, which is not in phases ({sorted(config.phases)}) — add "
                f"phases.{name} to the config, or leave it out of train.phases"
            )
        extra = set(config.phases[name].keys()) - phase_keys
        if extra:
            raise ValueError(f"Unknown key(s) {sorted(extra)} in phases.{name} — valid: {sorted(phase_keys)}")
    resolve_loss_kind(config)
    _check_values(config)
    return config


def resolve_loss_kind(config: ConfigDict) -> ConfigDict:
    """Replace ``loss.kind='auto'`` (in place) by the loss ``model.init_from``'s model was trained with:
    ``sigmoid`` where that model carries a logit bias (SigLIP's), else ``softmax``. A kind set explicitly stays.
    Recorded so in the workdir's ``config.json``, a resumed run sees the same loss."""
    if config.loss.kind == AUTO:
        init_from = config.model.init_from
        config.loss.kind = saved_model_loss(init_from) if init_from else "softmax"
    return config


def saved_model_loss(spec: str) -> str:
    """``sigmoid`` or ``softmax``: the loss a saved model (training workdir, export, hub id; transformers',
    clip_jax's or open_clip's layout) was trained with, read from its configuration alone."""
    import json
    import os
    from pathlib import Path

    from clip_jax import workdir as workdirs

    if workdirs.is_training_workdir(spec) and workdirs.exists(workdirs.join(spec, "config.json")):
        recorded = json.loads(workdirs.read_text(workdirs.join(spec, "config.json")))
        kind = recorded.get("loss", {}).get("kind", "softmax")
        return kind if kind != AUTO else "softmax"
    names = ("config.json", "open_clip_config.json")
    found: dict[str, Any] = {}
    path = Path(spec).expanduser()
    if path.is_dir():
        found = {n: json.loads((path / n).read_text()) for n in names if (path / n).is_file()}
    elif "/" in spec and not spec.startswith((".", "/", "~")):
        import huggingface_hub

        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
        for name in names:
            cached = huggingface_hub.try_to_load_from_cache(spec, name)
            if not isinstance(cached, str) and not offline:
                try:
                    cached = huggingface_hub.hf_hub_download(spec, name)
                except (
                    Exception
                ):  # not in this repo, or the hub unreachable: the next name, then the error below
                    cached = None
            if isinstance(cached, str):
                found[name] = json.loads(Path(cached).read_text())
                break
    if "config.json" in found:
        saved = found["config.json"]
        biased = saved.get("model_type") in ("siglip", "siglip2") or (
            saved.get("clip_jax", {}).get("logit_bias_init") is not None
        )
        return "sigmoid" if biased else "softmax"
    if "open_clip_config.json" in found:
        model_cfg = found["open_clip_config.json"].get("model_cfg", {})
        return "sigmoid" if model_cfg.get("init_logit_bias") is not None else "softmax"
    raise ValueError(
        f"loss.kind='auto' cannot tell the loss of model.init_from={spec!r}: its config.json (or "
        "open_clip_config.json) is not readable here — set --config.loss.kind=softmax or sigmoid"
    )


def check_init_from(
    config: ConfigDict,
    projection_dim: int,
    text_pooling: str,
    max_length: int,
    text_projection: str = "linear",
) -> None:
    """Raise ``ValueError`` where ``config.model`` sets a projection size, text pooling, text projection or
    ``max_length`` other than those of the model ``model.init_from`` loaded (that model's own are used, so the
    config would record settings the run did not have)."""
    saved = {
        "projection_dim": projection_dim,
        "text_pooling": text_pooling,
        "text_projection": text_projection,
        "max_length": max_length,
    }
    wrong = {k: v for k, v in saved.items() if config.model[k] != v}
    if wrong:
        given = ", ".join(f"model.{k}={config.model[k]!r}" for k in wrong)
        fix = " ".join(f"--config.model.{k}={v}" for k, v in wrong.items())
        raise ValueError(
            f"{given} but model.init_from={config.model.init_from!r} has {', '.join(f'{k}={v!r}' for k, v in wrong.items())}, "
            f"which the run uses — set {fix} (or leave model.init_from out to build new projections)"
        )


@dataclass(frozen=True)
class Rule:
    """What a config value must be: ``ok(value)`` says whether it is, ``text`` says it in words."""

    ok: Callable[[Any], bool]
    text: str


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def whole(low: int, note: str = "") -> Rule:
    """A whole number ``>= low``."""
    return Rule(lambda v: _whole(v) and v >= low, f"a whole number >= {low}{note}")


def number(
    low: float | None = None, high: float | None = None, *, high_open: bool = False, note: str = ""
) -> Rule:
    """A finite number in ``[low, high]`` (``[low, high)`` with ``high_open``); either bound may be absent."""
    if low is None and high is None:
        text = "a finite number"
    elif high is None:
        text = f"a finite number >= {low}"
    else:
        text = f"a number in [{low}, {high}{')' if high_open else ']'}"
    return Rule(
        lambda v: (
            _finite(v)
            and (low is None or v >= low)
            and (high is None or (v < high if high_open else v <= high))
        ),
        text + note,
    )


def positive(note: str = "") -> Rule:
    """A finite number ``> 0``."""
    return Rule(lambda v: _finite(v) and v > 0, "a finite number > 0" + note)


def one_of(*choices: str) -> Rule:
    return Rule(lambda v: v in choices, "one of " + ", ".join(map(repr, choices)))


def _regex(value: Any) -> bool:
    try:
        re.compile(value)
    except (re.error, TypeError):
        return False
    return True


FLAG = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str), "a string ('' for none)")
NAME = Rule(lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
REGEX = Rule(_regex, "a valid regular expression")
TOWER = Rule(
    lambda v: (isinstance(v, str) and v.strip() != "") or isinstance(v, (dict, ConfigDict)),
    "a local directory, a hub id, demo:NAME, or a dict of tower hyper-parameters",
)


def _pairs(value: Any, first: Callable[[Any], bool], second: Callable[[Any], bool]) -> bool:
    return isinstance(value, (tuple, list)) and all(
        isinstance(p, (tuple, list)) and len(p) == 2 and first(p[0]) and second(p[1]) for p in value
    )


def _distinct(names: list) -> bool:
    return len(set(names)) == len(names)


#: Every config value that has a type and a range, by dotted key (``phases.*.KEY``: every phase). Checked
#: by :func:`validate` before any work; ``tests/test_configs.py`` checks that every key of the schema is here.
RULES: dict[str, Rule] = {
    "model.vision": TOWER,
    "model.text": TOWER,
    "model.init_from": TEXT,
    "model.tokenizer": TEXT,
    "model.projection_dim": whole(1),
    "model.text_pooling": one_of("pooler", "cls", "mean", "eos"),
    "model.text_projection": one_of("linear", "mlp"),
    "model.image_size": whole(0, " (0: the vision tower's own)"),
    "model.max_length": whole(2, " (room for the special tokens)"),
    "model.logit_scale_init": number(note=" (log of the inverse temperature, e.g. 2.659 for 1/0.07)"),
    "model.dtype": one_of(*DTYPES),
    "model.param_dtype": one_of(*DTYPES),
    "model.remat": FLAG,
    "model.dropout": FLAG,
    "loss.kind": Rule(lambda v: v in _losses(), "a name in clip_jax.loss.LOSSES"),  # listed by _check_values
    "loss.sigmoid_bias_init": number(),
    "loss.sigmoid_scale_init": number(),
    "loss.negatives": one_of("global", "local"),
    "loss.exchange": one_of("all_gather", "ring"),
    "data.source": one_of("shapes", "files"),
    "data.train": TEXT,
    "data.val": TEXT,
    "data.val_limit": whole(0, " (0: all)"),
    "data.image_key": TEXT,
    "data.caption_key": TEXT,
    "data.workers": whole(1),
    "data.worker_processes": whole(0, " (0: decode in threads)"),
    "data.crop_scale": Rule(
        lambda v: (
            isinstance(v, (tuple, list))
            and len(v) == 2
            and all(_finite(x) for x in v)
            and 0 < v[0] <= v[1] <= 1
        ),
        "(low, high) with 0 < low <= high <= 1",
    ),
    "data.horizontal_flip": FLAG,
    "data.max_bad_fraction": number(0, 1),
    "data.cache_dir": NAME,
    "data.shapes.num_train": whole(1),
    "data.shapes.num_val": whole(1),
    "data.shapes.image_size": whole(16),
    "data.shapes.seed": whole(0),
    "data.shapes.holdout": Rule(
        lambda v: (
            isinstance(v, str)
            and all(len(p.split(":")) == 2 and all(p.split(":")) for p in v.split(",") if p)
        ),
        "comma-separated colour:shape pairs, e.g. 'rosso:triangolo,blu:cerchio' ('' for none)",
    ),
    "data.shapes.language": NAME,
    "train.objective": NAME,  # checked against the registered objectives (clip_jax/train/objectives.py)
    "train.batch_size": whole(1),
    "train.micro_batch_size": whole(0, " (0: off)"),
    "train.seed": whole(0),
    "train.phases": Rule(
        lambda v: (
            isinstance(v, (tuple, list))
            and len(v) >= 1
            and all(isinstance(n, str) for n in v)
            and _distinct(list(v))
        ),
        "a non-empty list of distinct names of entries of phases, e.g. ('warmup', 'finetune')",
    ),
    "train.param_groups": Rule(
        lambda v: (
            _pairs(v, lambda n: isinstance(n, str) and n != "", _regex) and _distinct([n for n, _ in v])
        ),
        "(name, regular expression) pairs with distinct names",
    ),
    "train.optimizer": one_of("adamw", "adabelief"),
    "train.b1": number(0, 1, high_open=True),
    "train.b2": number(0, 1, high_open=True),
    "train.eps": positive(),
    "train.weight_decay": number(0),
    "train.weight_decay_towards": one_of("zero", "start"),
    "train.layer_decay": Rule(lambda v: _finite(v) and 0 < v <= 1, "a number in (0, 1] (1: off)"),
    "train.grad_clip_norm": number(0, note=" (0: off)"),
    "train.agc_clip": number(0, note=" (0: off)"),
    "train.log_every": whole(1),
    "train.checkpoint_every": whole(1),
    "train.keep_checkpoints": whole(1),
    "train.async_checkpoints": FLAG,
    "train.allow_config_change": FLAG,
    "train.eval_every": whole(0, " (0: only at the end of each phase)"),
    "train.eval_batch_size": whole(1),
    "train.evals": Rule(
        lambda v: (
            isinstance(v, (dict, ConfigDict))
            and all(isinstance(o, (dict, ConfigDict)) and isinstance(o.get("task"), str) for o in v.values())
        ),
        "a dict of name -> dict(task=NAME, the task's options), e.g. "
        "{'forgetting': dict(task='zeroshot', dataset=..., classnames=..., templates=..., reference=...)}",
    ),
    "train.wandb_project": TEXT,
    "phases.*.steps": whole(1, " (leave the phase out of train.phases to skip it)"),
    "phases.*.trainable": REGEX,
    "phases.*.learning_rates": Rule(
        lambda v: isinstance(v, (dict, ConfigDict)) and all(isinstance(k, str) for k in v),
        "a dict of parameter group -> learning rate",
    ),
    "phases.*.warmup_steps": whole(0),
    "phases.*.decay": one_of("cosine", "linear", "constant"),
    "phases.*.end_factor": number(0, 1, note=" (the final fraction of the peak learning rate)"),
    "phases.*.cache_features": FLAG,
    "phases.*.weight_decay": Rule(
        lambda v: isinstance(v, (dict, ConfigDict)) and all(isinstance(k, str) for k in v),
        "a dict of parameter group -> weight decay ({} for train.weight_decay everywhere)",
    ),
    "distill.train": TEXT,
    "distill.val": TEXT,
    "distill.val_limit": whole(0, " (0: all)"),
    "distill.teacher_column": NAME,
    "distill.student_column": NAME,
    "distill.loss": NAME,  # checked by the distill objective
    "distill.student_sees_teacher_language": FLAG,
    "mesh.axes": Rule(
        lambda v: (
            isinstance(v, (dict, ConfigDict))
            and len(v) >= 1
            and all(_whole(s) and (s == -1 or s >= 1) for s in v.values())
            and sum(s == -1 for s in v.values()) <= 1
        ),
        "a dict of axis name -> size (>= 1, or -1 for one axis: the remaining devices), e.g. {'data': -1, 'fsdp': 1}",
    ),
    "mesh.rules": Rule(
        lambda v: _pairs(v, _regex, lambda r: isinstance(r, (str, tuple, list))),
        "(regular expression, 'fsdp' | 'replicate' | partition spec) pairs",
    ),
    "mesh.fsdp_min_size": whole(0),
}


def _losses() -> list[str]:
    from clip_jax.loss import LOSSES

    return sorted(LOSSES)


def invalid_value(key: str, value: Any, rule: str) -> ValueError:
    """The error for ``key=value`` that breaks ``rule`` (its text): key, value, rule and where to fix it."""
    return ValueError(
        f"{key}={value!r} is invalid: it must be {rule} — fix it in the config or with --config.{key}=..."
    )


def _check_values(config: ConfigDict) -> None:
    """Raise ``ValueError`` naming the key, the value and the rule of the first value of :data:`RULES` that
    makes no sense (before any work is done), then the checks that relate several values."""
    values = _flat_keys(config)
    for name in config.train.phases if isinstance(config.train.phases, (tuple, list)) else ():
        if isinstance(name, str) and name in config.phases:
            values.update({f"phases.{name}.{k}": v for k, v in config.phases[name].items()})
    for key, value in values.items():
        rule = RULES.get(key) or RULES.get(re.sub(r"^phases\.[^.]+\.", "phases.*.", key))
        if rule is not None and not rule.ok(value):
            text = rule.text if key != "loss.kind" else "one of " + ", ".join(map(repr, _losses()))
            raise invalid_value(key, value, text)
    axes = config.mesh.axes
    if not RULES["mesh.axes"].ok(axes):
        raise invalid_value(
            "mesh.axes", axes.to_dict() if isinstance(axes, ConfigDict) else axes, RULES["mesh.axes"].text
        )
    t = config.train
    if t.micro_batch_size and t.batch_size % t.micro_batch_size:
        raise invalid_value(
            "train.micro_batch_size",
            t.micro_batch_size,
            f"0 (off) or a divisor of train.batch_size={t.batch_size}, e.g. "
            f"{t.batch_size // 2 if t.batch_size % 2 == 0 else t.batch_size}",
        )
    groups = [n for n, _ in t.param_groups]
    for name in t.phases:
        rates = [("learning_rates", g, r) for g, r in config.phases[name].learning_rates.items()]
        decays = config.phases[name].get("weight_decay", {})
        for kind, group, rate in rates + [("weight_decay", g, r) for g, r in decays.items()]:
            key = f"phases.{name}.{kind}.{group}"
            if group not in groups:
                raise ValueError(
                    f"{key}: {group!r} is not a parameter group (train.param_groups: {', '.join(groups)}) — "
                    f"name one of those, or add the group to train.param_groups"
                )
            if not (_finite(rate) and rate >= 0):
                raise invalid_value(key, rate, "a finite number >= 0")
