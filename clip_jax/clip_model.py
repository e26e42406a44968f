"""``CLIPModel``: a dual encoder with its tokenizer and image preprocessing, ready to embed,
save and load. The ``nnx`` module is ``model.module``; training works on that.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from clip_jax.data.preprocess import ImageProcessorConfig
from clip_jax.embedding import embed_rows, feature_function, next_power_of_two
from clip_jax.hub import (
    DEFAULT_MAX_SHARD_SIZE,
    dual_encoder_config,
    push_to_hub,
    read_dual_encoder,
    read_inputs,
    save_dual_encoder,
)
from clip_jax.inputs import Images, Texts, finite_pixels, pixel_batches, text_list
from clip_jax.models.dual_encoder import LOGIT_SCALE_INIT, DualEncoder
from clip_jax.models.registry import (
    LoadedTower,
    build_tower,
    load_tower,
)
from clip_jax.prompts import class_embeddings, resolve_templates
from clip_jax.weights.readers import resolve_checkpoint
from clip_jax.weights.tokenizers import TOKENIZER_FILES, load_tokenizer

TowerSource = str | os.PathLike | dict | Any


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


def _tower(source: TowerSource, kind: str, **kwargs: Any) -> LoadedTower:
    """A pretrained tower for a path/hub id; a random one for a config (dataclass, dict, transformers config)."""
    if isinstance(source, (str, os.PathLike)):
        overrides = {k: v for k, v in kwargs.pop("overrides").items() if v is not None}
        return load_tower(source, kind, **kwargs, **overrides)
    kwargs.pop("overrides")
    kwargs.pop("revision", None)
    return build_tower(source, kind, **kwargs)


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
        mesh: Mesh | None = None,
    ):
        """``mesh``: where to embed, for a module whose parameters already live there (e.g. the training mesh,
        sharded as training keeps them: in-training validation); by default the local devices on one ``data``
        axis, the parameters copied to each."""
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
        self._placed = mesh is not None
        if mesh is not None:
            self._mesh = mesh

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_towers(
        cls,
        vision: TowerSource,
        text: TowerSource,
        projection_dim: int = 512,
        text_pooling: str | None = None,
        *,
        text_projection: str = "linear",
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
        as ``VisionTextDualEncoderModel``), ``cls``, ``mean``, ``eos``. ``text_projection``: ``linear`` (default)
        or ``mlp``, open_clip's Linear-GELU-Linear text head (transformers' format cannot hold it; open_clip's
        layout can). ``image_size`` changes the vision tower's resolution (position embeddings are interpolated).
        """
        common = dict(dtype=dtype, param_dtype=param_dtype, seed=seed)
        v = _tower(vision, "vision", overrides={"image_size": image_size}, revision=revision, **common)
        t = _tower(text, "text", overrides={}, revision=revision, **common)
        module = DualEncoder(
            v.module,
            t.module,
            projection_dim=projection_dim,
            text_pooling=text_pooling or "pooler",
            text_projection_kind=text_projection,
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
        module, saved_length = read_dual_encoder(directory, dtype=dtype, param_dtype=param_dtype)
        max_length = saved_length if max_length is None else max_length
        tokenizer, image_processor = read_inputs(directory)
        model = cls(
            module,
            tokenizer=tokenizer,
            image_processor=image_processor,
            max_length=max_length,
        )
        model.base_models = [str(path_or_id)]
        if logit_scale is not None:
            model.logit_multiplier = logit_scale
        return model

    def hub_config(self) -> dict[str, Any]:
        """The ``config.json`` of this model in the hub format (see :mod:`clip_jax.hub`)."""
        return dual_encoder_config(self.module, self.max_length)

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        *,
        max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
        weights: bool = True,
        require_transformers: bool = False,
        card: Mapping[str, Any] | None = None,
        format: str = "transformers",
        hf_model_name: str | None = None,
    ) -> Path:
        """Write config.json, the weights (safetensors; sharded above ``max_shard_size``), the tokenizer
        (a fresh copy whose ``model_max_length`` is this model's ``max_length``) and preprocessor_config.json: a directory ``VisionTextDualEncoderModel.from_pretrained`` loads.

        A model whose text pooling or text projection transformers cannot reproduce is written in clip_jax's own
        ``model_type`` instead (transformers refuses it); ``require_transformers=True`` raises
        :class:`ExportError` for such a model. ``weights=False`` writes everything but the weights.

        The directory is replaced whole and at once (written beside it, then renamed): a failure part-way leaves an
        earlier model there as it was. It must be new, empty or an earlier saved model; a training workdir or a
        directory of other files is refused (``ValueError``).

        ``card`` (a dict of :func:`clip_jax.hub.model_card`'s arguments: ``language``, ``results`` — eval.py's
        records —, ``datasets``, ``license``, ``training_config``, ``repo_id``, ...) also writes the model card,
        ``README.md``; ``base_models`` defaults to the hub ids this model was built from.

        ``format='open_clip'`` writes open_clip's hub layout instead (``open_clip.create_model_and_transforms(
        "local-dir:DIR")`` loads it; :func:`clip_jax.hub.save_openclip`, whose ``hf_model_name`` this passes on).
        """
        return save_dual_encoder(
            directory,
            self.module,
            tokenizer=self.tokenizer,
            image_processor=self.image_processor,
            max_length=self.max_length,
            max_shard_size=max_shard_size,
            weights=weights,
            require_transformers=require_transformers,
            card=None if card is None else {"base_models": self.base_models, **card},
            format=format,
            hf_model_name=hf_model_name,
        )

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
        return state if self._placed else jax.device_put(state, NamedSharding(self.mesh, P()))

    def _compiled(self, kind: str, normalize: bool = False) -> Callable[..., jax.Array]:
        """``fn(*batch)``: the ``kind`` features (:func:`~clip_jax.embedding.feature_function`) of the module as
        it is now."""
        graphdef, state = nnx.split(self.module)
        fn = feature_function(graphdef, kind, mesh=self.mesh, normalize=normalize)
        placed = self._put_state(state)
        return lambda *batch: fn((placed,), *batch)

    def pixel_batches(self, images: Images, batch_size: int = 64) -> Iterator[np.ndarray]:
        """``images`` (any form :meth:`encode_image` takes) as preprocessed float32 ``[n, S, S, 3]`` batches
        of at most ``batch_size``; an iterator of images is read one batch at a time."""
        return pixel_batches(images, self.image_processor, self.module.vision.config.image_size, batch_size)

    def _embed_pixels(self, fn: Callable, images: Images, batch_size: int) -> np.ndarray:
        """``fn(pixels)`` over ``images`` in bucketed batches split over the mesh, rows concatenated."""
        return embed_rows(
            fn,
            ([finite_pixels(pixels)] for pixels in self.pixel_batches(images, batch_size)),
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
        fn = self._compiled("image", normalize)
        out = self._embed_pixels(fn, images, batch_size)
        return out if len(out) else np.zeros((0, self.module.projection_dim), np.float32)

    def encode_image_layers(self, images: Images, *, batch_size: int = 64) -> np.ndarray:
        """The vision tower's class-token state after the embeddings and after each layer,
        ``[layers + 1, N, hidden]`` float32 (for per-layer embedding maps)."""
        fn = self._compiled("image_layers")
        return self._embed_pixels(fn, images, batch_size).transpose(1, 0, 2)

    def tokenize(self, texts: Texts, *, fixed_length: bool = False) -> dict[str, np.ndarray]:
        """Token ids and attention mask (int32), truncated to ``max_length`` and padded to a
        power-of-two length bucket, or to ``max_length`` itself with ``fixed_length`` (training); a text tower
        that pools its last position (SigLIP) always gets ``max_length`` tokens and an all-ones mask."""
        if self.tokenizer is None:
            raise ValueError(
                "This model has no tokenizer: pass tokenizer=PATH_OR_OBJECT to CLIPModel.from_towers."
            )
        texts = text_list(texts)
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
        texts = text_list(texts)
        fn = self._compiled("text", normalize)
        out = [  # one call per batch: each batch is padded to its own token-length bucket
            embed_rows(
                fn,
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
        labels = text_list(labels)
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
