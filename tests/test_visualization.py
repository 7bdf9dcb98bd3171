"""Drawing: one face on its photo (`visualize`), and the annotated sheet of `mf2 analyze --annotate`."""

import numpy as np
import pytest
from face_images import astronaut, no_face
from PIL import Image
from test_image_processing_mf2 import astronaut_features, needs_dlib, processor
from test_pipeline_mf2 import save_tiny_checkpoint

from mf2.visualization import annotate, visualize


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint"))


@needs_dlib
def test_visualize_draws_on_the_original_frame():
    features = astronaut_features()
    drawing = visualize(astronaut(), features)
    assert drawing.size == (512, 512) and drawing.mode == "RGB"
    changed = np.abs(np.asarray(drawing, np.int16) - astronaut()).sum(-1) > 0
    ys, xs = np.nonzero(changed)
    x1, y1, x2, y2 = features["face_boxes"][0]
    assert changed.sum() > 500
    # Every drawn pixel is on or around the face (labels may stick out a little).
    assert xs.min() > x1 - 40 and xs.max() < x2 + 40 and ys.min() > y1 - 60 and ys.max() < y2 + 40
    # A list of inputs picks the face's own image.
    both = processor()([no_face(), astronaut()], no_face="skip", return_tensors="pt")
    again = processor().visualize([no_face(), astronaut()], both, index=0)
    assert np.array_equal(np.asarray(again), np.asarray(drawing))


def test_annotation_panel_scales_with_a_large_image(checkpoint):
    from transformers import pipeline

    pipe = pipeline("facial-state", model=str(checkpoint), device="cpu")
    big = Image.fromarray(astronaut()).resize((2048, 2048))
    faces = pipe(big, return_features=True)
    sheet = annotate(big, faces, pipe.image_processor)
    assert sheet.width - big.width > big.height // 2  # the panel grows with the image (it was 448 px at most)
