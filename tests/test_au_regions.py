import numpy as np
import pytest

from mf2 import AU_NAMES
from mf2.au_regions import AU_REGION_RECIPES, au_boxes_from_landmarks, canonical_landmarks, default_au_boxes


def _inside(point, box, tolerance=1e-9):
    return box[0] - tolerance <= point[0] <= box[2] + tolerance and box[1] - tolerance <= point[1] <= box[3] + tolerance


def test_canonical_face_is_centred_and_symmetric():
    points = canonical_landmarks()
    assert points.shape == (68, 2) and points.min() > 0.05 and points.max() < 0.95
    # iBUG mirror pairs: outer eye corners 36/45, mouth corners 48/54 mirror about x = 0.5 at equal height.
    for left, right in ((36, 45), (48, 54), (0, 16)):
        assert points[left, 0] + points[right, 0] == pytest.approx(1.0, abs=1e-3)
        assert points[left, 1] == pytest.approx(points[right, 1], abs=1e-3)


def test_boxes_contain_their_landmarks_and_stay_on_the_face():
    points = canonical_landmarks()
    boxes = au_boxes_from_landmarks(points, AU_NAMES)
    assert boxes.shape == (12, 2, 4)
    face = np.concatenate([points.min(0), points.max(0)])
    for index, name in enumerate(AU_NAMES):
        left, right, _ = AU_REGION_RECIPES[name]
        assert _inside(points[left], boxes[index, 0]) and _inside(points[right], boxes[index, 1])
        centre = (boxes[index, :, :2] + boxes[index, :, 2:]) / 2
        for c in centre:  # region centres lie within the face's extent (brows up to chin)
            assert face[0] <= c[0] <= face[2] and face[1] - 0.1 <= c[1] <= face[3]
    assert np.all(default_au_boxes(AU_NAMES) >= 0) and np.all(default_au_boxes(AU_NAMES) <= 1)


def test_brow_raisers_sit_above_brows_and_cheek_below_eye():
    points = canonical_landmarks()
    boxes = au_boxes_from_landmarks(points, ["AU1", "AU6"])
    assert boxes[0, 0, 1] < points[21, 1] - 0.05  # AU1 box reaches above the inner brow
    assert boxes[1, 0, 3] > points[41, 1] + 0.1  # AU6 box reaches the cheek below the lower lid


def test_boxes_follow_rotation_translation_and_scale():
    points = canonical_landmarks() * 200
    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ rotation.T * 1.5 + np.array([40.0, -10.0])
    centres = lambda b: (b[..., :2] + b[..., 2:]) / 2  # noqa: E731
    expected = centres(au_boxes_from_landmarks(points, AU_NAMES)) @ rotation.T * 1.5 + np.array([40.0, -10.0])
    assert np.allclose(centres(au_boxes_from_landmarks(moved, AU_NAMES)), expected, atol=1e-6)


def test_bad_inputs():
    with pytest.raises(ValueError, match="68, 2"):
        au_boxes_from_landmarks(np.zeros((5, 2)), AU_NAMES)
    with pytest.raises(ValueError, match="No landmark recipe"):
        au_boxes_from_landmarks(canonical_landmarks(), ["AU99"])
