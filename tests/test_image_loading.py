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


def test_a_large_photo_reads_in_silence_and_one_past_the_limit_says_the_fix(tmp_path, monkeypatch):
    """Between PIL's pixel limit and twice it (90 to 179 MP by default: a large camera's photo) PIL warns of a
    decompression bomb on the console; beyond it the error says what to do."""
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the default limit, scaled down: 1,600 px warn, 2,500 fail
    for side in (40, 50):
        Image.fromarray(np.zeros((side, side, 3), np.uint8)).save(tmp_path / f"{side}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_loading.load_image(str(tmp_path / "40.png")).size == (40, 40)
    with pytest.raises(ValueError, match=r"exceeds limit .* Downscale it, or, trusting the file, raise PIL"):
        image_loading.load_image(str(tmp_path / "50.png"))


def _served(folder):
    """A loopback HTTP server of `folder` (a context manager giving its base URL)."""
    import contextlib
    import functools
    import http.server
    import threading

    @contextlib.contextmanager
    def serving():
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None
        with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            try:
                yield f"http://127.0.0.1:{server.server_address[1]}"
            finally:
                server.shutdown()

    return serving()


def _odd_images(folder):
    """Images whose reading needs care: transparency by alpha and by colour key, 16 bits, a sideways phone photo."""
    face = Image.fromarray(astronaut()).crop((150, 60, 300, 240))
    rgba = face.convert("RGBA")
    rgba.putalpha(Image.new("L", face.size, 0))  # wholly transparent
    rgba.save(folder / "clear.png")
    keyed = Image.new("RGB", (8, 8), (0, 0, 0))
    keyed.save(folder / "keyed.png", transparency=(0, 0, 0))  # tRNS: black is transparent
    deep = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    Image.fromarray(deep).save(folder / "deep.png")
    exif = face.getexif()
    exif[0x0112] = 8  # orientation: turn 90 degrees to show
    face.save(folder / "sideways.jpg", exif=exif, quality=95)
    return ["clear.png", "keyed.png", "deep.png", "sideways.jpg"]


def test_a_url_a_path_and_an_opened_image_read_alike(tmp_path):
    """The same file as a path, a URL and a PIL image (EXIF orientation, transparency, 16 bits): the same pixels."""
    names = _odd_images(tmp_path)
    with _served(tmp_path) as base:
        for name in names:
            from_path = np.asarray(image_loading.load_image(tmp_path / name))
            from_url = np.asarray(image_loading.load_image(f"{base}/{name}"))
            with Image.open(tmp_path / name) as opened:
                from_pil = np.asarray(image_loading.load_image(opened))
            assert from_path.shape == from_url.shape == from_pil.shape, name
            assert np.array_equal(from_path, from_url) and np.array_equal(from_path, from_pil), name
    assert (np.asarray(image_loading.load_image(tmp_path / "clear.png")) == 255).all()  # transparent: white
    assert (np.asarray(image_loading.load_image(tmp_path / "keyed.png")) == 255).all()
    assert image_loading.load_image(tmp_path / "sideways.jpg").size == (180, 150)  # upright: taller than wide
    with pytest.raises(image_loading.ImageInputError, match="cannot download it"):
        image_loading.load_image("http://127.0.0.1:9/face.png")  # a closed port


def test_16_bit_values_in_any_integer_array_are_scaled_as_16_bits():
    deep = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    expected = np.asarray(image_loading.load_image(deep))
    for dtype in (np.int32, np.int64, np.uint32):
        assert np.array_equal(np.asarray(image_loading.load_image(deep.astype(dtype))), expected), dtype
    assert np.asarray(image_loading.load_image(np.full((4, 4), 200, np.int32))).max() == 200  # 8-bit values stay


def test_floats_in_0_1_that_overshoot_after_resizing_read_as_0_1():
    """A resized [0, 1] image runs a little past 1 and below 0 (bicubic overshoot): it is still [0, 1], clipped, and
    not read as 0-255 (which made it black); a 0-255 float image stays 0-255."""
    unit = astronaut().astype(np.float32) / 255
    expected = np.asarray(image_loading.load_image(unit))
    overshot = unit.copy()
    overshot[0, 0], overshot[1, 1] = 1.06, -0.04
    read = np.asarray(image_loading.load_image(overshot))
    assert read.mean() > 50 and (read[0, 0] == 255).all() and (read[1, 1] == 0).all()
    assert np.array_equal(read[2:], expected[2:])
    grey = Image.fromarray(overshot[..., 0], mode="F")  # PIL's float images follow the same rule
    assert np.asarray(image_loading.load_image(grey)).mean() > 50
    assert np.array_equal(np.asarray(image_loading.load_image(unit * 255)), np.asarray(Image.fromarray(astronaut())))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_value_that_is_not_finite_is_an_input_error_not_a_dark_image(value):
    """One NaN or infinite pixel made a [0, 1] image read as 0-255 (nearly black: "no face", or a made-up answer under
    no_face="fallback"); it is an `ImageInputError` naming it, for arrays, tensors and PIL float images alike."""
    unit = astronaut().astype(np.float32) / 255
    unit[5, 5, 0] = value
    with pytest.raises(image_loading.ImageInputError, match="NaN or infinite"):
        image_loading.load_image(unit, index=3)
    with pytest.raises(image_loading.ImageInputError, match="NaN or infinite"):
        image_loading.load_image(Image.fromarray(unit[..., 0], mode="F"))
