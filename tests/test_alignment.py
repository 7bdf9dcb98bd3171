"""Face-alignment geometry: similarity fits and the plausibility of 68 landmarks."""

import numpy as np
import pytest
from test_image_processing_mf2 import face_points

from mf2.alignment import apply_affine, face_to_image, implausible_landmarks, invert_affine, similarity_transform
from mf2.au_regions import MEAN_SHAPE_68


def test_similarity_transform_recovers_a_known_map():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 100, (21, 2))
    angle, scale, shift = 0.3, 1.7, np.array([5.0, -8.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = source @ (scale * rotation).T + shift
    matrix = similarity_transform(source, target)
    np.testing.assert_allclose(matrix, np.concatenate([scale * rotation, shift[:, None]], 1), atol=1e-9)
    np.testing.assert_allclose(apply_affine(invert_affine(matrix), target), source, atol=1e-9)
    with pytest.raises(ValueError, match="one point"):
        similarity_transform(np.ones((5, 2)), source[:5])


def test_face_to_image_carries_the_mean_shape_onto_the_landmarks():
    rng = np.random.default_rng(1)
    angle = 0.2
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    face = MEAN_SHAPE_68 @ (80 * rotation).T + np.array([200.0, 150.0])
    noisy = face + rng.normal(0, 0.5, face.shape)
    matrix = face_to_image(noisy)
    # The inverse of the fit onto the mean shape, not the fit the other way round (they differ for noisy points).
    np.testing.assert_allclose(matrix, invert_affine(similarity_transform(noisy, MEAN_SHAPE_68)), atol=1e-12)
    assert not np.allclose(matrix, similarity_transform(MEAN_SHAPE_68, noisy), atol=1e-6)
    np.testing.assert_allclose(apply_affine(matrix, MEAN_SHAPE_68), face, atol=1.0)
    with pytest.raises(ValueError, match="one point"):
        face_to_image(np.ones((68, 2)))


def test_implausible_landmarks_names_what_is_not_a_face():
    points = face_points()
    assert implausible_landmarks(points) is None
    assert "shape" in implausible_landmarks(points * [-1, 1])  # mirrored but not re-indexed: no similarity fits
    assert "shape" in implausible_landmarks(points[np.random.default_rng(0).permutation(68)])
    # Wrong in one place only, close enough to a face's shape overall: the order checks catch them.
    swapped_eyes = points.copy()
    swapped_eyes[36:42], swapped_eyes[42:48] = points[42:48], points[36:42]
    assert "mirrored" in implausible_landmarks(swapped_eyes)
    nose_up = points.copy()
    nose_up[30] = points[19] - [0, 10]  # the nose tip above the brows
    assert "order" in implausible_landmarks(nose_up)
    assert "one point" in implausible_landmarks(np.ones((68, 2)))
    assert "finite" in implausible_landmarks(np.where(np.arange(68)[:, None] == 3, np.nan, points))
