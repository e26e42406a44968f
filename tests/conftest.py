"""Shared test setup: offline hub, exact float32 matmuls, tiny transformers checkpoints built on the fly."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
    projection_dim=16,
)
TINY_BERT = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=40,
    type_vocab_size=2,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
TINY_CLIP_TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=24,
    projection_dim=16,
    eos_token_id=98,
    bos_token_id=97,
    pad_token_id=0,
)


def save_torch_model(model, directory, fmt="safetensors"):
    """save_pretrained in the requested weight format: safetensors, sharded, or a torch .bin."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        model.config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    elif fmt == "sharded":
        model.save_pretrained(directory, max_shard_size="20KB")
        assert (directory / "model.safetensors.index.json").exists()
    else:
        model.save_pretrained(directory)
    return directory


#: The slowest test files, slowest first (CI's --durations on 2 cores). xdist hands out whole files
#: (--dist loadfile) in collection order (--no-loadscope-reorder, pyproject.toml): these go first, so that the
#: many quick files fill the gaps at the end and both workers finish together, instead of one worker
#: starting a minutes-long file when the other is nearly done.
SLOW_FILES_FIRST = (
    "test_bench_smoke.py",
    "test_cli.py",
    "test_plan.py",
    "test_train_processes.py",
    "test_reshard.py",
    "test_grad_cache.py",
    "test_feature_cache.py",
    "test_distill.py",
    "test_data.py",
    "test_eval.py",
    "test_demo.py",
    "test_openclip.py",
    "test_standins.py",
    "test_wheel.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept


def session_dir(tmp_path_factory):
    """The test session's temporary folder, shared by all xdist workers (each worker's own is below it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session", autouse=True)
def subprocess_compilation_cache(tmp_path_factory):
    """The subprocesses tests start (train.py, the CLI, two-process runs) share one persistent JAX compilation
    cache for the session, across xdist workers: the tiny recipes' steps compile once, not once per process.
    This process's own jax read its settings at import and keeps compiling (tests count its compiles)."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(session_dir(tmp_path_factory) / "jax_compilation_cache")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"


@pytest.fixture(scope="session")
def torch_seed():
    import torch

    torch.manual_seed(0)
    return 0


TINY_WORDS = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "una",
    "foto",
    "di",
    "un",
    "gatto",
    "cane",
    "rosso",
    "rossi",
    "blu",
    "verde",
    "cerchio",
    "cerchi",
    "quadrato",
    "quadrati",
    "triangolo",
    "a",
    "sinistra",
    "destra",
    "in",
    "alto",
    "basso",
    "due",
    "tre",
    "il",
    "la",
]


def write_bert_tokenizer(directory, vocab_size=TINY_BERT["vocab_size"]):
    """A real WordPiece tokenizer over a small Italian vocabulary, padded to ``vocab_size`` entries."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    words = list(TINY_WORDS) + [f"##x{i}" for i in range(vocab_size - len(TINY_WORDS))]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, torch_seed):
    """Tiny random transformers checkpoints, one directory per architecture, saved with save_pretrained."""
    import torch
    import transformers as tf

    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    roberta = dict(TINY_BERT, pad_token_id=1, type_vocab_size=1, max_position_embeddings=42)
    models = {
        "vision": tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY_VISION)),
        "bert": tf.BertModel(tf.BertConfig(**TINY_BERT)),
        "roberta": tf.RobertaModel(tf.RobertaConfig(**roberta)),
        "xlm-roberta": tf.XLMRobertaModel(tf.XLMRobertaConfig(**roberta)),
        "camembert": tf.CamembertModel(tf.CamembertConfig(**roberta)),
        "bert_mlm": tf.BertForMaskedLM(tf.BertConfig(**TINY_BERT)),
        "clip_text": tf.CLIPTextModel(tf.CLIPTextConfig(**TINY_CLIP_TEXT)),
        "clip": tf.CLIPModel(
            tf.CLIPConfig(vision_config=TINY_VISION, text_config=TINY_CLIP_TEXT, projection_dim=16)
        ),
    }
    paths = {}
    for name, model in models.items():
        model.eval()
        paths[name] = save_torch_model(model, root / name)
    write_bert_tokenizer(paths["bert"])
    return {"root": root, "paths": paths, "models": models}


@pytest.fixture(scope="session")
def small_standins(tmp_path_factory):
    """The demo's stand-ins at test size (32 px, width 32, a few hundred steps), built once per session:
    ``(cache_dir, english_clip_dir, italian_bert_dir)``. The first xdist worker to need them builds them (a
    minute of training) under a lock in the session's folder, the other waits and reuses them; each worker
    gets its own copy in its own cache folder (the tests also cache their data sets there)."""
    import fcntl
    import shutil

    from clip_jax.demo import standins

    shared = session_dir(tmp_path_factory) / "standins"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        built = [
            standins.english_clip(str(shared), SMALL_ENGLISH),
            standins.italian_bert(str(shared), SMALL_ITALIAN),
        ]
    cache = tmp_path_factory.mktemp("standins")
    for directory in built:
        shutil.copytree(directory, cache / directory.relative_to(shared))
    # the copies are found: nothing is built again
    english = standins.english_clip(str(cache), SMALL_ENGLISH, log=pytest.fail)
    italian = standins.italian_bert(str(cache), SMALL_ITALIAN, log=pytest.fail)
    return str(cache), english, italian


def _small_settings():
    from clip_jax.demo import standins

    english = standins.EnglishCLIPSettings(
        image_size=32,
        patch_size=8,
        vision_width=32,
        text_width=32,
        projection_dim=32,
        num_train=1024,
        steps=300,
        batch_size=32,
    )
    italian = standins.ItalianBertSettings(width=32, num_other_sentences=1000, steps=300, batch_size=64)
    return english, italian


SMALL_ENGLISH, SMALL_ITALIAN = _small_settings()
