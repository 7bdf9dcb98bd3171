"""Predicting and scoring an MF² checkpoint, shared by `mf2 evaluate`, `mf2 train`, `mf2 finetune` and `mf2 recipe`:
`Trainer` predictions as named arrays and the paper's metrics, the recognition model with its adapter, and the AU
thresholds a checkpoint or adapter keeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..integration.default_model import default_model_path
from ..local_files import write_config, write_json
from .collator import MF2DataCollator
from .metrics import compute_mf2_metrics, tune_au_thresholds
from .trainer import MF2Trainer, split_predictions

THRESHOLDS_FILE = "thresholds.json"


class NonFinitePredictionsError(ValueError):
    """Predictions with NaN or infinite values (a training that diverged, a model broken in half precision): an error,
    never a score, and never a finished stage that a resumed run would keep.

    Attributes:
        part: the prediction array ("au_probs" or "emotion_logits").
        rows: the rows (examples of the predicted set) whose values are not finite.
        total: the rows predicted.
    """

    def __init__(self, part: str, rows: list[int], total: int):
        self.part, self.rows, self.total = part, rows, total
        super().__init__(
            f"the model's {part} are not finite (NaN or infinite) for {len(rows)} of {total} examples (first: "
            f"{rows[:5]}): its training diverged or its dtype is too narrow; train again with a lower learning rate, "
            "or predict in float32"
        )


def check_finite(parts: dict[str, Any]) -> None:
    """Raise `NonFinitePredictionsError` where `parts`' AU logits or probabilities or emotion logits are not finite.
    Give the logits where there are some: the sigmoid maps an infinite AU logit to a finite 0 or 1."""
    for name in ("au_logits", "au_probs", "emotion_logits"):
        values = parts.get(name)
        if values is not None:
            values = np.asarray(values, dtype=np.float64)
            rows = values.reshape(1, 1) if values.ndim == 0 else values.reshape(len(values), -1 if values.size else 0)
            bad = ~np.isfinite(rows).all(axis=1)
            if bad.any():
                raise NonFinitePredictionsError(name, np.flatnonzero(bad).tolist(), len(rows))


def predict(trainer: MF2Trainer, dataset, collator: MF2DataCollator | None = None, prefix: str = "eval"):
    """Predict `dataset` with `trainer` (optionally with another collator), gathered over processes.

    Returns:
        `(parts, metrics)`: `parts` from `split_predictions` (AU probabilities, emotion logits, labels, example ids) and
        the metrics `Trainer` computed (with `prefix`).

    Raises:
        NonFinitePredictionsError: some predictions are NaN or infinite.
    """
    original = trainer.data_collator
    if collator is not None:
        trainer.data_collator = collator
    try:
        output = trainer.predict(dataset, metric_key_prefix=prefix)
    finally:
        trainer.data_collator = original
    parts = split_predictions(output.predictions, output.label_ids)
    raw = output.predictions if isinstance(output.predictions, (tuple, list)) else (output.predictions,)
    check_finite({"au_logits": raw[0], "emotion_logits": parts["emotion_logits"]})
    return parts, dict(output.metrics)


def tuned_thresholds(parts: dict[str, Any], config) -> list[float] | None:
    """Per-AU thresholds tuned on predictions `parts` (an AU without a positive label keeps the config's), or None
    when no AU is labelled positive."""
    labels, probs = parts.get("au_labels"), parts.get("au_probs")
    if labels is None or probs is None or not (np.asarray(labels) == 1).any():
        return None
    return tune_au_thresholds(probs, labels, default=config.au_decision_thresholds)


def score(
    parts: dict[str, Any], config, tune: bool = False, prefix: str = "eval"
) -> tuple[dict[str, float], list | None]:
    """Metrics of predictions with the config's thresholds, and with `tune` the thresholds tuned on them (AUs without
    a positive label keep the config's).

    Returns:
        `(metrics, thresholds)`; `thresholds` is None without `tune` or when no AU is labelled.
    """
    kwargs = dict(
        au_probs=parts["au_probs"],
        au_labels=parts["au_labels"],
        emotion_predictions=parts["emotion_logits"],
        emotion_labels=parts["emotion_labels"],
        au_names=config.au_names,
        emotion_names=config.emotion_labels,
    )
    metrics = {f"{prefix}_{k}": v for k, v in compute_mf2_metrics(au_thresholds=config.au_thresholds, **kwargs).items()}
    thresholds = tuned_thresholds(parts, config) if tune else None
    if thresholds is not None:
        tuned = compute_mf2_metrics(au_thresholds=thresholds, **{**kwargs, "emotion_predictions": None})
        metrics.update({f"{prefix}_{k}_tuned": v for k, v in tuned.items() if k.startswith("au_f1")})
    return metrics, thresholds


def load_recognition_model(model_name_or_path: str, adapter_name_or_path: str | None = None):
    """The image-only recogniser of a checkpoint (text side left out), with a DFN adapter when given
    (`mf2.dfn.load_adapter`: the AU thresholds of the adapter folder's `thresholds.json`, written by `mf2 finetune`,
    replace the checkpoint's)."""
    from ..modeling_mf2 import MF2ForFacialStateRecognition

    model = MF2ForFacialStateRecognition.from_pretrained(model_name_or_path)
    if adapter_name_or_path is None:
        return model
    from ..dfn import load_adapter

    return load_adapter(model, adapter_name_or_path)


def adapter_folder(adapter_dir: str | Path) -> Path:
    """The local folder holding the adapter of `adapter_dir`: itself, or its `dfn/` in a repository `mf2 push` wrote."""
    from ..dfn.loading import ADAPTER_SUBFOLDER, adapter_subfolder

    path = Path(adapter_dir)
    return path / ADAPTER_SUBFOLDER if path.is_dir() and adapter_subfolder(path) else path  # a Hub id: not asked


def check_threshold_target(model_dir: str | Path, adapter_dir: str | Path | None = None) -> None:
    """Refuse to store thresholds where they would not reach the model they were tuned for: an adapter that is not a
    local adapter folder (a Hub id would become a new folder of that name here), or, without an adapter, a
    checkpoint's config that is not a local folder or that is the model shipped in the package (every use of the
    installed package would change).

    Raises:
        mf2.data.DataError: one line naming the folder and the fix.
    """
    from ..data.schema import DataError

    if adapter_dir is not None:
        if not (adapter_folder(adapter_dir) / "adapter_config.json").is_file():
            raise DataError(
                f"--store_thresholds writes into a local adapter folder; {adapter_dir} holds no adapter_config.json "
                "(a Hub id: download it with huggingface_hub.snapshot_download and give that folder)"
            )
        return
    if not (Path(model_dir) / "config.json").is_file():
        raise DataError(f"--store_thresholds writes into a local checkpoint folder; {model_dir} holds no config.json")
    if Path(model_dir).resolve() == default_model_path():
        raise DataError(
            f"--store_thresholds would rewrite the model shipped in the mf2 package ({model_dir}) for every use of "
            "it; save a copy (`save_pretrained`) and store into that"
        )


def store_thresholds(thresholds: list[float], model_dir: str | Path, adapter_dir: str | Path | None = None) -> Path:
    """Store tuned thresholds: in the adapter folder's `thresholds.json` with an adapter, else in the checkpoint's
    `config.json` (`MF2Config.au_thresholds`)."""
    from ..configuration_mf2 import MF2Config

    check_threshold_target(model_dir, adapter_dir)
    if adapter_dir is not None:
        target = adapter_folder(adapter_dir) / THRESHOLDS_FILE
        write_json(target, {"au_thresholds": list(thresholds)})
        return target
    config = MF2Config.from_pretrained(model_dir)
    config.au_thresholds = list(thresholds)
    return write_config(config, model_dir)


def merge_parts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate `split_predictions` dicts."""
    return {key: None if parts[0][key] is None else np.concatenate([part[key] for part in parts]) for key in parts[0]}


__all__ = [
    "THRESHOLDS_FILE",
    "NonFinitePredictionsError",
    "check_threshold_target",
    "check_finite",
    "load_recognition_model",
    "merge_parts",
    "predict",
    "score",
    "store_thresholds",
    "tuned_thresholds",
]
