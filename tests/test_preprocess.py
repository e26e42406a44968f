"""Eval preprocessing equals transformers' CLIPImageProcessor (PIL backend) on odd sizes and modes."""

import numpy as np
import pytest
from PIL import Image
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from clip_jax.data import ImageProcessorConfig, load_image, preprocess_images


def photo(height, width, seed=0):
    """A smooth synthetic photo (gradients plus noise), so resampling differences would show."""
    rs = np.random.RandomState(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    return np.clip(base + rs.randn(height, width, 3) * 20, 0, 255).astype(np.uint8)


def images():
    rgba = np.dstack(
        [photo(101, 640, 2), np.random.RandomState(3).randint(0, 256, (101, 640), dtype=np.uint8)]
    )
    return {
        "landscape": Image.fromarray(photo(300, 451)),
        "portrait": Image.fromarray(photo(640, 101, 1)),
        "almost square": Image.fromarray(photo(225, 224)),
        "smaller than crop": Image.fromarray(photo(120, 90)),
        "grayscale": Image.fromarray(photo(300, 451)).convert("L"),
        "palette": Image.fromarray(photo(225, 224)).convert("P"),
        "rgba": Image.fromarray(rgba, "RGBA"),
        "cmyk": Image.fromarray(photo(200, 260)).convert("CMYK"),
    }


@pytest.mark.parametrize("size", [224, 336])
@pytest.mark.parametrize("name", sorted(images()))
def test_matches_clip_image_processor(name, size):
    reference = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    config = ImageProcessorConfig.from_dict(reference.to_dict())
    image = images()[name]
    expected = reference(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    ours = preprocess_images([image], config)[0]
    assert ours.shape == (size, size, 3)
    assert np.abs(ours - expected).max() <= 1e-5


def test_uint8_arrays_are_preprocessed_like_pil():
    array = photo(300, 451)
    config = ImageProcessorConfig()
    np.testing.assert_array_equal(
        preprocess_images([array], config), preprocess_images([Image.fromarray(array)], config)
    )
    with pytest.raises(ValueError, match="uint8"):
        preprocess_images([array.astype(np.float32)], config)


def test_config_round_trips_through_preprocessor_config_json(tmp_path):
    config = ImageProcessorConfig.for_image_size(336)
    config.save_pretrained(tmp_path)
    assert ImageProcessorConfig.from_pretrained(tmp_path) == config
    from transformers import AutoImageProcessor

    loaded = AutoImageProcessor.from_pretrained(str(tmp_path))
    assert loaded.crop_size == {"height": 336, "width": 336}


def test_exif_orientation_is_applied(tmp_path):
    array = photo(40, 80)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.size == (40, 80) and loaded.mode == "RGB"
