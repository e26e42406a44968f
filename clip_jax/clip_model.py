"""``CLIPModel``: a dual encoder with its tokenizer and image preprocessing, ready to embed,
save and load. The ``nnx`` module is ``model.module``; training works on that.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from PIL import Image

from clip_jax import siglip_layout
from clip_jax import workdir as workdirs
from clip_jax.data.preprocess import ImageProcessorConfig, preprocess_images
from clip_jax.embedding import embed_rows, next_power_of_two
from clip_jax.hub import (
    CLIP_JAX_MODEL_TYPE,
    DEFAULT_MAX_SHARD_SIZE,
    ExportError,
    hub_projection_dim,
    push_to_hub,
    transformers_compatible,
    write_model_card,
    write_weights,
)
from clip_jax.models.dual_encoder import (
    LOGIT_SCALE_INIT,
    LOGIT_SCALE_MAX,
    DualEncoder,
    dual_encoder_key_map,
    l2_normalize,
)
from clip_jax.models.registry import (
    COMPOSITES,
    LoadedTower,
    architecture_of,
    build_tower,
    detect_prefix,
    load_tower,
    normalised_config,
    tower_builder,
    tower_config,
)
from clip_jax.weights.loading import flat_params, load_params
from clip_jax.weights.readers import CheckpointError, read_config, read_state_dict, resolve_checkpoint

TowerSource = str | os.PathLike | dict | Any
#: What ``encode_image`` accepts: one PIL image, a sequence or iterator of PIL images (or uint8
#: ``[H, W, 3]`` arrays), a uint8 ``[N, H, W, 3]`` array, preprocessed float pixels ``[N, S, S, 3]`` or
#: ``[N, 3, S, S]`` (numpy, torch or jax), or a mapping with ``pixel_values`` (transformers' processor output).
Images = Any
#: What ``encode_text`` accepts: one string or a sequence / iterator of strings.
Texts = str | Iterable[str]


@dataclasses.dataclass(frozen=True)
class Classification:
    """Zero-shot classification of a batch of images among candidate ``classes``.

    ``probs[i, j]`` is the softmax over the classes of image ``i``'s logits; ``top_k[i]`` lists image
    ``i``'s best ``(class, probability)`` pairs, most probable first.
    """

    classes: list[str]
    logits: np.ndarray
    probs: np.ndarray
    top_k: list[list[tuple[str, float]]]

    @property
    def predictions(self) -> list[str]:
        """The most probable class of each image."""
        return [best[0][0] for best in self.top_k]


def _to_numpy(value: Any) -> np.ndarray | None:
    """A numpy view of a numpy, jax or torch array; None for anything else."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, jax.Array):
        return np.asarray(value)
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        tensor = value.detach().cpu()
        return (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return None


def _text_list(texts: Texts) -> list[str]:
    """``texts`` as a list of strings (one string becomes a list of one), or a TypeError saying what is wrong."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, Mapping)) or not isinstance(texts, Iterable):
        raise TypeError(f"Texts must be a string or a sequence of strings; got {type(texts).__name__}.")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(
            f"Texts must be strings; items {bad[:5]} are not (item {bad[0]}: {type(texts[bad[0]]).__name__})."
        )
    return texts


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


def _tower(source: TowerSource, kind: str, **kwargs: Any) -> LoadedTower:
    """A pretrained tower for a path/hub id; a random one for a config (dataclass, dict, transformers config)."""
    if isinstance(source, (str, os.PathLike)):
        overrides = {k: v for k, v in kwargs.pop("overrides").items() if v is not None}
        return load_tower(source, kind, **kwargs, **overrides)
    kwargs.pop("overrides")
    kwargs.pop("revision", None)
    return build_tower(source, kind, **kwargs)


def dual_encoder_builder(
    raw_config: dict[str, Any],
    *,
    dtype: jnp.dtype | None = None,
    param_dtype: jnp.dtype = jnp.float32,
    has_logit_bias: bool = False,
    source: str = "",
):
    """From a dual encoder's ``config.json``: a function building the (random) :class:`DualEncoder`,
    and each tower's (architecture, key prefix of its composite)."""
    if raw_config.get("model_type") == CLIP_JAX_MODEL_TYPE:  # our own format: same layout (see clip_jax.hub)
        raw_config = dict(
            raw_config, model_type="vision-text-dual-encoder", projection_dim=hub_projection_dim(raw_config)
        )
    if raw_config.get("model_type") not in COMPOSITES:
        raise CheckpointError(
            f"{source} holds a {raw_config.get('model_type')!r} model, not a dual encoder "
            f"({sorted(COMPOSITES)}). To pair two towers, use CLIPModel.from_towers(vision=..., text=...)."
        )
    hf = normalised_config(raw_config, source)
    extra = raw_config.get("clip_jax", {})
    (v_arch, v_cfg, v_outer), (t_arch, t_cfg, t_outer) = (
        tower_config(hf, k, source) for k in ("vision", "text")
    )
    bias = extra.get("logit_bias_init")
    if has_logit_bias and bias is None:
        bias = 0.0

    def build() -> DualEncoder:
        return DualEncoder(
            tower_builder(v_arch, v_cfg, dtype, param_dtype)(),
            tower_builder(t_arch, t_cfg, dtype, param_dtype)(),
            projection_dim=int(hf.get("projection_dim", 512)),
            text_pooling=extra.get("text_pooling", "pooler"),
            logit_scale_init=float(hf.get("logit_scale_init_value", LOGIT_SCALE_INIT)),
            logit_bias_init=bias,
            logit_scale_max=extra.get("logit_scale_max", LOGIT_SCALE_MAX),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=nnx.Rngs(0),
        )

    return build, (v_arch, v_outer), (t_arch, t_outer)


def _finite_pixels(pixels: Any) -> Any:
    """``pixels``, unless they hold NaN or infinity (which would give NaN embeddings without a word)."""
    array = np.asarray(pixels)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array.reshape(len(array), -1))).any(axis=1).sum())
        raise ValueError(
            f"{bad} of {len(array)} preprocessed images in a batch hold NaN or infinite pixel values — fix "
            "their preprocessing (or pass the images themselves: PIL images or uint8 arrays)"
        )
    return pixels


class CLIPModel:
    """A CLIP-style dual encoder with its tokenizer and image processor.

    Build one from two pretrained towers with :meth:`from_towers` (fresh projections), or
    load a saved one with :meth:`from_pretrained`. Embed with :meth:`encode_image` and
    :meth:`encode_text`; both return L2-normalised float32 NumPy arrays.
    """

    def __init__(
        self,
        module: DualEncoder,
        *,
        tokenizer: Any = None,
        image_processor: ImageProcessorConfig | None = None,
        max_length: int | None = None,
    ):
        self.module = module
        self.tokenizer = tokenizer
        image_size = module.vision.config.image_size
        self.image_processor = image_processor or ImageProcessorConfig.for_image_size(image_size)
        if (self.image_processor.crop_height, self.image_processor.crop_width) != (image_size, image_size):
            raise ValueError(
                f"Image processor crops to {self.image_processor.crop_height}x"
                f"{self.image_processor.crop_width} but the vision tower takes {image_size}px images."
            )
        tower_max = module.text.config.max_length
        if max_length is not None and not 1 <= max_length <= tower_max:
            raise ValueError(
                f"max_length={max_length} does not fit the text tower, which takes 1 to {tower_max} tokens — "
                f"use at most {tower_max} (in a training config: --config.model.max_length={tower_max} or less)"
            )
        self.max_length = max_length or tower_max
        #: What the model was initialised from (hub ids or paths): the model card's ``base_model``.
        self.base_models: list[str] = []
        self._jitted: dict[str, Callable] = {}

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_towers(
        cls,
        vision: TowerSource,
        text: TowerSource,
        projection_dim: int = 512,
        text_pooling: str | None = None,
        *,
        tokenizer: Any = None,
        image_size: int | None = None,
        max_length: int | None = None,
        logit_scale_init: float = LOGIT_SCALE_INIT,
        logit_bias_init: float | None = None,
        dtype: jnp.dtype | None = None,
        param_dtype: jnp.dtype = jnp.float32,
        seed: int = 0,
        revision: str | None = None,
    ) -> CLIPModel:
        """Pretrained towers with fresh projections (normal(0.02), no bias) and logit scale.

        ``vision`` and ``text`` are each a local directory or hub id (a full ``clip`` checkpoint
        gives its vision or text half), or a config (our dataclass, a transformers config, or a
        dict) for a randomly initialised tower. ``text_pooling`` is one of ``pooler`` (default,
        as ``VisionTextDualEncoderModel``), ``cls``, ``mean``, ``eos``. ``image_size`` changes the
        vision tower's resolution (position embeddings are interpolated).
        """
        common = dict(dtype=dtype, param_dtype=param_dtype, seed=seed)
        v = _tower(vision, "vision", overrides={"image_size": image_size}, revision=revision, **common)
        t = _tower(text, "text", overrides={}, revision=revision, **common)
        module = DualEncoder(
            v.module,
            t.module,
            projection_dim=projection_dim,
            text_pooling=text_pooling or "pooler",
            logit_scale_init=logit_scale_init,
            logit_bias_init=logit_bias_init,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=nnx.Rngs(seed + 1),
        )
        if tokenizer is None:
            tokenizer = load_tokenizer(t.directory)
        elif isinstance(tokenizer, (str, os.PathLike)):
            path, tokenizer = tokenizer, load_tokenizer(tokenizer)
            if tokenizer is None:
                raise ValueError(f"No tokenizer files ({', '.join(TOKENIZER_FILES)}) in {path}.")
        processor = (
            ImageProcessorConfig.from_pretrained(v.directory) if v.directory and image_size is None else None
        )
        model = cls(module, tokenizer=tokenizer, image_processor=processor, max_length=max_length)
        model.base_models = [
            str(source) for source in (vision, text) if isinstance(source, (str, os.PathLike))
        ]
        return model

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | os.PathLike,
        *,
        logit_scale: float | None = None,
        revision: str | None = None,
        dtype: jnp.dtype | None = None,
        param_dtype: jnp.dtype = jnp.float32,
        max_length: int | None = None,
    ) -> CLIPModel:
        """A saved dual encoder: our own ``save_pretrained`` output, a transformers
        ``vision-text-dual-encoder`` checkpoint, or an OpenAI-style ``clip`` checkpoint.

        ``logit_scale`` overrides the stored temperature with this *scale* (e.g. ``20`` for a
        model trained with a fixed scale of 20, as CLIP-Italian).
        """
        directory = resolve_checkpoint(path_or_id, revision=revision)
        state_dict, raw_config = read_state_dict(directory), read_config(directory)
        if siglip_layout.is_siglip_model(raw_config):  # SiglipModel / Siglip2Model: identity projections
            raw_config, state_dict = siglip_layout.siglip_as_dual_encoder(
                raw_config, state_dict, str(directory)
            )
        build, (v_arch, v_outer), (t_arch, t_outer) = dual_encoder_builder(
            raw_config,
            dtype=dtype,
            param_dtype=param_dtype,
            has_logit_bias="logit_bias" in state_dict,
            source=str(directory),
        )
        v_prefix = detect_prefix(state_dict, v_arch, v_outer, source=str(directory))
        t_prefix = detect_prefix(state_dict, t_arch, t_outer, source=str(directory))
        key_map = dual_encoder_key_map(v_arch.key_map, t_arch.key_map, v_prefix, t_prefix)
        ignore = tuple(re.escape(v_prefix) + p for p in v_arch.ignore) + tuple(
            re.escape(t_prefix) + p for p in t_arch.ignore
        )
        module = load_params(
            build,
            state_dict,
            key_map,
            ignore=ignore,
            allow_missing=tuple(f"vision\\.{p}" for p in v_arch.allow_missing)
            + tuple(f"text\\.{p}" for p in t_arch.allow_missing),
            source=f"dual encoder from {directory}",
        )
        if max_length is None:  # the length the model was trained with, recorded by save_pretrained
            max_length = read_config(directory).get("clip_jax", {}).get("max_length")
        model = cls(
            module,
            tokenizer=load_tokenizer(directory),
            image_processor=ImageProcessorConfig.from_pretrained(directory),
            max_length=max_length,
        )
        model.base_models = [str(path_or_id)]
        if logit_scale is not None:
            model.logit_multiplier = logit_scale
        return model

    def hub_config(self) -> dict[str, Any]:
        """The ``config.json`` of this model in the hub format (see :mod:`clip_jax.hub`)."""
        module = self.module
        compatible, why = transformers_compatible(
            module.text_pooling, module.text.config.to_hf()["model_type"]
        )
        config = {
            "model_type": "vision-text-dual-encoder" if compatible else CLIP_JAX_MODEL_TYPE,
            "architectures": ["VisionTextDualEncoderModel"] if compatible else ["CLIPModel (clip_jax)"],
            "vision_config": module.vision.config.to_hf(),
            "text_config": module.text.config.to_hf(),
            "projection_dim": module.projection_dim,
            "logit_scale_init_value": LOGIT_SCALE_INIT,
            "clip_jax": {
                "text_pooling": module.text_pooling,
                "max_length": self.max_length,
                "logit_bias_init": (float(module.logit_bias[...]) if module.logit_bias is not None else None),
                "logit_scale_max": module.logit_scale_max,
            },
        }
        if not compatible:  # transformers' strict config check then fails on projection_dim with `why`
            config["clip_jax"]["why_not_transformers"] = why
            config["clip_jax"]["projection_dim"] = module.projection_dim
            config["projection_dim"] = why
        return config

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        *,
        max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
        weights: bool = True,
        require_transformers: bool = False,
        card: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write config.json, the weights (safetensors; sharded above ``max_shard_size``), the tokenizer
        (a fresh copy whose ``model_max_length`` is this model's ``max_length``) and preprocessor_config.json: a directory ``VisionTextDualEncoderModel.from_pretrained`` loads.

        A model whose text pooling transformers cannot reproduce is written in clip_jax's own
        ``model_type`` instead (transformers refuses it); ``require_transformers=True`` raises
        :class:`ExportError` for such a model. ``weights=False`` writes everything but the weights.

        The directory is replaced whole and at once (written beside it, then renamed): a failure part-way leaves an
        earlier model there as it was. It must be new, empty or an earlier saved model; a training workdir or a
        directory of other files is refused (``ValueError``).

        ``card`` (a dict of :func:`clip_jax.hub.model_card`'s arguments: ``language``, ``results`` — eval.py's
        records —, ``datasets``, ``license``, ``training_config``, ``repo_id``, ...) also writes the model card,
        ``README.md``; ``base_models`` defaults to the hub ids this model was built from.
        """
        siglip = siglip_layout.siglip_export(self)  # a SigLIP model goes back to SigLIP's layout
        config = siglip[0] if siglip else self.hub_config()
        if require_transformers and config["model_type"] == CLIP_JAX_MODEL_TYPE:
            raise ExportError(
                "Cannot export in transformers' format: " + config["clip_jax"]["why_not_transformers"]
            )
        directory = Path(directory)
        workdirs.check_replaceable(directory)
        with workdirs.replace_directory(
            directory
        ) as new:  # the old directory stays until this one is complete
            (new / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            if weights and siglip:
                write_weights(siglip[1], new, max_shard_size)
            elif weights:
                module = self.module
                key_map = dual_encoder_key_map(
                    architecture_of(module.vision).key_map, architecture_of(module.text).key_map
                )
                tensors = key_map.export(
                    {p: np.asarray(jax.device_get(v)) for p, v in flat_params(module).items()}
                )
                write_weights(tensors, new, max_shard_size)
            if self.tokenizer is not None:
                save_tokenizer(self.tokenizer, new, self.max_length)
            self.image_processor.save_pretrained(new)
            if card is not None:
                write_model_card(new, **{"base_models": self.base_models, **card})
        return directory

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool = False,
        revision: str | None = None,
        commit_message: str = "Upload CLIP dual encoder (clip_jax)",
        token: str | None = None,
        model_card: str | Mapping[str, Any] | None = None,
    ) -> str:
        """Save to a temporary directory and upload it to ``repo_id``. ``model_card``: the README.md text, or
        :meth:`save_pretrained`'s ``card`` arguments (default: a card with no results; ``repo_id`` filled in)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            card = None if isinstance(model_card, str) else {"repo_id": repo_id, **(model_card or {})}
            self.save_pretrained(tmp, card=card)
            if isinstance(model_card, str):
                Path(tmp, "README.md").write_text(model_card)
            return push_to_hub(
                tmp, repo_id, private=private, revision=revision, commit_message=commit_message, token=token
            )

    # ------------------------------------------------------------------ temperature
    @property
    def logit_multiplier(self) -> float:
        """What cosine similarities are multiplied by to give logits: ``exp`` of the stored
        log-space parameter, clamped at 100 (CLIP's ``1 / temperature``; e.g. 100 for OpenAI CLIP)."""
        return float(self.module.scale())

    @logit_multiplier.setter
    def logit_multiplier(self, value: float) -> None:
        if not value > 0:
            raise ValueError(
                f"The logit multiplier must be positive (it is exp of the stored log); got {value}."
            )
        self.module.logit_scale.set_value(jnp.asarray(math.log(value), jnp.float32))

    @property
    def log_logit_multiplier(self) -> float:
        """The stored log-space parameter (transformers' ``model.logit_scale``), before clamping at ln 100."""
        return float(self.module.logit_scale[...])

    @property
    def logit_scale(self) -> float:
        """The same as :attr:`logit_multiplier` (the multiplier, not the log; kept for compatibility).

        Note that transformers' ``model.logit_scale`` is the log: that is :attr:`log_logit_multiplier` here.
        """
        return self.logit_multiplier

    # ------------------------------------------------------------------ embedding
    @property
    def mesh(self) -> Mesh:
        """Local devices on one ``data`` axis: embedding batches are split over them."""
        if not hasattr(self, "_mesh"):
            devices = jax.local_devices() if jax.process_count() == 1 else jax.local_devices()[:1]
            self._mesh = Mesh(np.array(devices), ("data",))
        return self._mesh

    def _put_state(self, state: Any) -> Any:
        return jax.device_put(state, NamedSharding(self.mesh, P()))

    def _compiled(self, name: str, normalize: bool = True) -> Callable:
        key = name if normalize else f"{name}-raw"
        if key not in self._jitted:
            graphdef = nnx.graphdef(self.module)
            method = {
                "image": lambda m, x: m.image_features(x),
                "text": lambda m, ids, mask: m.text_features(ids, mask),
            }[name]
            post = l2_normalize if normalize else (lambda x: x.astype(jnp.float32))
            self._jitted[key] = jax.jit(lambda state, *args: post(method(nnx.merge(graphdef, state), *args)))
        return self._jitted[key]

    def pixel_batches(self, images: Images, batch_size: int = 64) -> Iterator[np.ndarray]:
        """``images`` (any form :meth:`encode_image` takes) as preprocessed float32 ``[n, S, S, 3]`` batches
        of at most ``batch_size``; an iterator of images is read one batch at a time."""
        size = self.module.vision.config.image_size
        if isinstance(images, Mapping):
            if "pixel_values" not in images:
                raise TypeError(
                    f"A mapping of images needs a 'pixel_values' entry (as transformers' processors "
                    f"return); got keys {sorted(images)[:5]}."
                )
            images = images["pixel_values"]
        if isinstance(images, Image.Image):
            images = [images]
        array = _to_numpy(images)
        if array is not None:
            if array.ndim == 3:
                array = array[None]
            if array.dtype == np.uint8:
                if array.ndim != 4 or array.shape[-1] != 3:
                    raise ValueError(
                        f"uint8 image arrays must be channels-last [N, H, W, 3] or [H, W, 3]; got "
                        f"shape {array.shape}"
                        + (
                            " (channels first: transpose to [N, H, W, 3])"
                            if array.ndim == 4 and array.shape[1] == 3
                            else ""
                        )
                        + "."
                    )
                for start in range(0, len(array), batch_size):
                    yield preprocess_images(list(array[start : start + batch_size]), self.image_processor)
                return
            if not jnp.issubdtype(array.dtype, jnp.floating):
                raise TypeError(
                    f"Image arrays must be uint8 (raw pixels) or floating point (preprocessed pixels); "
                    f"got {array.dtype}."
                )
            if array.ndim == 4 and array.shape[1:] == (3, size, size) and array.shape[-1] != 3:
                array = array.transpose(0, 2, 3, 1)  # transformers' pixel_values are channels-first
            if array.ndim != 4 or array.shape[1:] != (size, size, 3):
                raise ValueError(
                    f"Float image arrays must be preprocessed pixels [N, {size}, {size}, 3] (channels last) or "
                    f"[N, 3, {size}, {size}] (transformers' pixel_values); got shape {array.shape}. Pass PIL "
                    "images or uint8 arrays to have them resized, cropped and normalised."
                )
            for start in range(0, len(array), batch_size):
                yield np.asarray(array[start : start + batch_size], np.float32)
            return
        if isinstance(images, (str, bytes, os.PathLike)):
            raise TypeError(
                f"encode_image takes images, not file names ({str(images)[:80]!r}): open them first, "
                "e.g. PIL.Image.open(path)."
            )
        if not isinstance(images, Iterable):
            raise TypeError(
                f"encode_image takes a PIL image, a sequence of them, or a pixel array (numpy, torch "
                f"or jax); got {type(images).__name__}."
            )
        iterator, seen = iter(images), 0
        while chunk := list(itertools.islice(iterator, batch_size)):
            items = []
            for i, item in enumerate(chunk):
                raw = item if isinstance(item, Image.Image) else _to_numpy(item)
                if not (
                    isinstance(raw, Image.Image)
                    or (raw is not None and raw.dtype == np.uint8 and raw.ndim == 3 and raw.shape[-1] == 3)
                ):
                    described = (
                        f"a {raw.dtype} array of shape {raw.shape}"
                        if raw is not None
                        else f"a {type(item).__name__}"
                    )
                    raise TypeError(
                        f"Image {seen + i} is {described}; a sequence of images must hold PIL images "
                        "or uint8 [H, W, 3] arrays (stack preprocessed pixels into one float array)."
                    )
                items.append(raw)
            yield preprocess_images(items, self.image_processor)
            seen += len(chunk)

    def _embed_pixels(self, fn: Callable, state: Any, images: Images, batch_size: int) -> np.ndarray:
        """``fn(state, pixels)`` over ``images`` in bucketed batches split over the mesh, rows concatenated."""
        return embed_rows(
            lambda pixels: fn(state, pixels),
            ([_finite_pixels(pixels)] for pixels in self.pixel_batches(images, batch_size)),
            batch_size=batch_size,
            mesh=self.mesh,
            bucket=True,
        )

    def encode_image(self, images: Images, *, batch_size: int = 64, normalize: bool = True) -> np.ndarray:
        """Image embeddings ``[N, projection_dim]`` float32, L2-normalised unless ``normalize=False``.

        ``images``: one PIL image (N = 1), a sequence or iterator of PIL images or uint8 ``[H, W, 3]``
        arrays, or a uint8 array ``[N, H, W, 3]`` — all preprocessed exactly as transformers'
        ``CLIPImageProcessor`` —, or already preprocessed float pixels ``[N, S, S, 3]`` (ours) or
        ``[N, 3, S, S]`` (transformers' ``pixel_values``), as numpy, torch or jax arrays, or a processor's
        output with ``pixel_values``.
        """
        state = self._put_state(nnx.state(self.module))
        fn = self._compiled("image", normalize)
        out = self._embed_pixels(fn, state, images, batch_size)
        return out if len(out) else np.zeros((0, self.module.projection_dim), np.float32)

    def encode_image_layers(self, images: Images, *, batch_size: int = 64) -> np.ndarray:
        """The vision tower's class-token state after the embeddings and after each layer,
        ``[layers + 1, N, hidden]`` float32 (for per-layer embedding maps)."""
        if "layers" not in self._jitted:
            graphdef = nnx.graphdef(self.module.vision)

            def layers(state, pixels):
                out = nnx.merge(graphdef, state)(pixels, output_hidden_states=True)
                return jnp.stack([h[:, 0] for h in out.hidden_states], axis=1).astype(jnp.float32)

            self._jitted["layers"] = jax.jit(layers)
        fn, state = self._jitted["layers"], self._put_state(nnx.state(self.module.vision))
        return self._embed_pixels(fn, state, images, batch_size).transpose(1, 0, 2)

    def tokenize(self, texts: Texts, *, fixed_length: bool = False) -> dict[str, np.ndarray]:
        """Token ids and attention mask (int32), truncated to ``max_length`` and padded to a
        power-of-two length bucket, or to ``max_length`` itself with ``fixed_length`` (training); a text tower
        that pools its last position (SigLIP) always gets ``max_length`` tokens and an all-ones mask."""
        if self.tokenizer is None:
            raise ValueError(
                "This model has no tokenizer: pass tokenizer=PATH_OR_OBJECT to CLIPModel.from_towers."
            )
        texts = _text_list(texts)
        if getattr(self.module.text.config, "pads_to_max_length", False):
            # SigLIP pools the last position: its processor's padding="max_length", and no padding mask (what
            # SiglipModel sees from input_ids alone, and how it was trained).
            enc = self.tokenizer(
                texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="np"
            )
            ids = enc["input_ids"].astype(np.int32)
            return {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        enc = self.tokenizer(
            texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="np"
        )
        ids, mask = enc["input_ids"], enc["attention_mask"]
        length = (
            self.max_length if fixed_length else min(max(8, next_power_of_two(ids.shape[1])), self.max_length)
        )
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if length > ids.shape[1]:
            extra = length - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=pad_id)
            mask = np.pad(mask, ((0, 0), (0, extra)), constant_values=0)
        return {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32)}

    def encode_text(self, texts: Texts, *, batch_size: int = 256, normalize: bool = True) -> np.ndarray:
        """Text embeddings ``[N, projection_dim]`` float32, L2-normalised unless ``normalize=False``.

        ``texts``: one string (N = 1) or a sequence of strings, tokenised with the text tower's tokenizer
        and truncated to ``max_length`` tokens.
        """
        texts = _text_list(texts)
        state = self._put_state(nnx.state(self.module))
        fn = self._compiled("text", normalize)
        out = [  # one call per batch: each batch is padded to its own token-length bucket
            embed_rows(
                lambda ids, mask: fn(state, ids, mask),
                [(enc["input_ids"], enc["attention_mask"])],
                batch_size=batch_size,
                mesh=self.mesh,
                bucket=True,
            )
            for start in range(0, len(texts), batch_size)
            for enc in [self.tokenize(texts[start : start + batch_size])]
        ]
        return np.concatenate(out) if out else np.zeros((0, self.module.projection_dim), np.float32)

    def get_image_features(self, images: Images, *, batch_size: int = 64) -> np.ndarray:
        """transformers-style name: projected image features *before* L2 normalisation (as
        ``VisionTextDualEncoderModel.get_image_features(...).pooler_output``); takes what :meth:`encode_image` takes."""
        return self.encode_image(images, batch_size=batch_size, normalize=False)

    def get_text_features(self, texts: Texts, *, batch_size: int = 256) -> np.ndarray:
        """transformers-style name: projected text features *before* L2 normalisation (as
        ``VisionTextDualEncoderModel.get_text_features(...).pooler_output``); takes what :meth:`encode_text` takes."""
        return self.encode_text(texts, batch_size=batch_size, normalize=False)

    # ------------------------------------------------------------------ zero-shot
    def similarity(self, images: Images, texts: Texts, *, batch_size: int = 64) -> np.ndarray:
        """Logits ``[images, texts]``: cosine similarity times :attr:`logit_multiplier` (plus the learned bias
        of a sigmoid-loss model), as transformers' ``logits_per_image``. Not probabilities: see :meth:`classify`."""
        logits = self.logit_multiplier * (
            self.encode_image(images, batch_size=batch_size) @ self.encode_text(texts).T
        )
        if self.module.logit_bias is not None:
            logits = logits + float(self.module.logit_bias[...])
        return logits.astype(np.float32)

    def classify(
        self,
        images: Images,
        labels: Sequence[str],
        templates: str | Sequence[str] | None = None,
        language: str | None = None,
        *,
        top_k: int = 5,
        batch_size: int = 64,
    ) -> Classification:
        """Zero-shot classification of ``images`` among ``labels`` (class names in the model's language).

        Each label's embedding is the renormalised mean of the embeddings of every template filled with
        it (prompt ensembling). ``templates``: a list of prompts with ``{}`` where the label goes, one such
        prompt, or a built-in / file spec as in ``eval.py --templates`` (``it:cifar10``); ``language``
        (``en``, ``it``, ...) picks the built-in general-purpose ensemble of that language instead; with
        neither, the labels are embedded as given. Returns probabilities (softmax over the labels) and the
        ``top_k`` labels per image.
        """
        from clip_jax.evaluate.zeroshot import class_embeddings, resolve_templates

        labels = _text_list(labels)
        if not labels:
            raise ValueError("classify needs at least one label.")
        if not (isinstance(top_k, int) and top_k >= 1):
            raise ValueError(
                f"classify: top_k={top_k!r} — use a whole number >= 1 (the labels to keep per image)"
            )
        prompts = resolve_templates(templates, language)
        logits = self.logit_multiplier * (
            self.encode_image(images, batch_size=batch_size) @ class_embeddings(self, labels, prompts).T
        )
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        best = [[(labels[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]
        return Classification(
            classes=labels, logits=logits.astype(np.float32), probs=probs.astype(np.float32), top_k=best
        )
