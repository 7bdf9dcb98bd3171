"""The examples run end to end with tiny settings (a random tiny MF², the 4-image demo folder, a dry-run publish).

`examples/quickstart.py` without `--model` (the real untrained offline model) is what the README's main command
runs; here it gets the tiny checkpoint. `publish_to_hub.py` is run with `--dry_run` (no Hub access in tests).
"""

import json
import runpy
import sys
from pathlib import Path

import pytest
from test_pipeline_mf2 import save_tiny_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mf2"))


def run_example(name: str, argv: list[str]):
    """Run `examples/<name>` as a script with `argv`; returns its `main`'s namespace result via the module globals."""
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(EXAMPLES / name), *argv]
    sys.path.insert(0, str(EXAMPLES))
    try:
        return runpy.run_path(str(EXAMPLES / name), run_name="example")["main"](argv)
    finally:
        sys.argv, sys.path[:] = old_argv, old_path


def test_example_images_are_small_and_licensed():
    images = sorted((EXAMPLES / "images").glob("*.png"))
    assert [path.name for path in images] == ["astronaut.png", "two_faces.png"]
    assert sum(path.stat().st_size for path in images) < 2 * 2**20
    licence = (EXAMPLES / "images" / "LICENSE.md").read_text()
    assert all(path.name in licence for path in images) and "Public domain" in licence


def test_quickstart(checkpoint, capsys):
    results = run_example("quickstart.py", ["--model", str(checkpoint)])
    assert [len(faces) for faces in results] == [1, 2]
    output = capsys.readouterr().out
    assert "two_faces.png: 2 face(s)" in output and "explanation: The person" in output


def test_quickstart_answers_for_the_readable_photos_beside_a_faceless_or_broken_one(checkpoint, tmp_path, capsys):
    """A photo without a face gives no face, a broken file one line naming it; the other photos still answer."""
    from PIL import Image

    blank, broken = tmp_path / "blank.png", tmp_path / "broken.jpg"
    Image.new("RGB", (96, 96), "gray").save(blank)
    broken.write_bytes(b"not a jpeg")
    photo = EXAMPLES / "images" / "astronaut.png"
    results = run_example("quickstart.py", ["--model", str(checkpoint), str(blank), str(broken), str(photo)])
    assert results[0] == [] and len(results[2]) == 1
    output = capsys.readouterr().out
    assert f"{blank}: 0 face(s)" in output and f"{photo}: 1 face(s)" in output
    (line,) = [line for line in output.splitlines() if line.startswith(str(broken))]
    assert "Could not read input" in line


def test_build_mfa_dataset(tmp_path, capsys):
    dataset = run_example(
        "build_mfa_dataset.py", ["--demo", str(tmp_path / "faces"), "--output", str(tmp_path / "mfa")]
    )
    assert len(dataset) == 4 and (tmp_path / "mfa" / "train.parquet").is_file()
    assert dataset[0]["emotion"] == 4 and "AU12 (lip corner puller)" in dataset[0]["key_au_caption"]


def test_finetune_dfn(checkpoint, tmp_path):
    face = run_example(
        "finetune_dfn.py",
        [
            "--model",
            str(checkpoint),
            "--demo",
            str(tmp_path / "faces"),
            "--output_dir",
            str(tmp_path / "dfn"),
            "--epochs",
            "1",
            "--batch_size",
            "2",
        ],
    )
    adapter = tmp_path / "dfn" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert len(face["action_units"]) == 12 and face["explanation"]


def test_publish_to_hub_dry_run(checkpoint, tmp_path):
    folder = Path(
        run_example(
            "publish_to_hub.py",
            ["--model_dir", str(checkpoint), "--repo_id", "me/mf2-tiny", "--dry_run", str(tmp_path / "repo")],
        )
    )
    for name in ("README.md", "model.safetensors", "processor_config.json", "pipeline_mf2.py", "facs.py", "video.py"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["mf2-facial-state"]["impl"] == "pipeline_mf2.FacialStatePipeline"
