"""The paper's metrics against hand-computed values, threshold tuning, and the `evaluate` module."""

import math

import numpy as np
import pytest

from mf2.training import METRIC_MODULE_PATH
from mf2.training.metrics import au_f1_scores, compute_mf2_metrics, emotion_scores, sigmoid, tune_au_thresholds

AU_NAMES = ["AU1", "AU2", "AU4"]
# AU1: 2 positives, 2 negatives, 1 unknown; AU2: all negative; AU4: all unknown.
AU_LABELS = np.array([[1, 0, -1], [1, 0, -1], [0, 0, -1], [0, 0, -1], [-1, 0, -1]])
AU_PROBS = np.array([[0.9, 0.1, 0.9], [0.4, 0.2, 0.9], [0.6, 0.3, 0.9], [0.1, 0.4, 0.9], [0.99, 0.45, 0.9]])
EMOTION_LABELS = np.array([0, 1, 1, 2, -1, 4])
EMOTION_PREDICTIONS = np.array([0, 1, 2, 2, 3, 0])


def test_au_f1_by_hand():
    scores = au_f1_scores(AU_PROBS, AU_LABELS)
    # AU1 at 0.5 over its 4 known rows: predictions 1, 0, 1, 0 -> TP 1, FP 1, FN 1 -> F1 = 2 / (2 + 1 + 1).
    assert scores[0] == pytest.approx(0.5)
    # AU2: no positive label and no positive prediction -> 0 (scikit-learn's zero_division=0).
    assert scores[1] == 0.0
    # AU4: never labelled -> undefined.
    assert math.isnan(scores[2])
    # A per-AU threshold of 0.35 for AU1: predictions 1, 1, 1, 0 -> TP 2, FP 1 -> F1 = 4 / 5.
    assert au_f1_scores(AU_PROBS, AU_LABELS, [0.35, 0.5, 0.5])[0] == pytest.approx(0.8)


def test_flat_metrics_leave_out_undefined_values():
    metrics = compute_mf2_metrics(AU_PROBS, AU_LABELS, au_names=AU_NAMES)
    assert metrics["au_f1"] == pytest.approx(0.25)  # mean over the two labelled AUs
    assert metrics["au_f1_AU1"] == pytest.approx(0.5) and metrics["au_f1_AU2"] == 0.0
    assert "au_f1_AU4" not in metrics and metrics["au_count"] == 5
    assert compute_mf2_metrics(AU_PROBS, np.full_like(AU_LABELS, -1), au_names=AU_NAMES) == {}


def test_emotion_metrics_by_hand():
    scores = emotion_scores(EMOTION_PREDICTIONS, EMOTION_LABELS, num_classes=8)
    assert scores["count"] == 5  # the row labelled -1 is left out
    assert scores["accuracy"] == pytest.approx(3 / 5)
    # Per-class accuracy (recall): class 0 1/1, class 1 1/2, class 2 1/1, class 4 0/1; absent classes undefined.
    np.testing.assert_allclose(scores["per_class_accuracy"][[0, 1, 2, 4]], [1.0, 0.5, 1.0, 0.0])
    assert np.isnan(scores["per_class_accuracy"][[3, 5, 6, 7]]).all()
    assert scores["mean_class_accuracy"] == pytest.approx(0.625)
    # F1: classes 0, 1, 2 each 2/3 (one error on each), class 4 0 -> macro over present classes = 0.5.
    np.testing.assert_allclose(scores["per_class_f1"][[0, 1, 2, 4]], [2 / 3, 2 / 3, 2 / 3, 0.0])
    assert scores["macro_f1"] == pytest.approx(0.5)
    # One-vs-rest accuracy of class 0: labels 1,0,0,0,0 vs predictions 1,0,0,0,1 -> 4/5.
    assert scores["one_vs_rest_accuracy"][0] == pytest.approx(0.8)
    # Scores (N, C) are reduced by argmax.
    logits = np.eye(8)[EMOTION_PREDICTIONS]
    assert emotion_scores(logits, EMOTION_LABELS, 8)["accuracy"] == pytest.approx(0.6)

    metrics = compute_mf2_metrics(emotion_predictions=EMOTION_PREDICTIONS, emotion_labels=EMOTION_LABELS)
    assert metrics["emotion_accuracy"] == pytest.approx(0.6)
    assert metrics["emotion_accuracy_anger"] == pytest.approx(0.5)  # class 1 of EMOTION_LABELS
    assert metrics["emotion_macro_f1"] == pytest.approx(0.5)
    assert "emotion_accuracy_fear" not in metrics  # class 3 is absent from the known labels


def test_tune_au_thresholds_by_hand():
    thresholds = tune_au_thresholds(AU_PROBS, AU_LABELS)
    # AU1's F1 is 0.8 for any threshold in (0.1, 0.4]; the candidate nearest 0.5 wins. AU2 and AU4 have no positive.
    assert thresholds == [pytest.approx(0.40), 0.5, 0.5]
    assert all(0.0 < value < 1.0 for value in thresholds)
    tuned = au_f1_scores(AU_PROBS, AU_LABELS, thresholds)
    assert tuned[0] == pytest.approx(0.8) and tuned[0] >= au_f1_scores(AU_PROBS, AU_LABELS)[0]


def test_sigmoid_is_stable():
    np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


def test_evaluate_module_matches_the_numpy_metrics():
    evaluate = pytest.importorskip("evaluate")
    au_metric = evaluate.load(str(METRIC_MODULE_PATH), "au")
    result = au_metric.compute(predictions=AU_PROBS.tolist(), references=AU_LABELS.tolist(), au_names=AU_NAMES)
    assert result == pytest.approx(compute_mf2_metrics(AU_PROBS, AU_LABELS, au_names=AU_NAMES))
    assert result["au_f1"] == pytest.approx(0.25)

    emotion_metric = evaluate.load(str(METRIC_MODULE_PATH), "emotion")
    for prediction, reference in zip(EMOTION_PREDICTIONS, EMOTION_LABELS):  # streaming add() works too
        emotion_metric.add(predictions=int(prediction), references=int(reference))
    result = emotion_metric.compute()
    assert result["emotion_accuracy"] == pytest.approx(0.6) and result["emotion_macro_f1"] == pytest.approx(0.5)

    rng = np.random.default_rng(0)
    au_probs, emotion_logits = rng.random((6, 12)), rng.normal(size=(6, 8))
    au_labels = rng.integers(-1, 2, (6, 12))
    combined = evaluate.load(str(METRIC_MODULE_PATH))  # "default": AU probabilities + emotion scores together
    result = combined.compute(
        predictions=np.concatenate([au_probs, emotion_logits], 1).tolist(),
        references=np.concatenate([au_labels, EMOTION_LABELS[:, None]], 1).tolist(),
        au_thresholds=[0.3] * 12,
    )
    expected = compute_mf2_metrics(au_probs, au_labels, emotion_logits, EMOTION_LABELS, au_thresholds=[0.3] * 12)
    assert result == pytest.approx(expected, rel=1e-6)  # float32 storage of the predictions inside `evaluate`
