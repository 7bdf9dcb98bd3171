"""Following the faces of a video from frame to frame, so that the face detector runs only every few frames.

On a detection frame the image processor searches the whole frame as for a photo. On the frames after it, each
face's box is moved with the face: the detector's box is kept in the face's own frame (a similarity fit of its 68
landmarks onto dlib's mean shape), carried to the next frame by the landmarks placed there, and the landmark back-end
places 68 landmarks inside it (`MF2ImageProcessor(face_boxes=...)`, 2-5 ms with dlib). dlib's landmarks settle in
the box they give, as on a searched frame (`mf2.landmark_settling`), so a followed frame gets the landmarks and the
results that searching it would have given (the same to the bit on every frame of the benchmark's clip). Landmarks
can be placed
in any box, so the detector first checks that the face is still there, searching only the window around the box
(`LandmarkBackend.sees_faces`, about 2 ms instead of 60-80 ms for the whole frame). A face is lost when that check
fails, or when its new landmarks do not look like a face or leave the box they were placed in; a lost face, or
`detect_every` frames since the last search, brings the next search of the whole frame.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .alignment import apply_affine, face_to_image, similarity_transform
from .au_regions import MEAN_SHAPE_68
from .landmark_backend import LandmarkBackend, as_numpy, box_iou

DEFAULT_DETECT_EVERY = 10
"""Frames from one face search to the next when tracking (`pipe.video(..., detect_every=...)`); 1 searches every
frame."""
MIN_BOX_OVERLAP = 0.5
"""Intersection over union below which the box a face's new landmarks give, against the box they were placed in,
means the face was lost (it moved too far, or the box holds something else)."""
FOLLOWED_FROM = "followed_from"
"""The field a followed frame's model inputs carry: for each face (row), the row of the previous frame's face it was
followed from (`mf2.face_identity` continues that face's track). Searched frames do not carry it."""


def check_detect_every(value: Any) -> int:
    """`value` as a count of frames from one face search to the next, or a `ValueError` that says what it takes."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`detect_every` must be a positive integer (1 searches every frame), got {value!r}.")
    return int(value)


@dataclass
class TrackedFace:
    """What carries one face to the next frame.

    Attributes:
        landmarks: `(68, 2)` points on the latest frame.
        box_in_face: `(4, 2)` corners of the detector's box in the face's own frame (the mean shape's, where the
            landmarks' similarity fit puts them), fixed from the detection frame on.
    """

    landmarks: np.ndarray
    box_in_face: np.ndarray

    @classmethod
    def detected(cls, landmarks: np.ndarray, box: np.ndarray) -> TrackedFace:
        # The fit whose inverse `box` applies (`face_to_image`), so the box comes back exactly on this frame.
        to_face = similarity_transform(landmarks, MEAN_SHAPE_68)
        return cls(np.asarray(landmarks, np.float64), apply_affine(to_face, box_corners(box)))

    def box(self, landmarks: np.ndarray | None = None) -> np.ndarray:
        """`(4,)` `xyxy` box of the face whose landmarks are `landmarks` (default: the latest ones)."""
        points = self.landmarks if landmarks is None else landmarks
        corners = apply_affine(face_to_image(points), self.box_in_face)
        return np.concatenate([corners.min(axis=0), corners.max(axis=0)])


def box_corners(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = np.asarray(box, dtype=np.float64)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])


class FaceTracker:
    """The faces of consecutive frames, searched for every `detect_every` frames and followed in between.

    Call it on the frames in order, one at a time (it keeps the previous frame's faces): `tracker(frame, **options)`
    returns what `preprocess(frame, **options)` returns, the model inputs and face fields of one image; on a frame
    where the faces were followed, also `FOLLOWED_FROM` (which face of the previous frame each one is).

    Args:
        preprocess: one image (and the image processor's options, plus `face_boxes`) → its model inputs with
            `landmarks` and `face_boxes` (`FacialStatePipeline.preprocess`).
        backend: the landmark back-end `preprocess` uses (for `sees_faces`; its `fits_boxes` must be true).
        detect_every: frames from one search to the next (1: every frame, no tracking).

    Attributes:
        frames, searches: frames seen and frames on which the whole frame was searched.
    """

    def __init__(
        self,
        preprocess: Callable[..., dict[str, Any]],
        backend: LandmarkBackend,
        detect_every: int = DEFAULT_DETECT_EVERY,
    ):
        self.preprocess, self.backend = preprocess, backend
        self.detect_every = check_detect_every(detect_every)
        self.faces: list[TrackedFace] = []
        self.since_search = 0
        self.frames = self.searches = 0

    def __call__(self, frame: Any, **options: Any) -> dict[str, Any]:
        self.frames += 1
        if self.faces and self.since_search < self.detect_every:
            followed = self._follow(frame, options)
            if followed is not None:
                self.since_search += 1
                return followed
        found = self.preprocess(frame, **options)
        self.searches += 1
        self.since_search = 1
        self.faces = [
            TrackedFace.detected(as_numpy(points, np.float64), as_numpy(box, np.float64))
            for points, box, label in zip(found["landmarks"], found["face_boxes"], found["landmark_backend"])
            if not label.startswith("template")  # a fallback crop has no face to follow
        ]
        return found

    def _follow(self, frame: Any, options: dict[str, Any]) -> dict[str, Any] | None:
        """The frame's model inputs with every face placed in its carried box, or `None` when one is lost."""
        boxes = [face.box() for face in self.faces]
        if not all(self.backend.sees_faces(np.asarray(frame), np.array(boxes))):
            return None
        # "all" keeps every face, so a lost one shows as a missing row; the caller's own `no_face` applies only to
        # searches (a frame where a face is lost is searched, not skipped).
        fitted = self.preprocess(frame, face_boxes=[boxes], **{**options, "multiple_faces": "all", "no_face": "skip"})
        if len(fitted["landmarks"]) != len(self.faces):
            return None
        # Rows come back largest first, each with the box it was placed in: pair them with the faces by that box.
        moved, sources = [], []
        for points, given in zip(fitted["landmarks"], fitted["face_boxes"]):
            given = as_numpy(given, np.float64)
            source = int(np.argmax([box_iou(box, given) for box in boxes]))
            owner = self.faces[source]
            points = as_numpy(points, np.float64)
            if box_iou(owner.box(points), given) < MIN_BOX_OVERLAP:
                return None
            moved.append(TrackedFace(points, owner.box_in_face))
            sources.append(source)
        self.faces = moved
        fitted[FOLLOWED_FROM] = sources
        return fitted


__all__ = [
    "DEFAULT_DETECT_EVERY",
    "FOLLOWED_FROM",
    "MIN_BOX_OVERLAP",
    "FaceTracker",
    "TrackedFace",
    "check_detect_every",
]
