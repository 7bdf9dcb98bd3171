"""`mf2 analyze --resume` refuses to add records read another way (other options) to an output: one file holds one
model's answers read one way."""

import json
import shutil
from pathlib import Path

import pytest
from test_pipeline_mf2 import save_tiny_checkpoint

from mf2.cli import main as cli_main
from mf2.cli.analyze_parser import build_parser
from mf2.cli.analyze_resume import OTHER_OPTIONS, RECORD_OPTIONS, settings_path
from mf2.cli.analyze_shards import part_path, part_paths

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mf2"))


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(EXAMPLES / "astronaut.png", folder / "a.png")
    return folder


def analyze(images: Path, checkpoint: Path, output: Path, *options: str) -> int:
    return cli_main(["analyze", str(images), "--model", str(checkpoint), "-o", str(output), "--no-progress", *options])


def test_a_resume_with_other_options_is_refused_naming_each(checkpoint, images, tmp_path, capsys):
    output = tmp_path / "out.jsonl"
    assert analyze(images, checkpoint, output, "--resume", "--top-k", "2") == 0
    kept = json.loads(settings_path(output).read_text())
    assert sorted(kept) == sorted(RECORD_OPTIONS) and kept["top_k"] == 2 and kept["all_faces"] is False
    records = output.read_text()
    shutil.copy(EXAMPLES / "two_faces.png", images / "b.png")
    capsys.readouterr()
    assert analyze(images, checkpoint, output, "--resume", "--all-faces", "--threshold", "0.3") == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"mf2 analyze: --resume: {output} was written with --threshold not given (this run: 0.3), --top-k 2 (this run: "
        "3), --all-faces off (this run: on); resume with the same options, or write to another --output"
    )
    assert output.read_text() == records  # nothing added
    assert analyze(images, checkpoint, output, "--resume", "--top-k", "2") == 0  # the same options: it goes on
    assert "1 file(s) analysed by 1 process(es), 1 already in" in capsys.readouterr().err
    assert output.read_text().startswith(records) and len(output.read_text().splitlines()) == 2
    assert analyze(images, checkpoint, output) == 0  # without --resume the output is replaced, and its options
    assert json.loads(settings_path(output).read_text())["top_k"] == 3


def test_a_run_begun_without_resume_goes_on_only_as_it_began(checkpoint, images, tmp_path, capsys):
    """A killed run is told to go on with --resume: its options were kept, so a resume with others is refused (it
    added records read another way, the video sampling or --all-faces changing in the middle of one file)."""
    output = tmp_path / "out.csv"
    assert analyze(images, checkpoint, output, "--threshold", "0.3") == 0
    shutil.copy(EXAMPLES / "two_faces.png", images / "b.png")
    capsys.readouterr()
    assert analyze(images, checkpoint, output, "--resume", "--all-faces") == 1
    assert "was written with --threshold 0.3 (this run: not given)" in capsys.readouterr().err
    assert analyze(images, checkpoint, output, "--resume", "--threshold", "0.3") == 0


def test_a_run_without_resume_drops_the_parts_of_a_killed_run(checkpoint, images, tmp_path, capsys):
    """A `--resume` run killed before its merge leaves a part file. A run without `--resume` replaces the output and
    its options; it drops the part too, or a later `--resume` would fold in the killed run's records, read
    with options nothing vouches for any more, as done inputs."""
    output = tmp_path / "out.jsonl"
    shutil.copy(EXAMPLES / "two_faces.png", images / "b.png")
    assert analyze(images, checkpoint, output, "--resume", "--threshold", "0.99") == 0
    part_path(output, 0).write_text(output.read_text())  # as the killed run left it: its records in its part
    output.unlink()
    assert analyze(images / "a.png", checkpoint, output) == 0
    assert part_paths(output) == []
    capsys.readouterr()
    assert analyze(images, checkpoint, output, "--resume") == 0
    assert "1 file(s) analysed by 1 process(es), 1 already in" in capsys.readouterr().err


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_damaged_options_file_is_one_line(checkpoint, images, tmp_path, capsys, content):
    output = tmp_path / "out.jsonl"
    settings_path(output).write_text(content)
    assert analyze(images, checkpoint, output, "--resume") == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("mf2 analyze: --resume: ") and str(settings_path(output)) in line
    assert line.endswith("remove it to resume without the check") and not output.exists()


def test_every_option_of_analyze_is_classed_as_shaping_the_records_or_not():
    options = {action.dest for action in build_parser()._actions} - {"help"}
    assert not set(RECORD_OPTIONS) & set(OTHER_OPTIONS)
    assert options == set(RECORD_OPTIONS) | set(OTHER_OPTIONS), "class the new option in mf2/cli/analyze_resume.py"
