"""`mf2 analyze`: images, folders and videos to JSON lines / CSV, annotated PNGs, errors, the untrained default model."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from face_images import ASTRONAUT_FACE_CROP, astronaut
from PIL import Image
from test_pipeline_mf2 import save_tiny_checkpoint

from mf2 import AU_NAMES, analyze
from mf2.cli import main as cli_main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mf2"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_example_images_to_jsonl_with_annotations(checkpoint, tmp_path, capsys):
    output, annotated = tmp_path / "faces.jsonl", tmp_path / "annotated"
    argv = ["analyze", str(EXAMPLES), "--model", str(checkpoint), "-o", str(output), "--annotate", str(annotated),
            "--all-faces", "--explain", "--landmarks"]  # fmt: skip
    assert cli_main(argv) == 0
    records = read_jsonl(output)
    assert [(Path(r["path"]).name, r["face"]) for r in records] == [
        ("astronaut.png", 0), ("two_faces.png", 0), ("two_faces.png", 1)
    ]  # fmt: skip
    for record in records:
        assert record["model_trained"] is True and record["model"] == str(checkpoint)
        assert len(record["action_units"]) == 12 and len(record["landmarks"]) == 68
        assert record["explanation"].startswith("The person") and "features" not in record
    assert "3 face(s), 0 error(s)" in capsys.readouterr().err
    for name, size in (("astronaut.png", (512, 512)), ("two_faces.png", (768, 384))):
        drawn = Image.open(annotated / name)
        assert drawn.height >= size[1] and drawn.width > size[0]  # the image plus one panel of bars per face
        assert np.asarray(drawn)[:, size[0] :].mean() > 200  # the panels are mostly white


def test_csv_has_one_column_per_au_and_emotion(checkpoint, tmp_path):
    output = tmp_path / "faces.csv"
    assert cli_main(["analyze", str(EXAMPLES / "astronaut.png"), "--model", str(checkpoint), "-o", str(output),
                     "--threshold", "0.0"]) == 0  # fmt: skip
    with output.open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 1
    row = rows[0]
    assert row["active_action_units"] == ";".join(AU_NAMES)
    emotions = {
        key: float(value) for key, value in row.items() if key.startswith("emotion_") and key != "emotion_score"
    }
    assert len(emotions) == 8 and sum(emotions.values()) == pytest.approx(1.0, abs=1e-4)
    assert row["emotion"] == max(emotions, key=emotions.get).removeprefix("emotion_")
    assert float(row["x1"]) < float(row["x2"])


def test_faceless_and_unreadable_files_are_reported_and_the_run_goes_on(checkpoint, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(EXAMPLES / "astronaut.png", folder / "a.png")
    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(folder / "b_blank.png")
    (folder / "c_broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image or video extension")
    output = tmp_path / "out.jsonl"
    assert cli_main(["analyze", str(folder), "--model", str(checkpoint), "-o", str(output)]) == 1
    records = {Path(r["path"]).name: r for r in read_jsonl(output)}
    assert set(records) == {"a.png", "b_blank.png", "c_broken.jpg"}
    assert records["a.png"]["face"] == 0
    assert records["b_blank.png"]["face"] is None and "error" not in records["b_blank.png"]
    assert "corrupt" in records["c_broken.jpg"]["error"] or "not an image" in records["c_broken.jpg"]["error"]
    assert "1 error(s)" in capsys.readouterr().err


def test_missing_paths_and_bad_options_fail_clearly(checkpoint, tmp_path, capsys):
    assert cli_main(["analyze", str(tmp_path / "nowhere.png"), "--model", str(checkpoint)]) == 2
    assert "No such file or folder" in capsys.readouterr().err
    assert cli_main(["analyze", str(EXAMPLES), "--model", str(checkpoint), "--batch-size", "0"]) == 2
    with pytest.raises(SystemExit):
        cli_main(["analyze", str(EXAMPLES), "--video-fps", "2", "--every-n-frames", "3"])


def test_no_face_error_stops_with_the_file_named(checkpoint, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(blank)
    argv = ["analyze", str(EXAMPLES / "astronaut.png"), str(blank), "--model", str(checkpoint), "--no-face", "error",
            "-o", str(tmp_path / "out.jsonl")]  # fmt: skip
    assert cli_main(argv) == 1
    assert f"{blank}: No face found" in capsys.readouterr().err


def test_video_records_per_sampled_frame_and_annotated_frames(checkpoint, tmp_path):
    from mf2.video import write_video

    pytest.importorskip("av")
    face = np.asarray(Image.fromarray(astronaut()).crop(ASTRONAUT_FACE_CROP).resize((208, 224)))
    frames = [np.pad(face, ((16, 16), (8 + 4 * k, 88 - 4 * k), (0, 0)), constant_values=100) for k in range(10)]
    frames[5] = np.full_like(frames[0], 100)  # one frame without a face
    video = tmp_path / "clip.mp4"
    write_video(video, frames, fps=10)
    output, annotated = tmp_path / "video.jsonl", tmp_path / "frames"
    assert cli_main(["analyze", str(video), "--model", str(checkpoint), "-o", str(output), "--every-n-frames", "5",
                     "--annotate", str(annotated), "--batch-size", "4"]) == 0  # fmt: skip
    records = read_jsonl(output)
    assert [(r["frame"], r["face"]) for r in records] == [(0, 0), (5, None)]
    assert records[0]["time"] == pytest.approx(0.0) and records[1]["time"] == pytest.approx(0.5)
    assert sorted(p.name for p in annotated.iterdir()) == ["clip_frame000000.png", "clip_frame000005.png"]


def test_untrained_model_is_flagged_in_every_record(checkpoint, tmp_path, capsys):
    marked = tmp_path / "untrained"
    shutil.copytree(checkpoint, marked)
    (marked / analyze.UNTRAINED_MARKER).write_text('{"model_trained": false}')
    output = tmp_path / "out.jsonl"
    assert cli_main(["analyze", str(EXAMPLES / "astronaut.png"), "--model", str(marked), "-o", str(output)]) == 0
    assert all(record["model_trained"] is False for record in read_jsonl(output))
    assert "UNTRAINED" in capsys.readouterr().err


def test_default_model_is_built_once_and_cached(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MF2_HOME", str(tmp_path / "home"))
    builds = []

    def fake_build(target):  # the real build (offline encoders, ~200 MB) is covered by the slow test below
        builds.append(target)
        shutil.copytree(checkpoint, target)
        (Path(target) / analyze.UNTRAINED_MARKER).write_text('{"model_trained": false}')
        return Path(target)

    monkeypatch.setattr(analyze, "build_untrained_model", fake_build)
    for _ in range(2):
        output = tmp_path / "out.jsonl"
        assert cli_main(["analyze", str(EXAMPLES / "astronaut.png"), "-o", str(output)]) == 0
        record = read_jsonl(output)[0]
        assert record["model"] == "untrained-offline" and record["model_trained"] is False
    assert builds == [tmp_path / "home" / "models" / "untrained-offline"]
    assert "heads are UNTRAINED" in capsys.readouterr().err


@pytest.mark.slow
def test_real_untrained_offline_model(offline_encoders, tmp_path):
    folder = analyze.build_untrained_model(tmp_path / "untrained-offline")
    assert analyze.is_untrained(folder)
    pipe = analyze.load_pipeline(folder, device="cpu")
    assert pipe.image_processor.size == analyze.DEFAULT_CROP_SIZE
    assert pipe.model.config.vision_config.hidden_size == 384
    faces = pipe(str(EXAMPLES / "astronaut.png"), explain=True)
    assert len(faces) == 1 and len(faces[0]["action_units"]) == 12
