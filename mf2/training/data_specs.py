"""The datasets of the training commands, named on the command line by data specs.

Data specs (`--train_data`, `--eval_data`) read `SOURCE:PATH[,key=value...]`:

| source    | PATH                                                  | default landmark back-end                   |
|-----------|-------------------------------------------------------|---------------------------------------------|
| `mfa`     | a folder of images with a `labels.csv` (`mf2.data.folder`; `docs/finetuning.md`), or an MFA-schema Parquet file, folder or `save_to_disk` | `--landmark_backend` |
| `ferplus` | a FER+ Parquet file (48x48 grayscale face crops)        | `dlib`, with `no_face=fallback` (one geometry: the crops are aligned like any face at inference, never assumed aligned) |
| `ckplus`  | a CK+ Parquet file (128x128 grayscale face crops)       | `dlib`, with `no_face=fallback`             |

Keys: `split` (for a `DatasetDict`), `max_samples` (class-stratified subset by emotion), `seed`, `landmark_backend`,
`no_face`. `check_data_specs` checks specs before any model is loaded: a bad spec, a missing path or a bad label file
is a `mf2.data.DataError` with a one-line message (the commands print it and exit with status 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict

from ..data.schema import DataError, MissingDataError
from ..face_search import DEPRECATED_NO_FACE, NO_FACE_CHOICES

SOURCES: tuple[str, ...] = ("mfa", "ferplus", "ckplus")
DEFAULT_BACKENDS: dict[str, str | None] = {"mfa": None, "ferplus": "dlib", "ckplus": "dlib"}


@dataclass
class DataSpec:
    """One dataset on the command line: `SOURCE:PATH[,key=value...]` (see the module docstring)."""

    source: str
    path: str
    split: str | None = None
    max_samples: int | None = None
    seed: int = 0
    landmark_backend: str | None = None
    no_face: str | None = None

    @classmethod
    def parse(cls, text: str) -> DataSpec:
        """The spec `text` names; a `DataError` (a `ValueError`) saying what is wrong otherwise."""
        source, separator, rest = text.partition(":")
        if not separator or source not in SOURCES or not rest:
            raise DataError(
                f"data spec {text!r}: expected 'SOURCE:PATH[,key=value...]' with SOURCE in {SOURCES}, "
                "e.g. 'mfa:my_faces' for a folder of images with a labels.csv."
            )
        path, *options = rest.split(",")
        values: dict[str, Any] = {}
        names = {item.name for item in fields(cls)}
        for option in options:
            key, equals, value = option.partition("=")
            if not equals or key not in names or key in ("source", "path"):
                raise DataError(
                    f"data spec {text!r}: bad option {option!r}; keys: split, max_samples, seed, "
                    "landmark_backend, no_face."
                )
            try:
                values[key] = int(value) if key in ("max_samples", "seed") else value
            except ValueError:
                raise DataError(f"data spec {text!r}: {key} must be a whole number, got {value!r}.") from None
        spec = cls(source=source, path=path, **values)
        if spec.no_face is not None and spec.no_face not in (*NO_FACE_CHOICES, *DEPRECATED_NO_FACE):
            raise DataError(f"data spec {text!r}: no_face must be one of {NO_FACE_CHOICES}.")
        if spec.max_samples is not None and spec.max_samples < 1:
            raise DataError(f"data spec {text!r}: max_samples must be 1 or more, got {spec.max_samples}.")
        if spec.split is not None and spec.source != "mfa":
            raise DataError(
                f"data spec {text!r}: split= picks a split of an mfa dataset; give {spec.source} the split's own "
                "file (train.parquet, valid.parquet, ...)."
            )
        return spec

    def backend(self, default: str) -> str:
        """The landmark back-end of this source."""
        return self.landmark_backend or DEFAULT_BACKENDS[self.source] or default

    @property
    def name(self) -> str:
        return f"{self.source}:{Path(self.path).name}" + (f"[{self.split}]" if self.split else "")


def load_source(spec: DataSpec, cache_dir: str | None = None) -> Dataset:
    """The dataset a spec names, in the MFA schema (`mf2.data.MFA_FEATURES`)."""
    from ..data import load_ckplus, load_ferplus
    from ..data.caption_dataset import load_mfa

    if spec.source == "ferplus":
        dataset = load_ferplus(spec.path, cache_dir=cache_dir)
    elif spec.source == "ckplus":
        dataset = load_ckplus(spec.path, cache_dir=cache_dir)
    else:
        try:
            dataset = load_mfa(spec.path, cache_dir=cache_dir)
        except ValueError as error:  # not the MFA schema (missing columns, a label out of range)
            raise DataError(f"{spec.path}: {' '.join(str(error).split())}") from error
        dataset = _split(dataset, spec)
        _check_labels(dataset, spec)
    if spec.max_samples is not None and spec.max_samples < len(dataset):
        dataset = dataset.select(stratified_indices(dataset["emotion"], spec.max_samples, seed=spec.seed))
    return dataset


def _split(dataset: Dataset | DatasetDict, spec: DataSpec) -> Dataset:
    """The split of an mfa dataset that `spec` names (the only one where it names none)."""
    if not isinstance(dataset, DatasetDict):
        if spec.split is not None:
            raise DataError(f"{spec.path} holds one dataset, with no splits; drop split={spec.split}.")
        return dataset
    if spec.split is None:
        if len(dataset) != 1:
            raise DataError(f"{spec.path} holds splits {list(dataset)}; add ',split=NAME' to the spec.")
        spec.split = next(iter(dataset))
    if spec.split not in dataset:
        raise DataError(f"{spec.path} has no split {spec.split!r}; its splits: {list(dataset)}.")
    return dataset[spec.split]


def _check_labels(dataset: Dataset, spec: DataSpec) -> None:
    """AU labels are -1 (unknown), 0 or 1 in the MFA schema, emotions -1 (unknown) or an index of `EMOTION_LABELS`;
    anything else would fail the first training step, or an evaluation, after the data's pre-processing."""
    from ..configuration_mf2 import EMOTION_LABELS

    def values(column: str) -> np.ndarray:
        return np.unique(np.asarray(dataset[column], dtype=np.int64)) if len(dataset) else np.array([], np.int64)

    odd = [int(value) for value in values("au") if value not in (-1, 0, 1)]
    if odd:
        raise DataError(
            f"{spec.path}: AU labels must be -1 (unknown), 0 or 1 in the MFA schema, found {odd}; map intensities to "
            "1 (mf2.data.au_vector does) and 'not coded' to -1"
        )
    odd = [int(value) for value in values("emotion") if not -1 <= value < len(EMOTION_LABELS)]
    if odd:
        raise DataError(
            f"{spec.path}: emotion labels must be -1 (unknown) or 0-{len(EMOTION_LABELS) - 1} "
            f"({', '.join(EMOTION_LABELS)}) in the MFA schema, found {odd}"
        )


def _quietly_loaded(spec: DataSpec) -> Dataset:
    """`load_source` without the `datasets` bars (a check: a refusal must stay one line)."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    shown = not are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return load_source(spec)
    finally:
        if shown:
            enable_progress_bars()


def check_data_specs(specs: Sequence[str | DataSpec], option: str = "--train_data") -> list[DataSpec]:
    """Parse and check data specs before anything slow runs: the spec itself, that its path exists, and for a folder
    of images its `labels.csv` (columns, values, listed images; `mf2.data.folder`).

    Returns:
        The parsed specs.

    Raises:
        DataError: one line naming the spec (and `option`), the file and the fix.
    """
    from ..data.folder import LABEL_FILE_SUFFIXES, LABELS_FILE, check_labelled, find_labels_file, load_image_folder

    parsed = []
    for item in specs:
        try:
            spec = DataSpec.parse(item) if isinstance(item, str) else item
            path = Path(spec.path)
            if not path.exists():
                raise MissingDataError("no such folder or file")
            labels = path if path.is_file() and path.suffix.lower() in LABEL_FILE_SUFFIXES else None
            if spec.source == "mfa" and path.is_dir() and not any(path.glob("*.parquet")):
                labels = find_labels_file(path)
                if labels is None and not any((path / name).exists() for name in ("dataset_dict.json", "state.json")):
                    raise DataError(
                        f"{path} holds no {LABELS_FILE}: a folder of images needs one, with the columns "
                        "file_name,emotion,AU1,...,AU26 (empty = unknown; see docs/finetuning.md); or give a Parquet "
                        "or `save_to_disk` dataset"
                    )
            if spec.source in ("ferplus", "ckplus") and not path.is_file():
                raise DataError(f"{path} is a folder; give {spec.source} its .parquet file (e.g. {path}/train.parquet)")
            if labels is not None:  # the labels read, every listed image there (none opened), a known label
                check_labelled(load_image_folder(labels), labels)
            elif spec.source == "mfa":  # a Parquet or `save_to_disk` dataset: its schema, split and labels
                _quietly_loaded(DataSpec(**{**vars(spec), "max_samples": None}))
        except DataError as error:
            raise type(error)(f"{option} {item if isinstance(item, str) else item.name}: {error}") from error
        parsed.append(spec)
    return parsed


def stratified_indices(labels: Sequence[int], count: int, seed: int = 0) -> list[int]:
    """Sorted indices of a `count`-row subset with each label's share of the whole (largest-remainder rounding)."""
    labels = np.asarray(labels)
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = sizes * count / len(labels)
    take = np.floor(quotas).astype(int)
    for index in np.argsort(-(quotas - take), kind="stable")[: count - take.sum()]:
        take[index] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == label), size=n, replace=False) for label, n in zip(classes, take)]
    return sorted(int(i) for i in np.concatenate(chosen))


__all__ = ["DEFAULT_BACKENDS", "SOURCES", "DataSpec", "check_data_specs", "load_source", "stratified_indices"]
