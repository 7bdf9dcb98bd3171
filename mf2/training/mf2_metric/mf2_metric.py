"""MF² metrics as an `evaluate` module: `evaluate.load("<path to this folder>", config_name)` works offline.

The numbers come from `mf2.training.metrics` (the installed `mf2` package), so this module and `Trainer`'s
`compute_metrics` can never disagree. `evaluate` copies this script into its module cache; it imports nothing
relative to its folder, which keeps the copy working.

Configurations:

- `"au"`: `predictions` are per-AU probabilities (or 0/1 predictions), one list of `num_aus` floats per example;
  `references` are per-AU labels (1, 0, -1 unknown). Returns `au_f1` (mean over the AUs) and `au_f1_<AU>`.
- `"emotion"`: `predictions` and `references` are class indices (references may be -1, unknown). Returns
  `emotion_accuracy`, `emotion_accuracy_<class>` (per-class accuracy, i.e. recall), `emotion_macro_f1`, ...
- `"default"`: both at once. Each prediction is the `num_aus` AU probabilities followed by the emotion scores
  (`num_classes` values, argmax taken); each reference is the `num_aus` AU labels followed by the emotion label.
"""

import datasets
import evaluate
import numpy as np

from mf2.configuration_mf2 import AU_NAMES, EMOTION_LABELS
from mf2.training.metrics import compute_mf2_metrics

_DESCRIPTION = """\
Metrics of MF² (multimodal face foundation model): F1 of each facial Action Unit (binary, over the examples where the
AU is labelled) and their mean; emotion accuracy overall and per class, and emotion macro-F1. Labels of -1 are
unknown and ignored.
"""

_CITATION = """\
@article{mf2,
  title={Multimodal Face Foundation Model (MF2) for facial Action Units and emotions},
}
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions: see the configuration ("au": per-AU probabilities; "emotion": class index; "default": AU
        probabilities followed by emotion scores).
    references: see the configuration ("au": per-AU labels 1/0/-1; "emotion": class index or -1; "default": AU labels
        followed by the emotion label).
    au_thresholds (`float` or `list[float]`, *optional*, defaults to 0.5): decision threshold(s) on AU probabilities.
    au_names (`list[str]`, *optional*): AU names, defaults to the 12 MF² AUs.
    emotion_names (`list[str]`, *optional*): emotion class names, defaults to the 8 MF² classes.
Returns:
    A flat dict of fractions in [0, 1]: `au_f1`, `au_f1_<AU>`, `emotion_accuracy`, `emotion_accuracy_<class>`,
    `emotion_macro_f1`, ... (metrics without labelled examples are left out).
Examples:
    >>> metric = evaluate.load("mf2/training/mf2_metric", "emotion")
    >>> metric.compute(predictions=[0, 4, 4], references=[0, 4, 6])["emotion_accuracy"]
    0.6666666666666666
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MF2Metric(evaluate.Metric):
    """Per-AU F1 and emotion accuracy / macro-F1, with unknown (-1) labels ignored."""

    def _info(self):
        if self.config_name == "au":
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            )
        elif self.config_name == "emotion":
            features = datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            )
        elif self.config_name == "default":
            features = datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("int32")),
                }
            )
        else:
            raise KeyError(f"Unknown configuration {self.config_name!r}; use 'default', 'au' or 'emotion'.")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features,
        )

    def _compute(self, predictions, references, au_thresholds=None, au_names=None, emotion_names=None):
        au_names = list(au_names or AU_NAMES)
        emotion_names = list(emotion_names or EMOTION_LABELS)
        num_aus = len(au_names)
        if self.config_name == "au":
            return compute_mf2_metrics(
                au_probs=np.asarray(predictions, dtype=np.float64),
                au_labels=np.asarray(references),
                au_thresholds=au_thresholds,
                au_names=au_names,
                emotion_names=emotion_names,
            )
        if self.config_name == "emotion":
            return compute_mf2_metrics(
                emotion_predictions=np.asarray(predictions),
                emotion_labels=np.asarray(references),
                au_names=au_names,
                emotion_names=emotion_names,
            )
        predictions = np.asarray(predictions, dtype=np.float64)
        references = np.asarray(references)
        if predictions.ndim != 2 or predictions.shape[1] != num_aus + len(emotion_names):
            raise ValueError(
                f"'default' predictions are {num_aus} AU probabilities + {len(emotion_names)} emotion scores per "
                f"example; got shape {predictions.shape}."
            )
        if references.ndim != 2 or references.shape[1] != num_aus + 1:
            raise ValueError(f"'default' references are {num_aus} AU labels + 1 emotion label; got {references.shape}.")
        return compute_mf2_metrics(
            au_probs=predictions[:, :num_aus],
            au_labels=references[:, :num_aus],
            emotion_predictions=predictions[:, num_aus:].argmax(-1),
            emotion_labels=references[:, num_aus],
            au_thresholds=au_thresholds,
            au_names=au_names,
            emotion_names=emotion_names,
        )
