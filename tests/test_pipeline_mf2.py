"""The facial-state pipeline: result format, input kinds, batching, thresholds, errors, saving and remote code."""

import json
import os
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from face_images import astronaut, on_canvas, two_faces
from PIL import Image
from tiny import tiny_config
from transformers import BertTokenizer, pipeline

import mf2
import mf2.facs
from mf2 import MF2ForFacialStateRecognition
from mf2.pipeline_mf2 import REMOTE_TASK, FacialStatePipeline, InputError
from mf2.processing_mf2 import MF2ImageProcessor, MF2Processor

SIZE = 32  # tiny_config: 32 px images, 8 px patches
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"the person is smiling with raised brows".split()]
FACE_KEYS = {"box", "emotion", "emotions", "action_units", "active_action_units", "landmark_backend"}


def save_tiny_checkpoint(folder: Path, seed: int = 0, **config_overrides) -> Path:
    """A random tiny MF² recogniser and its processor (dlib landmarks, 32 px crops) saved in `folder`."""
    torch.manual_seed(seed)
    model = MF2ForFacialStateRecognition(tiny_config(**config_overrides)).eval()
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(VOCAB)})
    processor = MF2Processor.from_config(model.config, tokenizer, size=SIZE)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mf2"))


@pytest.fixture(scope="module")
def pipe(checkpoint) -> FacialStatePipeline:
    return pipeline("facial-state", model=str(checkpoint), device="cpu")


@cache
def photos() -> list[np.ndarray]:
    """Four one-face photos (original, shifted on a canvas, mirrored, shrunk) and a blank image."""
    photo = astronaut()
    shrunk = np.asarray(Image.fromarray(photo).resize((400, 400), Image.Resampling.BILINEAR))
    return [photo, on_canvas(photo, (640, 560), (90, 30)), photo[:, ::-1].copy(), shrunk]


def blank() -> np.ndarray:
    return np.full((120, 160, 3), 127, dtype=np.uint8)


def assert_same_faces(a: list[dict], b: list[dict], atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x["box"], y["box"])
        np.testing.assert_allclose(list(x["action_units"].values()), list(y["action_units"].values()), atol=atol)
        np.testing.assert_allclose([e["score"] for e in x["emotions"]], [e["score"] for e in y["emotions"]], atol=atol)
        assert x["emotion"]["label"] == y["emotion"]["label"]
        assert x["active_action_units"] == y["active_action_units"]


def test_task_is_registered_and_loads_model_and_processor(pipe):
    assert isinstance(pipe, FacialStatePipeline)
    assert isinstance(pipe.model, MF2ForFacialStateRecognition)
    assert isinstance(pipe.image_processor, MF2ImageProcessor) and pipe.image_processor.size == SIZE
    assert pipe.device.type == "cpu" and not pipe.model.training


def test_result_format(pipe):
    config = pipe.model.config
    faces = pipe(astronaut(), top_k=4)
    assert isinstance(faces, list) and len(faces) == 1
    face = faces[0]
    assert set(face) == FACE_KEYS
    x1, y1, x2, y2 = face["box"]
    assert 150 < x1 < x2 < 300 and 60 < y1 < y2 < 200  # the astronaut's face
    assert list(face["action_units"]) == list(config.au_names)
    assert all(0.0 <= p <= 1.0 for p in face["action_units"].values())
    assert face["active_action_units"] == [name for name, p in face["action_units"].items() if p >= 0.5]
    assert len(face["emotions"]) == 4 and face["emotions"][0] == face["emotion"]
    scores = [item["score"] for item in face["emotions"]]
    assert scores == sorted(scores, reverse=True) and all(
        item["label"] in config.emotion_labels for item in face["emotions"]
    )
    assert face["landmark_backend"] == "dlib"
    json.dumps(faces)  # plain Python types only


def test_landmarks_explanation_and_features_on_request(pipe):
    face = pipe(astronaut(), return_landmarks=True, explain=True, return_features=True)[0]
    landmarks = np.asarray(face["landmarks"])
    assert landmarks.shape == (68, 2)
    x1, y1, x2, y2 = face["box"]
    inside = (landmarks[:, 0] > x1 - 20) & (landmarks[:, 0] < x2 + 20) & (landmarks[:, 1] > y1 - 40)
    assert inside.all()
    assert face["explanation"] == mf2.facs.explain(face["emotion"]["label"], face["active_action_units"])
    assert face["explanation"].startswith("The person")
    features = face["features"]
    assert features["pixel_values"].shape == (1, 3, SIZE, SIZE) and features["au_boxes"].shape == (1, 12, 2, 4)
    drawn = pipe.image_processor.visualize(astronaut(), features)
    assert drawn.size == (512, 512)


def test_batched_and_one_by_one_give_the_same_results(pipe):
    images = photos()
    one_by_one = [pipe(image) for image in images]
    for batch_size in (1, 3, 4):
        batched = pipe(images, batch_size=batch_size)
        assert [face[0]["image_index"] for face in batched] == list(range(len(images)))
        for single, faces in zip(one_by_one, batched):
            assert_same_faces(single, faces)


def test_batches_mix_images_with_several_and_no_faces(pipe):
    group, _ = two_faces()
    images = [group, blank(), astronaut(), group]
    options = {"multiple_faces": "all", "no_face": "skip"}
    one_by_one = [pipe(image, **options) for image in images]
    assert [len(faces) for faces in one_by_one] == [2, 0, 1, 2]
    for batch_size in (1, 2, 16):
        batched = pipe(images, batch_size=batch_size, **options)
        for index, (single, faces) in enumerate(zip(one_by_one, batched)):
            assert_same_faces(single, faces)
            assert all(face["image_index"] == index for face in faces)


def test_input_kinds(pipe, tmp_path):
    photo = astronaut()
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    reference = pipe(photo)
    for given in (str(path), path, Image.fromarray(photo), torch.from_numpy(photo)):
        assert_same_faces(reference, pipe(given))
    assert len(pipe((photo, photo))) == 2  # a tuple is a list
    assert len(pipe(np.stack([photo, photo]))) == 2  # so is an (N, H, W, C) batch
    assert pipe([]) == []


def test_generators_stream(pipe):
    pulled = []

    def images():
        for index in range(12):
            pulled.append(index)
            yield astronaut()

    results = pipe(images(), batch_size=2)
    assert not isinstance(results, list)
    first = next(iter(results))
    assert len(first) == 1 and first[0]["image_index"] == 0
    workers = pipe.image_processor.num_workers or min(os.cpu_count() or 1, 4)
    assert len(pulled) <= 2 + 2 * workers + 1  # a bounded look-ahead, not the whole input
    assert len(list(results)) == 11


def test_thresholds(pipe, checkpoint):
    photo = astronaut()
    probabilities = pipe(photo)[0]["action_units"]
    assert pipe(photo, threshold=0.0)[0]["active_action_units"] == list(probabilities)
    assert pipe(photo, threshold=1.0)[0]["active_action_units"] == []
    name, value = next(iter(probabilities.items()))
    active = pipe(photo, threshold={name: value / 2})[0]["active_action_units"]
    assert name in active
    # Per-AU thresholds stored in the config are the default.
    pipe.model.config.au_thresholds = [0.01] * 12
    try:
        assert pipe(photo)[0]["active_action_units"] == list(probabilities)
    finally:
        pipe.model.config.au_thresholds = None
    assert pipe(photo, threshold=[0.99] * 12)[0]["active_action_units"] == []


def test_no_face_options(pipe):
    assert pipe(blank(), no_face="skip") == []
    fallback = pipe(blank(), no_face="fallback")
    assert len(fallback) == 1 and fallback[0]["landmark_backend"] == "template-fallback"
    np.testing.assert_allclose(fallback[0]["box"], [0, 0, 159, 119], atol=2)
    with pytest.raises(InputError, match=r"No face found in input 1 by the 'dlib'") as raised:
        pipe([astronaut(), blank()])
    assert isinstance(raised.value, ValueError) and raised.value.index == 1


def test_bad_inputs_and_options_raise_clear_errors(pipe, tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match=r"Could not read input 1 \('.*missing.png'\): no such file") as raised:
        pipe([astronaut(), str(missing)])
    assert (raised.value.index, raised.value.path, raised.value.reason) == (1, str(missing), "no such file.")
    with pytest.raises(InputError, match=r"Could not read input 0 \('.*'\): it is a folder, not an image file"):
        pipe(str(tmp_path))  # an existing folder is not "no such file"
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ValueError, match=r"input 0 \('.*notes.png'\).*not an image"):
        pipe(str(not_an_image))
    with pytest.raises(ValueError, match="unsupported input type"):
        pipe([{"image": "x"}])
    with pytest.raises(TypeError, match="unknown option.*'colour'"):
        pipe(astronaut(), colour="red")
    with pytest.raises(ValueError, match="top_k"):
        pipe(astronaut(), top_k=0)
    with pytest.raises(ValueError, match="one per AU"):
        pipe(astronaut(), threshold=[0.5, 0.5])
    with pytest.raises(ValueError, match="unknown AUs"):
        pipe(astronaut(), threshold={"AU99": 0.5})
    with pytest.raises(ValueError, match="batch_size"):
        pipe([astronaut()], batch_size=0)
    with pytest.raises(TypeError, match="only apply to a video"):
        pipe(astronaut(), video_fps=5)
    with pytest.raises(ValueError, match="video files"):
        pipe([astronaut(), "clip.mp4"])


def test_construction_checks(checkpoint):
    model = MF2ForFacialStateRecognition.from_pretrained(checkpoint)
    with pytest.raises(ValueError, match="needs an MF2ImageProcessor"):
        FacialStatePipeline(model=model, device="cpu")
    shuffled = MF2ImageProcessor(size=SIZE, au_names=list(reversed(model.config.au_names)))
    with pytest.raises(ValueError, match="same AUs in the same order"):
        FacialStatePipeline(model=model, image_processor=shuffled, device="cpu")


def test_dtype_and_device_are_passed_through(checkpoint, pipe):
    half = pipeline("facial-state", model=str(checkpoint), device="cpu", dtype=torch.bfloat16)
    assert half.model.dtype == torch.bfloat16
    reference, faces = pipe(astronaut())[0], half(astronaut())[0]
    np.testing.assert_allclose(
        list(faces["action_units"].values()), list(reference["action_units"].values()), atol=0.05
    )
    model = MF2ForFacialStateRecognition.from_pretrained(checkpoint)
    direct = FacialStatePipeline(
        model=model, image_processor=pipe.image_processor, device=torch.device("cpu"), dtype=torch.bfloat16
    )
    assert direct.model.dtype == torch.bfloat16 and isinstance(direct(astronaut())[0]["box"][0], float)


def test_save_pretrained_keeps_the_processor(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    config = json.loads((tmp_path / "config.json").read_text())
    # Exported under its own name, so loading with the installed package needs no `trust_remote_code`.
    assert config["custom_pipelines"] == {
        REMOTE_TASK: {
            "impl": "pipeline_mf2.FacialStatePipeline",
            "pt": ["AutoModelForImageClassification"],
            "type": "image",
        }
    }
    reloaded = pipeline("facial-state", model=str(tmp_path), device="cpu")
    assert type(reloaded) is FacialStatePipeline
    assert isinstance(reloaded.processor, MF2Processor)
    assert_same_faces(pipe(astronaut()), reloaded(astronaut()), atol=0)


def test_save_pretrained_of_a_pipeline_with_an_adapter_is_refused(checkpoint, tmp_path):
    """Saved, the folder would hold the adapter alone and not load back (no config.json, no base weights)."""
    from mf2.dfn import DFNConfig, get_dfn_model

    base = MF2ForFacialStateRecognition.from_pretrained(checkpoint)
    get_dfn_model(base, DFNConfig(num_layers=2, bottleneck_size=8)).save_pretrained(tmp_path / "adapter")
    adapted = pipeline("facial-state", model=str(checkpoint), adapter=str(tmp_path / "adapter"), device="cpu")
    with pytest.raises(ValueError, match="runs a DFN adapter, which a pipeline folder cannot hold"):
        adapted.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


@pytest.fixture
def processor_remote_code():
    """Export the processors' code too, as `mf2/__init__` will once the pipeline is integrated; restore afterwards."""
    saved = {cls: cls.__dict__.get("_auto_class") for cls in (MF2ImageProcessor, MF2Processor)}
    MF2ImageProcessor.register_for_auto_class("AutoImageProcessor")
    MF2Processor.register_for_auto_class("AutoProcessor")
    yield
    for cls, value in saved.items():
        if value is None:
            cls._auto_class = None
        else:
            cls._auto_class = value


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["mf2"] = None  # the package cannot be imported: everything must come from the checkpoint
    import numpy as np
    from transformers import pipeline

    folder, image = sys.argv[1], sys.argv[2]
    try:
        pipeline(model=folder)
        refused = False
    except ValueError as error:
        refused = "trust_remote_code" in str(error)
    pipe = pipeline(model=folder, trust_remote_code=True, device="cpu")
    faces = pipe(image, explain=True)
    print()  # the refused attempt may have printed a "run the custom code? [y/N]" prompt without a newline
    print(json.dumps({"refused": refused, "class": type(pipe).__module__, "faces": faces}))
    """
)


def test_saved_pipeline_loads_as_remote_code_without_the_package(pipe, tmp_path, processor_remote_code):
    folder, home = tmp_path / "exported", tmp_path / "hf-home"
    pipe.save_pretrained(folder)
    for name in ("pipeline_mf2.py", "facs.py", "video.py", "processing_mf2.py", "landmarks.py", "modeling_mf2.py"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert "AutoModelForImageClassification" in config["auto_map"]
    image = tmp_path / "photo.png"
    Image.fromarray(astronaut()).save(image)
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(image)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["refused"] and result["class"].startswith("transformers_modules.")
    local = pipe(str(image), explain=True)
    assert_same_faces(local, result["faces"], atol=1e-6)
    assert result["faces"][0]["explanation"] == local[0]["explanation"]


def test_bgr_arrays_are_read_with_channel_order_bgr(pipe, tmp_path):
    """OpenCV's BGR arrays: `channel_order="bgr"` gives what the RGB array gives; files and PIL images are never
    swapped; a bad value is refused."""
    photo = astronaut()
    reference = pipe(photo)
    bgr = np.ascontiguousarray(photo[..., ::-1])
    assert_same_faces(reference, pipe(bgr, channel_order="bgr"))
    assert_same_faces(reference, pipe(torch.from_numpy(bgr), channel_order="bgr"))
    assert_same_faces(reference, pipe(Image.fromarray(photo), channel_order="bgr"))  # PIL: RGB whatever it says
    swapped = pipe(bgr)  # read as RGB: other colours, other numbers
    assert not np.allclose(list(swapped[0]["action_units"].values()), list(reference[0]["action_units"].values()))
    with pytest.raises(ValueError, match="channel_order"):
        pipe(photo, channel_order="bgra")
    assert "channel_order" in FacialStatePipeline.__doc__ and "RGB" in FacialStatePipeline.__doc__
