"""An image folder with a CSV or JSON-lines label file."""

import json

import pytest
from mfa_fixtures import png_bytes

from mf2.configuration_mf2 import EMOTION_LABELS
from mf2.data.folder import load_image_folder
from mf2.data.schema import MFA_FEATURES, DataError


@pytest.fixture
def images(tmp_path):
    (tmp_path / "faces").mkdir()
    for i in range(3):
        (tmp_path / "faces" / f"img{i}.png").write_bytes(png_bytes(i))
    return tmp_path


def test_csv_with_au_columns(images):
    (images / "labels.csv").write_text(
        "file_name,emotion,AU01,AU12,AU9,group,frame\n"
        "faces/img0.png,happy,0,1,1,s1,7\n"
        "faces/img1.png,contempt,,0,0,,\n"
        "faces/img2.png,3,1,,,s2,\n"
    )
    dataset = load_image_folder(images / "labels.csv")
    assert dataset.features == MFA_FEATURES
    rows = dataset.remove_columns("image").to_list()
    assert [r["emotion"] for r in rows] == [EMOTION_LABELS.index(e) for e in ("happiness", "other", "fear")]
    assert rows[0]["au"] == [0, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1]  # AU9 is not one of the 12
    assert rows[1]["au"][0] == -1 and rows[1]["au"][6] == 0
    assert [r["group"] for r in rows] == ["s1", "faces/img1", "s2"]
    assert [r["frame"] for r in rows] == [7, -1, -1]
    assert set(r["source"] for r in rows) == {"folder"}
    assert dataset[2]["image"].size == (16, 16)


def test_jsonl_with_au_list_and_separate_image_dir(images):
    lines = [
        {"file_name": "img0.png", "au": [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, -1], "emotion": "surprise"},
        {"file_name": "img1.png"},
        {"file_name": "img2.png", "group": 0},  # subject 0 (a JSON number) is a subject, not a missing one
    ]
    (images / "labels.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    rows = load_image_folder(images / "labels.jsonl", images / "faces").remove_columns("image").to_list()
    assert rows[0]["au"] == [1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, -1] and rows[0]["emotion"] == 6
    assert rows[1]["au"] == [-1] * 12 and rows[1]["emotion"] == -1 and rows[1]["group"] == "img1"
    assert rows[2]["group"] == "0"


def test_missing_images_and_unknown_emotions_are_errors(images):
    (images / "missing.csv").write_text("file_name\nfaces/nope.png\n")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image_folder(images / "missing.csv")
    (images / "bad.csv").write_text("file_name,emotion\nfaces/img0.png,boredom\n")
    with pytest.raises(ValueError, match="boredom"):
        load_image_folder(images / "bad.csv")
    (images / "not-coded.csv").write_text("file_name,AU12\nfaces/img0.png,9\n")
    with pytest.raises(ValueError, match="column AU12: '9' is not a label"):
        load_image_folder(images / "not-coded.csv")


@pytest.mark.parametrize(
    "text, refusal",
    [
        ("file_name,emotion,AU1,AU2,AU4\nfaces/img0.png,1,0,1\n", "fewer values than the header"),  # emotion left out
        ("file_name,emotion,AU1,AU01\nfaces/img0.png,happy,1,0\n", r"\['AU1'\] given twice"),
        ("file_name,emotion,AU12,emotion\nfaces/img0.png,happy,1,\n", r"\['emotion'\] given twice"),
        ('file_name,emotion,au,AU12\nfaces/img0.png,happy,"0 0 0 0 0 0 0 0 0 0 0 0",1\n', "both an `au` column and AU"),
        ("file_name,emotion\nfaces/img0.png,happy\nfaces/img1.png,sad\n./faces/img0.png,anger\n", "listed already"),
    ],
)
def test_labels_that_would_be_read_otherwise_than_written_are_refused(images, text, refusal):
    """Each of these was read without a word: values slid into the columns before a missing one, the last of two
    columns for one label won, the `au` column hid the AU columns, an image listed twice trained twice."""
    (images / "labels.csv").write_text(text)
    with pytest.raises(DataError, match=refusal):
        load_image_folder(images / "labels.csv")


def test_json_keys_with_stray_spaces_keep_their_values(images):
    lines = [{"file_name": "faces/img0.png", "emotion ": "happy", " AU12": 1, "group ": "s1"}]
    (images / "labels.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    (row,) = load_image_folder(images / "labels.jsonl").remove_columns("image").to_list()
    assert row["emotion"] == EMOTION_LABELS.index("happiness") and row["au"][6] == 1 and row["group"] == "s1"


def test_a_folder_with_a_label_file_and_parquet_files_is_ambiguous(images):
    from mf2.data.caption_dataset import load_mfa

    (images / "labels.csv").write_text("file_name,emotion\nfaces/img0.png,happy\n")
    load_image_folder(images / "labels.csv").to_parquet(str(images / "old_export.parquet"))
    with pytest.raises(DataError, match="both Parquet files"):
        load_mfa(images)
    assert len(load_mfa(images / "labels.csv")) == 1


def test_an_image_edited_with_its_size_and_time_kept_gets_a_new_key(images):
    """The key of a folder's pre-processed crops: an edit that keeps the file's size and time (a fixed-size format, a
    tool that keeps dates) must not reuse the old image's crop."""
    import os

    (images / "labels.csv").write_text("file_name,emotion\nfaces/img0.png,happy\n")
    image = images / "faces" / "img0.png"
    before = os.stat(image)
    key = load_image_folder(images / "labels.csv")._fingerprint
    edited = bytearray(image.read_bytes())
    edited[-20] ^= 0xFF  # same size
    image.write_bytes(bytes(edited))
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_image_folder(images / "labels.csv")._fingerprint != key
