"""`mf2 analyze`'s output: one record per face (or one per faceless image, unreadable file, failed video), written as
JSON lines or as CSV rows with a fixed column set, and the file names of the annotated PNGs. A video's face records
carry `track` (the person, `mf2.face_identity`), the CSV's last column (empty for images).

The records of one input (every face of an image, or of a video frame) go out together, in one write and a flush:
what a killed run leaves is whole inputs, but for the last one, and a record's `face` (its number) and `faces` (how
many its image or frame has) tell whether that one is whole (`mf2.cli.analyze_shards.without_unfinished_input`). Into
a file, that write is undone when it fails (disk full) or is interrupted (Ctrl-C): the file never ends in a cut line.

File names are carried whatever their bytes: a name that is not UTF-8 (`b\\xe9.png`) is read by Python as a lone
surrogate per odd byte (`os.fsdecode`, "surrogateescape"), which JSON lines write as its escape (`"b\\udce9.png"`,
valid JSON; `os.fsencode(json.loads(line)["path"])` gives the name's bytes back), and CSV as the byte itself (the
output files are written and read with errors="surrogateescape", `OUTPUT_ERRORS`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, TextIO

from .analyze_checks import AnalyzeError, frame_png_name
from .analyze_inputs import InputPath

OUTPUT_ERRORS = "surrogateescape"
"""How output files encode (and `--resume` decodes) what UTF-8 cannot: a file name's odd bytes, as themselves."""

_SURROGATE = re.compile("[\ud800-\udfff]")


class OutputWriteError(AnalyzeError):
    """Records could not be written (disk full, a closed pipe): the run ends with one line, exit status 1.

    Attributes:
        target: the output's name (`str(stream.name)`, "-" for standard output).
        reason: the system's words (`strerror`).
        errno: the error number (`errno.ENOSPC` for a full disk), or `None`.
    """

    def __init__(self, target: str, error: OSError):
        self.target, self.reason, self.errno = target, error.strerror or str(error), error.errno
        super().__init__(
            f"cannot write the records to {target} ({self.reason}); the inputs before are in it, whole: "
            "free some space and rerun with --resume"
        )


def face_records(faces: list[dict], source: dict[str, Any], common: dict[str, Any]) -> list[dict[str, Any]]:
    """One JSON record per face (`face` numbers them within the image or frame, `faces` counts them); one
    `"face": null` record (`"faces": 0`) if none."""
    if not faces:
        return [{**source, "face": None, "faces": 0, **common}]
    records = []
    for number, face in enumerate(faces):
        record = {**source, "face": number, "faces": len(faces)}
        record.update({key: value for key, value in face.items() if key not in ("features", "image_index")})
        record.update(common)
        records.append(record)
    return records


# CSV columns copied from a record as they are, around the box, emotion and AU columns that `_text` formats.
_SOURCE_COLUMNS = ("path", "frame", "time", "face", "faces", "error", "warning")
_RECORD_COLUMNS = ("landmark_backend", "explanation", "model", "model_version", "model_trained", "adapter")
_TRACK_COLUMNS = ("track",)  # last, after the detection scale: videos only


class RecordWriter:
    """Writes records as JSON lines, or as CSV rows with a fixed column set (one column per AU and per emotion).

    `write_input` writes the records of one input in one write and flushes: each input reaches the file whole, as
    soon as it is done. Into a regular file, the write goes straight to the file descriptor, and one that fails
    (`OutputWriteError`) or is interrupted (`KeyboardInterrupt`) is cut back to the end of the previous input."""

    def __init__(self, stream: TextIO, fmt: str, au_names: list[str], emotion_labels: list[str]):
        self.stream, self.fmt = stream, fmt
        self.au_names, self.emotion_labels = au_names, emotion_labels
        self._csv: csv.DictWriter | None = None  # CSV: writes into `_rows`, emptied into the stream input by input
        self._rows = io.StringIO()

    def columns(self) -> list[str]:
        return [
            *_SOURCE_COLUMNS,
            "x1",
            "y1",
            "x2",
            "y2",
            "emotion",
            "emotion_score",
            *[f"emotion_{label}" for label in self.emotion_labels],
            *self.au_names,
            "active_action_units",
            *_RECORD_COLUMNS,
            "detection_scale",
            *_TRACK_COLUMNS,
        ]

    def write(self, record: dict[str, Any]) -> None:
        """One record on its own (an input with one record)."""
        self.write_input([record])

    def write_input(self, records: list[dict[str, Any]]) -> None:
        """The records of one input (an image's or a video frame's faces), in one write, then a flush."""
        text = "".join(self._text(record) for record in records)
        if not text:
            return
        descriptor = self._descriptor()
        try:
            if descriptor is None:
                self.stream.write(text)
                self.stream.flush()
            else:
                _write_whole(descriptor, text.encode("utf-8", OUTPUT_ERRORS))
        except OSError as error:
            raise OutputWriteError(str(getattr(self.stream, "name", "the output")), error) from error

    def _descriptor(self) -> int | None:
        """The stream's file descriptor when it is a regular file (its text layer flushed, so empty), else `None`."""
        try:
            descriptor = self.stream.fileno()
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                return None
            self.stream.flush()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
            return None
        return descriptor

    def _text(self, record: dict[str, Any]) -> str:
        """One record as its JSON line, or as its CSV row (the first one after the header)."""
        if self.fmt == "jsonl":
            text = json.dumps(_rounded(record), ensure_ascii=False)
            return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text) + "\n"
        if self._csv is None:  # the header goes out with the first row
            self._csv = csv.DictWriter(self._rows, fieldnames=self.columns(), extrasaction="ignore")
            self._csv.writeheader()
        row = {
            key: record.get(key) for key in (*_SOURCE_COLUMNS, *_RECORD_COLUMNS, *_TRACK_COLUMNS)
        }  # copied as they are
        if record.get("box"):
            row.update(zip(("x1", "y1", "x2", "y2"), (round(v, 2) for v in record["box"])))
        if record.get("emotion"):
            row["emotion"], row["emotion_score"] = record["emotion"]["label"], round(record["emotion"]["score"], 6)
            for item in record.get("emotions", []):
                row[f"emotion_{item['label']}"] = round(item["score"], 6)
        for name, probability in (record.get("action_units") or {}).items():
            row[name] = round(probability, 6)
        if record.get("detection_scale") is not None:  # searched on a downscaled copy (`max_detection_size`)
            row["detection_scale"] = round(record["detection_scale"], 6)
        if "active_action_units" in record:
            row["active_action_units"] = ";".join(record["active_action_units"])
        self._csv.writerow(row)
        text = self._rows.getvalue()
        self._rows.seek(0)
        self._rows.truncate()
        return text


def _write_whole(descriptor: int, data: bytes) -> None:
    """`data` at the end of the file, or nothing: a failed or interrupted write is cut back to where it started."""
    # A descriptor opened to append (the shell's `>>`) stands at 0 until its first write, which goes to the end:
    # cutting back to 0 would empty the file of everything it held before.
    start = os.lseek(descriptor, 0, os.SEEK_END if _appends(descriptor) else os.SEEK_CUR)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(descriptor, view) :]
    except BaseException:  # OSError (disk full), KeyboardInterrupt: no cut line
        try:
            os.ftruncate(descriptor, start)
            os.lseek(descriptor, start, os.SEEK_SET)
        except OSError:
            pass
        raise


def _appends(descriptor: int) -> bool:
    """Whether the descriptor was opened to append (`O_APPEND`; where `fcntl` is missing, e.g. Windows: False)."""
    try:
        import fcntl
    except ImportError:
        return False
    return bool(fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_APPEND)


def _rounded(value: Any, digits: int = 6) -> Any:
    """Floats rounded for readable JSON (probabilities to 1e-6, pixel coordinates to 1e-2 is plenty)."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _rounded(item, 2 if key in ("box", "landmarks") else digits) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item, digits) for item in value]
    return value


def annotation_name(path: InputPath, frame: int | None, used: set[str]) -> str:
    """A PNG file name for an input (and video frame) not yet in `used` (which it joins)."""
    from urllib.parse import urlparse

    stem = Path(urlparse(path).path).stem if isinstance(path, str) else path.stem
    stem = stem or "image"
    stem = stem if frame is None else frame_png_name(stem, frame).removesuffix(".png")
    name, k = f"{stem}.png", 1
    while name in used:  # two inputs with the same stem (different folders) must not overwrite each other
        name, k = f"{stem}-{k}.png", k + 1
    used.add(name)
    return name


__all__ = [
    "OUTPUT_ERRORS",
    "OutputWriteError",
    "RecordWriter",
    "annotation_name",
    "face_records",
]
