"""Metrics of the MF² paper, in numpy: F1 per Action Unit and its mean over the AUs, emotion accuracy overall and per
class, and emotion macro-F1; plus per-AU decision-threshold tuning.

Labels of -1 mean "unknown" everywhere and are left out: an AU is scored only on the rows where it is labelled, an
emotion only on the rows whose emotion is known. A metric that has no labelled row at all is left out of the result
rather than reported as 0 (FER+ has no AU labels, for example), so that averages never mix in undefined values.

`evaluate` is not needed here: `mf2/training/mf2_metric/` wraps these functions as an `evaluate` module for users who
want `evaluate.load(...)`; the Hub's own metric scripts cannot be fetched offline (see `HF_INTEGRATION.md` §9).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..configuration_mf2 import AU_NAMES, DEFAULT_AU_THRESHOLD, EMOTION_LABELS

UNKNOWN = -1
DEFAULT_THRESHOLD = DEFAULT_AU_THRESHOLD  # the config decides it: `MF2Config.au_decision_thresholds`
# Candidate thresholds of `tune_au_thresholds`: strictly inside (0, 1), as `MF2Config.validate_mf2` requires.
THRESHOLD_GRID: np.ndarray = np.round(np.arange(0.02, 0.99, 0.01), 2)


def _f1(true_positive: np.ndarray, false_positive: np.ndarray, false_negative: np.ndarray) -> np.ndarray:
    """Binary F1 from counts; 0 where it is 0/0 (no positive label and no positive prediction), as scikit-learn's
    `zero_division=0`."""
    denominator = 2 * true_positive + false_positive + false_negative
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2 * true_positive / np.maximum(denominator, 1), 0.0)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    # exp(-log(1 + exp(-x))) never overflows, unlike 1 / (1 + exp(-x)) for large negative x.
    return np.exp(-np.logaddexp(0.0, -np.asarray(logits, dtype=np.float64)))


def au_f1_scores(
    au_probs: np.ndarray, au_labels: np.ndarray, thresholds: float | Sequence[float] | np.ndarray = DEFAULT_THRESHOLD
) -> np.ndarray:
    """Binary F1 of every AU over its labelled rows.

    Args:
        au_probs: `(N, A)` probabilities (or 0/1 predictions) of each AU being active.
        au_labels: `(N, A)` labels: 1 active, 0 absent, -1 unknown.
        thresholds: a probability counts as "active" when it is `>=` its AU's threshold (one value or one per AU).

    Returns:
        `(A,)` F1 per AU; NaN for an AU without any labelled row.
    """
    probs = np.asarray(au_probs, dtype=np.float64)
    labels = np.asarray(au_labels)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"au_probs {probs.shape} and au_labels {labels.shape} must both be (N, num_aus).")
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (probs.shape[1],))
    known = labels != UNKNOWN
    predicted = probs >= thresholds
    positive = labels == 1
    true_positive = (predicted & positive & known).sum(0)
    false_positive = (predicted & ~positive & known).sum(0)
    false_negative = (~predicted & positive & known).sum(0)
    scores = _f1(true_positive, false_positive, false_negative)
    return np.where(known.any(0), scores, np.nan)


def emotion_scores(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, np.ndarray | float]:
    """Emotion metrics over the rows whose label is known.

    Args:
        predictions: `(N,)` predicted class indices, or `(N, C)` scores (argmax is taken).
        labels: `(N,)` class indices, -1 unknown.
        num_classes: number of classes C.

    Returns:
        `accuracy` (top-1 over all known rows), `per_class_accuracy` `(C,)` (share of each class's rows predicted
        as that class, i.e. its recall; NaN for a class absent from the labels), `mean_class_accuracy` (their mean over
        present classes), `per_class_f1` `(C,)` (NaN for a class neither labelled nor predicted), `macro_f1` (mean F1
        over the classes present in the labels), `one_vs_rest_accuracy` `(C,)` (binary accuracy of "class c or not"),
        and `count` (known rows). Empty dict when no row is known.
    """
    predictions = np.asarray(predictions)
    if predictions.ndim == 2:
        predictions = predictions.argmax(-1)
    labels = np.asarray(labels).reshape(-1)
    predictions = predictions.reshape(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"{predictions.shape[0]} emotion predictions for {labels.shape[0]} labels.")
    known = labels != UNKNOWN
    if not known.any():
        return {}
    predictions, labels = predictions[known], labels[known]
    classes = np.arange(num_classes)
    is_label = labels[:, None] == classes
    is_prediction = predictions[:, None] == classes
    true_positive = (is_label & is_prediction).sum(0)
    support = is_label.sum(0)
    predicted = is_prediction.sum(0)
    present = support > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(present, true_positive / np.maximum(support, 1), np.nan)
    f1 = _f1(true_positive, predicted - true_positive, support - true_positive).astype(np.float64)
    f1 = np.where(present | (predicted > 0), f1, np.nan)
    one_vs_rest = (is_label == is_prediction).mean(0)
    return {
        "accuracy": float((predictions == labels).mean()),
        "per_class_accuracy": recall,
        "mean_class_accuracy": float(np.nanmean(recall)),
        "per_class_f1": f1,
        # Classes absent from the labels are left out of the macro average, as the paper's per-class tables do.
        "macro_f1": float(np.mean(f1[present])),
        "one_vs_rest_accuracy": one_vs_rest,
        "count": int(known.sum()),
    }


def compute_mf2_metrics(
    au_probs: np.ndarray | None = None,
    au_labels: np.ndarray | None = None,
    emotion_predictions: np.ndarray | None = None,
    emotion_labels: np.ndarray | None = None,
    au_thresholds: float | Sequence[float] | None = None,
    au_names: Sequence[str] = AU_NAMES,
    emotion_names: Sequence[str] = EMOTION_LABELS,
) -> dict[str, float]:
    """Flat metric dict (what `Trainer` logs and `mf2 evaluate` writes).

    Keys: `au_f1` (mean F1 over the AUs that have labels), `au_f1_<AU>`, `au_count` (rows with any AU label);
    `emotion_accuracy`, `emotion_accuracy_<class>` (per-class accuracy = recall), `emotion_mean_class_accuracy`,
    `emotion_macro_f1`, `emotion_f1_<class>`, `emotion_ovr_accuracy_<class>` (one-vs-rest), `emotion_mean_ovr_accuracy`,
    `emotion_count`. Keys whose metric is undefined (no labelled rows) are omitted. Values are fractions in [0, 1].
    """
    metrics: dict[str, float] = {}
    if au_probs is not None and au_labels is not None:
        thresholds = DEFAULT_THRESHOLD if au_thresholds is None else au_thresholds
        scores = au_f1_scores(au_probs, au_labels, thresholds)
        if len(au_names) != scores.shape[0]:
            raise ValueError(f"{len(au_names)} AU names for {scores.shape[0]} AU columns.")
        if not np.isnan(scores).all():
            metrics["au_f1"] = float(np.nanmean(scores))
            for name, score in zip(au_names, scores):
                if not np.isnan(score):
                    metrics[f"au_f1_{name}"] = float(score)
            metrics["au_count"] = int((np.asarray(au_labels) != UNKNOWN).any(1).sum())
    if emotion_predictions is not None and emotion_labels is not None:
        scores = emotion_scores(emotion_predictions, emotion_labels, len(emotion_names))
        if scores:
            metrics["emotion_accuracy"] = scores["accuracy"]
            metrics["emotion_mean_class_accuracy"] = scores["mean_class_accuracy"]
            metrics["emotion_macro_f1"] = scores["macro_f1"]
            metrics["emotion_mean_ovr_accuracy"] = float(np.mean(scores["one_vs_rest_accuracy"]))
            for index, name in enumerate(emotion_names):
                if not np.isnan(scores["per_class_accuracy"][index]):
                    metrics[f"emotion_accuracy_{name}"] = float(scores["per_class_accuracy"][index])
                if not np.isnan(scores["per_class_f1"][index]):
                    metrics[f"emotion_f1_{name}"] = float(scores["per_class_f1"][index])
                metrics[f"emotion_ovr_accuracy_{name}"] = float(scores["one_vs_rest_accuracy"][index])
            metrics["emotion_count"] = scores["count"]
    return metrics


def tune_au_thresholds(
    au_probs: np.ndarray,
    au_labels: np.ndarray,
    grid: Sequence[float] | np.ndarray | None = None,
    default: float | Sequence[float] = DEFAULT_THRESHOLD,
) -> list[float]:
    """Per-AU decision thresholds that maximise each AU's F1 on (validation) data.

    Each AU is tuned on its own labelled rows over `grid` (default 0.02, 0.03, ..., 0.98). Ties go to the threshold
    closest to `default`, so that a flat F1 curve does not drift to an extreme. An AU without a positive label keeps
    `default`: F1 gives it nothing to tune on. `default` is one value or one per AU (the model's own thresholds,
    `config.au_decision_thresholds`, so that fine-tuning on data that labels a few AUs keeps the others' thresholds).

    Returns:
        One threshold per AU, each in (0, 1), ready for `MF2Config.au_thresholds`.
    """
    probs = np.asarray(au_probs, dtype=np.float64)
    labels = np.asarray(au_labels)
    if probs.shape != labels.shape or probs.ndim != 2:
        raise ValueError(f"au_probs {probs.shape} and au_labels {labels.shape} must both be (N, num_aus).")
    grid = THRESHOLD_GRID if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.size == 0 or (grid <= 0).any() or (grid >= 1).any():
        raise ValueError("Threshold candidates must lie strictly inside (0, 1).")
    defaults = np.broadcast_to(np.asarray(default, dtype=np.float64), (probs.shape[1],))
    thresholds = []
    for column in range(probs.shape[1]):
        known = labels[:, column] != UNKNOWN
        truth = labels[known, column] == 1
        if not truth.any():
            thresholds.append(float(defaults[column]))
            continue
        predicted = probs[known, column][None, :] >= grid[:, None]  # (G, n)
        true_positive = (predicted & truth).sum(1)
        false_positive = (predicted & ~truth).sum(1)
        false_negative = (~predicted & truth).sum(1)
        scores = _f1(true_positive, false_positive, false_negative)
        best = np.flatnonzero(np.isclose(scores, scores.max()))
        thresholds.append(float(grid[best[np.argmin(np.abs(grid[best] - defaults[column]))]]))
    return thresholds


__all__ = [
    "DEFAULT_THRESHOLD",
    "THRESHOLD_GRID",
    "UNKNOWN",
    "au_f1_scores",
    "compute_mf2_metrics",
    "emotion_scores",
    "sigmoid",
    "tune_au_thresholds",
]
