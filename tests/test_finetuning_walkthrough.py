"""docs/finetuning.md runs as written: its walkthrough (the two-step `mf2 finetune` on a folder of faces and the
pipeline with the adapter it writes) on a tiny folder made from examples/images with the document's labels.csv, and
its "DFN in Python" block, with the shipped model, offline."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "finetuning.md"
IMAGES = REPO / "examples" / "images"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"^```{kind}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def make_faces(folder: Path) -> None:
    """The document's `my_faces`: its three file names, made from the example photos, with its labels.csv."""
    folder.mkdir()
    photo = Image.open(IMAGES / "astronaut.png").convert("RGB")
    photo.save(folder / "smile.png")
    ImageOps.mirror(photo).save(folder / "smile_mirrored.png")
    Image.open(IMAGES / "two_faces.png").convert("RGB").save(folder / "two_faces.png")
    (folder / "labels.csv").write_text(blocks("csv")[0])


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MF2_HOME": str(cwd / "mf2-home"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("walkthrough")
    make_faces(folder / "my_faces")
    make_faces(folder / "my_faces_valid")
    bash = next(block for block in blocks("bash") if "--max_steps 2" in block)
    python = next(block for block in blocks("python") if 'adapter="outputs/my-dfn"' in block and "pipe(" in block)
    trained = run(["bash", "-euo", "pipefail", "-c", bash], folder)
    assert trained.returncode == 0, trained.stderr[-4000:]
    used = run([sys.executable, "-c", python], folder)
    assert used.returncode == 0, used.stderr[-4000:]
    return folder, trained, used


def test_the_walkthrough_writes_the_adapter(walkthrough):
    folder, trained, used = walkthrough
    adapter = folder / "outputs" / "my-dfn"
    for name in ("adapter_config.json", "adapter_model.safetensors", "thresholds.json", "eval_results.json"):
        assert (adapter / name).is_file(), name
    assert '"modalities": [\n    "image"\n  ]' in (adapter / "adapter_config.json").read_text()
    assert "'label': 'happiness'" in used.stdout
    log = trained.stdout + trained.stderr
    assert "corrupted" not in log and "MISSING" not in log and "Traceback" not in log


def test_the_adapter_changes_the_pipeline_outputs(walkthrough):
    from transformers import pipeline

    import mf2  # noqa: F401

    folder = walkthrough[0]
    image = str(folder / "my_faces" / "smile.png")
    plain = pipeline("facial-state", model="mf2-base")
    adapted = pipeline("facial-state", model="mf2-base", adapter=str(folder / "outputs" / "my-dfn"))
    assert type(adapted.model).__name__ == "DFNModel" and type(plain.model).__name__ != "DFNModel"
    before, after = plain(image)[0], adapted(image)[0]
    assert before["box"] == after["box"]  # the same face; only the network's answer differs
    au_before = np.array(list(before["action_units"].values()))
    au_after = np.array(list(after["action_units"].values()))
    assert np.abs(au_after - au_before).max() > 1e-3
    assert after["emotions"][0]["score"] != before["emotions"][0]["score"]
    tuned = json.loads((folder / "outputs" / "my-dfn" / "thresholds.json").read_text())["au_thresholds"]
    assert adapted.thresholds().tolist() == tuned  # the AU thresholds tuned with the adapter
    with pytest.raises(ValueError, match="no adapter_config.json; pass the --output_dir of `mf2 finetune`"):
        pipeline("facial-state", model="mf2-base", adapter=str(folder / "my_faces"))


def test_mf2_analyze_runs_the_adapter(walkthrough):
    folder = walkthrough[0]
    done = run(["mf2", "analyze", "my_faces/smile.png", "--adapter", "outputs/my-dfn", "--no-progress"], folder)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.splitlines()[0])
    assert record["adapter"] == "outputs/my-dfn" and record["model"] == "mf2-base"
    adapted = run(
        [
            sys.executable,
            "-c",
            "import json, mf2; from transformers import pipeline; print(json.dumps("
            "pipeline('facial-state', model='mf2-base', adapter='outputs/my-dfn')('my_faces/smile.png')[0]"
            "['action_units']))",
        ],
        folder,
    )
    expected = json.loads(adapted.stdout.splitlines()[-1])
    assert record["action_units"] == pytest.approx(expected, abs=1e-5)
    refused = run(["mf2", "analyze", "my_faces/smile.png", "--adapter", "my_faces"], folder)
    assert refused.returncode == 2 and "no adapter_config.json" in refused.stderr


def test_the_dfn_python_block_builds_what_finetune_builds_without_warnings(tmp_path):
    block = next(block for block in blocks("python") if "get_dfn_model" in block)
    done = run([sys.executable, "-c", block], tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    output = done.stdout + done.stderr
    assert "trainable params: 2,384,660" in output  # what `mf2 finetune --dfn_num_layers 4` trains
    assert "corrupted" not in output and "MISSING" not in output and "Warning" not in output, output[-3000:]
    assert '"image"' in (tmp_path / "my-adapter" / "adapter_config.json").read_text()


def test_text_cells_need_text_weights(tmp_path):
    """mf2-base has no text weights: loaded as MF2ForPreTraining its text side is random, so DFN builds image cells
    only, and refuses text cells, as `mf2 finetune` (which loads the image-only recogniser) does."""
    from tiny import tiny_config

    from mf2 import MF2ForFacialStateRecognition, MF2ForPreTraining
    from mf2.dfn import DFNConfig, checkpoint_has_text_weights, get_dfn_model

    MF2ForFacialStateRecognition(tiny_config()).save_pretrained(tmp_path / "image-only")
    MF2ForPreTraining(tiny_config()).save_pretrained(tmp_path / "with-text")
    assert checkpoint_has_text_weights(tmp_path / "image-only") is False
    assert checkpoint_has_text_weights(tmp_path / "with-text") is True
    assert checkpoint_has_text_weights(None) is None
    with_text = get_dfn_model(MF2ForPreTraining.from_pretrained(tmp_path / "with-text"), DFNConfig(num_layers=2))
    assert with_text.dfn_config.modalities == ["image", "text"]
    random_text = MF2ForPreTraining.from_pretrained(tmp_path / "image-only")
    assert get_dfn_model(random_text, DFNConfig(num_layers=2)).dfn_config.modalities == ["image"]
    with pytest.raises(ValueError, match="holds no text weights"):
        get_dfn_model(
            MF2ForPreTraining.from_pretrained(tmp_path / "image-only"),
            DFNConfig(num_layers=2, modalities=["image", "text"]),
        )
