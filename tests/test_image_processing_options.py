"""`MF2ImageProcessor`'s standard transformers options: `do_convert_rgb`, `input_data_format`, an explicit `None`, and
the options class named as transformers names it (transformers' common tests run in tests/models/mf2 as well)."""

import numpy as np
import pytest
from PIL import Image

from mf2 import MF2ImageProcessor
from mf2.image_processing_mf2 import MF2ImageProcessorKwargs, MF2ImagesKwargs


def template(**options) -> MF2ImageProcessor:
    """A processor that takes each image as an aligned face crop (no face search), 16-px crops, no normalisation."""
    return MF2ImageProcessor(landmark_backend="template", size=16, num_workers=1, **options)


def test_do_convert_rgb_false_keeps_grey_and_rgba_channels():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (24, 24, 4), dtype=np.uint8)
    grey = rgba[..., 0]
    converted = template(do_normalize=False)(rgba, return_tensors="np")["pixel_values"]
    assert converted.shape == (1, 3, 16, 16)
    kept = template(do_normalize=False, do_convert_rgb=False)
    pixels = kept(rgba, return_tensors="np")["pixel_values"]
    assert pixels.shape == (1, 4, 16, 16)
    # Colour and alpha are stretched alike: the kept RGB is the RGB input's crop, the alpha channel the alpha's.
    np.testing.assert_allclose(
        pixels[:, :3], template(do_normalize=False)(rgba[..., :3], return_tensors="np")["pixel_values"]
    )
    alpha = template(do_normalize=False)(rgba[..., 3], return_tensors="np")["pixel_values"][:, :1]
    np.testing.assert_allclose(pixels[:, 3:], alpha)
    assert kept(grey, return_tensors="np")["pixel_values"].shape == (1, 1, 16, 16)
    grey_normalised = template(do_convert_rgb=False, image_mean=[0.5], image_std=[0.5])(grey, return_tensors="np")
    np.testing.assert_allclose(
        grey_normalised["pixel_values"], kept(grey, return_tensors="np")["pixel_values"] * 2 - 1, atol=1e-6
    )
    assert kept(Image.fromarray(rgba), return_tensors="np")["pixel_values"].shape == (1, 4, 16, 16)
    normalised = template(do_convert_rgb=False, image_mean=[0.5] * 4, image_std=[0.25] * 4)(rgba, return_tensors="np")
    np.testing.assert_allclose(normalised["pixel_values"], (pixels - 0.5) / 0.25, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one per channel"):
        template(do_convert_rgb=False)(rgba)  # ImageNet's 3 values for 4 channels
    with pytest.raises(ValueError, match="one channel count"):
        kept([rgba, grey])


def test_input_data_format_reads_channels_first_arrays():
    image = np.random.default_rng(1).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    expected = template()(image, return_tensors="np")["pixel_values"]
    first = template()(np.moveaxis(image, -1, 0), input_data_format="channels_first", return_tensors="np")
    np.testing.assert_array_equal(first["pixel_values"], expected)
    last = template(input_data_format="channels_last")(image, return_tensors="np")
    np.testing.assert_array_equal(last["pixel_values"], expected)
    with pytest.raises(ValueError, match="input_data_format"):
        template(input_data_format="channels_middle")


def test_explicit_none_is_kept_and_means_off(tmp_path):
    processor = template(do_normalize=None)
    assert processor.do_normalize is None and processor.to_dict()["do_normalize"] is None
    processor.save_pretrained(tmp_path)
    reloaded = MF2ImageProcessor.from_pretrained(tmp_path)
    assert reloaded.do_normalize is None
    pixels = reloaded(np.full((20, 20, 3), 255, np.uint8), return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(pixels, 1.0)  # not normalised
    assert MF2ImageProcessor(size=None).size == 224  # options without an "off" value: None is the default


def test_options_class_has_the_transformers_name():
    assert MF2ImageProcessor.valid_kwargs is MF2ImageProcessorKwargs is MF2ImagesKwargs
    assert {"do_convert_rgb", "input_data_format"} <= set(MF2ImageProcessorKwargs.__annotations__)


@pytest.mark.parametrize(
    "option", [{"do_rescale": False}, {"crop_size": {"height": 50, "width": 50}}, {"landmark_backnd": "template"}]
)
def test_an_option_the_processor_does_not_apply_is_refused_at_construction_as_in_a_call(option, tmp_path):
    """`ImagesKwargs` declares options MF²'s processor does not apply: accepted, they were saved and then ignored (and
    a misspelt option passed in silence)."""
    from mf2 import MF2ImageProcessor

    with pytest.raises(TypeError, match="unknown option"):
        MF2ImageProcessor(**option)
    MF2ImageProcessor(landmark_backend="template").save_pretrained(tmp_path)
    if "landmark_backnd" not in option:  # from_pretrained passes on the declared names only, as transformers does
        with pytest.raises(TypeError, match="unknown option"):
            MF2ImageProcessor.from_pretrained(tmp_path, **option)
    assert MF2ImageProcessor.from_pretrained(tmp_path).landmark_backend == "template"
