"""What :class:`clip_jax.CLIPModel` accepts as images and texts, turned into preprocessed pixel batches and
lists of strings, with an error naming what is wrong for anything else."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from clip_jax.data.preprocess import ImageProcessorConfig, preprocess_images

#: What ``encode_image`` accepts: one PIL image, a sequence or iterator of PIL images (or uint8
#: ``[H, W, 3]`` arrays), a uint8 ``[N, H, W, 3]`` array, preprocessed float pixels ``[N, S, S, 3]`` or
#: ``[N, 3, S, S]`` (numpy, torch or jax), or a mapping with ``pixel_values`` (transformers' processor output).
Images = Any
#: What ``encode_text`` accepts: one string or a sequence / iterator of strings.
Texts = str | Iterable[str]


def to_numpy(value: Any) -> np.ndarray | None:
    """A numpy view of a numpy, jax or torch array; None for anything else."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, jax.Array):
        return np.asarray(value)
    if type(value).__module__.split(".")[0] == "torch" and hasattr(value, "detach"):
        tensor = value.detach().cpu()
        return (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return None


def text_list(texts: Texts) -> list[str]:
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


def finite_pixels(pixels: Any) -> Any:
    """``pixels``, unless they hold NaN or infinity (which would give NaN embeddings without a word)."""
    array = np.asarray(pixels)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array.reshape(len(array), -1))).any(axis=1).sum())
        raise ValueError(
            f"{bad} of {len(array)} preprocessed images in a batch hold NaN or infinite pixel values — fix "
            "their preprocessing (or pass the images themselves: PIL images or uint8 arrays)"
        )
    return pixels


def pixel_batches(
    images: Images, image_processor: ImageProcessorConfig, size: int, batch_size: int = 64
) -> Iterator[np.ndarray]:
    """``images`` (any form :meth:`clip_jax.CLIPModel.encode_image` takes) as float32 ``[n, size, size, 3]``
    batches of at most ``batch_size``, preprocessed by ``image_processor`` where they are raw; an iterator
    of images is read one batch at a time."""
    if isinstance(images, Mapping):
        if "pixel_values" not in images:
            raise TypeError(
                f"A mapping of images needs a 'pixel_values' entry (as transformers' processors "
                f"return); got keys {sorted(images)[:5]}."
            )
        images = images["pixel_values"]
    if isinstance(images, Image.Image):
        images = [images]
    array = to_numpy(images)
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
                yield preprocess_images(list(array[start : start + batch_size]), image_processor)
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
            raw = item if isinstance(item, Image.Image) else to_numpy(item)
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
        yield preprocess_images(items, image_processor)
        seen += len(chunk)
