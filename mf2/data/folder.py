"""Any folder of face images with a CSV or JSON-lines label file, in the MFA schema.

This is the format `mf2 finetune --train_data mfa:FOLDER` reads when FOLDER holds a `labels.csv` (`LABELS_FILE`) next
to its images (the walkthrough is `docs/finetuning.md`). Label file columns (CSV header or JSON keys):

- `file_name` (required): image path relative to the label file's folder (or to `image_dir`).
- `emotion` (optional): an emotion name (`neutral`, `happiness`, `sadness`, `surprise`, `fear`, `disgust`, `anger`,
  `other`, or a common spelling such as `happy`, `angry`, `contempt` → other; `map_emotion`) or a class index; empty
  = unknown.
- AUs (optional): columns named after AUs (`AU1`, `AU01`, `au12`, ...; columns of AUs outside the 12 that MF² predicts
  are ignored) or one `au` column holding 12 values in `AU_NAMES` order (a list in JSON; in CSV a JSON list or values
  separated by spaces, commas or semicolons). Values are 0/1, -1 or empty for unknown; intensities > 0 count as
  active. AUs without a column are unknown.
- `group` (optional): split unit (video, subject); defaults to `file_name` without its extension.
- `frame` (optional): frame number; defaults to -1 (still image).

No other column is accepted: a misspelt `emotoin` would otherwise leave every emotion unknown without a word (training
also needs at least one known label: `check_labelled`). Every problem is a `DataError` (a `ValueError`)
whose message is one line naming the file, the line and the fix; images the file lists that do not exist raise
`MissingDataError` (also a `FileNotFoundError`).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from datasets import Dataset
from datasets.fingerprint import Hasher

from ..configuration_mf2 import AU_NAMES, EMOTION_LABELS
from .schema import (
    MAX_AU_INTENSITY,
    MFA_FEATURES,
    NUM_AUS,
    UNKNOWN,
    DataError,
    MissingDataError,
    au_value,
    au_vector,
    map_emotion,
    mfa_row,
    rows_to_columns,
)
from .sources import content_fingerprint

LABELS_FILE = "labels.csv"
"""The label file a folder of images must hold to be read as a dataset (`mfa:FOLDER`)."""

LABEL_FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".ndjson")
"""Suffixes of label files (`.csv`, else JSON lines)."""

COLUMNS = ("file_name", "emotion", "au", "group", "frame")
"""The columns a label file may have besides one column per AU."""

_AU_COLUMN = re.compile(r"^au\s*0*(\d{1,2})$", re.IGNORECASE)
_FORMAT = f"the columns are file_name, emotion, {', '.join(AU_NAMES)}, group, frame: see docs/finetuning.md"


def find_labels_file(folder: str | os.PathLike) -> Path | None:
    """`folder/labels.csv` when `folder` is a folder that holds one, else None."""
    path = Path(folder) / LABELS_FILE
    return path if path.is_file() else None


def _records(labels_file: Path) -> Iterator[tuple[int, dict]]:
    """`(line number, record)` of every non-empty record."""
    if labels_file.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with open(labels_file, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{labels_file}:{number}: not a JSON object ({error}).") from error
                if not isinstance(record, dict):
                    raise DataError(f"{labels_file}:{number}: not a JSON object; write one object per line.")
                _check_columns(labels_file, record, where=f":{number}")
                yield number, {str(key).strip(): value for key, value in record.items()}  # as a CSV header is
        return
    with open(labels_file, newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise DataError(f"{labels_file}: empty; its first line names the columns ({_FORMAT}).")
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
        _check_columns(labels_file, reader.fieldnames)
        for record in reader:
            if None in record:
                raise DataError(
                    f"{labels_file}:{reader.line_num}: more values than the header has columns "
                    f"({len(reader.fieldnames)}); quote values that hold commas."
                )
            if None in record.values():  # the values would belong to the columns before the missing ones
                raise DataError(
                    f"{labels_file}:{reader.line_num}: fewer values than the header has columns "
                    f"({len(reader.fieldnames)}); leave an unknown value empty but keep its comma."
                )
            if any(value not in (None, "") for value in record.values()):
                yield reader.line_num, record


def _check_columns(labels_file: Path, columns, where: str = "") -> None:
    """Refuse a label file (or a JSON record, `where` its line) without `file_name`, or with a column this format does
    not know."""
    columns = [str(column).strip() for column in columns]
    unknown = [column for column in columns if column not in COLUMNS and not _AU_COLUMN.match(column)]
    if "file_name" not in columns:
        raise DataError(f"{labels_file}{where}: no `file_name` column, the image paths (found {columns}); {_FORMAT}.")
    if unknown:
        raise DataError(f"{labels_file}{where}: unknown column(s) {unknown}; rename or remove them ({_FORMAT}).")
    meant = [_canonical(column) for column in columns]  # AU01 and AU1 are one column, as "emotion " and "emotion"
    twice = sorted({column for column in meant if meant.count(column) > 1})
    if twice:
        raise DataError(f"{labels_file}{where}: column(s) {twice} given twice; keep one of each ({_FORMAT}).")
    if "au" in meant and any(_AU_COLUMN.match(column) for column in columns):
        raise DataError(f"{labels_file}{where}: both an `au` column and AU columns; give the AUs one way ({_FORMAT}).")


def _canonical(column: str) -> str:
    """The column a header name stands for: `AU<n>` for every spelling of an AU column, else the name."""
    match = _AU_COLUMN.match(column)
    return f"AU{int(match.group(1))}" if match else column


def check_labelled(dataset: Dataset, labels_file: str | os.PathLike) -> None:
    """Raise `DataError` when no row of `dataset` (read from `labels_file`) has a known emotion or AU: nothing to
    train on (`mf2 finetune` checks its data with this)."""
    if all(value == UNKNOWN for value in dataset["emotion"]) and all(
        value == UNKNOWN for row in dataset["au"] for value in row
    ):
        raise DataError(
            f"{labels_file}: no labels (every emotion and AU is empty or absent); give an `emotion` column "
            f"and/or AU columns ({_FORMAT})."
        )


def _au_list(value) -> list:
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [v for v in re.split(r"[\s,;]+", text) if v]
    return au_vector(list(value))


def _row_aus(record: Mapping) -> list[int]:
    if record.get("au") not in (None, ""):
        return _au_list(record["au"])
    values = [UNKNOWN] * NUM_AUS
    for column, value in record.items():
        match = _AU_COLUMN.match(str(column).strip())
        if match and f"AU{int(match.group(1))}" in AU_NAMES:
            try:
                values[AU_NAMES.index(f"AU{int(match.group(1))}")] = au_value(value)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"column {column}: {value!r} is not a label (1 active, 0 absent, empty unknown; "
                    f"an intensity from 1 to {MAX_AU_INTENSITY} counts as active)"
                ) from error
    return values


def _emotion(value, emotion_map: Mapping[str, str | None] | None) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    try:
        return map_emotion(value, emotion_map)
    except ValueError as error:
        raise ValueError(
            f"emotion {value!r} is not one of {', '.join(EMOTION_LABELS)} (or a spelling such as happy, "
            "angry, contempt → other); leave it empty when unknown"
        ) from error


def _row(record: Mapping, image_dir: Path, emotion_map, source: str) -> tuple[str, dict]:
    name = str(record.get("file_name") or "").strip()
    if not name:
        raise ValueError("no `file_name`")
    raw_group = record.get("group")  # a JSON number 0 is a subject id, not a missing one
    group = ("" if raw_group is None else str(raw_group).strip()) or str(Path(name).with_suffix(""))
    frame = record.get("frame")
    try:
        frame = int(float(frame)) if frame not in (None, "") else -1
    except (TypeError, ValueError):
        raise ValueError(f"frame {frame!r} is not a whole number (empty for a still image)") from None
    row = mfa_row(
        str(image_dir / name), _row_aus(record), _emotion(record.get("emotion"), emotion_map), group, frame, source
    )
    return name, row


def load_image_folder(
    labels_file: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    *,
    emotion_map: Mapping[str, str | None] | None = None,
    source: str = "folder",
) -> Dataset:
    """Read a label file (CSV, or JSON lines for `.jsonl`/`.json`/`.ndjson`) and its images into an MFA dataset.

    The images stay files (the dataset holds their paths); its fingerprint covers the labels and every image's size
    and modification time, so caches built from it (`mf2 finetune`'s pre-processing) follow edited or replaced images.

    Args:
        labels_file: The label file; see the module docstring for its columns.
        image_dir: Folder the `file_name`s are relative to; defaults to the label file's folder.
        emotion_map: Extra source→MFA emotion names on top of `DEFAULT_EMOTION_MAP`.
        source: Value of the `source` column.

    Raises:
        DataError: a missing or unknown column, an unreadable value (the line is named), or no rows.
        MissingDataError: the label file, or some listed images, do not exist (the first few are named).
    """
    labels_file = Path(labels_file)
    if not labels_file.is_file():
        raise MissingDataError(f"{labels_file}: no such label file.")
    image_dir = Path(image_dir) if image_dir is not None else labels_file.parent
    rows, missing, stats, lines = [], [], [], {}
    for number, record in _records(labels_file):
        try:
            name, row = _row(record, image_dir, emotion_map, source)
        except (TypeError, ValueError) as error:
            raise DataError(f"{labels_file}:{number}: {error}.") from error
        first = lines.setdefault(os.path.normpath(name), number)
        if first != number:  # one face trained twice, with labels that may disagree
            raise DataError(
                f"{labels_file}:{number}: {name} is listed already (line {first}); keep one line per image."
            )
        path = image_dir / name
        if not path.is_file():
            missing.append(name)
            continue
        rows.append(row)
        # The bytes, not size and time: an edit that keeps both (a fixed-size format, a tool that keeps dates) would
        # reuse the old image's crop (reading them is cheap next to the face search the key saves).
        stats.append(content_fingerprint([path]))
    if missing:
        raise MissingDataError(
            f"{labels_file}: {len(missing)} listed image(s) not found in {image_dir}, e.g. "
            f"{missing[:3]}; `file_name` is relative to the label file's folder."
        )
    if not rows:
        raise DataError(f"{labels_file}: no rows; add one line per image below the header.")
    columns = rows_to_columns(rows)
    dataset = Dataset.from_dict(columns, features=MFA_FEATURES)
    fingerprint = Hasher.hash([columns, stats, source])  # the labels, and each image file's content
    return Dataset(dataset.data, info=dataset.info, fingerprint=fingerprint)


__all__ = ["COLUMNS", "LABELS_FILE", "LABEL_FILE_SUFFIXES", "check_labelled", "find_labels_file", "load_image_folder"]
