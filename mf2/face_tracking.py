"""Following the faces of a video from frame to frame, so that the face detector runs only every few frames.

On a detection frame the image processor searches the whole frame as for a photo. On the frames after it, each
face's box is moved with the face: the detector's box is kept in the face's own frame (a similarity fit of its 68
landmarks onto dlib's mean shape), carried to the next frame by the landmarks placed there, and the landmark back-end
places 68 landmarks inside it (`MF2ImageProcessor(face_boxes=...)`, 8-12 ms with dlib). dlib's landmarks settle in
the box they give and are averaged over the boxes around it, as on a searched frame (`mf2.landmark_settling`), so a followed frame gets the landmarks and the
results that searching it would have given (the same to the bit on every frame of the benchmark's clip). Landmarks
can be placed
in any box, so the detector first checks that the face is still there, searching only the window around the box
(`LandmarkBackend.sees_faces`, about 2 ms instead of 60-80 ms for the whole frame). A face is lost when that check
fails, or when its new landmarks do not look like a face or leave the box they were placed in; a lost face, or
`detect_every` frames since the last search, brings the next search of the whole frame.

`VideoMixin` gives the pipeline its `video` method on these pieces.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .alignment import apply_affine, face_to_image, similarity_transform
from .au_regions import MEAN_SHAPE_68
from .face_identity import DEFAULT_MAX_GAP, PIXEL_LIMITS, FaceIdentities, check_max_gap
from .face_search import FALLBACK_LABEL
from .landmark_backend import LandmarkBackend, as_numpy, box_iou
from .video import VideoDecodeError, VideoReader

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


class VideoMixin:
    """The facial-state pipeline's `video` method: a video analysed frame by frame through the pipeline's
    `FaceStream`, faces followed between searches (`FaceTracker`) and numbered by person (`FaceIdentities`). Mixed
    into `FacialStatePipeline`, whose stages, options (`call_defaults`, `_sanitize_parameters`), image processor and
    `vision_encoder` it uses.
    """

    def video(
        self,
        path: str | os.PathLike | VideoReader,
        fps: float | None = None,
        every: int | None = None,
        start: float = 0.0,
        end: float | None = None,
        max_frames: int | None = None,
        batch_size: int | None = None,
        num_workers: int | None = None,
        return_frames: bool = False,
        detect_every: int = DEFAULT_DETECT_EVERY,
        max_gap: float = DEFAULT_MAX_GAP,
        **kwargs,
    ) -> Iterator[dict[str, Any]]:
        """Analyse a video file frame by frame, streaming: one result per sampled frame, in order.

        Frames are decoded one at a time (`mf2.video.VideoReader`, PyAV), batched through the model and dropped, so
        memory stays flat and the time per frame constant whatever the video's length.

        Args:
            path: the video file, or a `VideoReader` already open on it (with its own sampling; `mf2 analyze` reads
                its metadata first), so that the file is opened once.
            fps: sample about this many frames per second of video; `every`: keep every N-th frame (give at most one;
                neither means every frame).
            start, end: seconds; analyse only `start <= time < end`.
            max_frames: stop after this many sampled frames.
            return_frames: add the frame's pixels (`"image"`, an `(H, W, 3)` `uint8` array) to each result.
            detect_every: search the whole frame for faces every this many sampled frames (10 by default) and follow
                the faces in between (`mf2.face_tracking`: landmarks placed in the box the previous frame's give); a
                face that is lost brings a search at once. 1 searches every frame. Back-ends that cannot place
                landmarks in a given box (MediaPipe) search every frame. A face that comes into view is found at the
                next search.
            max_gap: seconds a person may be out of sight (occluded, missed, out of view) and come back with their
                `track` (2 by default; `mf2.face_identity`).
            batch_size, num_workers, **kwargs: as for images. `no_face` defaults to `"skip"` for videos (frames
                without a face give `faces == []` instead of stopping the stream).

        Yields:
            `{"frame": index in the video, "time": seconds, "faces": [face dicts as for images, each also carrying
            "frame", "time" and "track"]}`. `track` numbers the people of the video (1, 2, ...): a face keeps its
            person's number from frame to frame, through crossings, occlusions and missed detections of up to
            `max_gap` seconds, and a new person gets a new one (`mf2.face_identity`: the motion where it is clear,
            the model's image feature of the face where it is not). Faces are listed largest first, as for images
            (`multiple_faces="all"` keeps every face; the default keeps the largest, whose track says whose it is).
            `"track"` is `None` for a `no_face="fallback"` stand-in (no face was found).

        Raises:
            VideoDecodeError: after the results of every frame decoded before it, when the video cannot be decoded to
                its end (its `frame` and `time` say where it stopped).
        """
        if isinstance(path, VideoReader):
            if (fps, every, start, end, max_frames) != (None, None, 0.0, None, None):
                raise ValueError("An open VideoReader has its own sampling: give fps, every, ... to the VideoReader.")
        stream = self._video_stream(kwargs, batch_size, num_workers, detect_every, max_gap)
        if not isinstance(path, VideoReader):  # opened now: a missing or unreadable file fails here, not at `next()`
            path = VideoReader(path, fps=fps, every=every, start=start, end=end, max_frames=max_frames)
        return video_results(path, stream, return_frames)

    def _video_stream(self, options: dict, batch_size, num_workers, detect_every: int, max_gap: float):
        """`video`'s `FaceStream`: the call's options over those given at construction (`no_face` "skip" unless
        the call says otherwise), faces followed between searches (`FaceTracker`) and numbered by person."""
        from .face_stream import FaceStream  # here: `mf2 analyze --help` reads this module's defaults without torch

        defaults = dict(self.call_defaults)
        batch_size = batch_size or defaults.pop("batch_size", None) or 1
        workers = defaults.pop("num_workers", None)
        num_workers = num_workers if num_workers is not None else workers
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(
            **{**defaults, "no_face": "skip", **options}
        )
        preprocess_params["channel_order"] = "rgb"  # frames are decoded as RGB
        # Class tokens of the vision encoder, or (onnxruntime) crop thumbnails with their own limits.
        limits = PIXEL_LIMITS if self.vision_encoder is None else ()
        identities = FaceIdentities(check_max_gap(max_gap), *limits)
        tracker = None
        backend = self.image_processor.get_backend(**_backend_options(preprocess_params))
        if check_detect_every(detect_every) > 1 and backend.fits_boxes:
            tracker = FaceTracker(self.preprocess, backend, detect_every)
        return FaceStream(
            self,
            batch_size,
            num_workers,
            preprocess_params,
            {**forward_params, "identity_features": True},
            postprocess_params,
            preprocess=tracker,
            identify=partial(identify_faces, identities),
        )


def video_results(frames: Iterable, stream, return_frames: bool) -> Iterator[dict[str, Any]]:
    """`FacialStatePipeline.video`'s results: each sampled frame's `{frame, time, faces[, image]}` from the `FaceStream`
    `stream` over `frames` (a `mf2.video.VideoReader`), in order; a decode error is raised after the frames read before
    it got their results."""
    images: deque[np.ndarray] = deque()  # frames in flight, only when the caller wants them back
    failures: list[VideoDecodeError] = []

    def items():
        try:
            for frame in frames:
                if return_frames:
                    images.append(frame.image)
                yield frame.image, {"frame": frame.index, "time": frame.time}
        except VideoDecodeError as error:
            failures.append(error)  # end the input here, so the frames decoded so far still get their results

    for extra, faces in stream(items()):
        result = {**extra, "faces": faces}
        if return_frames:
            result["image"] = images.popleft()  # results come out in input order
        yield result
    if failures:
        raise failures[0]


def identify_faces(
    identities: FaceIdentities, extra: dict[str, Any], model_outputs: dict[str, Any]
) -> list[int | None]:
    """The track of each face of one video frame (`FaceStream`'s `identify`): `identities` on the frame's time, boxes,
    identity features and, on a followed frame, which face of the previous frame each one was followed from. A
    `no_face="fallback"` stand-in (no face found) is no one: `None`."""
    labels = [str(label) for label in model_outputs["landmark_backend"]]
    rows = [row for row, label in enumerate(labels) if label != FALLBACK_LABEL]
    features = model_outputs.get("identity_features")
    followed = model_outputs.get(FOLLOWED_FROM)
    numbers = identities(
        extra["time"],
        as_numpy(model_outputs["face_boxes"]).reshape(-1, 4)[rows],
        None if features is None else as_numpy(features)[rows],
        None if followed is None else [followed[row] for row in rows],
    )
    tracks: list[int | None] = [None] * len(labels)
    for row, number in zip(rows, numbers):
        tracks[row] = number
    return tracks


def _backend_options(preprocess_params: dict[str, Any]) -> dict[str, Any]:
    """The per-call options that choose the landmark back-end."""
    return {key: preprocess_params[key] for key in ("landmark_backend", "backend_kwargs") if key in preprocess_params}


__all__ = [
    "DEFAULT_DETECT_EVERY",
    "FOLLOWED_FROM",
    "FaceTracker",
    "MIN_BOX_OVERLAP",
    "TrackedFace",
    "VideoMixin",
    "check_detect_every",
    "identify_faces",
    "video_results",
]
