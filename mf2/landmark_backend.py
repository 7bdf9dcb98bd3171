"""The interface every landmark back-end implements (`LandmarkBackend.detect` → `FaceLandmarks`), its errors, and
what the back-ends share (input checks, optional imports, boxes, tensors as arrays).

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

NUM_LANDMARKS = 68


class MissingBackendError(ImportError):
    """An optional dependency of a landmark back-end is not installed."""


class MissingModelFileError(FileNotFoundError):
    """A model file a landmark back-end needs is neither on disk nor downloadable."""


@dataclass
class FaceLandmarks:
    """One detected face.

    Attributes:
        box: `(4,)` face box `x1, y1, x2, y2` in pixels of the image given to `detect`.
        points: `(68, 2)` iBUG landmarks `(x, y)` in the same frame.
        score: detector confidence (back-end specific scale; higher is more confident).
    """

    box: np.ndarray
    points: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))

    def scaled(self, scale_x: float, scale_y: float) -> FaceLandmarks:
        """The same face in an image resized by `(scale_x, scale_y)` (pixel-centre convention preserved)."""
        factor = np.array([scale_x, scale_y])
        points = (self.points + 0.5) * factor - 0.5
        box = self.box * np.tile(factor, 2)  # box edges are pixel boundaries
        return FaceLandmarks(box=box, points=points, score=self.score)


class UnsupportedFitError(ValueError):
    """A landmark back-end asked to place landmarks inside given face boxes, which it cannot (MediaPipe's graph
    places them only on its own detections; the template back-end has no landmark model).

    Attributes:
        backend: the back-end's name.
    """

    def __init__(self, backend: str):
        self.backend = backend
        super().__init__(
            f"the '{backend}' landmark back-end cannot place landmarks inside given face boxes; use 'dlib' or "
            "'face_alignment' (FAN) for face_boxes= or video tracking"
        )


class LandmarkBackend:
    """Base class: subclasses set `name` and implement `detect`; those that can place landmarks inside given boxes
    (`fits_boxes`) implement `fit` and `sees_faces`, and those with a cheaper search implement `detect_coarse`."""

    name: str = ""
    fits_boxes: bool = False

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        """Every face in `image` (`(H, W, 3)` RGB uint8), largest first.

        There is one search whatever the caller keeps, so "the largest face" is the largest of all faces found.
        """
        raise NotImplementedError

    def fit(self, image: np.ndarray, boxes: np.ndarray) -> list[FaceLandmarks]:
        """68 landmarks inside each of `boxes` (`(N, 4)` `xyxy` pixels of `image`), in their order, without a search:
        what video tracking and caller-supplied face boxes use.

        Raises:
            UnsupportedFitError: the back-end places landmarks only on its own detections (`fits_boxes` is False).
        """
        raise UnsupportedFitError(self.name)

    def sees_faces(self, image: np.ndarray, boxes: np.ndarray) -> list[bool]:
        """Whether the face detector still finds a face at each of `boxes` (a quick search near each): how video
        tracking tells a face that is still there from one that left (`fit` places landmarks in any box).

        Raises:
            UnsupportedFitError: as `fit`.
        """
        raise UnsupportedFitError(self.name)

    def detect_coarse(self, image: np.ndarray) -> list[FaceLandmarks] | None:
        """A cheaper search than `detect` that leaves out `detect`'s finest scale (the smallest faces), or `None` when
        the back-end has no cheaper search. Looking for the largest face, a caller tries it first and runs `detect`
        only when it finds none: the faces it leaves out are smaller than the ones it finds."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_image(image: np.ndarray) -> np.ndarray:
    """`image` as a contiguous `(H, W, 3)` uint8 RGB array, the one input form of `detect`."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"Landmark back-ends take (H, W, 3) uint8 RGB arrays, got {image.shape} {image.dtype}.")
    return np.ascontiguousarray(image)


def as_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """A tensor (any device; half and bfloat16 ones, which NumPy lacks, as float32) or an array-like as a NumPy array,
    in `dtype` when given."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        narrow = value.is_floating_point() and value.element_size() < 4
        value = (value.float() if narrow else value).numpy()
    return np.asarray(value, dtype)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two `xyxy` boxes."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def largest_first(faces: list[FaceLandmarks]) -> list[FaceLandmarks]:
    """Faces by box area, largest first (the order `detect` returns)."""
    return sorted(faces, key=lambda face: face.area, reverse=True)


def require_module(module: str, extra: str, backend: str):
    """Import an optional dependency of `backend`, or raise `MissingBackendError` naming the extra to install."""
    try:
        return __import__(module)
    except ImportError as error:
        raise MissingBackendError(
            f"The '{backend}' landmark back-end needs `{module}`, which is not installed: "
            f"`pip install 'mf2[{extra}]'`. Other back-ends: 'dlib' (offline, `mf2[dlib]`), 'mediapipe' (offline, "
            f"`mf2[mediapipe]`), 'template' (already aligned face crops, no dependency)."
        ) from error


def package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (some run heavy code on import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def packaged_file(package: str, *parts: str, missing: str) -> Path:
    """A model file shipped inside an installed package (found without importing it); `MissingBackendError` with
    the message `missing` when the package is not installed."""
    folder = package_dir(package)
    if folder is None:
        raise MissingBackendError(missing)
    return folder.joinpath(*parts)


def require_file(path: Path, message: str) -> Path:
    """`path` when it is a file, else `MissingModelFileError(message)` (a back-end's model that is not there)."""
    if not path.is_file():
        raise MissingModelFileError(message)
    return path


__all__ = [
    "NUM_LANDMARKS",
    "FaceLandmarks",
    "LandmarkBackend",
    "MissingBackendError",
    "MissingModelFileError",
    "UnsupportedFitError",
    "as_numpy",
    "box_iou",
    "check_image",
    "largest_first",
    "package_dir",
    "packaged_file",
    "require_file",
    "require_module",
]
