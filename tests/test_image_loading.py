"""Reading inputs: unreadable, corrupt and odd inputs are named by position and path; animated images warn."""

import io

import numpy as np
import pytest
from face_images import astronaut
from PIL import Image

from mf2 import image_loading
from mf2.image_processing_mf2 import MF2ImageProcessor


def test_bad_inputs_raise_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    buffer = io.BytesIO()
    Image.fromarray(astronaut()).save(buffer, format="PNG")
    corrupt.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    text = tmp_path / "notes.txt"
    text.write_text("not an image\n")
    template = MF2ImageProcessor(landmark_backend="template")  # no detector needed to read inputs
    cases = [
        ([astronaut(), corrupt], r"image 1 \('.*corrupt.png'\).*corrupt or truncated"),
        (text, r"image 0 \('.*notes.txt'\).*not an image"),
        (tmp_path / "missing.jpg", r"missing.jpg'\).*no such file"),
        (np.zeros((0, 0, 3), np.uint8), "image 0: the array is empty"),
        (np.zeros((10, 10, 5), np.uint8), r"expected an \(H, W\)"),
        ([astronaut(), {"not": "an image"}], "image 1: unsupported input type dict"),
        ([], "no images"),
    ]
    for images, message in cases:
        with pytest.raises(ValueError, match=message):
            template(images)


def test_a_folder_is_named_as_a_folder_and_an_animated_image_warns(tmp_path):
    template = MF2ImageProcessor(landmark_backend="template")
    with pytest.raises(ValueError, match=r"image 0 \('.*'\): it is a folder, not an image file"):
        template(str(tmp_path))
    frames = [Image.fromarray(np.full((40, 40, 3), value, np.uint8)) for value in (0, 120, 240)]
    frames[0].save(tmp_path / "moving.gif", save_all=True, append_images=frames[1:], duration=100)
    with pytest.warns(image_loading.AnimatedImageWarning, match="animated image of 3 frames; only its first"):
        image = image_loading.load_image(str(tmp_path / "moving.gif"))
    assert image.info["n_frames"] == 3 and np.asarray(image).max() == 0  # the first frame
