"""CLIP image preprocessing, identical to transformers' ``CLIPImageProcessor`` (PIL backend), and SigLIP's
(``SiglipImageProcessor``: a resize straight to the model's size, no crop).

Resize the shortest side with bicubic resampling, center-crop, rescale to [0, 1] and
normalise with the checkpoint's mean and std. Output is channels-last float32
``[batch, height, width, 3]``, the layout the vision tower takes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclasses.dataclass(frozen=True)
class ImageProcessorConfig:
    """The settings of a ``preprocessor_config.json`` that affect CLIP's eval preprocessing."""

    shortest_edge: int = 224
    crop_height: int = 224
    crop_width: int = 224
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)
    rescale_factor: float = 1 / 255
    do_resize: bool = True
    do_center_crop: bool = True
    do_normalize: bool = True
    #: Resize straight to ``crop_height`` x ``crop_width`` (no aspect kept, no crop): SigLIP's processors,
    #: whose ``size`` is ``{"height": H, "width": W}``.
    resize_to_crop: bool = False

    @classmethod
    def for_image_size(cls, image_size: int) -> ImageProcessorConfig:
        """OpenAI CLIP's preprocessing for a tower taking ``image_size`` pixels."""
        return cls(shortest_edge=image_size, crop_height=image_size, crop_width=image_size)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageProcessorConfig:
        """From the contents of a ``preprocessor_config.json``: CLIP's, SigLIP's, or SigLIP 2's NaFlex one, read as
        a resize to its fixed square size (``sqrt(max_num_patches) * patch_size``: NaFlex's own size for square
        images; other images are stretched to the square instead of keeping their aspect ratio)."""
        size, crop = d.get("size", 224), d.get("crop_size", 224)
        if "max_num_patches" in d and "patch_size" in d:  # SigLIP 2's NaFlex processor, run at a fixed size
            side = math.isqrt(int(d["max_num_patches"])) * int(d["patch_size"])
            size = {"height": side, "width": side}
        if isinstance(size, dict) and {"height", "width"} <= set(size) and "shortest_edge" not in size:
            return cls(
                shortest_edge=min(int(size["height"]), int(size["width"])),
                crop_height=int(size["height"]),
                crop_width=int(size["width"]),
                image_mean=tuple(d.get("image_mean", (0.5, 0.5, 0.5))),
                image_std=tuple(d.get("image_std", (0.5, 0.5, 0.5))),
                resample=int(d.get("resample", Image.Resampling.BICUBIC)),
                rescale_factor=float(d.get("rescale_factor", 1 / 255)),
                do_resize=bool(d.get("do_resize", True)),
                do_center_crop=False,
                do_normalize=bool(d.get("do_normalize", True)),
                resize_to_crop=True,
            )
        if isinstance(size, dict):
            if "shortest_edge" not in size:
                raise ValueError(
                    f"Only size={{'shortest_edge': N}} (CLIP) or {{'height': H, 'width': W}} (SigLIP) is "
                    f"supported; got {size}."
                )
            size = size["shortest_edge"]
        if isinstance(crop, dict):
            crop_h, crop_w = crop["height"], crop["width"]
        else:
            crop_h = crop_w = crop
        return cls(
            shortest_edge=int(size),
            crop_height=int(crop_h),
            crop_width=int(crop_w),
            image_mean=tuple(d.get("image_mean", OPENAI_CLIP_MEAN)),
            image_std=tuple(d.get("image_std", OPENAI_CLIP_STD)),
            resample=int(d.get("resample", Image.Resampling.BICUBIC)),
            rescale_factor=float(d.get("rescale_factor", 1 / 255)),
            do_resize=bool(d.get("do_resize", True)),
            do_center_crop=bool(d.get("do_center_crop", True)),
            do_normalize=bool(d.get("do_normalize", True)),
        )

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> ImageProcessorConfig | None:
        """The directory's ``preprocessor_config.json``, or None if it has none."""
        path = Path(directory) / PREPROCESSOR_CONFIG
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None

    def to_dict(self) -> dict[str, Any]:
        """A ``preprocessor_config.json`` that transformers' ``CLIPImageProcessor`` reads (``SiglipImageProcessor``
        for a resize straight to the crop size)."""
        if self.resize_to_crop:
            return {
                "image_processor_type": "SiglipImageProcessor",
                "do_resize": self.do_resize,
                "size": {"height": self.crop_height, "width": self.crop_width},
                "resample": self.resample,
                "do_rescale": True,
                "rescale_factor": self.rescale_factor,
                "do_normalize": self.do_normalize,
                "image_mean": list(self.image_mean),
                "image_std": list(self.image_std),
                "do_convert_rgb": True,
            }
        return {
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": self.do_resize,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_height, "width": self.crop_width},
            "do_rescale": True,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": True,
        }

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``preprocessor_config.json`` into ``directory``."""
        (Path(directory) / PREPROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of an image of any mode; transparency is composited on white (as transformers)."""
    if image.mode == "RGB":
        return image
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB with its EXIF orientation applied."""
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)


def _resize_shortest_edge(image: Image.Image, size: int, resample: int) -> Image.Image:
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    return image.resize((new_w, new_h), resample=resample)


def _center_crop(array: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    h, w = array.shape[:2]
    if h < crop_h or w < crop_w:  # pad with zeros, centred, as transformers does
        padded = np.zeros((max(h, crop_h), max(w, crop_w), array.shape[2]), array.dtype)
        top, left = (padded.shape[0] - h + 1) // 2, (padded.shape[1] - w + 1) // 2
        padded[top : top + h, left : left + w] = array
        array, h, w = padded, padded.shape[0], padded.shape[1]
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    return array[top : top + crop_h, left : left + crop_w]


def preprocess_image(image: Image.Image | np.ndarray, config: ImageProcessorConfig) -> np.ndarray:
    """One image (PIL, or uint8 ``[H, W, 3]``) -> normalised float32 ``[crop_h, crop_w, 3]``."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"Array images must be uint8 [H, W, 3]; got {image.dtype} {image.shape}.")
        image = Image.fromarray(image)
    image = to_rgb(image)
    if config.do_resize and config.resize_to_crop:
        image = image.resize((config.crop_width, config.crop_height), resample=config.resample)
    elif config.do_resize:
        image = _resize_shortest_edge(image, config.shortest_edge, config.resample)
    array = np.asarray(image)
    if config.do_center_crop:
        array = _center_crop(array, config.crop_height, config.crop_width)
    return normalize(array, config)


def normalize(array: np.ndarray, config: ImageProcessorConfig) -> np.ndarray:
    """uint8 ``[..., 3]`` pixels -> float32: rescaled by ``rescale_factor``, then normalised with the mean and
    std if ``do_normalize`` (CLIP's last steps; training augmentation ends with the same)."""
    array = array.astype(np.float32) * np.float32(config.rescale_factor)
    if config.do_normalize:
        array = (array - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
    return array


def preprocess_images(images: Sequence[Image.Image | np.ndarray], config: ImageProcessorConfig) -> np.ndarray:
    """A batch of images -> float32 ``[batch, crop_h, crop_w, 3]``."""
    return np.stack([preprocess_image(image, config) for image in images])
