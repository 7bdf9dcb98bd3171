"""Video tracking (`mf2.face_tracking`) with the shipped mf2-base on a real photo moving as a head does: followed
faces agree with searching every frame, searches come every `detect_every` frames and whenever a face is lost (it
leaves the frame or jumps), and back-ends that cannot place landmarks in a box search every frame."""

import numpy as np
import pytest
from face_images import astronaut, moving_face_frames, write_moving_face_video
from transformers import pipeline

import mf2  # noqa: F401  (registers the facial-state task)
from mf2.alignment import apply_affine
from mf2.au_regions import MEAN_SHAPE_68
from mf2.face_tracking import DEFAULT_DETECT_EVERY, FaceTracker, TrackedFace
from mf2.integration.default_model import resolve_model
from mf2.landmark_backend import UnsupportedFitError
from mf2.video import write_video

pytest.importorskip("av")
pytest.importorskip("dlib")

FRAMES = 60


@pytest.fixture(scope="module")
def pipe():
    return pipeline("facial-state", model=resolve_model("mf2-base"), device="cpu")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return list(moving_face_frames(astronaut(), FRAMES))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_moving_face_video(tmp_path_factory.mktemp("tracking") / "moving.mp4", FRAMES)


def tracker(pipe, detect_every: int) -> FaceTracker:
    return FaceTracker(pipe.preprocess, pipe.image_processor.get_backend(), detect_every)


def test_the_box_moves_with_the_landmarks():
    rng = np.random.default_rng(0)
    points = MEAN_SHAPE_68 * 120 + np.array([200.0, 150.0]) + rng.normal(0, 1.0, (68, 2))
    box = np.array([190.0, 140.0, 330.0, 280.0])
    face = TrackedFace.detected(points, box)
    np.testing.assert_allclose(face.box(), box, atol=1e-6)
    # Moved 30 px right and 10 px down, and 10% larger about the box's centre: the box follows.
    centre = np.array([260.0, 210.0])
    moved = (points - centre) * 1.1 + centre + np.array([30.0, 10.0])
    expected = np.concatenate([(box[:2] - centre) * 1.1 + centre, (box[2:] - centre) * 1.1 + centre]) + [30, 10, 30, 10]
    np.testing.assert_allclose(face.box(moved), expected, atol=1e-6)
    # A rotated face gives the axis-aligned box around the rotated one.
    angle = np.deg2rad(10)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0]])
    corners = apply_affine(rotation, np.array([[190.0, 140.0], [330.0, 140.0], [330.0, 280.0], [190.0, 280.0]]))
    np.testing.assert_allclose(face.box(apply_affine(rotation, points)), [*corners.min(0), *corners.max(0)], atol=1e-6)


def test_followed_faces_agree_with_searching_every_frame(pipe, clip):
    searched = list(pipe.video(clip, detect_every=1, batch_size=8, return_landmarks=True))
    followed = list(pipe.video(clip, batch_size=8, return_landmarks=True))  # the default: tracking
    assert len(searched) == len(followed) == FRAMES
    assert all(len(frame["faces"]) == 1 for frame in searched + followed)
    au = np.array([[list(frame["faces"][0]["action_units"].values()) for frame in run] for run in (searched, followed)])
    difference = np.abs(au[0] - au[1])
    assert difference.max() <= 0.02, difference.max()  # every frame, every AU
    landmarks = np.array([[frame["faces"][0]["landmarks"] for frame in run] for run in (searched, followed)])
    rms = np.sqrt(((landmarks[0] - landmarks[1]) ** 2).sum(-1).mean(-1))
    assert rms.max() <= 3.0, rms.max()  # px, for a face about 90-110 px wide
    labels = [[frame["faces"][0]["emotion"]["label"] for frame in run] for run in (searched, followed)]
    assert np.mean([a == b for a, b in zip(*labels)]) >= 0.9


def test_searches_come_every_n_frames_while_the_face_is_followed(pipe, frames):
    follow = tracker(pipe, 5)
    for frame in frames[:12]:
        assert len(follow(frame, no_face="skip")["pixel_values"]) == 1
    assert (follow.frames, follow.searches) == (12, 3)  # frames 0, 5 and 10
    every_frame = tracker(pipe, 1)
    for frame in frames[:4]:
        every_frame(frame, no_face="skip")
    assert every_frame.searches == 4


def test_a_face_that_leaves_is_not_followed_and_one_that_jumps_is_found(pipe, frames):
    follow = tracker(pipe, DEFAULT_DETECT_EVERY)
    first = follow(frames[0], no_face="skip")
    assert follow.searches == 1
    blank = np.full_like(frames[0], 128)
    gone = follow(blank, no_face="skip")  # the window check finds no face where it was: a search finds none
    assert len(gone["pixel_values"]) == 0 and follow.searches == 2
    back = follow(frames[0], no_face="skip")  # nothing to follow: searched again
    assert len(back["pixel_values"]) == 1 and follow.searches == 3
    # The face jumps 200 px to the right: the window check fails, and the search finds it there.
    jumped = np.full_like(frames[0], 128)
    jumped[:, 200:] = frames[0][:, :-200]
    moved = follow(jumped, no_face="skip")
    assert follow.searches == 4
    np.testing.assert_allclose(
        moved["face_boxes"][0].numpy(), first["face_boxes"][0].numpy() + [200, 0, 200, 0], atol=12
    )


def test_frames_without_the_face_give_no_face_while_tracking(pipe, frames, tmp_path):
    path = tmp_path / "leaves.mp4"
    blank = np.full_like(frames[0], 128)
    write_video(path, [*frames[:4], blank, blank, *frames[6:9]], fps=25)
    results = list(pipe.video(path, batch_size=4))
    assert [len(frame["faces"]) for frame in results] == [1, 1, 1, 1, 0, 0, 1, 1, 1]


def test_detect_every_is_checked_and_template_searches_every_frame(pipe, clip):
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="detect_every"):
            list(pipe.video(clip, detect_every=bad, max_frames=2))
    results = list(pipe.video(clip, landmark_backend="template", max_frames=3))
    assert [frame["faces"][0]["landmark_backend"] for frame in results] == ["template"] * 3
    with pytest.raises(UnsupportedFitError, match="cannot place landmarks"):
        pipe.image_processor(
            [np.zeros((64, 64, 3), np.uint8)], landmark_backend="template", face_boxes=[[[0, 0, 9, 9]]]
        )


def test_processor_places_landmarks_in_given_boxes(pipe):
    photo = astronaut()
    found = pipe.image_processor([photo])
    given = pipe.image_processor([photo], face_boxes=[found["face_boxes"].numpy()])
    # dlib's own (whole-pixel) box gives the shape predictor the same rectangle: the same face, to the bit.
    for key in ("landmarks", "face_boxes", "pixel_values", "au_boxes"):
        np.testing.assert_array_equal(given[key].numpy(), found[key].numpy())
    none = pipe.image_processor([photo], face_boxes=[[]], no_face="skip")
    assert len(none["pixel_values"]) == 0
    with pytest.raises(ValueError, match="2 entries for 1 images"):
        pipe.image_processor([photo], face_boxes=[[], []])
    with pytest.raises(ValueError, match="x2 > x1"):
        pipe.image_processor([photo], face_boxes=[[[50, 50, 40, 90]]])
    for outside in ([1000, 1000, 1100, 1100], [-300, -300, -100, -100], [512, 0, 600, 80]):  # a 512x512 photo
        with pytest.raises(ValueError, match="lies outside the 512x512 image"):  # no face-shaped answer on padding
            pipe.image_processor([photo], face_boxes=[[outside]])
    pipe.image_processor([photo], face_boxes=[[[500, 500, 600, 600]]], no_face="skip")  # overlapping it: no error
