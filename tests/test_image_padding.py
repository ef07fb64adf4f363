"""LLaVA's image preprocessing against LLaVA's own expand2square output (tests/reference/fixtures, made by
the reference function itself) and the transformers CLIPImageProcessor applied to it."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmscale.model import vision

FIXTURES = Path(__file__).parent / "reference" / "fixtures"
IMAGES = ["wide_300x180", "tall_180x300", "tall_odd_180x227"]


def clip_l_336_processor():
    from transformers import CLIPImageProcessor

    # openai/clip-vit-large-patch14-336's preprocessor_config.json (no hub here)
    return CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


def test_the_background_is_llavas_truncated_mean():
    assert vision.pad_colour(clip_l_336_processor().image_mean) == (122, 116, 104)
    assert vision.pad_colour(vision.CLIP_MEAN) == (122, 116, 104)


@pytest.mark.parametrize("name", IMAGES)
def test_expand2square_is_llavas_pixel_for_pixel(name):
    img = Image.open(FIXTURES / f"image_{name}.png").convert("RGB")
    expected = np.asarray(Image.open(FIXTURES / f"image_{name}_expand2square.png").convert("RGB"))
    assert np.array_equal(np.asarray(vision.expand2square(img, (122, 116, 104))), expected)


@pytest.mark.parametrize("name", IMAGES)
def test_pad_then_the_processor_is_llavas_pipeline_and_square_is_the_processor_alone(name):
    processor = clip_l_336_processor()
    img = Image.open(FIXTURES / f"image_{name}.png").convert("RGB")
    reference = Image.open(FIXTURES / f"image_{name}_expand2square.png").convert("RGB")

    def pixels(images):
        return processor(images=images, return_tensors="np")["pixel_values"]

    padded = pixels(vision.prepare([img], "pad", processor.image_mean))
    np.testing.assert_allclose(padded, pixels([reference]), rtol=0, atol=1e-6)
    square = pixels(vision.prepare([img], "square", processor.image_mean))
    np.testing.assert_array_equal(square, pixels([img]))
    assert np.abs(square - padded).max() > 0.1  # cropping and padding differ on a non-square image


def test_an_unknown_aspect_ratio_names_the_key():
    with pytest.raises(ValueError, match="image_aspect_ratio"):
        vision.prepare([], "crop", vision.CLIP_MEAN)
