"""`mf2 analyze`'s records: JSON lines rounded, CSV rows with one column per AU and emotion, unique PNG names."""

import csv
import errno
import io
import json
import os
from pathlib import Path

import pytest

from mf2.cli.analyze_records import OutputWriteError, RecordWriter, annotation_name, face_records

FACE = {
    "box": [1.23456, 2.0, 30.0, 40.0],
    "emotion": {"label": "happiness", "score": 0.912345678},
    "emotions": [{"label": "happiness", "score": 0.912345678}, {"label": "neutral", "score": 0.05}],
    "action_units": {"AU6": 0.7, "AU12": 0.9},
    "active_action_units": ["AU6", "AU12"],
    "landmark_backend": "dlib",
    "features": {"not": "written"},
    "image_index": 0,
}


def test_face_records_number_faces_and_a_faceless_image_gives_one_record():
    common = {"model": "mf2-base"}
    records = face_records([FACE, FACE], {"path": "a.png"}, common)
    assert [(record["face"], record["faces"]) for record in records] == [(0, 2), (1, 2)]  # number, and how many
    assert "features" not in records[0] and "image_index" not in records[0] and records[0]["model"] == "mf2-base"
    assert face_records([], {"path": "b.png"}, common) == [
        {"path": "b.png", "face": None, "faces": 0, "model": "mf2-base"}
    ]


class Writes(io.StringIO):
    """A stream that keeps what each `write` call got, and counts the flushes."""

    def __init__(self):
        super().__init__()
        self.calls, self.flushes = [], 0

    def write(self, text):
        self.calls.append(text)
        return super().write(text)

    def flush(self):
        self.flushes += 1


def test_the_records_of_one_input_go_out_in_one_write_and_a_flush():
    for fmt, lines in (("jsonl", [2, 1]), ("csv", [3, 1])):  # CSV: the header goes out with the first input
        stream = Writes()
        writer = RecordWriter(stream, fmt, ["AU6", "AU12"], ["neutral", "happiness"])
        writer.write_input(face_records([FACE, FACE], {"path": "a.png"}, {}))
        writer.write_input(face_records([], {"path": "b.png"}, {}))
        assert [len(text.splitlines()) for text in stream.calls] == lines and stream.flushes == 2


def test_jsonl_is_rounded_and_csv_has_a_fixed_column_per_au_and_emotion():
    record = face_records([FACE], {"path": "a.png"}, {})[0]
    stream = io.StringIO()
    RecordWriter(stream, "jsonl", ["AU6", "AU12"], ["neutral", "happiness"]).write(record)
    written = json.loads(stream.getvalue())
    assert written["box"][0] == 1.23 and written["emotion"]["score"] == 0.912346
    stream = io.StringIO()
    writer = RecordWriter(stream, "csv", ["AU6", "AU12"], ["neutral", "happiness"])
    writer.write(record)
    writer.write({"path": "broken.png", "face": None, "error": "unreadable"})
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert list(rows[0]) == writer.columns()
    assert rows[0]["emotion_happiness"] == "0.912346" and rows[0]["AU12"] == "0.9"
    assert rows[0]["active_action_units"] == "AU6;AU12" and rows[1]["error"] == "unreadable"


def test_annotation_names_are_unique_per_run():
    used: set[str] = set()
    assert annotation_name(Path("x/face.jpg"), None, used) == "face.png"
    assert annotation_name(Path("y/face.png"), None, used) == "face-1.png"
    assert annotation_name(Path("clip.mp4"), 7, used) == "clip_frame000007.png"
    assert annotation_name("https://example.com/img/cat.jpg?size=2", None, used) == "cat.png"


def test_a_failed_write_to_a_file_opened_to_append_keeps_what_it_held(tmp_path, monkeypatch):
    """`mf2 analyze new/ >> all.jsonl`: the shell's descriptor stands at 0 until the first write goes to the end; a
    disk that fills during that write must cut back the new bytes only, not empty the file."""
    from mf2.cli import analyze_records

    path = tmp_path / "all.jsonl"
    path.write_text('{"path": "old-1.png"}\n{"path": "old-2.png"}\n')
    stream = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND), "w")
    assert os.lseek(stream.fileno(), 0, os.SEEK_CUR) == 0
    write = os.write

    def write_half_then_fail(descriptor, data):
        write(descriptor, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(analyze_records.os, "write", write_half_then_fail)
    with stream, pytest.raises(OutputWriteError):
        RecordWriter(stream, "jsonl", ["AU6", "AU12"], ["neutral", "happiness"]).write_input(
            face_records([FACE], {"path": "new.png"}, {})
        )
    assert path.read_text() == '{"path": "old-1.png"}\n{"path": "old-2.png"}\n'
