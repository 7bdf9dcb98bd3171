"""Face-alignment geometry: similarity fits, affine maps, the plausibility test of 68 landmarks, and the warp that
cuts the aligned face crop out of a photo.

Coordinates are pixel coordinates with pixel `(i, j)` centred at `x = j, y = i` (numpy / dlib / OpenCV); a `(2, 3)`
matrix `[A | t]` maps points `p` to `p @ A.T + t`.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .au_regions import MEAN_SHAPE_68, canonical_landmarks

# Landmarks the alignment is fitted on: nose (27-35) and eyes (36-47). Brows and mouth move with expressions (AU1,
# AU2, AU4, AU25, AU26...), so they are left out; the jaw line is the least reliable part of every detector.
ALIGNMENT_POINTS: tuple[int, ...] = tuple(range(27, 48))


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping `source` onto `target`.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns", PAMI 1991.

    Args:
        source, target: `(n, 2)` corresponding points.

    Returns:
        `(2, 3)` matrix `[s R | t]` with `target ≈ source @ (s R).T + t`.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    variance = (centred_s**2).sum() / len(source)
    if not np.isfinite(variance) or variance < 1e-12:
        raise ValueError("Cannot align a face whose landmarks are all at one point.")
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ reflection @ vt
    scale = float(np.trace(np.diag(singular) @ reflection) / variance)
    translation = mean_t - scale * rotation @ mean_s
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a `(2, 3)` affine matrix to `(..., 2)` points."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a `(2, 3)` affine matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    inverse = np.linalg.inv(matrix[:, :2])
    return np.concatenate([inverse, -(inverse @ matrix[:, 2])[:, None]], axis=1)


def face_to_image(points: np.ndarray) -> np.ndarray:
    """`(2, 3)` similarity carrying the face's own frame (the coordinates of `MEAN_SHAPE_68`) into the image of the
    `(68, 2)` landmarks `points`: the inverse of their fit onto the mean shape. A box fixed in the face's frame
    (a tracked face's, dlib's detector box in `mf2.landmark_settling`) is carried into an image by this one fit,
    the same way wherever it is used (the least-squares fit the other way round is not its inverse).

    Raises:
        ValueError: the landmarks are all at one point.
    """
    return invert_affine(similarity_transform(points, MEAN_SHAPE_68))


# RMS distance (in face-box units) of 68 landmarks from dlib's mean shape after the best similarity fit. Real faces,
# profiles and strong expressions included, stay below 0.18 (dlib on 1,373 faces of 300-W AFW, CK+ and FER+); points
# scattered at random or in the wrong order are far above it.
MAX_SHAPE_RESIDUAL = 0.25


def implausible_landmarks(points: np.ndarray) -> str | None:
    """Why 68 points cannot be a face (`None` when they can): not finite, collapsed, far from any face shape, or parts
    in the wrong order (in the face's own upright frame: brows above eyes above mouth above chin, the nose tip between
    brows and mouth, the image-left eye and mouth corner left of the image-right ones).

    Every landmark back-end puts 68 points on whatever its detector boxed; this is what keeps a box on a badge, a
    pattern or a mirrored shape from being analysed as a face.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.shape != MEAN_SHAPE_68.shape or not np.isfinite(points).all():
        return "the landmarks are not 68 finite points"
    try:
        matrix = similarity_transform(points, MEAN_SHAPE_68)
    except ValueError:
        return "the landmarks collapse to one point"
    upright = apply_affine(matrix, points)  # the face frame: box (0, 0)-(1, 1), eyes level
    residual = float(np.sqrt(((upright - MEAN_SHAPE_68) ** 2).sum(axis=1).mean()))
    if residual > MAX_SHAPE_RESIDUAL:
        return f"the landmarks do not have a face's shape (residual {residual:.2f} > {MAX_SHAPE_RESIDUAL})"
    x, y = upright[:, 0], upright[:, 1]
    brows, eyes, nose, mouth, chin = y[17:27].mean(), y[36:48].mean(), y[30], y[48:68].mean(), y[8]
    # The nose tip is only asked to lie between brows and mouth: on wide-eyed faces dlib puts it at eye height.
    if not (brows < eyes < mouth < chin and brows < nose < mouth):
        return "brows, eyes, nose, mouth and chin are not in that order from top to bottom"
    if not (x[36:42].mean() < x[42:48].mean() and x[48] < x[54]):
        return "the image-left eye or mouth corner is not left of the image-right one (a mirrored shape)"
    return None


def alignment_target(size: int) -> np.ndarray:
    """Canonical landmarks in pixel coordinates of a `size x size` crop."""
    return canonical_landmarks() * size - 0.5


def stretch_matrix(width: int, height: int, size: int) -> np.ndarray:
    """Pixel-coordinate map of resizing a `width x height` image to `size x size`."""
    sx, sy = size / width, size / height
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def warp(image: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """The `size x size` crop that `matrix` (original → crop pixel coordinates) defines, bilinear.

    Large faces are first cropped and box-filtered down (`Image.reduce`), so shrinking a face from a 24-MP photo
    neither aliases nor touches the whole image.
    """
    linear = matrix[:, :2]
    # PIL addresses pixel k by the interval [k, k+1): shift the pixel-centre map by half a pixel on both sides.
    offset = matrix[:, 2] + 0.5 - linear @ np.array([0.5, 0.5])
    inverse = np.linalg.inv(linear)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    source = (corners - offset) @ inverse.T
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    factor = max(1, int(1.0 / (1.5 * scale)))
    width, height = image.size
    margin = 2 * factor
    x0, y0 = (np.floor(source.min(axis=0)) - margin).astype(int)
    x1, y1 = (np.ceil(source.max(axis=0)) + margin).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:  # the crop lies entirely outside the image
        return Image.new("RGB", (size, size))
    region = image if (x0, y0, x1, y1) == (0, 0, width, height) else image.crop((x0, y0, x1, y1))
    if factor > 1:
        region = region.reduce(factor)
    linear_in = inverse / factor
    offset_in = (-(inverse @ offset) - np.array([x0, y0])) / factor
    data = (linear_in[0, 0], linear_in[0, 1], offset_in[0], linear_in[1, 0], linear_in[1, 1], offset_in[1])
    return region.transform((size, size), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)


def square_crop_size(size: int | dict) -> int:
    """The side of the square crop from `size` (an int, or transformers' `{"height", "width"}` / `shortest_edge`)."""
    if isinstance(size, dict):
        sides = {size.get(key) for key in ("height", "width", "shortest_edge") if size.get(key) is not None}
        if len(sides) != 1:
            raise ValueError(f"MF2ImageProcessor makes square crops; got size={size}.")
        size = sides.pop()
    if not isinstance(size, (int, np.integer)) or size < 8:
        raise ValueError(f"`size` must be an integer >= 8 (side of the square face crop), got {size!r}.")
    return int(size)


__all__ = [
    "square_crop_size",
    "ALIGNMENT_POINTS",
    "MAX_SHAPE_RESIDUAL",
    "alignment_target",
    "apply_affine",
    "implausible_landmarks",
    "invert_affine",
    "similarity_transform",
    "stretch_matrix",
    "warp",
]
