"""What a `mf2 analyze --resume` must agree on with the run that began its output: one file holds one model's answers
read one way.

The records say which model wrote them (`model`, `model_version`); the options that shape them do not (an adapter,
`--threshold`, `--all-faces`, the runtime, the video sampling...). So every run keeps those options beside its
output, in `OUTPUT.resume.json` (a run without `--resume` replaces both), and a later `--resume` with other ones is
refused in one line naming each option that differs, instead of adding records read another way to the same file: a
killed run is told to go on with `--resume`, and it must go on as it began.

An output begun by an mf2 that did not keep the file has no such file: its records' model fields are still compared,
and the file is not written for it, since it would vouch for options nobody kept.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..local_files import write_json
from .analyze_checks import AnalyzeError
from .analyze_shards import part_paths, read_lines, record_fields

SETTINGS_SUFFIX = ".resume.json"

RECORD_OPTIONS = (
    *("adapter", "runtime", "onnx_model", "quantize", "dtype"),  # what computes the probabilities
    *("threshold", "top_k", "landmarks", "explain", "all_faces", "no_face"),  # what a record holds
    *("landmark_backend", "max_detection_size"),  # which faces are found, and how they are aligned
    *("video_fps", "every_n_frames", "detect_every", "max_gap"),  # which frames, and whose track
)
"""The command-line options (as `argparse` destinations) that change the records of an input."""

OTHER_OPTIONS = (
    *("paths", "no_recursive", "resume"),  # which inputs: a resume exists to add more of them
    *("model", "trust_remote_code"),  # which model: compared on the records' own model fields instead
    *("output", "format", "annotate", "summary", "plot", "no_progress"),  # where and in what form the answers go
    *("batch_size", "device"),  # how fast: the same numbers (dtype and runtime, which change them, are kept)
)
"""The other options of `mf2 analyze`. Every option is in one of the two lists (a test holds it), so a new one is
classed on purpose rather than left out of the check by default."""


def settings_path(output: Path) -> Path:
    """Where the options of a `--resume` run's output are kept."""
    return output.with_name(output.name + SETTINGS_SUFFIX)


def record_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `RECORD_OPTIONS` of a command line, as JSON values."""
    settings = {name: getattr(args, name) for name in RECORD_OPTIONS}
    settings["adapter"] = None if settings["adapter"] is None else str(Path(settings["adapter"]).resolve())
    return settings


def check_resumed_run(output: Path, fmt: str, identity: dict[str, Any], settings: dict[str, Any], keep: bool) -> None:
    """Raise `AnalyzeError` where `output` (or its parts) was written by another model than `identity`'s, or with
    other `settings` than its `OUTPUT.resume.json` holds. With `keep` (one process of a run writes it), store
    `settings` there for a new output: one holding no records yet."""
    has_records = _check_model(output, fmt, identity)
    kept = _kept_settings(output)
    if kept is not None:
        differing = [name for name in RECORD_OPTIONS if kept.get(name) != settings[name]]
        if differing:
            said = ", ".join(
                f"{_option(name, kept.get(name))} (this run: {_value(settings[name])})" for name in differing
            )
            raise AnalyzeError(
                f"--resume: {output} was written with {said}; resume with the same options, or write to another "
                "--output"
            )
    elif keep and not has_records:
        try:
            write_json(settings_path(output), settings)
        except OSError:
            pass  # its folder cannot hold files: writing the output fails next, in the run's own one line


def begin_output(output: Path, settings: dict[str, Any]) -> None:
    """For a run without `--resume`, which replaces `output`: remove the part files of a killed `--resume` or
    multi-process run (a later `--resume` would fold them in as done inputs, read with other options), and keep this
    run's `settings` in place of the earlier run's, for a `--resume` after it is killed. (An output that cannot be
    written is the run's own one-line error.)"""
    for path in [settings_path(output), *part_paths(output)]:  # the earlier options go even if writing these fails
        if path.is_file():
            path.unlink()
    try:
        write_json(settings_path(output), settings)
    except OSError:
        pass  # its folder cannot hold files: writing the output fails next, in the run's own one line


def _check_model(output: Path, fmt: str, identity: dict[str, Any]) -> bool:
    """Refuse records of another model (name or version) than `identity`'s; records without the model fields
    (written before mf2 wrote them) are not compared. Returns whether the output or its parts hold any record (read
    once, here)."""
    wanted = (str(identity["model"]), str(identity["model_version"]))
    has_records = False
    for path in [output, *part_paths(output)]:
        header, lines = read_lines(path, fmt)
        has_records = has_records or bool(lines)
        for _, text in lines:
            record = record_fields(text, header, fmt)
            if "model" not in record:
                continue
            found = tuple(str(record.get(name) or None) for name in ("model", "model_version"))
            if found != wanted:
                raise AnalyzeError(
                    f"--resume: {path} holds records of {found[0]} {found[1]}, and this run uses {wanted[0]} "
                    f"{wanted[1]}; resume with that model (--model), or write to another --output"
                )
    return has_records


def _kept_settings(output: Path) -> dict[str, Any] | None:
    path = settings_path(output)
    if not path.is_file():
        return None
    try:
        kept = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise AnalyzeError(f"--resume: cannot read {path} ({error}); remove it to resume without the check") from error
    if not isinstance(kept, dict):
        raise AnalyzeError(f"--resume: {path} does not hold options; remove it to resume without the check")
    return kept


def _option(name: str, value: Any) -> str:
    flag = "--" + name.replace("_", "-")
    return f"{flag} {_value(value)}"


def _value(value: Any) -> str:
    if value is None:
        return "not given"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


__all__ = ["RECORD_OPTIONS", "begin_output", "check_resumed_run", "record_settings", "settings_path"]
