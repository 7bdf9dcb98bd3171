"""The types every landmark back-end shares: the detected face, the back-end interface, the errors, and the helpers
that check inputs and find optional dependencies. Numpy only, relative imports only (it travels with remote code).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

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


class LandmarkBackend:
    """Base class: subclasses set `name` and implement `detect`."""

    name: str = ""

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        """Every face in `image` (`(H, W, 3)` RGB uint8), largest first.

        There is one search whatever the caller keeps, so "the largest face" is the largest of all faces found.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"Landmark back-ends take (H, W, 3) uint8 RGB arrays, got {image.shape} {image.dtype}.")
    return np.ascontiguousarray(image)


def largest_first(faces: list[FaceLandmarks]) -> list[FaceLandmarks]:
    return sorted(faces, key=lambda face: face.area, reverse=True)


def require_module(module: str, extra: str, backend: str):
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


def package_file(package: str, relative: str, missing: str) -> Path:
    """`relative` inside installed package `package` (found without importing it); `MissingBackendError(missing)`
    when the package is not installed."""
    folder = package_dir(package)
    if folder is None:
        raise MissingBackendError(missing)
    return folder / relative


__all__ = [
    "NUM_LANDMARKS",
    "FaceLandmarks",
    "LandmarkBackend",
    "MissingBackendError",
    "MissingModelFileError",
    "check_image",
    "largest_first",
    "package_dir",
    "package_file",
    "require_module",
]
