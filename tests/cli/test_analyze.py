"""`mf2 analyze`: images, folders and videos to JSON lines / CSV, annotated PNGs, errors, the model's identity."""

import csv
import errno
import io
import json
import os
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from face_images import ASTRONAUT_FACE_CROP, astronaut
from jsonl import read_jsonl
from PIL import Image
from test_pipeline_mf2 import save_tiny_checkpoint

from mf2 import AU_NAMES
from mf2.cli import analyze, analyze_run
from mf2.cli import main as cli_main
from mf2.cli.analyze_inputs import expand_paths

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mf2"))


def test_example_images_to_jsonl_with_annotations(checkpoint, tmp_path, capsys):
    output, annotated = tmp_path / "faces.jsonl", tmp_path / "annotated"
    argv = [
        "analyze",
        str(EXAMPLES),
        "--model",
        str(checkpoint),
        "-o",
        str(output),
        "--annotate",
        str(annotated),
        "--all-faces",
        "--explain",
        "--landmarks",
    ]
    assert cli_main(argv) == 0
    records = read_jsonl(output)
    assert [(Path(r["path"]).name, r["face"]) for r in records] == [
        ("astronaut.png", 0),
        ("two_faces.png", 0),
        ("two_faces.png", 1),
    ]
    for record in records:
        # A random tiny model: its config says untrained, and it has no published name.
        assert record["model_trained"] is False and record["model"] == str(checkpoint) and "adapter" not in record
        assert len(record["action_units"]) == 12 and len(record["landmarks"]) == 68
        assert record["explanation"].startswith("The person") and "features" not in record
    assert "3 face(s), 0 error(s)" in capsys.readouterr().err
    for name, size in (("astronaut.png", (512, 512)), ("two_faces.png", (768, 384))):
        drawn = Image.open(annotated / name)
        assert drawn.height >= size[1] and drawn.width > size[0]  # the image plus one panel of bars per face
        assert np.asarray(drawn)[:, size[0] :].mean() > 200  # the panels are mostly white


def test_csv_has_one_column_per_au_and_emotion(checkpoint, tmp_path):
    output = tmp_path / "faces.csv"
    assert (
        cli_main(
            [
                "analyze",
                str(EXAMPLES / "astronaut.png"),
                "--model",
                str(checkpoint),
                "-o",
                str(output),
                "--threshold",
                "0.0",
            ]
        )
        == 0
    )
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
    assert row["adapter"] == ""  # the column is there for every run; empty: no --adapter


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
    assert cli_main(["analyze", str(EXAMPLES), "--video-fps", "2", "--every-n-frames", "3"]) == 2
    assert "not allowed with" in capsys.readouterr().err


def test_a_video_without_the_video_extra_is_one_line_before_anything_runs(checkpoint, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read: the check comes first")
    output = tmp_path / "out.jsonl"
    assert cli_main(["analyze", str(EXAMPLES), str(clip), "--model", str(checkpoint), "-o", str(output)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "clip.mp4 is a video" in line and "pip install 'mf2[video]'" in line and not output.exists()


def test_a_mistyped_folder_path_is_a_missing_folder_not_a_hub_id(tmp_path, monkeypatch, capsys):
    from mf2.local_files import names_local_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    assert names_local_path("outputs/my-dfn") and not names_local_path("someone/my-dfn")
    assert cli_main(["analyze", str(EXAMPLES), "--adapter", "outputs/my-dfn"]) == 2
    assert "no such folder" in capsys.readouterr().err


def _bad_flag_cases():
    """(extra argv, exit status, words the one-line message must hold); `{tmp}` is the test's folder, `{model}` the
    checkpoint. Exit 2: the command line cannot run as given; 1: the run failed (model download, output file)."""
    cases = [
        (["--device", "banana"], 2, "not a device"),
        (["--threshold", "2"], 2, "probability from 0 to 1"),
        (["--threshold", "-0.5"], 2, "probability from 0 to 1"),
        (["--threshold", "nan"], 2, "probability from 0 to 1"),
        (["--video-fps", "0"], 2, "--video-fps: must be a number > 0"),
        (["--every-n-frames", "0"], 2, "--every-n-frames: must be a whole number >= 1"),
        (["--detect-every", "0"], 2, "--detect-every: must be a whole number >= 1"),
        (["--landmark-backend", "opencv"], 2, "Unknown landmark_backend"),
        (["--model", "{tmp}/no/such/model"], 2, "no such folder"),
        (["--model", "{tmp}/not-a-model"], 2, "holds no config.json"),
        (["--model", "nobody-here/not-a-cached-model"], 1, "HF_HUB_OFFLINE=1"),
        (["-o", "{tmp}/a-file.txt/out.jsonl"], 1, "cannot write the output file"),
        (["-o", "{tmp}/a-file.txt/out.jsonl", "--resume"], 1, "Not a directory: "),
        (["--annotate", "{tmp}/a-file.txt"], 2, "--annotate takes a folder"),
        (["--landmarks", "-o", "{tmp}/faces.csv"], 2, "--landmarks: CSV has one column per value"),
        (["--landmarks", "--format", "csv"], 2, "--landmarks: CSV has one column per value"),
    ]
    import torch

    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], 2, "no CUDA GPU"))
    return cases


@pytest.mark.parametrize(("extra", "status", "words"), _bad_flag_cases())
def test_bad_flags_end_in_one_clear_line(checkpoint, tmp_path, capsys, monkeypatch, extra, status, words):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "weights.txt").write_text("no config.json here")
    (tmp_path / "a-file.txt").write_text("a file, not a folder")
    extra = [item.format(tmp=tmp_path, model=checkpoint) for item in extra]
    model = [] if "--model" in extra else ["--model", str(checkpoint)]
    assert cli_main(["analyze", str(EXAMPLES / "astronaut.png"), *model, "--no-progress", *extra]) == status
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mf2 analyze: ") and words in lines[0], lines


def test_urls_are_kept_as_given(checkpoint, tmp_path):
    url = "http://127.0.0.1:9/photos/face.png"  # port 9: refused at once
    assert expand_paths([url, str(EXAMPLES / "astronaut.png")])[0] == url
    output = tmp_path / "out.jsonl"
    assert cli_main(["analyze", url, "--model", str(checkpoint), "-o", str(output), "--no-progress"]) == 1
    (record,) = read_jsonl(output)
    assert record["path"] == url and f"'{url}'" in record["error"]


def test_records_keep_input_order_and_name_each_input(checkpoint, tmp_path):
    """Unreadable files get their error record in their place, named by their own position, not "image 0"."""
    from mf2.video import write_video

    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(EXAMPLES / "astronaut.png", folder / "a.png")
    (folder / "b_broken.jpg").write_bytes(b"not a jpeg")
    write_video(folder / "c_clip.mp4", _face_frames(2), fps=10)
    shutil.copy(EXAMPLES / "two_faces.png", folder / "d.png")
    (folder / "e_broken.png").write_bytes(b"not a png")
    output = tmp_path / "out.jsonl"
    assert cli_main(["analyze", str(folder), "--model", str(checkpoint), "-o", str(output), "--no-progress"]) == 1
    records = read_jsonl(output)
    assert [Path(r["path"]).name for r in records] == [
        "a.png",
        "b_broken.jpg",
        "c_clip.mp4",
        "c_clip.mp4",
        "d.png",
        "e_broken.png",
    ]
    assert "input 1 (" in records[1]["error"] and "input 4 (" in records[5]["error"]
    assert "image 0" not in records[1]["error"] + records[5]["error"]


def _face_frames(count: int) -> list[np.ndarray]:
    face = np.asarray(Image.fromarray(astronaut()).crop(ASTRONAUT_FACE_CROP).resize((208, 224)))
    shifts = [2 * (k % 40) for k in range(count)]  # drifting right, back every 40 frames
    return [np.pad(face, ((16, 16), (8 + dx, 88 - dx), (0, 0)), constant_values=100) for dx in shifts]


def _h264(path: Path, count: int, **options) -> Path:
    """An H.264 video of the astronaut's face (the codec whose cut files fail mid-stream rather than end early)."""
    import av

    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.height, stream.width = 256, 304
        stream.pix_fmt = "yuv420p"
        for array in _face_frames(count):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    cut = path.with_name(f"{path.stem}_cut{round(fraction * 100)}{path.suffix}")
    cut.write_bytes(data[: int(len(data) * fraction)])
    return cut


def test_videos_that_cannot_be_fully_decoded_are_error_records_and_the_run_goes_on(checkpoint, tmp_path, capsys):
    pytest.importorskip("av")
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(EXAMPLES / "astronaut.png", folder / "a.png")
    source = _h264(tmp_path / "clip.mp4", 60, movflags="faststart")
    shutil.move(_cut(source, 0.5), folder / "b_half.mp4")
    shutil.move(_cut(source, 0.9), folder / "c_most.mp4")
    shutil.move(_cut(_h264(tmp_path / "clip.mkv", 60), 0.5), folder / "d_half.mkv")
    shutil.copy(source, folder / "e_good.mp4")
    output = tmp_path / "out.jsonl"
    argv = [
        "analyze",
        str(folder),
        "--model",
        str(checkpoint),
        "-o",
        str(output),
        "--every-n-frames",
        "30",
        "--no-progress",
    ]
    assert cli_main(argv) == 1
    records = read_jsonl(output)
    by_file: dict[str, list[dict]] = {}
    for record in records:
        by_file.setdefault(Path(record["path"]).name, []).append(record)
    assert list(by_file) == ["a.png", "b_half.mp4", "c_most.mp4", "d_half.mkv", "e_good.mp4"]
    for name in ("b_half.mp4", "c_most.mp4", "d_half.mkv"):
        *frames, failure = by_file[name]
        assert "error" not in str(frames) and "Could not decode video" in failure["error"], name
        assert failure["frame"] >= max([f["frame"] for f in frames], default=-1) and failure["frame"] < 60, name
    assert [r["frame"] for r in by_file["e_good.mp4"]] == [0, 30] and "error" not in str(by_file["e_good.mp4"])
    assert "3 error(s)" in capsys.readouterr().err


def test_an_animated_gif_says_only_its_first_frame_is_analysed(checkpoint, tmp_path):
    frames = [Image.fromarray(frame) for frame in _face_frames(3)]
    gif = tmp_path / "moving.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    output = tmp_path / "out.jsonl"
    argv = ["analyze", str(gif), str(EXAMPLES / "astronaut.png"), "--model", str(checkpoint), "-o", str(output)]
    assert cli_main(argv) == 0
    animated, still = read_jsonl(output)
    assert animated["face"] == 0 and "animated image of 3 frames: only the first frame" in animated["warning"]
    assert "warning" not in still


def test_no_progress_silences_the_weight_loading_bar(checkpoint, tmp_path, capsys):
    import transformers.utils.logging as hf_logging

    argv = ["analyze", str(EXAMPLES / "astronaut.png"), "--model", str(checkpoint), "-o", str(tmp_path / "out.jsonl")]
    try:
        assert cli_main(argv) == 0
        assert "Loading weights" in capsys.readouterr().err  # the bar this test is about
        assert cli_main([*argv, "--no-progress"]) == 0
        assert "Loading weights" not in capsys.readouterr().err
    finally:
        hf_logging.enable_progress_bar()


def test_no_face_error_stops_with_the_file_named(checkpoint, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((100, 100, 3), 90, np.uint8)).save(blank)
    argv = [
        "analyze",
        str(EXAMPLES / "astronaut.png"),
        str(blank),
        "--model",
        str(checkpoint),
        "--no-face",
        "error",
        "-o",
        str(tmp_path / "out.jsonl"),
    ]
    assert cli_main(argv) == 1
    message = capsys.readouterr().err
    assert f"{blank}: no face found" in message and "--no-face skip" in message and "no_face=" not in message


def test_video_records_per_sampled_frame_and_annotated_frames(checkpoint, tmp_path):
    from mf2.video import write_video

    pytest.importorskip("av")
    face = np.asarray(Image.fromarray(astronaut()).crop(ASTRONAUT_FACE_CROP).resize((208, 224)))
    frames = [np.pad(face, ((16, 16), (8 + 4 * k, 88 - 4 * k), (0, 0)), constant_values=100) for k in range(10)]
    frames[5] = np.full_like(frames[0], 100)  # one frame without a face
    video = tmp_path / "clip.mp4"
    write_video(video, frames, fps=10)
    output, annotated = tmp_path / "video.jsonl", tmp_path / "frames"
    assert (
        cli_main(
            [
                "analyze",
                str(video),
                "--model",
                str(checkpoint),
                "-o",
                str(output),
                "--every-n-frames",
                "5",
                "--annotate",
                str(annotated),
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    records = read_jsonl(output)
    assert [(r["frame"], r["face"]) for r in records] == [(0, 0), (5, None)]
    assert records[0]["time"] == pytest.approx(0.0) and records[1]["time"] == pytest.approx(0.5)
    assert sorted(p.name for p in annotated.iterdir()) == ["clip_frame000000.png", "clip_frame000005.png"]
    # Every frame, searched every 3rd frame and followed in between, or searched every frame: a record per frame, the
    # faceless one included (the tracker searches when the face is gone).
    for detect_every in ("3", "1"):
        assert (
            cli_main(
                [
                    "analyze",
                    str(video),
                    "--model",
                    str(checkpoint),
                    "-o",
                    str(output),
                    "--detect-every",
                    detect_every,
                    "--no-progress",
                ]
            )
            == 0
        )
        assert [r["face"] for r in read_jsonl(output)] == [0, 0, 0, 0, 0, None, 0, 0, 0, 0]


def test_trained_flag_name_and_version_travel_with_the_config(checkpoint, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert cli_main(["analyze", str(EXAMPLES / "astronaut.png"), "--model", str(checkpoint), "-o", str(output)]) == 0
    assert read_jsonl(output)[0]["model_trained"] is False
    assert "is not a trained model" in capsys.readouterr().err
    # Re-saving an untrained model (here through the pipeline) keeps it untrained: the flag is in config.json.
    resaved = tmp_path / "resaved"
    analyze.load_pipeline(checkpoint, device="cpu").save_pretrained(resaved)
    assert cli_main(["analyze", str(EXAMPLES / "astronaut.png"), "--model", str(resaved), "-o", str(output)]) == 0
    assert read_jsonl(output)[0]["model_trained"] is False
    assert "is not a trained model" in capsys.readouterr().err
    config = json.loads((resaved / "config.json").read_text())
    config.update(trained=True, model_name="tiny-mf2", model_version="0.3")
    (resaved / "config.json").write_text(json.dumps(config))
    assert cli_main(["analyze", str(EXAMPLES / "astronaut.png"), "--model", str(resaved), "-o", str(output)]) == 0
    record = read_jsonl(output)[0]
    assert (record["model"], record["model_version"], record["model_trained"]) == ("tiny-mf2", "0.3", True)
    assert "is not a trained model" not in capsys.readouterr().err


def test_without_model_the_shipped_model_analyses_the_photo(tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert cli_main(["analyze", str(EXAMPLES / "astronaut.png"), "-o", str(output), "--explain"]) == 0
    record = read_jsonl(output)[0]
    assert (record["model"], record["model_trained"]) == ("mf2-base", True) and record["model_version"]
    assert record["emotion"]["label"] == "happiness" and "AU12" in record["active_action_units"]
    assert "not a trained model" not in capsys.readouterr().err


def test_a_non_finite_model_output_is_an_error_record(checkpoint, tmp_path, monkeypatch, capsys):
    load = analyze.load_pipeline

    def poisoned_pipeline(*args, **kwargs):
        pipe = load(*args, **kwargs)
        forward = pipe.model.forward

        def nan_forward(*inputs, **options):
            output = forward(*inputs, **options)
            output.emotion_logits = torch.full_like(output.emotion_logits, float("nan"))
            return output

        pipe.model.forward = nan_forward
        return pipe

    monkeypatch.setattr(analyze, "load_pipeline", poisoned_pipeline)
    output = tmp_path / "out.jsonl"
    assert cli_main(["analyze", str(EXAMPLES / "astronaut.png"), "--model", str(checkpoint), "-o", str(output)]) == 1
    record = read_jsonl(output)[0]
    assert record["face"] is None and "not finite" in record["error"] and "action_units" not in record
    assert "1 error(s)" in capsys.readouterr().err


def _clash_cases():
    """(paths, extra argv, words of the one-line refusal); `{d}` is a folder holding a.png and sub/b.png, `{tmp}` the
    test's folder (with `annotated/a.png`, a photo mf2 did not write, and `link`, a symbolic link to `{d}`)."""
    return [
        (["{d}"], ["--annotate", "{d}"], "is, or is inside, the input folder"),
        (["{d}"], ["--annotate", "{d}/sub"], "is, or is inside, the input folder"),
        (["{d}"], ["--annotate", "{d}/new/annotated"], "is, or is inside, the input folder"),
        (["{d}"], ["--annotate", "{tmp}/link"], "is, or is inside, the input folder"),
        (["{d}/a.png"], ["--annotate", "{d}"], "holds the input"),
        (["{d}"], ["--annotate", "{tmp}/annotated"], "would overwrite"),
        (["{d}/a.png"], ["-o", "{d}/a.png"], "is the input"),
        (["{d}"], ["-o", "{d}/sub/b.png"], "is the input"),
        (["{d}/a.png"], ["-o", "{tmp}/link/a.png"], "is the input"),
        (["{d}"], ["-o", "{d}/x.png"], "inside the input folder"),
        (["{d}"], ["-o", "{d}/new/x.PNG"], "inside the input folder"),
    ]


@pytest.mark.parametrize(("paths", "extra", "words"), _clash_cases())
def test_outputs_that_would_touch_an_input_are_refused_before_the_run(
    checkpoint, tmp_path, capsys, paths, extra, words
):
    """`-o` or `--annotate` onto an input, or into an input folder: one line, exit 2, the inputs byte for byte."""
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLES / "astronaut.png", folder / "a.png")
    shutil.copy(EXAMPLES / "two_faces.png", folder / "sub" / "b.png")
    (tmp_path / "annotated").mkdir()
    shutil.copy(EXAMPLES / "two_faces.png", tmp_path / "annotated" / "a.png")  # someone's photo, not an annotation
    (tmp_path / "link").symlink_to(folder, target_is_directory=True)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()}
    argv = [item.format(d=folder, tmp=tmp_path) for item in [*paths, *extra]]
    assert cli_main(["analyze", *argv, "--model", str(checkpoint), "--no-progress"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mf2 analyze: ") and words in lines[0], lines
    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and not path.is_symlink()}
    assert after == before  # nothing written, nothing replaced


def test_outputs_beside_the_inputs_run_and_a_rerun_replaces_only_its_own_annotations(checkpoint, tmp_path):
    """Records in a non-image file of the input folder and PNGs in a folder outside it: allowed; the PNGs are marked
    as mf2's, so a repeated run (or --resume) may replace them."""
    folder, annotated = tmp_path / "d", tmp_path / "annotated"
    folder.mkdir()
    shutil.copy(EXAMPLES / "astronaut.png", folder / "a.png")
    photo = (folder / "a.png").read_bytes()
    argv = [
        "analyze",
        str(folder),
        "--model",
        str(checkpoint),
        "-o",
        str(folder / "records.jsonl"),
        "--annotate",
        str(annotated),
        "--no-progress",
    ]
    for _ in range(2):
        assert cli_main(argv) == 0
        assert [Path(r["path"]).name for r in read_jsonl(folder / "records.jsonl")] == ["a.png"]
        assert (folder / "a.png").read_bytes() == photo and sorted(p.name for p in folder.iterdir()) == [
            "a.png",
            "records.jsonl",
            "records.jsonl.resume.json",  # its options, for a --resume after a kill
        ]
        assert Image.open(annotated / "a.png").info.get("Software") == "mf2 analyze"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_run_killed_at_any_byte_resumes_to_the_uninterrupted_output(checkpoint, tmp_path, monkeypatch, fmt):
    """A run is killed: its output stops at any byte (mid-line, or between two faces of one image). `--resume`
    drops the truncated line and the unfinished image and writes exactly what the uninterrupted run wrote."""
    load, loaded = analyze._load, {}

    def load_once(model, args):  # one model for the 21 or 13 runs
        if model not in loaded:
            loaded[model] = load(model, args)
        return loaded[model]

    monkeypatch.setattr(analyze, "_load", load_once)
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(EXAMPLES / "two_faces.png", folder / "a.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(folder / "b_blank.png")
    shutil.copy(EXAMPLES / "two_faces.png", folder / "c.png")
    # Batches of one image's 2 faces, in the whole run and in every resumed one: the same numbers to the last bit.
    argv = ["analyze", str(folder), "--model", str(checkpoint), "--all-faces", "--batch-size", "2", "--no-progress"]
    whole = tmp_path / f"whole.{fmt}"
    assert cli_main([*argv, "-o", str(whole)]) == 0
    data = whole.read_bytes()
    lines = data.splitlines(keepends=True)
    records = read_jsonl(whole) if fmt == "jsonl" else list(csv.DictReader(whole.open(newline="")))
    assert [(Path(r["path"]).name, str(r["face"]), str(r["faces"])) for r in records] == [
        ("a.png", "0", "2"),
        ("a.png", "1", "2"),
        ("b_blank.png", "None" if fmt == "jsonl" else "", "0"),
        ("c.png", "0", "2"),
        ("c.png", "1", "2"),
    ]
    ends = np.cumsum([len(line) for line in lines]).tolist()
    starts = [0, *ends[:-1]]
    middles = [(start + end) // 2 for start, end in zip(starts, ends)]
    # JSON lines, 20 kills: every line end (between a's faces, between c's faces, the whole file), 1 byte into each
    # line, its middle, its last byte but the line end. CSV, 12: every line end and middle, the header's too.
    kills = {*ends, *middles}
    if fmt == "jsonl":
        kills |= {*(start + 1 for start in starts), *(end - 1 for end in ends)}
    assert len(kills) == (20 if fmt == "jsonl" else 12)
    for kill in sorted(kills):
        output = tmp_path / f"killed-{kill}.{fmt}"
        output.write_bytes(data[:kill])
        assert cli_main([*argv, "-o", str(output), "--resume"]) == 0, kill
        assert output.read_bytes() == data, f"killed at byte {kill} of {len(data)}"


def test_a_faceless_stretch_is_written_as_it_goes_and_its_images_let_go(checkpoint, tmp_path, monkeypatch):
    """40 faceless images with --annotate: each record is in the output file soon after its image is read, not at
    the end, and the images kept for drawing are let go once drawn: memory is bounded by the batch, not the input."""
    folder, output = tmp_path / "blank", tmp_path / "out.jsonl"
    folder.mkdir()
    for index in range(40):
        Image.fromarray(np.full((48, 48, 3), 3 * index, np.uint8)).save(folder / f"{index:02d}.png")
    read_image, images, seen = analyze_run.read_image, [], []

    def read_and_look(index, path, keep_image):  # at each read: (images read, records written, images alive)
        entry, image = read_image(index, path, keep_image)
        images.append(weakref.ref(image))
        alive = sum(image() is not None for image in images)
        seen.append((index + 1, len(output.read_text().splitlines()) if output.exists() else 0, alive))
        return entry, image

    monkeypatch.setattr(analyze_run, "read_image", read_and_look)
    argv = [
        "analyze",
        str(folder),
        "--model",
        str(checkpoint),
        "-o",
        str(output),
        "--annotate",
        str(tmp_path / "annotated"),
        "--batch-size",
        "2",
        "--no-progress",
    ]
    assert cli_main(argv) == 0
    assert len(read_jsonl(output)) == 40
    bound = 2 + 2 * 4 + 2 + 2  # the batch, the pipeline's look-ahead (up to 4 threads), a pass's inputs, in hand
    assert max(read - written for read, written, _ in seen) <= bound
    assert max(kept for *_, kept in seen) <= bound


def _one_line(capsys) -> str:
    """The run's one line on stderr (no traceback), beside the untrained model's warning."""
    lines = [
        line for line in capsys.readouterr().err.splitlines() if line.strip() and "not a trained model" not in line
    ]
    assert len(lines) == 1 and lines[0].startswith("mf2 analyze: "), lines
    return lines[0]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_file_names_of_any_bytes_are_carried_and_resumed(checkpoint, tmp_path, capsys, fmt):
    """A name that is not UTF-8 (`b\\xe9.png`) is analysed like any other, later inputs too: JSON carries it as its
    surrogate escape, CSV as its bytes; `--resume` recognises it."""
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(bytes(folder) + b"/b\xe9.png")
    shutil.copy(EXAMPLES / "astronaut.png", odd)
    shutil.copy(EXAMPLES / "astronaut.png", folder / "c.png")
    output = tmp_path / f"out.{fmt}"
    argv = ["analyze", str(folder), "--model", str(checkpoint), "--no-progress"]
    assert cli_main([*argv, "-o", str(output)]) == 0
    data = output.read_bytes()
    if fmt == "jsonl":
        data.decode("ascii")  # the odd byte is escaped: valid JSON, valid UTF-8
        paths = [os.fsencode(record["path"]) for record in read_jsonl(output)]
    else:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline="")))
        paths = [os.fsencode(row["path"]) for row in rows]
    assert paths == [os.fsencode(odd), os.fsencode(folder / "c.png")]
    resumed = tmp_path / f"resumed.{fmt}"
    resumed.write_bytes(data[: data.index(b"c.png")])  # killed in the second input's line
    assert cli_main([*argv, "-o", str(resumed), "--resume"]) == 0
    assert resumed.read_bytes() == data


def test_a_name_holding_a_unicode_line_separator_keeps_its_record(checkpoint, tmp_path):
    """JSON writes U+2028, U+2029 and U+0085 raw; `--resume` merges the records on "\\n" alone, so such a name's
    record is neither split into two damaged halves nor dropped."""
    folder = tmp_path / "in"
    folder.mkdir()
    names = ["a.png", "b\u2028c.png", "d\u0085e.png", "f.png"]
    for name in names:
        shutil.copy(EXAMPLES / "astronaut.png", folder / name)
    output = tmp_path / "out.jsonl"
    argv = ["analyze", str(folder), "--model", str(checkpoint), "--no-progress", "-o", str(output), "--resume"]
    assert cli_main(argv) == 0
    assert [Path(record["path"]).name for record in read_jsonl(output)] == names
    assert cli_main(argv) == 0  # resumed: every input recognised as done, nothing analysed twice
    assert [Path(record["path"]).name for record in read_jsonl(output)] == names


def test_resume_knows_an_input_however_it_is_spelled(checkpoint, tmp_path, monkeypatch, capsys):
    """An input done as `in/a.png` is done when the folder is given by its absolute path: not analysed again, its
    record not written twice; each record keeps the spelling it was given."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(EXAMPLES / "astronaut.png", folder / name)
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "out.jsonl"
    options = ["--model", str(checkpoint), "--no-progress", "-o", str(output), "--resume"]
    assert cli_main(["analyze", "in/a.png", *options]) == 0
    capsys.readouterr()
    assert cli_main(["analyze", str(folder), *options]) == 0
    assert "1 file(s) analysed by 1 process(es), 1 already in" in capsys.readouterr().err
    assert [record["path"] for record in read_jsonl(output)] == ["in/a.png", str(folder / "b.png")]


def test_an_adapter_that_cannot_be_loaded_is_named_not_the_model(checkpoint, capsys, monkeypatch, tmp_path):
    """`--adapter outputs/my-dfn` where no such folder is (an `owner/name` form, so looked up on the Hub) fails as the
    adapter's load, in one line with its fix; it said "could not load the model" and blamed the base model. Run in an
    empty folder: the relative path must not meet a checkout's own `outputs/`."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    argv = ["analyze", str(EXAMPLES / "astronaut.png"), "--model", str(checkpoint), "--adapter", "outputs/my-dfn"]
    assert cli_main([*argv, "--no-progress"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("mf2 analyze: could not load the DFN adapter outputs/my-dfn: ")
    assert line.endswith("(pass the --output_dir of `mf2 finetune`, or the Hub id of a DFN adapter)")


def _failing_write(monkeypatch, failure: BaseException, at: int):
    """`os.write` into the records' file that writes half of the `at`-th input's records, then raises `failure`."""
    from mf2.cli import analyze_records as records

    write, calls = os.write, []

    def write_then_fail(descriptor, data):
        if bytes(data[:9]) == b'{"path": ':
            calls.append(len(data))
            if len(calls) == at:
                write(descriptor, bytes(data[: len(data) // 2]))
                raise failure
        return write(descriptor, data)

    monkeypatch.setattr(records.os, "write", write_then_fail)


@pytest.mark.parametrize(
    ("failure", "status", "words"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), 1, "No space left on device"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_a_full_disk_or_ctrl_c_ends_in_one_line_and_whole_records(
    checkpoint, tmp_path, capsys, monkeypatch, failure, status, words
):
    output = tmp_path / "out.jsonl"
    argv = ["analyze", str(EXAMPLES), "--model", str(checkpoint), "--all-faces", "--no-progress", "-o", str(output)]
    _failing_write(monkeypatch, failure, at=2)
    assert cli_main(argv) == status
    assert words in _one_line(capsys)
    assert output.read_bytes().endswith(b"\n")
    assert [Path(r["path"]).name for r in read_jsonl(output)] == ["astronaut.png"]  # the first input, whole
    monkeypatch.undo()
    assert cli_main([*argv, "--resume"]) == 0  # and --resume finishes it
    assert [Path(r["path"]).name for r in read_jsonl(output)] == ["astronaut.png", "two_faces.png", "two_faces.png"]


def test_a_full_disk_for_annotate_leaves_no_cut_png(checkpoint, tmp_path, capsys, monkeypatch):
    output, annotated = tmp_path / "out.jsonl", tmp_path / "annotated"
    save = Image.Image.save

    def save_half(image, target, *args, **kwargs):
        if Path(target).parent == annotated and len(list(annotated.iterdir())) >= 1:  # the second PNG
            Path(target).write_bytes(b"\x89PNG cut")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(image, target, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_half)
    argv = [
        "analyze",
        str(EXAMPLES),
        "--model",
        str(checkpoint),
        "--no-progress",
        "-o",
        str(output),
        "--annotate",
        str(annotated),
    ]
    assert cli_main(argv) == 1
    assert "cannot write the annotated image" in _one_line(capsys)
    assert sorted(path.name for path in annotated.iterdir()) == ["astronaut.png"]
    assert Image.open(annotated / "astronaut.png").info.get("Software") == "mf2 analyze"
    assert [Path(r["path"]).name for r in read_jsonl(output)] == ["astronaut.png"]  # a record means its PNG is there


def _damage(checkpoint: Path, tmp_path: Path, how: str) -> list[str]:
    """The extra argv for a model damaged `how`, in a copy of `checkpoint` under `tmp_path`."""
    model = tmp_path / how
    shutil.copytree(checkpoint, model)
    weights = model / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif how == "bad-header":
        weights.write_bytes(b"\xff" * 7 + b"\x00garbage")
    elif how == "pickle":
        from safetensors.torch import load_file

        state = load_file(weights)
        state["_code"] = print  # a pickle that is more than tensors: weights_only loading refuses it
        weights.unlink()
        torch.save(state, model / "pytorch_model.bin")
    elif how == "onnx":
        pytest.importorskip("onnxruntime")
        (tmp_path / "bad.onnx").write_bytes(b"\x08\x07 not a graph" * 20)
        return ["--model", str(checkpoint), "--runtime", "onnx", "--onnx-model", str(tmp_path / "bad.onnx")]
    return ["--model", str(model)]


@pytest.mark.parametrize("how", ["truncated", "bad-header", "pickle", "onnx"])
def test_a_damaged_model_is_one_line(checkpoint, tmp_path, capsys, how):
    argv = ["analyze", str(EXAMPLES / "astronaut.png"), "--no-progress", "-o", str(tmp_path / "out.jsonl")]
    assert cli_main([*argv, *_damage(checkpoint, tmp_path, how)]) == 1
    assert "could not load the model" in _one_line(capsys)


def test_a_non_finite_video_frame_is_its_error_record_and_the_run_goes_on(checkpoint, tmp_path, monkeypatch, capsys):
    pytest.importorskip("av")
    load, passes = analyze.load_pipeline, []

    def second_pass_poisoned(*args, **kwargs):
        pipe = load(*args, **kwargs)
        forward = pipe.model.forward

        def forward_once_nan(*inputs, **options):
            output = forward(*inputs, **options)
            passes.append(1)
            if len(passes) == 2:
                output.emotion_logits = torch.full_like(output.emotion_logits, float("nan"))
            return output

        pipe.model.forward = forward_once_nan
        return pipe

    monkeypatch.setattr(analyze, "load_pipeline", second_pass_poisoned)
    video = _h264(tmp_path / "clip.mp4", 60)
    output = tmp_path / "out.jsonl"
    argv = [
        "analyze",
        str(video),
        str(EXAMPLES / "astronaut.png"),
        "--model",
        str(checkpoint),
        "-o",
        str(output),
        "--every-n-frames",
        "20",
        "--batch-size",
        "1",
        "--no-progress",
    ]
    assert cli_main(argv) == 1
    records = read_jsonl(output)
    assert [(Path(r["path"]).name, r.get("frame"), "error" in r) for r in records] == [
        ("clip.mp4", 0, False),
        ("clip.mp4", 20, True),
        ("astronaut.png", None, False),
    ]
    assert "not finite" in records[1]["error"] and records[1]["time"] == pytest.approx(0.8)
    assert "1 error(s)" in _one_line(capsys)


def test_a_huge_video_fps_samples_every_frame(checkpoint, tmp_path, capsys):
    pytest.importorskip("av")
    from mf2.video import write_video

    video = tmp_path / "slow.mp4"
    write_video(video, _face_frames(10), fps=4.0)  # 2.5 s: 2.5 * 1e308 is infinite
    output = tmp_path / "out.jsonl"
    argv = [
        "analyze",
        str(video),
        "--model",
        str(checkpoint),
        "-o",
        str(output),
        "--video-fps",
        "1e308",
        "--no-progress",
    ]
    assert cli_main(argv) == 0
    assert [record["frame"] for record in read_jsonl(output)] == list(range(10))
    assert "0 error(s)" in _one_line(capsys)


def test_two_videos_of_one_name_keep_their_own_annotated_frames_over_a_resume(checkpoint, tmp_path):
    """A resume analyses the output's last video again; its frames keep the names the first run gave them, and the
    other video's PNGs stay as they are."""
    from mf2.video import write_video

    pytest.importorskip("av")
    for folder, shift in (("a", 0), ("b", 20)):
        (tmp_path / folder).mkdir()
        write_video(tmp_path / folder / "session.mp4", _face_frames(2 + shift)[shift:], fps=10)
    output, annotated = tmp_path / "out.jsonl", tmp_path / "frames"
    argv = ["analyze", str(tmp_path / "a"), str(tmp_path / "b"), "--model", str(checkpoint), "-o", str(output)]
    argv += ["--annotate", str(annotated), "--no-progress"]
    assert cli_main(argv) == 0
    first = {path.name: path.read_bytes() for path in annotated.iterdir()}
    assert sorted(first) == sorted(f"session{k}_frame00000{n}.png" for k in ("", "-1") for n in (0, 1))
    assert cli_main([*argv, "--resume"]) == 0
    assert {path.name: path.read_bytes() for path in annotated.iterdir()} == first


def test_a_killed_run_leaves_its_summary_as_partial_not_as_a_whole_one(checkpoint, tmp_path, capsys, monkeypatch):
    """The summary's rows come as each video ends: a killed run's file held its finished videos' rows (or the header
    alone) under the final name, like a whole run whose other videos had no faces; an earlier run's stayed there."""
    from mf2.video import write_video

    folder, output, summary = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "people.csv"
    folder.mkdir()
    shutil.copy(EXAMPLES / "astronaut.png", folder / "a.png")
    write_video(folder / "b_clip.mp4", _face_frames(2), fps=10)
    summary.write_text("an earlier run's summary\n")
    argv = ["analyze", str(folder), "--model", str(checkpoint), "--no-progress", "-o", str(output)]
    _failing_write(monkeypatch, KeyboardInterrupt(), at=2)
    assert cli_main([*argv, "--summary", str(summary)]) == 130
    assert not summary.exists() and Path(f"{summary}.partial").read_text().startswith("path,track,")
    monkeypatch.undo()
    capsys.readouterr()
    assert cli_main([*argv, "--summary", str(summary)]) == 0
    assert summary.read_text().startswith("path,track,") and not Path(f"{summary}.partial").exists()


def test_plot_drops_the_timelines_of_tracks_this_run_did_not_find(checkpoint, tmp_path):
    """An earlier run's timelines of the same video stayed beside this run's: the folder showed people this run did
    not see. Only that video's PNGs that mf2 analyze wrote go."""
    from PIL.PngImagePlugin import PngInfo

    from mf2.cli.analyze_checks import ANNOTATION_MARK
    from mf2.video import write_video

    folder, plots = tmp_path / "in", tmp_path / "plots"
    folder.mkdir()
    plots.mkdir()
    write_video(folder / "clip.mp4", _face_frames(2), fps=10)
    mark = PngInfo()
    mark.add_text(*ANNOTATION_MARK)
    for name in ("clip_track7.png", "clip-1_track7.png", "other_track7.png"):
        Image.new("RGB", (4, 4)).save(plots / name, pnginfo=mark)
    output = tmp_path / "out.jsonl"
    argv = [
        "analyze",
        str(folder),
        "--model",
        str(checkpoint),
        "--no-progress",
        "-o",
        str(output),
        "--plot",
        str(plots),
    ]
    assert cli_main(argv) == 0
    tracks = sorted({record["track"] for record in read_jsonl(output) if record.get("track") is not None})
    assert tracks and sorted(path.name for path in plots.iterdir()) == sorted(
        [*(f"clip_track{number}.png" for number in tracks), "clip-1_track7.png", "other_track7.png"]
    )
