"""Where the image processor looks for faces and what it does when it finds none: the `no_face` policy, the scale of
the copy faces are searched on, the search itself (`max_detection_size` / `min_detection_size`) and what that copy cannot see, the error
for an image without a face, and the checks of found and given face boxes.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from PIL import Image

from .alignment import implausible_landmarks
from .image_loading import ImageInputError
from .landmarks import FaceLandmarks, UnsupportedFitError

NO_FACE_CHOICES = ("error", "fallback", "skip")
# Old spellings of `no_face` values (the training scripts said "drop"), accepted with a FutureWarning.
DEPRECATED_NO_FACE = {"drop": "skip"}

FALLBACK_LABEL = "template-fallback"

SMALLEST_FACE_SEEN = 40
"""About the smallest face (px) the detectors find in the image they search (dlib's HOG, upsampled once): on a copy
scaled by `s < 1` (`max_detection_size`), faces under about `SMALLEST_FACE_SEEN / s` px of the image are not seen."""


def resolve_no_face(value: str) -> str:
    """`value` in the one `no_face` vocabulary (`NO_FACE_CHOICES`); an old spelling is translated with a warning."""
    if value in DEPRECATED_NO_FACE:
        new = DEPRECATED_NO_FACE[value]
        warnings.warn(
            f"no_face={value!r} is deprecated and will be removed; use no_face={new!r} (the same: faceless images "
            "or rows are left out).",
            FutureWarning,
            stacklevel=3,
        )
        return new
    if value not in NO_FACE_CHOICES:
        raise ValueError(f"`no_face` must be one of {NO_FACE_CHOICES}, got {value!r}.")
    return value


def search_scale(width: int, height: int, max_detection_size: int, min_detection_size: int) -> float:
    """The scale of the copy of a `width x height` image that faces are searched on: below 1 when its longest side is
    over `max_detection_size` (a downscaled copy), above 1 when under `min_detection_size`, else 1."""
    longest = max(width, height)
    if longest > max_detection_size:
        return max_detection_size / longest
    if longest < min_detection_size:
        return min_detection_size / longest
    return 1.0


def search_warning(longest: int, scale: float, option: str = "max_detection_size=") -> str | None:
    """What a face search on a copy scaled by `scale` of an image whose longest side is `longest` px cannot see, and
    how to search at full resolution (`option` spells the setting; `mf2 analyze` says `"--max-detection-size "`), or
    `None` when the search was not on a downscaled copy."""
    if not scale < 1:
        return None
    smallest = math.ceil(SMALLEST_FACE_SEEN / scale - 1e-3)  # the same from a float32 `detection_scale`
    return (
        f"faces were searched on a {round(longest * scale)}-px copy of this {longest}-px image: faces under about "
        f"{smallest} px are not seen; pass {option}{longest} to search at full resolution"
    )


class NoFaceError(ImageInputError):
    """An image without a face under `no_face="error"`; `backend` is the landmark back-end that found none, `scale`
    the scale of the copy it searched (below 1: a downscaled one, see `search_warning`) and `longest` the image's
    longest side (px)."""

    HINT = (
        "Pass no_face='fallback' to treat such images as aligned face crops, no_face='skip' to leave them out, or "
        "landmark_backend='template' for inputs that are already aligned crops."
    )

    kind = "no_face"

    def __init__(self, index: int, path: str | None, backend: str, scale: float = 1.0, longest: int | None = None):
        self.backend, self.scale, self.longest = backend, scale, longest
        super().__init__(
            index, path, f"no face found by the '{backend}' landmark back-end{self._searched()}. {self.HINT}"
        )

    def fields(self) -> dict[str, Any]:
        return {"backend": self.backend, "scale": self.scale, "longest": self.longest}

    def _searched(self) -> str:
        warning = search_warning(self.longest, self.scale) if self.longest else None
        return f" ({warning})" if warning else ""

    def describe(self, where: str) -> str:
        path = f" ('{self.path}')" if self.path is not None else ""
        return (
            f"No face found in {where}{path} by the '{self.backend}' landmark back-end{self._searched()}. {self.HINT}"
        )


def plausible_faces(faces: list[FaceLandmarks]) -> list[FaceLandmarks]:
    """The faces whose landmarks pass `implausible_landmarks` (a box on a badge or a pattern is not a face)."""
    return [face for face in faces if implausible_landmarks(face.points) is None]


def per_image_boxes(face_boxes, count: int, backend) -> list[np.ndarray] | None:
    """`face_boxes` as one `(N_i, 4)` float array per image, checked against the images and the back-end."""
    if face_boxes is None:
        return None
    if backend is None or not backend.fits_boxes:
        raise UnsupportedFitError(backend.name if backend is not None else "template")
    if len(face_boxes) != count:
        raise ValueError(f"`face_boxes` has {len(face_boxes)} entries for {count} images; give one list per image.")
    boxes = []
    for index, image_boxes in enumerate(face_boxes):
        array = np.asarray(image_boxes, dtype=np.float64).reshape(-1, 4) if len(image_boxes) else np.zeros((0, 4))
        if not np.isfinite(array).all() or np.any(array[:, 2:] <= array[:, :2]):
            raise ValueError(f"`face_boxes` of image {index} must be finite x1, y1, x2, y2 with x2 > x1 and y2 > y1.")
        boxes.append(array)
    return boxes


def check_boxes_in_image(boxes: np.ndarray, width: int, height: int, index: int) -> None:
    """Raise `ValueError` for a given box that misses the image: landmarks would be placed on the padding around it,
    a face-shaped answer with no face under it."""
    outside = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= width) | (boxes[:, 1] >= height)
    if outside.any():
        box = [round(float(value), 1) for value in boxes[np.flatnonzero(outside)[0]]]
        raise ValueError(f"`face_boxes` of image {index}: the box {box} lies outside the {width}x{height} image.")


def find_faces(image: Image.Image, backend, multiple_faces: str, ratio: float) -> list[tuple[FaceLandmarks, str]]:
    """The faces `backend` finds on a copy of `image` scaled by `ratio` (`search_scale`), in `image`'s pixels, with
    the back-end's name: the largest, or all of them largest first (`multiple_faces`)."""
    width, height = image.size
    detection_image = image
    if ratio != 1:
        target = (max(1, round(width * ratio)), max(1, round(height * ratio)))
        if ratio < 1:
            detection_image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
        else:
            detection_image = image.resize(target, Image.Resampling.BICUBIC)
    pixels = np.asarray(detection_image)
    faces = []
    if multiple_faces == "largest":
        # The cheaper search first: when it finds a face, those it leaves out are smaller (see `detect_coarse`).
        faces = plausible_faces(backend.detect_coarse(pixels) or [])
    if not faces:
        faces = plausible_faces(backend.detect(pixels))
    if detection_image is not image:
        sx, sy = width / detection_image.width, height / detection_image.height
        faces = [face.scaled(sx, sy) for face in faces]
    return _keep(faces, backend, multiple_faces)


def fit_faces(image: Image.Image, boxes: np.ndarray, backend, multiple_faces: str) -> list[tuple[FaceLandmarks, str]]:
    """The faces `backend` places in the given `boxes` of `image`, as `find_faces` gives them."""
    faces = plausible_faces(backend.fit(np.asarray(image), boxes)) if len(boxes) else []
    return _keep(faces, backend, multiple_faces)


def _keep(faces: list[FaceLandmarks], backend, multiple_faces: str) -> list[tuple[FaceLandmarks, str]]:
    """The faces an image gives, largest first: all of them, or the largest (`multiple_faces`)."""
    faces = sorted(faces, key=lambda face: face.area, reverse=True)
    if multiple_faces == "largest":
        faces = faces[:1]
    return [(face, backend.name) for face in faces]


__all__ = [
    "DEPRECATED_NO_FACE",
    "FALLBACK_LABEL",
    "NO_FACE_CHOICES",
    "SMALLEST_FACE_SEEN",
    "NoFaceError",
    "find_faces",
    "fit_faces",
    "per_image_boxes",
    "check_boxes_in_image",
    "plausible_faces",
    "resolve_no_face",
    "search_scale",
    "search_warning",
]
