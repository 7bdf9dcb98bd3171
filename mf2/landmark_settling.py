"""Settling a face's landmarks: placing them again in the box they themselves give, until that box stops moving,
so that where they end up depends on the face and not on the box the search started from.

Why: a landmark model fitted in a box (dlib's shape predictor) gives slightly different points for boxes a few
pixels apart, and MF²'s outputs follow the points closely (a 0.1 px shift moves an AU probability by up to 0.06).
dlib's detector boxes jump between the scales of its image pyramid from one video frame to the next (105, 87 and
105 px wide on three consecutive frames of the test clip), and a tracked face's box comes from the previous frame's
landmarks instead; without settling, the same frame gives different results depending on where its box came from.

How: boxes are taken from a lattice (`LatticeBox`: sides in steps of 1/`LATTICE_STEPS`, centres in steps of
1/`LATTICE_STEPS` of the side). From the starting landmarks, the nearest lattice box to the box they give
(`face_position`: dlib's detector box as it sits in the face's own frame) is fitted; that repeats until the box is
one it fitted before. The box the shape predictor's points give moves by about 0.01-0.07 px per pixel its own box
moves, so this mostly ends after one or two fits, on a box that gives itself back. Two neighbouring boxes can both
do so when the landmarks' box lies on the boundary between them; `settle` then takes the lower one, checking the
neighbour below whenever the box lies within `TIE_MARGIN` of that boundary, so that starts on either side end on the
same box. On the 778 faces dlib finds in 300-W AFW, started from boxes moved and resized by up to 6%, 96.4% of the
starts give the same landmarks to the pixel (91.7% without the check of the neighbour below).

Then averaging (`averaged_landmarks`): the settled box is a lattice box, and the lattice is fixed in the image, so a
face moved by 2 px settles in a box placed differently around it, and dlib's points, whole pixels of the image it
reads, jump by a pixel here and there. The landmarks a face finally gets are the mean of those placed in five boxes
around where the settled ones put it (`AVERAGED_BOXES`), a pattern that moves with the face: on the 648 CK+ dev
photos (128 px faces) shifted by 2 px, the median per-point change falls from 0.275 to 0.181 px, and the faces
whose set of active AUs changes (mf2-base 2.2) from 23 to 16; the error against 300-W's annotation falls too (AFW
NME mean 0.0351 from 0.0362, median 0.0308 from 0.0332).

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .alignment import apply_affine, face_to_image

BOX_CENTRE_IN_FACE = np.array([0.50, 0.52])
"""Centre of dlib's detector box in the face's own frame (where the similarity fit of its 68 landmarks onto
`MEAN_SHAPE_68` puts it): the median over dlib's 778 detections in 300-W AFW was (0.501, 0.518)."""
BOX_SIDE_IN_FACE = 1.02
"""Side of dlib's detector box in the face's own frame (median over the same detections: 1.020; the spread between
detections, 0.09, is the box jitter settling removes)."""
LATTICE_STEPS = 25
"""Lattice steps per box side: sides grow by 1/25 (4 %) and centres move by 1/25 of the side (4 px for a 100 px face)
from one lattice box to the next. Finer steps leave more pairs of neighbouring boxes that both give themselves back;
coarser ones put the box further from where the landmarks say the face is."""
TIE_MARGIN = 0.25
"""Fraction of a lattice step from the lower boundary within which `settle` checks whether the neighbour below also
gives itself back. Of the 101 such pairs among the faces of AFW and of the test clip's frames (968 faces), the upper
box lay within 0.23 of the boundary along x and y, and within 0.41 along the side in 95% of the pairs (up to 0.76);
checking the side's neighbour always gave the same landmarks from 97.5% instead of 96.4% of the AFW starts, for 0.8
more fits per face."""
MAX_FITS = 8
"""Fits after which `settle` stops and keeps the last one (a face the model cannot place, at the edge of the image)."""
AVERAGED_BOXES = ((0.0, 0.0), (-2.0, 0.0), (2.0, 0.0), (0.0, -2.0), (0.0, 2.0))
"""Where the averaged boxes' centres lie from the face's, `(x, y)` in lattice steps of its side (each box has the face's
own side): the face's box and four 2 steps out along x and y. Measured on the CK+ dev photos shifted by 2 px (faces of
648 whose set of active AUs changes with mf2-base 2.2; median per-point change) and on 300-W AFW (NME mean / median,
faces above 0.10): these 5 boxes 16, 0.181 px, 0.0351 / 0.0308, 2; 3 x 3 boxes 2 steps apart 18, 0.161 px, 0.0361 /
0.0314, 2; the middle and the 4 diagonal boxes 19, 0.182 px, 0.0377 / 0.0329, 3; the 4 diagonal boxes alone 17,
0.191 px, 0.0393 / 0.0336, 5 (boxes that far out along both axes lose some hard faces); 25-27 boxes 19-21, 0.140 px;
no averaging 23, 0.275 px, 0.0362 / 0.0332, 2. Each box costs a shape prediction (1-1.4 ms)."""


@dataclass(frozen=True, order=True)
class LatticeBox:
    """One box of the lattice: side `exp(side_index / LATTICE_STEPS)` px, centre `(x_index, y_index)` times
    `side / LATTICE_STEPS`. Ordered by side, then centre: `settle` takes the lowest of neighbours that tie."""

    side_index: int
    x_index: int
    y_index: int

    @property
    def side(self) -> float:
        return float(np.exp(self.side_index / LATTICE_STEPS))

    def box(self) -> np.ndarray:
        """`(4,)` `xyxy` box on whole pixels (box edges are pixel boundaries)."""
        step = self.side / LATTICE_STEPS
        centre = np.array([self.x_index, self.y_index]) * step
        return np.round(np.concatenate([centre - self.side / 2, centre + self.side / 2]))


def face_position(points: np.ndarray) -> np.ndarray:
    """`(3,)` `(centre x, centre y, log side)` of the box that `(68, 2)` landmarks `points` give: dlib's detector box
    where it sits in the face's own frame (`BOX_CENTRE_IN_FACE`, `BOX_SIDE_IN_FACE`), carried into the image.

    Raises:
        ValueError: the landmarks are all at one point (they give no box).
    """
    to_image = face_to_image(points)
    scale = np.sqrt(abs(np.linalg.det(to_image[:, :2])))
    centre = apply_affine(to_image, BOX_CENTRE_IN_FACE[None])[0]
    return np.array([centre[0], centre[1], np.log(BOX_SIDE_IN_FACE * scale)])


def nearest_box(position: np.ndarray) -> tuple[LatticeBox, np.ndarray]:
    """The lattice box nearest `position` (`face_position`), and where `position` lies from it in lattice steps
    `(side, x, y)`, each in `[-0.5, 0.5]`."""
    side_steps = position[2] * LATTICE_STEPS
    side_index = int(np.round(side_steps))
    centre_steps = position[:2] / (np.exp(side_index / LATTICE_STEPS) / LATTICE_STEPS)
    x_index, y_index = (int(value) for value in np.round(centre_steps))
    offsets = np.array([side_steps - side_index, centre_steps[0] - x_index, centre_steps[1] - y_index])
    return LatticeBox(side_index, x_index, y_index), offsets


def settle(
    fit: Callable[[np.ndarray], np.ndarray], points: np.ndarray, box: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks placed in the lattice box they give back (see the module docstring), starting from `points`.

    Args:
        fit: a `(4,)` `xyxy` box → the `(68, 2)` landmarks the landmark model places in it.
        points: `(68, 2)` landmarks to start from, those `fit` placed in `box` (a detector's, a tracked face's or a
            caller's box).

    Returns:
        The settled `(68, 2)` landmarks and the `(4,)` `xyxy` box they were placed in; `points` and `box` themselves
        when `points` are all at one point (they give no box; the image processor's plausibility test drops them).
    """
    try:
        start = nearest_box(face_position(points))[0]
    except ValueError:
        return np.asarray(points, dtype=np.float64), np.asarray(box, dtype=np.float64)
    settling = _Settling(fit)
    settled = settling.lowest_tie(settling.fixed_box(start))
    return settling.place(settled)[0], settled.box()


def averaged_landmarks(
    fit: Callable[[np.ndarray], np.ndarray], points: np.ndarray, box: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The mean of the landmarks `fit` places in the boxes of `AVERAGED_BOXES` around the face that `points`
    (landmarks `settle` placed in `box`) give, and the middle one of those boxes (see the module docstring).

    Returns:
        `(68, 2)` landmarks and the `(4,)` `xyxy` box; `points` and `box` themselves when `points` are all at one
        point (they give no box; the image processor's plausibility test drops them).
    """
    try:
        position = face_position(points)
    except ValueError:
        return np.asarray(points, dtype=np.float64), np.asarray(box, dtype=np.float64)
    side = float(np.exp(position[2]))

    def box_at(offset_x: float, offset_y: float) -> np.ndarray:
        centre = position[:2] + np.array([offset_x, offset_y]) * side / LATTICE_STEPS
        return np.round(np.concatenate([centre - side / 2, centre + side / 2]))

    fits = [fit(box_at(offset_x, offset_y)) for offset_x, offset_y in AVERAGED_BOXES]
    return np.mean(np.asarray(fits, dtype=np.float64), axis=0), box_at(0.0, 0.0)


class _Settling:
    """The fits of one face's settling, each lattice box fitted once."""

    def __init__(self, fit: Callable[[np.ndarray], np.ndarray]):
        self.fit = fit
        self.fitted: dict[LatticeBox, tuple[np.ndarray, LatticeBox, np.ndarray, np.ndarray | None]] = {}

    def place(self, box: LatticeBox) -> tuple[np.ndarray, LatticeBox, np.ndarray, np.ndarray | None]:
        """`box`'s landmarks, the lattice box they give with their offsets from it (`nearest_box`), and their
        `face_position` (`None` for landmarks all at one point, which give no box: kept as they are, the box as its
        own, for the processor to drop)."""
        if box not in self.fitted:
            placed = np.asarray(self.fit(box.box()), dtype=np.float64)
            try:
                position = face_position(placed)
            except ValueError:
                self.fitted[box] = (placed, box, np.zeros(3), None)
            else:
                self.fitted[box] = (placed, *nearest_box(position), position)
        return self.fitted[box]

    def fixed_box(self, box: LatticeBox) -> LatticeBox:
        """From `box`, the lattice box whose landmarks give it back (or the lowest of a cycle of boxes, or the last
        box fitted when `MAX_FITS` runs out)."""
        visited: list[LatticeBox] = []
        while box not in visited:
            if len(self.fitted) >= MAX_FITS and box not in self.fitted:
                return visited[-1]
            visited.append(box)
            box = self.place(box)[1]
        return min(visited[visited.index(box) :])

    def lowest_tie(self, box: LatticeBox) -> LatticeBox:
        """`box`, or the neighbour below it along an axis where it lies within `TIE_MARGIN` of the boundary, when that
        neighbour gives itself back too (and so on down)."""
        moved = True
        while moved and len(self.fitted) < MAX_FITS:
            moved = False
            _, _, offsets, position = self.place(box)
            for axis in np.flatnonzero(offsets < TIE_MARGIN - 0.5):
                below = _neighbour_below(box, position, int(axis))
                if self.place(below)[1] == below:
                    box, moved = below, True
                    break
        return box


def _neighbour_below(box: LatticeBox, position: np.ndarray, axis: int) -> LatticeBox:
    """The lattice box one step below `box` along `axis` (0 side, 1 x, 2 y); `position` is where the landmarks
    placed in `box` put the face (a smaller side changes the centre's step, so the centre is found again)."""
    if axis == 0:
        smaller = np.array([position[0], position[1], (box.side_index - 1) / LATTICE_STEPS])
        return nearest_box(smaller)[0]
    indices = [box.x_index, box.y_index]
    indices[axis - 1] -= 1
    return LatticeBox(box.side_index, *indices)


__all__ = [
    "AVERAGED_BOXES",
    "BOX_CENTRE_IN_FACE",
    "BOX_SIDE_IN_FACE",
    "LATTICE_STEPS",
    "MAX_FITS",
    "TIE_MARGIN",
    "LatticeBox",
    "averaged_landmarks",
    "face_position",
    "nearest_box",
    "settle",
]
