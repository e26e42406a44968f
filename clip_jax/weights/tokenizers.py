"""Tokenizers as transformers saves them: loaded from a checkpoint directory (never with remote code) and
written as a clean copy beside a model."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

#: Files of which at least one is present in a directory that really holds a tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "sentencepiece.bpe.model",
    "spiece.model",
)


def load_tokenizer(source: Any) -> Any:
    """A tokenizer object, loaded from a directory if given one; None when the directory has none.

    (transformers builds an empty tokenizer for a directory without tokenizer files; we refuse that.)
    """
    if source is None or not isinstance(source, (str, os.PathLike)):
        return source
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if Path(source).is_dir() and not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
        return None
    # Beside our own config.json (model_type clip_jax_dual_encoder) transformers warns that it does not know
    # the model type; the tokenizer files are what is loaded, so the warning is noise.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    finally:
        hf_logging.set_verbosity(verbosity)


#: Loading-time arguments a tokenizer remembers in ``init_kwargs``: not part of what an export should carry.
RUNTIME_TOKENIZER_KWARGS = (
    "is_local",
    "local_files_only",
    "_commit_hash",
    "cache_dir",
    "force_download",
    "token",
    "use_auth_token",
    "revision",
    "trust_remote_code",
    "subfolder",
)


def save_tokenizer(tokenizer: Any, directory: str | os.PathLike, max_length: int) -> None:
    """Write ``tokenizer`` as a fresh copy: no truncation or padding state from earlier calls, no loading
    arguments, and ``model_max_length`` set to the model's ``max_length`` (so ``truncation=True`` without a
    length truncates where the model does)."""
    fresh = copy.deepcopy(tokenizer)
    backend = getattr(fresh, "backend_tokenizer", None) or getattr(fresh, "_tokenizer", None)
    if backend is not None and hasattr(backend, "no_truncation"):
        backend.no_truncation()
        backend.no_padding()
    fresh.model_max_length = max_length
    fresh.init_kwargs = {k: v for k, v in fresh.init_kwargs.items() if k not in RUNTIME_TOKENIZER_KWARGS}
    fresh.init_kwargs["model_max_length"] = max_length
    fresh.save_pretrained(str(directory))
