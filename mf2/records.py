"""`mf2 analyze`'s output: one record per face (or one per faceless image, unreadable file, failed video), written as
JSON lines or as CSV rows with a fixed column set, and the file names of the annotated PNGs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, TextIO

from .inputs import InputPath


def face_records(faces: list[dict], source: dict[str, Any], common: dict[str, Any]) -> list[dict[str, Any]]:
    """One JSON record per face (`face` numbers them within the image or frame); one `"face": null` record if none."""
    if not faces:
        return [{**source, "face": None, **common}]
    records = []
    for number, face in enumerate(faces):
        record = {**source, "face": number}
        record.update({key: value for key, value in face.items() if key not in ("features", "image_index")})
        record.update(common)
        records.append(record)
    return records


class RecordWriter:
    """Writes records as JSON lines, or as CSV rows with a fixed column set (one column per AU and per emotion)."""

    def __init__(self, stream: TextIO, fmt: str, au_names: list[str], emotion_labels: list[str]):
        self.stream, self.fmt = stream, fmt
        self.au_names, self.emotion_labels = au_names, emotion_labels
        self._csv = None

    def columns(self) -> list[str]:
        return [
            "path", "frame", "time", "face", "error", "warning", "x1", "y1", "x2", "y2", "emotion", "emotion_score",
            *[f"emotion_{label}" for label in self.emotion_labels], *self.au_names, "active_action_units",
            "landmark_backend", "explanation", "model", "model_version", "model_trained",
        ]  # fmt: skip

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(_rounded(record), ensure_ascii=False) + "\n")
            return
        if self._csv is None:
            self._csv = csv.DictWriter(self.stream, fieldnames=self.columns(), extrasaction="ignore")
            self._csv.writeheader()
        row = {key: record.get(key) for key in ("path", "frame", "time", "face", "error", "warning",
                                                "landmark_backend", "explanation", "model", "model_version", "model_trained")}  # fmt: skip
        if record.get("box"):
            row.update(zip(("x1", "y1", "x2", "y2"), (round(v, 2) for v in record["box"])))
        if record.get("emotion"):
            row["emotion"], row["emotion_score"] = record["emotion"]["label"], round(record["emotion"]["score"], 6)
            for item in record.get("emotions", []):
                row[f"emotion_{item['label']}"] = round(item["score"], 6)
        for name, probability in (record.get("action_units") or {}).items():
            row[name] = round(probability, 6)
        if "active_action_units" in record:
            row["active_action_units"] = ";".join(record["active_action_units"])
        self._csv.writerow(row)


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
    stem = stem if frame is None else f"{stem}_frame{frame:06d}"
    name, k = f"{stem}.png", 1
    while name in used:  # two inputs with the same stem (different folders) must not overwrite each other
        name, k = f"{stem}-{k}.png", k + 1
    used.add(name)
    return name


__all__ = ["RecordWriter", "annotation_name", "face_records"]
