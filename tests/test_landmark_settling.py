"""Settling landmarks (`mf2.landmark_settling`) with landmark models written out here, whose points depend on their
box as a real one's do: any start near the face settles on one box, neighbours that both give themselves back settle
on the lower, a model that never settles stops after `MAX_FITS` fits, and the average over the boxes around the face
follows it by fractions of a pixel. dlib's own case is in test_landmarks.py."""

import numpy as np
import pytest

from mf2.au_regions import MEAN_SHAPE_68
from mf2.landmark_settling import (
    BOX_CENTRE_IN_FACE,
    BOX_SIDE_IN_FACE,
    LATTICE_STEPS,
    MAX_FITS,
    LatticeBox,
    averaged_landmarks,
    face_position,
    nearest_box,
    settle,
)


def face(centre, side: float) -> np.ndarray:
    """`(68, 2)` landmarks whose `face_position` is `(centre, log side)`."""
    return (MEAN_SHAPE_68 - BOX_CENTRE_IN_FACE) * (side / BOX_SIDE_IN_FACE) + np.asarray(centre, dtype=np.float64)


def box_position(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, np.log(box[2] - box[0])])


class PulledModel:
    """A landmark model that finds the face at `position` but is pulled `pull` of the way towards the box it is given
    (dlib's shape predictor moves by 0.01-0.07 of the box's movement), its points rounded to whole pixels as dlib's."""

    def __init__(self, position, pull: float, rounded: bool = True):
        self.position, self.pull, self.rounded, self.calls = np.asarray(position, np.float64), pull, rounded, 0

    def __call__(self, box: np.ndarray) -> np.ndarray:
        self.calls += 1
        where = self.position + self.pull * (box_position(box) - self.position)
        points = face(where[:2], np.exp(where[2]))
        return np.round(points) if self.rounded else points


def test_face_position_and_the_lattice_box_nearest_it():
    position = face_position(face([250.0, 180.0], 100.0))
    np.testing.assert_allclose(position, [250.0, 180.0, np.log(100.0)], atol=1e-9)
    box, offsets = nearest_box(position)
    assert np.all(np.abs(offsets) <= 0.5)
    corners = box.box()
    assert np.all(corners == np.round(corners))
    # Within half a lattice step of where the face is (plus the half pixel of landing on whole pixels).
    step = box.side / LATTICE_STEPS
    np.testing.assert_allclose(box_position(corners)[:2], [250.0, 180.0], atol=step / 2 + 1)
    assert abs(box.side / 100.0 - 1) <= 0.5 / LATTICE_STEPS + 1e-9
    assert LatticeBox(1, 0, 0) < LatticeBox(1, 0, 1) < LatticeBox(2, -5, -5)  # side first, then centre


def test_any_start_near_the_face_settles_on_one_box():
    rng = np.random.default_rng(0)
    model = PulledModel([251.3, 178.6, np.log(97.0)], pull=0.05)
    settled = set()
    for _ in range(40):
        side = 97.0 * rng.uniform(0.9, 1.1)
        centre = np.array([251.3, 178.6]) + rng.uniform(-10, 10, 2)
        start = np.concatenate([centre - side / 2, centre + side / 2])
        points, box = settle(model, model(start), start)
        settled.add((points.tobytes(), tuple(box)))
    assert len(settled) == 1
    points, box = next(iter(settled))
    np.testing.assert_allclose(box_position(np.array(box))[:2], [251.3, 178.6], atol=97.0 / LATTICE_STEPS)


@pytest.mark.parametrize("axis", [1, 2, 0])
def test_neighbours_that_both_give_themselves_back_settle_on_the_lower(axis):
    # The face lies on the boundary between two lattice boxes along `axis`; pulled a third of the way to its box, the
    # model gives each of the two boxes back.
    lower, _ = nearest_box(np.array([250.0, 180.0, np.log(100.0)]))
    upper = LatticeBox(
        *[index + (i == axis) for i, index in enumerate((lower.side_index, lower.x_index, lower.y_index))]
    )
    if axis == 0:  # a larger side moves the centre's lattice: keep the centre where the lower box has it
        upper = nearest_box(np.array([*box_position(lower.box())[:2], (lower.side_index + 1) / LATTICE_STEPS]))[0]
    boundary = (box_position(lower.box()) + box_position(upper.box())) / 2
    model = PulledModel(boundary, pull=1 / 3, rounded=False)
    for box in (lower, upper):
        assert nearest_box(face_position(model(box.box())))[0] == box  # both give themselves back
    for start in (lower, upper):
        points, box = settle(model, model(start.box()), start.box())
        np.testing.assert_array_equal(box, lower.box())
        np.testing.assert_array_equal(points, model(lower.box()))


def test_a_model_that_never_settles_stops_after_max_fits():
    class Drifting:
        calls = 0

        def __call__(self, box: np.ndarray) -> np.ndarray:
            self.calls += 1  # the face is always two lattice steps to the right of its box
            centre = box_position(box)
            return face(centre[:2] + [2 * (box[2] - box[0]) / LATTICE_STEPS, 0.0], box[2] - box[0])

    model = Drifting()
    start = np.array([200.0, 150.0, 300.0, 250.0])
    points, box = settle(model, model(start), start)
    assert model.calls <= MAX_FITS + 1
    assert np.all(np.isfinite(points)) and box[0] > start[0]


@pytest.mark.parametrize("place", [settle, averaged_landmarks], ids=["settle", "averaged_landmarks"])
def test_landmarks_all_at_one_point_are_given_back_as_they_are(place):
    points, box = np.full((68, 2), 7.0), np.array([0.0, 0.0, 10.0, 10.0])
    model = PulledModel([5.0, 5.0, np.log(10.0)], pull=0.0)
    placed_points, placed_box = place(model, points, box)
    np.testing.assert_array_equal(placed_points, points)
    np.testing.assert_array_equal(placed_box, box)
    assert model.calls == 0


def test_a_fit_that_collapses_while_settling_is_kept_as_it_is():
    """No box to go on to from landmarks all at one point."""
    box = np.array([0.0, 0.0, 10.0, 10.0])
    collapsed, placed = settle(lambda given: np.full((68, 2), 7.0), face([5.0, 5.0], 10.0), box)
    np.testing.assert_array_equal(collapsed, np.full((68, 2), 7.0))
    assert placed.shape == (4,)


def test_averaged_landmarks_follow_a_face_moved_by_fractions_of_a_pixel():
    """Whole-pixel points (as dlib's) of a face moved 0.05 px at a time stay put, then jump; their mean over the boxes
    around the face is less than half as far from where the face is (0.11 px on average against 0.25 when written)."""
    settled_errors, averaged_errors = [], []
    for move in np.linspace(0.0, 1.0, 21):
        position = np.array([250.3 + move, 178.6, np.log(97.0)])
        model = PulledModel(position, pull=0.05)
        start = np.array([200.0, 130.0, 297.0, 227.0]) + [move, 0.0, move, 0.0]
        points, box = settle(model, model(start), start)
        averaged, middle = averaged_landmarks(model, points, box)
        truth = face(position[:2], 97.0)
        settled_errors.append(np.abs(points - truth).mean())
        averaged_errors.append(np.abs(averaged - truth).mean())
        np.testing.assert_allclose(box_position(middle)[:2], position[:2], atol=1.0)  # the middle box: the face's
    assert np.mean(averaged_errors) < 0.5 * np.mean(settled_errors), (averaged_errors, settled_errors)
    assert max(averaged_errors) < 0.15
