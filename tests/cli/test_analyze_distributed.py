"""`mf2 analyze` over 2 CPU processes (`accelerate launch`) and `--resume`: the records of one process, in order."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from distributed_launch import launch_two_processes
from PIL import Image
from test_pipeline_mf2 import save_tiny_checkpoint

from mf2.cli import main as cli_main
from mf2.cli.analyze_checks import video_stems
from mf2.cli.analyze_shards import (
    Processes,
    annotation_names,
    input_key,
    read_lines,
    shard,
    without_last_input,
    without_unfinished_input,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "images"
NEW = ("d_small.png", "f_blank.png")  # the 2 images a resumed run adds to the first 4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mf2"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """6 small images: the 2 examples, a mirror, a shrunk copy, a crop and a face-less grey image."""
    folder = tmp_path_factory.mktemp("images")
    for name in ("astronaut.png", "two_faces.png"):
        shutil.copy(EXAMPLES / name, folder / name)
    photo = Image.open(EXAMPLES / "astronaut.png").convert("RGB")
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "c_mirror.png")
    photo.resize((300, 300)).save(folder / "d_small.png")
    photo.crop((60, 0, 460, 440)).save(folder / "e_crop.png")
    Image.new("RGB", (100, 80), (128, 128, 128)).save(folder / "f_blank.png")
    return folder


@pytest.fixture(scope="module")
def reference(checkpoint, images, tmp_path_factory) -> dict[str, Path]:
    """One process, no resume, over the 6 images: the JSONL and CSV every other run must reproduce."""
    folder = tmp_path_factory.mktemp("reference")
    outputs = {fmt: folder / f"fresh.{fmt}" for fmt in ("jsonl", "csv")}
    for output in outputs.values():
        assert cli_main(["analyze", str(images), "--model", str(checkpoint), "-o", str(output), "--no-progress"]) == 0
    return outputs


def first_four(images: Path, folder: Path) -> Path:
    folder.mkdir()
    for image in sorted(images.iterdir()):
        if image.name not in NEW:
            shutil.copy(image, folder / image.name)
    return folder


def launch_two(argv: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch` of `mf2 analyze` on 2 CPU processes (torchrun under `--multi_gpu`: accelerate's `--cpu`
    launches a single process on one machine)."""
    command = [*launch_two_processes("-m", "mf2", "analyze"), *argv, "--no-progress"]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def test_two_processes_write_the_records_of_one(checkpoint, images, reference, tmp_path):
    output, annotated = tmp_path / "two.jsonl", tmp_path / "annotated"
    done = launch_two([str(images), "--model", str(checkpoint), "-o", str(output), "--annotate", str(annotated)])
    assert done.returncode == 0, done.stderr[-2000:]
    assert output.read_text() == reference["jsonl"].read_text()  # the same records, bytes and order (no timings)
    assert "6 file(s) analysed by 2 process(es)" in done.stderr
    assert sorted(path.name for path in annotated.iterdir()) == sorted(path.name for path in images.iterdir())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["annotated", "two.jsonl", "two.jsonl.resume.json"]


@pytest.mark.slow
def test_a_failed_process_stops_both_in_one_line_each_and_resume_finishes(checkpoint, images, reference, tmp_path):
    inputs = tmp_path / "in"
    shutil.copytree(images, inputs)
    output = tmp_path / "out.jsonl"
    argv = [str(inputs), "--model", str(checkpoint), "-o", str(output), "--no-face", "error"]
    failed = launch_two(argv)  # the face-less image (input 4, process 0's) ends the run
    assert failed.returncode != 0
    messages = [line for line in failed.stderr.splitlines() if line.startswith("mf2 analyze:")]
    assert "f_blank.png: no face found" in messages[0] or "f_blank.png: no face found" in messages[1]
    assert any("another process failed" in line for line in messages) and "[rank" not in failed.stderr
    parts = ["out.jsonl.rank0.part", "out.jsonl.rank1.part"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in", *parts, "out.jsonl.resume.json"]
    refused = launch_two([*argv[:-2], "--resume"])  # its options were kept: it goes on as it began, or not at all
    assert refused.returncode != 0 and "was written with --no-face error" in refused.stderr
    (inputs / "f_blank.png").unlink()
    done = launch_two([*argv, "--resume"])  # the parts are kept, less each one's last input
    assert done.returncode == 0, done.stderr[-2000:]
    assert "analysed by 2 process(es)" in done.stderr and "0 already in" not in done.stderr
    expected = [line.replace(str(images), str(inputs)) for line in reference["jsonl"].read_text().splitlines()]
    assert output.read_text().splitlines() == [line for line in expected if "f_blank.png" not in line]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in", "out.jsonl", "out.jsonl.resume.json"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_analyses_only_the_new_inputs(checkpoint, images, reference, tmp_path, capsys, fmt):
    four = first_four(images, tmp_path / "images")
    output = tmp_path / f"out.{fmt}"
    argv = ["analyze", str(four), "--model", str(checkpoint), "-o", str(output), "--no-progress", "--resume"]
    assert cli_main(argv) == 0
    for name in NEW:
        shutil.copy(images / name, four / name)
    capsys.readouterr()
    assert cli_main(argv) == 0
    assert "2 file(s) analysed by 1 process(es), 4 already in" in capsys.readouterr().err
    expected = reference[fmt].read_text().replace(str(images), str(four))
    assert output.read_text() == expected
    assert cli_main(argv) == 0  # nothing left to do: the file stays as it is
    assert "0 file(s) analysed" in capsys.readouterr().err and output.read_text() == expected


def test_resume_after_a_killed_run_redoes_the_unfinished_inputs(checkpoint, images, reference, tmp_path, capsys):
    lines = reference["jsonl"].read_text().splitlines(keepends=True)
    output = tmp_path / "out.jsonl"
    output.write_text("".join(lines[:2]))
    # A killed process's part: 2 whole records (the last input's may be incomplete) and a half-written line.
    (tmp_path / "out.jsonl.rank1.part").write_text("".join(lines[3:5]) + lines[5][:40])
    argv = ["analyze", str(images), "--model", str(checkpoint), "-o", str(output), "--no-progress", "--resume"]
    assert cli_main(argv) == 0
    assert "3 file(s) analysed by 1 process(es), 3 already in" in capsys.readouterr().err
    assert output.read_text() == reference["jsonl"].read_text()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out.jsonl"]


def test_resume_and_overwrite_without_resume(checkpoint, images, reference, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    output.write_text('{"path": "elsewhere.png", "face": null}\n')
    assert cli_main(["analyze", str(images), "--model", str(checkpoint), "-o", str(output), "--no-progress"]) == 0
    assert output.read_text() == reference["jsonl"].read_text()  # without --resume the output is overwritten
    assert cli_main(["analyze", str(images), "--model", str(checkpoint), "--resume"]) == 2
    assert capsys.readouterr().err.strip().endswith("need --output FILE (not standard output)")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_over_another_models_records_is_refused(checkpoint, images, reference, tmp_path, capsys, fmt):
    """One output file holds one model's answers: resuming with another model would mix them."""
    output = tmp_path / f"out.{fmt}"
    text = reference[fmt].read_text()
    record = json.loads(reference["jsonl"].read_text().splitlines()[0])
    model, version = record["model"], record["model_version"]
    output.write_text(text.replace(f",{model},", ",mf2-base,") if fmt == "csv" else text.replace(model, "mf2-base"))
    argv = ["analyze", str(images), "--model", str(checkpoint), "-o", str(output), "--no-progress", "--resume"]
    assert cli_main(argv) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"mf2 analyze: --resume: {output} holds records of mf2-base {version}, and this run uses {model} {version}; "
        "resume with that model (--model), or write to another --output"
    )
    output.write_text(text)  # its own model's records: resumed, nothing left to do
    assert cli_main(argv) == 0 and output.read_text() == text
    if fmt == "jsonl":  # records written before mf2 wrote the model fields are not compared
        older = "".join(
            json.dumps({k: v for k, v in json.loads(line).items() if not k.startswith("model")}) + "\n"
            for line in text.splitlines()
        )
        output.write_text(older)
        assert cli_main(argv) == 0


def test_shards_and_truncated_lines(tmp_path):
    files = [Path(f"{name}.png") for name in "abcdefg"]
    todo, share = shard(files + [Path("./a.png")], {input_key("b.png")}, Processes(rank=1, world_size=2))
    assert [p.stem for p in todo] == list("acdefg") and [p.stem for p in share] == list("ceg")
    part = tmp_path / "x.jsonl"
    part.write_text('{"path": "a", "face": 0}\n{"path": "b", "face": 0}\n{"path": "b", "face": 1}\n{"path": "c", "fa')
    header, lines = read_lines(part, "jsonl")
    assert header is None and [path for path, _ in lines] == ["a", "b", "b"]
    assert [path for path, _ in without_last_input(lines)] == ["a"]


def test_an_outputs_last_input_is_dropped_only_when_it_may_be_unfinished():
    """A run in one process writes its output input by input: only its last input may stop part-way."""

    def lines(*records):
        return [(record["path"], json.dumps(record) + "\n") for record in records]

    a0, a1 = {"path": "a.png", "face": 0, "faces": 2}, {"path": "a.png", "face": 1, "faces": 2}
    blank, broken = {"path": "b.png", "face": None, "faces": 0}, {"path": "c.png", "face": None, "error": "bad"}
    frame = {"path": "v.mp4", "frame": 0, "face": 0, "faces": 1}
    cut = {"path": "v.mp4", "frame": 3, "face": None, "error": "cannot decode"}
    for whole in [(a0, a1), (a0, a1, blank), (blank, broken), (frame, cut), ({"path": "old.png", "face": 0},)]:
        assert without_unfinished_input(lines(*whole), None, "jsonl") == lines(*whole)
    assert without_unfinished_input(lines(blank, a0), None, "jsonl") == lines(blank)  # a's second face is missing
    assert without_unfinished_input(lines(a0, a1, frame), None, "jsonl") == lines(a0, a1)  # its frames may go on
    header = ["path", "frame", "time", "face", "faces", "error"]
    rows = [("a.png", "a.png,,,0,2,\r\n"), ("a.png", "a.png,,,1,2,\r\n"), ("b.png", "b.png,,,,0,\r\n")]
    assert without_unfinished_input(rows, header, "csv") == rows
    assert without_unfinished_input(rows[:1], header, "csv") == []


def test_annotation_names_are_fixed_over_the_whole_input_list():
    files = [Path("a/x.png"), Path("clip.mp4"), Path("b/x.png"), Path("a/x.png"), "https://host/p/y.jpg"]
    assert annotation_names(files, {}) == {"a/x.png": "x.png", "b/x.png": "x-1.png", "https://host/p/y.jpg": "y.png"}


def test_an_image_never_takes_the_name_of_a_video_frames_png():
    """`clip_frame000000.png` beside `clip.mp4` would replace that video's first annotated frame (both PNGs are
    mf2's, so nothing refused it): the image takes the next free name."""
    files = [Path("d/clip.mp4"), Path("d/clip_frame000000.png"), Path("d/clip_frame7.png"), Path("e/clip.mp4")]
    stems = video_stems(files)
    assert stems == {"d/clip.mp4": "clip", "e/clip.mp4": "clip-1"}
    assert annotation_names(files, stems) == {
        "d/clip_frame000000.png": "clip_frame000000-1.png",
        "d/clip_frame7.png": "clip_frame7.png",  # not a frame PNG's name: six digits
    }
    assert annotation_names([Path("clip-1_frame000012.png"), Path("e/clip.mp4")], stems) == {
        "clip-1_frame000012.png": "clip-1_frame000012-1.png"
    }


def test_resumed_annotations_keep_distinct_names(checkpoint, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(EXAMPLES / "astronaut.png", tmp_path / folder / "x.png")
    output, annotated = tmp_path / "out.jsonl", tmp_path / "annotated"
    argv = ["analyze", "--model", str(checkpoint), "-o", str(output), "--annotate", str(annotated), "--resume"]
    assert cli_main([*argv[:1], str(tmp_path / "a"), *argv[1:], "--no-progress"]) == 0
    assert cli_main([*argv[:1], str(tmp_path / "a"), str(tmp_path / "b"), *argv[1:], "--no-progress"]) == 0
    assert sorted(path.name for path in annotated.iterdir()) == ["x-1.png", "x.png"]  # b/x.png did not overwrite a's
