"""The `dlib` landmark back-end: dlib's HOG face detector and 68-point shape predictor, offline on CPU. Its face
detector also gives the FAN back-end its boxes.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import os
import queue
from pathlib import Path

import numpy as np

from .landmark_types import (
    FaceLandmarks,
    LandmarkBackend,
    check_image,
    largest_first,
    packaged_file,
    require_file,
    require_module,
)

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
_MISSING_PREDICTOR = (
    "The 'dlib' landmark back-end needs the 68-point model from `face-recognition-models`, which is not installed: "
    f"`pip install 'mf2[dlib]'` (or pass `predictor_path=` to a `{PREDICTOR_FILE}`)."
)
DEFAULT_UPSAMPLE = 1
"""Times dlib's HOG detector upsamples the image (each finds faces half as large, at 4x the cost)."""


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

    def _run(self, gray: np.ndarray, upsample: int) -> list[tuple[np.ndarray, float, object]]:
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
            (np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], dtype=np.float64), float(s), r)
            for r, s in zip(rects, scores)
        ]

    def __call__(self, gray: np.ndarray) -> list[tuple[np.ndarray, float, object]]:
        # One pass at one setting, whatever the caller keeps: a quick pass that stopped at its first hit found
        # the badge on the astronaut's suit (larger box, score ~0) and not her face, which only the upsampled pass
        # boxes consistently. Upsampling once finds faces down to ~40 px.
        return self._run(gray, DEFAULT_UPSAMPLE if self.upsample is None else int(self.upsample))


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
    """

    name = "dlib"

    def __init__(self, predictor_path: str | os.PathLike | None = None, upsample: int | None = None, threshold=0.0):
        dlib = require_module("dlib", "dlib", "dlib")
        path = Path(predictor_path) if predictor_path is not None else dlib_predictor_path()
        self.predictor_path = require_file(path, f"dlib's 68-point shape predictor is missing: {path}. Install it "
                                           "with `pip install 'mf2[dlib]'` (face-recognition-models) or pass "
                                           "`predictor_path=`.")  # fmt: skip
        self.detector = DlibFaceDetector(upsample=upsample, threshold=threshold)
        self.predictor = dlib.shape_predictor(str(path))  # read-only after loading: shared across threads

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        gray = to_gray(check_image(image))
        faces = []
        for box, score, rect in self.detector(gray):
            shape = self.predictor(gray, rect)
            points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            faces.append(FaceLandmarks(box=box, points=points, score=score))
        return largest_first(faces)

    def __repr__(self) -> str:
        return f"DlibBackend(predictor_path='{self.predictor_path}', upsample={self.detector.upsample})"


__all__ = ["DEFAULT_UPSAMPLE", "DlibBackend", "DlibFaceDetector", "dlib_predictor_path", "to_gray"]
