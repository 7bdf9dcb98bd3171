"""Where each Action Unit lives on a face: the landmark recipe for AU boxes and the canonical aligned-face frame.

This module is the single source of AU geometry. The image processor applies `au_boxes_from_landmarks` to detected
68-point landmarks; the model falls back to `default_au_boxes` (the same recipe on the canonical template) when it is
given aligned face crops without boxes. It depends on numpy only, so it travels with remote code.
"""

import numpy as np

# dlib's 68-point mean shape (the `initial_shape` stored in `shape_predictor_68_face_landmarks.dat`, CC0), in the
# frame of dlib's face-detector box: (0, 0) is its top-left corner, (1, 1) its bottom-right. iBUG point order:
# 0-16 jaw, 17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth.
MEAN_SHAPE_68 = np.array(
    [
        (0.0294, 0.3219),
        (0.0326, 0.4464),
        (0.0459, 0.5704),
        (0.0718, 0.6920),
        (0.1203, 0.8050),
        (0.1947, 0.9029),
        (0.2858, 0.9846),
        (0.3863, 1.0502),
        (0.5000, 1.0697),
        (0.6137, 1.0502),
        (0.7142, 0.9846),
        (0.8053, 0.9029),
        (0.8797, 0.8050),
        (0.9282, 0.6920),
        (0.9541, 0.5704),
        (0.9674, 0.4464),
        (0.9706, 0.3219),
        (0.1192, 0.2309),
        (0.1775, 0.1784),
        (0.2598, 0.1627),
        (0.3451, 0.1749),
        (0.4249, 0.2081),
        (0.5751, 0.2081),
        (0.6550, 0.1749),
        (0.7402, 0.1627),
        (0.8225, 0.1784),
        (0.8809, 0.2309),
        (0.5000, 0.3055),
        (0.5000, 0.3857),
        (0.5000, 0.4652),
        (0.5000, 0.5470),
        (0.4045, 0.6023),
        (0.4504, 0.6192),
        (0.5000, 0.6337),
        (0.5497, 0.6192),
        (0.5955, 0.6023),
        (0.2139, 0.3156),
        (0.2647, 0.2863),
        (0.3259, 0.2872),
        (0.3794, 0.3276),
        (0.3221, 0.3378),
        (0.2612, 0.3370),
        (0.6207, 0.3276),
        (0.6742, 0.2872),
        (0.7353, 0.2863),
        (0.7862, 0.3156),
        (0.7388, 0.3370),
        (0.6780, 0.3378),
        (0.3171, 0.7511),
        (0.3844, 0.7242),
        (0.4525, 0.7103),
        (0.5000, 0.7220),
        (0.5475, 0.7103),
        (0.6156, 0.7242),
        (0.6829, 0.7511),
        (0.6178, 0.8169),
        (0.5516, 0.8460),
        (0.5000, 0.8515),
        (0.4484, 0.8460),
        (0.3823, 0.8169),
        (0.3452, 0.7547),
        (0.4519, 0.7499),
        (0.5000, 0.7550),
        (0.5481, 0.7499),
        (0.6548, 0.7547),
        (0.5490, 0.7857),
        (0.5000, 0.7916),
        (0.4510, 0.7857),
    ],
    dtype=np.float64,
)

# The aligned face crop: the mean shape scaled by CANONICAL_SCALE about CANONICAL_CENTER, which lands on the crop's
# centre. This leaves room above the brows for AU1/AU2 and keeps the chin inside the crop.
CANONICAL_SCALE = 0.75
CANONICAL_CENTER = (0.5, 0.58)

# Inner eye corners; their distance is the "ruler" that sizes every AU region (JAA-Net's recipe).
LEFT_INNER_EYE_CORNER, RIGHT_INNER_EYE_CORNER = 39, 42

# AU -> (image-left landmark, image-right landmark, offset along the face's downward axis, in rulers).
# Centres follow JAA-Net's AU centres (Shao et al., ECCV 2018) expressed in 68-point indices; negative = upward.
AU_REGION_RECIPES: dict[str, tuple[int, int, float]] = {
    "AU1": (21, 22, -1 / 2),  # inner brow raiser
    "AU2": (18, 25, -1 / 3),  # outer brow raiser
    "AU4": (19, 24, 1 / 3),  # brow lowerer
    "AU5": (37, 44, 0.0),  # upper lid raiser
    "AU6": (41, 46, 1.0),  # cheek raiser
    "AU7": (38, 43, 0.0),  # lid tightener
    "AU9": (31, 35, -1 / 2),  # nose wrinkler
    "AU10": (61, 63, 0.0),  # upper lip raiser
    "AU12": (48, 54, 0.0),  # lip corner puller
    "AU14": (48, 54, 0.0),  # dimpler
    "AU15": (48, 54, 0.0),  # lip corner depressor
    "AU17": (56, 58, 1 / 2),  # chin raiser
    "AU20": (48, 54, 0.0),  # lip stretcher
    "AU23": (51, 57, 0.0),  # lip tightener
    "AU24": (51, 57, 0.0),  # lip pressor
    "AU25": (51, 57, 0.0),  # lips part
    "AU26": (56, 58, 1 / 2),  # jaw drop
}

# Half-size of an AU box around its region, in rulers.
AU_BOX_HALF_SIZE = 0.35
BOXES_PER_AU = 2


# Where a face sits in a typical face-detector crop (what users hand over as "a face": a FER+ image, another
# detector's crop), as the similarity that carries the canonical face into it: dlib's 68 landmarks on 451 of 600 FER+
# train crops upscaled to 192 px (`benchmarks/benchmark_crop_layout.py`), median scale and position of the canonical
# crop's centre (quartiles 1.04-1.27, x 0.48-0.53, y 0.59-0.65). The face is larger and lower than the canonical one.
DETECTOR_CROP_SCALE = 1.165
DETECTOR_CROP_CENTER = (0.505, 0.625)


def canonical_landmarks() -> np.ndarray:
    """The 68 landmarks of the canonical aligned face, `(68, 2)` in `[0, 1]` crop coordinates (x, y)."""
    center = np.asarray(CANONICAL_CENTER)
    return (MEAN_SHAPE_68 - center) * CANONICAL_SCALE + 0.5


def detector_crop_landmarks() -> np.ndarray:
    """The 68 landmarks of a typical detector face crop, `(68, 2)` in `[0, 1]` crop coordinates: where
    `no_face="fallback"` assumes the face of an image whose landmarks were not found."""
    return (canonical_landmarks() - 0.5) * DETECTOR_CROP_SCALE + np.asarray(DETECTOR_CROP_CENTER)


def check_au_names(au_names: list[str] | tuple[str, ...]) -> None:
    """Raise a clear error for AU names that have no landmark recipe."""
    unknown = [name for name in au_names if name not in AU_REGION_RECIPES]
    if unknown:
        raise ValueError(f"No landmark recipe for {unknown}; known AUs: {sorted(AU_REGION_RECIPES, key=_au_number)}.")


def au_boxes_from_landmarks(
    landmarks: np.ndarray, au_names: list[str] | tuple[str, ...], half_size: float = AU_BOX_HALF_SIZE
) -> np.ndarray:
    """AU boxes from 68-point landmarks.

    Args:
        landmarks: `(..., 68, 2)` (x, y) points in any frame (pixels or normalised).
        au_names: the AUs to place, in output order.
        half_size: margin around each region, in rulers (inner-eye-corner distance).

    Returns:
        `(..., len(au_names), 2, 4)` boxes `x1, y1, x2, y2` in the landmarks' frame, image-left box first. Each box
        spans the defining landmark and its offset centre, grown by `half_size` rulers, so it always contains the
        landmark. The offset follows the face's own vertical axis, so it stays right on tilted faces.
    """
    check_au_names(au_names)
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape[-2:] != (68, 2):
        raise ValueError(f"Expected landmarks of shape (..., 68, 2), got {points.shape}.")
    eye_line = points[..., RIGHT_INNER_EYE_CORNER, :] - points[..., LEFT_INNER_EYE_CORNER, :]
    ruler = np.linalg.norm(eye_line, axis=-1, keepdims=True)  # (..., 1)
    direction = eye_line / np.maximum(ruler, 1e-12)
    down = np.stack([-direction[..., 1], direction[..., 0]], axis=-1)  # eye line turned 90°: points chin-wards

    left = np.array([AU_REGION_RECIPES[name][0] for name in au_names])
    right = np.array([AU_REGION_RECIPES[name][1] for name in au_names])
    offsets = np.array([AU_REGION_RECIPES[name][2] for name in au_names])  # (A,)
    anchors = np.stack([points[..., left, :], points[..., right, :]], axis=-2)  # (..., A, 2, 2)
    shift = (offsets[:, None, None] * ruler[..., None, None, :]) * down[..., None, None, :]
    centres = anchors + shift
    margin = (half_size * ruler)[..., None, None, :]
    top_left = np.minimum(anchors, centres) - margin
    bottom_right = np.maximum(anchors, centres) + margin
    return np.concatenate([top_left, bottom_right], axis=-1)


def default_au_boxes(au_names: list[str] | tuple[str, ...]) -> np.ndarray:
    """AU boxes of the canonical aligned face, `(len(au_names), 2, 4)` normalised `xyxy`, clipped to the crop."""
    return np.clip(au_boxes_from_landmarks(canonical_landmarks(), au_names), 0.0, 1.0)


def _au_number(name: str) -> int:
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 0


__all__ = [
    "AU_REGION_RECIPES",
    "BOXES_PER_AU",
    "DETECTOR_CROP_CENTER",
    "DETECTOR_CROP_SCALE",
    "MEAN_SHAPE_68",
    "au_boxes_from_landmarks",
    "canonical_landmarks",
    "check_au_names",
    "default_au_boxes",
    "detector_crop_landmarks",
]
