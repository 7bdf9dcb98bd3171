"""`mf2 finetune --train_data mfa:FOLDER` reads a folder of images with a `labels.csv` (docs/finetuning.md); a bad
folder or label file is one line on stderr with exit status 2, before any model is loaded."""

import re
from pathlib import Path

import pytest
from PIL import Image

from mf2.cli import main
from mf2.configuration_mf2 import EMOTION_LABELS
from mf2.data import DataError, MissingDataError
from mf2.data.caption_dataset import load_mfa

DOC = Path(__file__).resolve().parents[2] / "docs" / "finetuning.md"


@pytest.fixture
def faces(tmp_path, monkeypatch):
    """`tmp_path/my_faces` with three small images (no labels yet); the working directory is `tmp_path`."""
    folder = tmp_path / "my_faces"
    folder.mkdir()
    for index, name in enumerate(("smile.png", "smile_mirrored.png", "two_faces.png")):
        Image.new("RGB", (32, 32), (40 * index, 90, 160)).save(folder / name)
    monkeypatch.chdir(tmp_path)
    return folder


def finetune(*data: str) -> list[str]:
    return ["finetune", "--model_name_or_path", "mf2-base", "--train_data", *data, "--output_dir", "outputs/x"]


def test_the_documented_csv_is_read(faces):
    csv = re.search(r"^```csv\n(.*?)^```", DOC.read_text(), flags=re.S | re.M).group(1)
    (faces / "labels.csv").write_text(csv)
    rows = load_mfa("my_faces").remove_columns("image").to_list()
    happiness = EMOTION_LABELS.index("happiness")
    assert [row["emotion"] for row in rows] == [happiness, happiness, -1]  # `happy` is happiness; empty is unknown
    au = {name: index for index, name in enumerate(("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15"))}
    assert rows[0]["au"][au["AU12"]] == 1 and rows[0]["au"][au["AU1"]] == 0 and rows[0]["au"][au["AU7"]] == -1
    assert rows[1]["au"][au["AU2"]] == -1 and rows[2]["au"][au["AU12"]] == 1 and rows[2]["au"][au["AU6"]] == -1


def test_a_changed_image_changes_the_fingerprint(faces):
    (faces / "labels.csv").write_text("file_name,emotion\nsmile.png,happiness\n")
    before = load_mfa(faces)._fingerprint
    assert load_mfa(faces)._fingerprint == before  # the same files: the pre-processing cache is reused
    Image.new("RGB", (48, 48)).save(faces / "smile.png")
    assert load_mfa(faces)._fingerprint != before  # a replaced image is pre-processed again


BAD_LABELS = {
    "missing file_name column": ("file,emotion\nsmile.png,happiness\n", "no `file_name` column"),
    "unknown column": ("file_name,emotoin\nsmile.png,happiness\n", "unknown column(s) ['emotoin']"),
    "no label column": ("file_name,group\nsmile.png,s1\n", "labels.csv: no labels (every emotion and AU is empty"),
    "no known label": ("file_name,emotion,AU12\nsmile.png,,\n", "labels.csv: no labels (every emotion and AU is empty"),
    "unknown emotion": (
        "file_name,emotion\nsmile.png,happiness\nsmile_mirrored.png,boredom\n",
        "labels.csv:3: emotion 'boredom' is not one of neutral, anger",
    ),
    "bad AU value": ("file_name,AU12\nsmile.png,yes\n", "labels.csv:2: column AU12: 'yes' is not a label"),
    "image not found": (
        "file_name,emotion\nsmile.png,happiness\nnope.png,sadness\n",
        "1 listed image(s) not found in my_faces, e.g. ['nope.png']",
    ),
    "no rows": ("file_name,emotion\n", "no rows"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_a_bad_label_file_is_one_line_with_exit_status_2(faces, case, capsys):
    text, message = BAD_LABELS[case]
    (faces / "labels.csv").write_text(text)
    assert main(finetune("mfa:my_faces")) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mf2 finetune: --train_data mfa:my_faces: "), captured.err
    assert message in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out


def test_the_documented_error_line_is_what_finetune_prints(faces, capsys):
    (faces / "labels.csv").write_text(BAD_LABELS["unknown emotion"][0])
    assert main(finetune("mfa:my_faces")) == 2
    documented = next(line for line in DOC.read_text().splitlines() if line.startswith("mf2 finetune: --train_data"))
    assert capsys.readouterr().err == documented + "\n"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mfa:nowhere", "--train_data mfa:nowhere: no such folder or file"),
        ("mfa:my_faces", "my_faces holds no labels.csv: a folder of images needs one, with the columns file_name,"),
        ("faces:my_faces", "expected 'SOURCE:PATH[,key=value...]' with SOURCE in ('mfa', 'ferplus', 'ckplus')"),
        ("mfa:my_faces,max_samples=many", "max_samples must be a whole number, got 'many'"),
    ],
)
def test_a_bad_folder_or_spec_is_one_line_with_exit_status_2(faces, spec, message, capsys):
    assert main(finetune(spec)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and message in lines[0], lines


@pytest.fixture
def parquets(faces):
    """MFA datasets as `mf2 caption` and users write them: two splits in one folder, one file, one with intensities."""
    from datasets import Dataset, Value
    from training_testing import synthetic_rows

    from mf2.data import MFA_FEATURES

    rows = synthetic_rows(4)
    (faces.parent / "two").mkdir()
    for split in ("train", "validation"):
        Dataset.from_dict(rows, features=MFA_FEATURES).to_parquet(str(faces.parent / "two" / f"{split}.parquet"))
    Dataset.from_dict(rows, features=MFA_FEATURES).to_parquet(str(faces.parent / "one.parquet"))
    odd = MFA_FEATURES.copy()
    odd["emotion"] = Value("int64")  # written by hand: no class names to check the values against
    Dataset.from_dict({**rows, "emotion": [11, -3, 0, 1]}, features=odd).to_parquet(str(faces.parent / "odd.parquet"))
    rows["au"] = [[0, 3, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0]] * 4
    Dataset.from_dict(rows, features=MFA_FEATURES).to_parquet(str(faces.parent / "intensities.parquet"))
    (faces.parent / "ferplus").mkdir()
    return faces.parent


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mfa:two", "two holds splits ['train', 'validation']; add ',split=NAME' to the spec"),
        ("mfa:two,split=valid", "two has no split 'valid'; its splits: ['train', 'validation']"),
        ("mfa:one.parquet,split=validation", "one.parquet holds one dataset, with no splits; drop split=validation"),
        ("mfa:intensities.parquet", "AU labels must be -1 (unknown), 0 or 1 in the MFA schema, found [3, 5]"),
        ("mfa:odd.parquet", "emotion labels must be -1 (unknown) or 0-7 (neutral, anger, "),
        ("mfa:one.parquet,max_samples=0", "max_samples must be 1 or more, got 0"),
        ("ferplus:one.parquet,split=valid", "split= picks a split of an mfa dataset"),
        ("ferplus:ferplus", "ferplus is a folder; give ferplus its .parquet file"),
    ],
)
def test_a_dataset_file_that_cannot_train_is_one_line_before_the_model_loads(parquets, spec, message, capsys):
    assert main(finetune(spec)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_evaluate_checks_its_data_too(faces, capsys):
    (faces / "labels.csv").write_text("file_name,emotion\nnope.png,happiness\n")
    argv = ["evaluate", "--model_name_or_path", "mf2-base", "--eval_data", "mfa:my_faces", "--output_dir", "out"]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("mf2 evaluate: --eval_data mfa:my_faces: ")


def test_label_errors_are_value_errors_and_missing_images_file_not_found_errors(faces):
    (faces / "labels.csv").write_text("file_name,emotion\nsmile.png,boredom\n")
    with pytest.raises(DataError):
        load_mfa(faces)
    (faces / "labels.csv").write_text("file_name,emotion\nnope.png,happiness\n")
    with pytest.raises(MissingDataError) as error:
        load_mfa(faces / "labels.csv")
    assert isinstance(error.value, FileNotFoundError) and isinstance(error.value, ValueError)
