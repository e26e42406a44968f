"""Pretrained stand-ins for the offline demo: what openai/clip-vit-base-patch32 and an Italian BERT are
to the real recipe, built here in minutes and cached as Hugging Face checkpoints.

- **English CLIP** (``demo:english-clip``): a small CLIP (ViT + CLIP text transformer) trained
  contrastively on pictures of coloured shapes with *English* captions, every colour–shape pair
  included. Saved as a ``vision-text-dual-encoder`` checkpoint with its tokenizer and image processor.
- **Italian BERT** (``demo:italian-bert``): a small BERT pretrained by masked-language modelling on
  *Italian text only* (:mod:`clip_jax.demo.corpus`; no images), saved in the ``BertForMaskedLM`` layout.

Each is built on first use under ``<cache_dir>/standins/<name>-<key>``, ``key`` a digest of its settings
(and of :data:`BUILD_VERSION`), so a change of settings builds a new one and an unchanged one is reused.
The transfer loads them with ``model.vision=<dir>`` / ``model.text=<dir>``, the code path of a hub id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from clip_jax.weights.readers import register_named_models

#: Bump when the build code changes what it produces (it is part of the cache key).
BUILD_VERSION = 1
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PREFIX = "demo:"


@dataclasses.dataclass(frozen=True)
class EnglishCLIPSettings:
    """The English CLIP stand-in: architecture, data and training."""

    image_size: int = 64
    patch_size: int = 8
    vision_width: int = 64
    vision_layers: int = 2
    text_width: int = 64
    text_layers: int = 2
    heads: int = 4
    projection_dim: int = 64
    max_length: int = 24
    num_train: int = 4096
    steps: int = 800
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 1  # other pictures than the Italian data set (seed 0)


@dataclasses.dataclass(frozen=True)
class ItalianBertSettings:
    """The Italian BERT stand-in: architecture, corpus and masked-language-modelling training."""

    width: int = 64
    layers: int = 2
    heads: int = 4
    max_length: int = 24
    num_other_sentences: int = 4000
    steps: int = 600
    batch_size: int = 128
    learning_rate: float = 2e-3
    mask_probability: float = 0.15
    seed: int = 0


def _key(settings: Any) -> str:
    payload = json.dumps({"version": BUILD_VERSION, **dataclasses.asdict(settings)}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def standin_dir(name: str, settings: Any, cache_dir: str) -> Path:
    """Where the stand-in ``name`` with ``settings`` lives (whether or not it is built yet)."""
    return Path(cache_dir).expanduser() / "standins" / f"{name}-{_key(settings)}"


def write_wordpiece_tokenizer(words: list[str], directory: str | Path) -> Path:
    """A lower-casing BERT WordPiece tokenizer whose vocabulary is the special tokens then ``words``."""
    from transformers import BertTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(SPECIAL_TOKENS + list(words)) + "\n")
    BertTokenizer(str(directory / "vocab.txt"), do_lower_case=True).save_pretrained(str(directory))
    return directory


def _build(
    name: str, settings: Any, cache_dir: str, build: Callable[[Path], dict], log: Callable[[str], None]
) -> Path:
    """``build`` into a temporary directory beside the target, then rename it into place (atomic)."""
    target = standin_dir(name, settings, cache_dir)
    if (target / "standin.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log(f"Building the demo's pretrained stand-in {name!r} (once; cached in {target})...")
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        info = build(Path(tmp))
        info.update(
            name=name,
            settings=dataclasses.asdict(settings),
            build_version=BUILD_VERSION,
            build_seconds=round(time.perf_counter() - tick, 1),
        )
        (Path(tmp) / "standin.json").write_text(json.dumps(info, indent=2) + "\n")
        if target.exists():  # a half-built leftover without standin.json
            shutil.rmtree(target)
        Path(tmp).rename(target)
        Path(tmp).mkdir()  # so that TemporaryDirectory's cleanup finds something to remove
    log(f"Built {name!r} in {time.perf_counter() - tick:.0f}s.")
    return target


# ---------------------------------------------------------------------- English CLIP
def english_clip_config(settings: EnglishCLIPSettings, cache_dir: str, tokenizer_dir: str):
    """The training config of the English CLIP stand-in (one phase, everything trains)."""
    from ml_collections import ConfigDict

    from clip_jax.config import base_config, phase

    s = settings
    c = base_config()
    with c.model.ignore_type():
        c.model.vision = dict(
            model_type="clip_vision_model",
            hidden_size=s.vision_width,
            intermediate_size=4 * s.vision_width,
            num_hidden_layers=s.vision_layers,
            num_attention_heads=s.heads,
            image_size=s.image_size,
            patch_size=s.patch_size,
        )
        c.model.text = dict(
            model_type="clip_text_model",
            vocab_size="tokenizer",
            hidden_size=s.text_width,
            intermediate_size=4 * s.text_width,
            num_hidden_layers=s.text_layers,
            num_attention_heads=s.heads,
            max_position_embeddings=s.max_length,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        )  # [PAD], [CLS], [SEP]
    c.model.tokenizer = str(tokenizer_dir)
    c.model.projection_dim = s.projection_dim
    c.model.max_length = s.max_length
    c.data.source = "shapes"
    c.data.cache_dir = cache_dir
    c.data.shapes.update(
        num_train=s.num_train, num_val=256, image_size=s.image_size, seed=s.seed, holdout="", language="en"
    )
    c.train.update(
        batch_size=s.batch_size,
        seed=s.seed,
        log_every=50,
        eval_every=0,
        checkpoint_every=s.steps,
        keep_checkpoints=1,
        async_checkpoints=False,
        weight_decay=0.01,
        phases=("pretrain",),
    )
    lr = s.learning_rate
    c.phases = ConfigDict(
        {"pretrain": phase(s.steps, ".*", {"head": lr, "vision": lr, "text": lr}, warmup_steps=s.steps // 10)}
    )
    return c


def english_clip(
    cache_dir: str = "~/.cache/clip_jax",
    settings: EnglishCLIPSettings = EnglishCLIPSettings(),
    *,
    log: Callable[[str], None] = print,
) -> Path:
    """The English CLIP stand-in's directory, built (about a minute on 2 cores) if not cached."""
    from clip_jax.demo.corpus import vocabulary

    def build(out: Path) -> dict:
        from clip_jax import load_model
        from clip_jax.data.shapes import ShapesSpec, load_or_generate
        from clip_jax.demo import zero_shot_heldout
        from clip_jax.train import train

        # The training run and its tokenizer live beside ``out``: a saved model goes into an empty directory.
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".english-clip-run-") as work:
            tokenizer = write_wordpiece_tokenizer(vocabulary("en"), Path(work) / "tokenizer")
            config = english_clip_config(settings, cache_dir, str(tokenizer))
            run = Path(work) / "run"
            train(config, str(run))
            model = load_model(str(run))
            model.save_pretrained(out, require_transformers=True)
            losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        losses = [(r["step"], round(r["train/loss"], 4)) for r in losses if "train/loss" in r]
        data = load_or_generate(ShapesSpec(**config.data.shapes.to_dict()), cache_dir)
        zero_shot = zero_shot_heldout(model, data["val"], language="en")
        return {"train_loss": losses, "zero_shot_en_val": zero_shot}

    return _build("english-clip", settings, cache_dir, build, log)


# ---------------------------------------------------------------------- Italian BERT
def mask_tokens(
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    rs: np.random.RandomState,
    vocab_size: int,
    probability: float = 0.15,
    first_word: int = len(SPECIAL_TOKENS),
    mask_id: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT's masking: ``probability`` of the word tokens are targets; of those 80% become [MASK], 10% a
    random word, 10% stay. Returns the corrupted ids and the targets (-1 where there is none)."""
    words = (input_ids >= first_word) & attention_mask.astype(bool)
    chosen = words & (rs.random_sample(input_ids.shape) < probability)
    labels = np.where(chosen, input_ids, -1)
    roll = rs.random_sample(input_ids.shape)
    corrupted = np.where(chosen & (roll < 0.8), mask_id, input_ids)
    random_words = rs.randint(first_word, vocab_size, input_ids.shape)
    corrupted = np.where(chosen & (roll >= 0.8) & (roll < 0.9), random_words, corrupted)
    return corrupted, labels


def masked_lm_loss(logits, labels):
    """Mean cross-entropy over the positions with a target (``labels >= 0``), and the accuracy there."""
    import jax
    import jax.numpy as jnp

    valid = labels >= 0
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[..., None], axis=-1)[..., 0]
    count = jnp.maximum(valid.sum(), 1)
    loss = -(picked * valid).sum() / count
    accuracy = ((logits.argmax(-1) == labels) & valid).sum() / count
    return loss, accuracy


def train_masked_lm(
    model, texts: list[str], tokenizer, settings: ItalianBertSettings, log: Callable[[str], None] = print
) -> list[tuple[int, float, float]]:
    """Masked-language-model training of ``model`` (a :class:`~clip_jax.models.bert.BertForMaskedLM`) on
    ``texts``; returns ``(step, loss, masked-token accuracy)`` every 50 steps."""
    import jax
    import optax
    from flax import nnx

    s = settings
    tokens = tokenizer(
        texts, padding="max_length", truncation=True, max_length=s.max_length, return_tensors="np"
    )
    ids, attention = tokens["input_ids"], tokens["attention_mask"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, s.learning_rate, s.steps // 10, s.steps)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=0.01), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, batch_ids, batch_mask, labels, key):
        def loss_fn(model):
            logits = model(batch_ids, batch_mask, deterministic=False, rngs=nnx.Rngs(dropout=key))
            return masked_lm_loss(logits, labels)

        (loss, accuracy), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, accuracy

    rs = np.random.RandomState(s.seed)
    key = jax.random.key(s.seed)
    history = []
    for i in range(1, s.steps + 1):
        rows = rs.randint(0, len(ids), s.batch_size)
        corrupted, labels = mask_tokens(ids[rows], attention[rows], rs, len(tokenizer), s.mask_probability)
        loss, accuracy = step(
            model, optimizer, corrupted, attention[rows], labels, jax.random.fold_in(key, i)
        )
        if i % 50 == 0 or i == 1:
            history.append((i, round(float(loss), 4), round(float(accuracy), 4)))
            if i % 250 == 0:
                log(
                    f"  masked LM step {i}/{s.steps}: loss {float(loss):.3f}, masked-token accuracy {float(accuracy):.3f}"
                )
    return history


def italian_bert(
    cache_dir: str = "~/.cache/clip_jax",
    settings: ItalianBertSettings = ItalianBertSettings(),
    *,
    log: Callable[[str], None] = print,
) -> Path:
    """The Italian BERT stand-in's directory, built (well under a minute on 2 cores) if not cached."""

    def build(out: Path) -> dict:
        from flax import nnx
        from transformers import AutoTokenizer

        from clip_jax.demo.corpus import italian_corpus, vocabulary
        from clip_jax.models.bert import BertConfig, BertForMaskedLM

        write_wordpiece_tokenizer(vocabulary("it"), out)
        tokenizer = AutoTokenizer.from_pretrained(str(out))
        s = settings
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=s.width,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            intermediate_size=4 * s.width,
            max_position_embeddings=s.max_length,
        )
        model = BertForMaskedLM(config, rngs=nnx.Rngs(params=s.seed))
        corpus = italian_corpus(s.seed, s.num_other_sentences)
        history = train_masked_lm(model, corpus, tokenizer, s, log)
        save_masked_lm(model, out)
        return {"corpus_sentences": len(corpus), "mlm_history": history}

    return _build("italian-bert", settings, cache_dir, build, log)


def shapes_tokenizer(cache_dir: str, *, log: Callable[[str], None] = print) -> Path:
    """A WordPiece tokenizer over the shapes data set's Italian words (for random text towers), written once."""
    from clip_jax.demo.corpus import vocabulary

    directory = Path(cache_dir).expanduser() / "shapes-tokenizer-v2"
    if not (directory / "tokenizer_config.json").exists():
        write_wordpiece_tokenizer(vocabulary("it"), directory)
    return directory


STANDINS: dict[str, Callable[..., Path]] = {
    "english-clip": english_clip,
    "italian-bert": italian_bert,
    "shapes-tokenizer": shapes_tokenizer,
}


def save_masked_lm(model, directory: str | Path) -> None:
    """A :class:`clip_jax.models.bert.BertForMaskedLM` as transformers saves one: config.json
    (``architectures: [BertForMaskedLM]``, tied word embeddings) and model.safetensors."""
    import jax

    from clip_jax.hub import write_weights
    from clip_jax.models.bert import MLM_KEY_MAP
    from clip_jax.weights.params import flat_params

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**model.config.to_hf(), "architectures": ["BertForMaskedLM"], "tie_word_embeddings": True}
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    params = {p: np.asarray(jax.device_get(v)) for p, v in flat_params(model).items()}
    write_weights(MLM_KEY_MAP.export(params), directory)


def resolve(spec: Any, cache_dir: str, log: Callable[[str], None] = print) -> Any:
    """``demo:english-clip`` / ``demo:italian-bert`` / ``demo:shapes-tokenizer`` -> the stand-in's directory
    (built if needed); anything else unchanged."""
    if not (isinstance(spec, str) and spec.startswith(PREFIX)):
        return spec
    name = spec[len(PREFIX) :]
    if name not in STANDINS:
        raise ValueError(f"Unknown demo stand-in {spec!r}; choose one of {[PREFIX + n for n in STANDINS]}.")
    return str(STANDINS[name](cache_dir, log=log))


register_named_models(PREFIX, lambda spec, cache_dir: resolve(spec, cache_dir))
