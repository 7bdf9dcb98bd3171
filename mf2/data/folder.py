"""Any folder of face images with a CSV or JSON-lines label file, in the MFA schema.

Label file columns (CSV header or JSON keys):

- `file_name` (required): image path relative to the image folder.
- `emotion` (optional): an emotion name (mapped with `map_emotion`) or a class index; empty = unknown.
- AUs (optional): columns named after AUs (`AU1`, `AU01`, `au12`, ...; columns of AUs outside the 12 are ignored)
  or one `au` column holding 12 values in `AU_NAMES` order (a list in JSON; in CSV a JSON list or values separated
  by spaces, commas or semicolons). Values are 0/1, -1 or empty for unknown; intensities > 0 count as active.
  AUs without a column are unknown.
- `group` (optional): split unit (video, subject); defaults to `file_name` without its extension.
- `frame` (optional): frame number; defaults to -1 (still image).
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from datasets import Dataset

from ..configuration_mf2 import AU_NAMES
from .schema import MFA_FEATURES, NUM_AUS, UNKNOWN, au_value, au_vector, map_emotion, mfa_row, rows_to_columns

_AU_COLUMN = re.compile(r"^au\s*0*(\d{1,2})$", re.IGNORECASE)


def _records(labels_file: Path) -> Iterator[dict]:
    if labels_file.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        with open(labels_file, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{labels_file}:{number}: not a JSON object ({error}).") from error
    else:
        with open(labels_file, newline="", encoding="utf-8") as handle:
            yield from csv.DictReader(handle)


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
            values[AU_NAMES.index(f"AU{int(match.group(1))}")] = au_value(value)
    return values


def _emotion(value, emotion_map: Mapping[str, str | None] | None) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        value = int(value)
    return map_emotion(value, emotion_map)


def load_image_folder(
    labels_file: str | os.PathLike,
    image_dir: str | os.PathLike | None = None,
    *,
    emotion_map: Mapping[str, str | None] | None = None,
    source: str = "folder",
) -> Dataset:
    """Read a label file (CSV, or JSON lines for `.jsonl`/`.json`/`.ndjson`) and its images into an MFA dataset.

    Args:
        labels_file: The label file; see the module docstring for its columns.
        image_dir: Folder the `file_name`s are relative to; defaults to the label file's folder.
        emotion_map: Extra source→MFA emotion names on top of `DEFAULT_EMOTION_MAP`.
        source: Value of the `source` column.

    Raises:
        FileNotFoundError: Some listed images do not exist (the first few are named).
    """
    labels_file = Path(labels_file)
    image_dir = Path(image_dir) if image_dir is not None else labels_file.parent
    rows, missing = [], []
    for record in _records(labels_file):
        name = str(record.get("file_name") or "").strip()
        if not name:
            raise ValueError(f"{labels_file}: every record needs a `file_name`.")
        path = image_dir / name
        if not path.is_file():
            missing.append(name)
            continue
        group = str(record.get("group") or "").strip() or str(Path(name).with_suffix(""))
        frame = record.get("frame")
        frame = int(float(frame)) if frame not in (None, "") else -1
        emotion = _emotion(record.get("emotion"), emotion_map)
        rows.append(mfa_row(str(path), _row_aus(record), emotion, group, frame, source))
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) listed in {labels_file} are missing, e.g. {missing[:3]}.")
    return Dataset.from_dict(rows_to_columns(rows), features=MFA_FEATURES)


__all__ = ["load_image_folder"]
