"""The recipe's CK+ stages: the AU side, cross-validated over subject folds, then fitted on every subject; and the
emotion recogniser's refit on the Emo-VL + AU-VL features of each fold's AU model.

`CKPlusStages` is mixed into `mf2.training.recipe.Recipe`, whose data, token caches, training helpers and bookkeeping
(`dataset`, `tokens`, `trainer`, `resume_training`, `training_arguments`, `save_final`, `stage_dir`, `_read`,
`_write`) these stages use.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Subset

from ..modeling_mf2 import MF2ForFacialStateRecognition
from .cross_validation import cross_validate
from .emotion_head import emotion_head_inputs, fit_emotion_head, head_features, head_logits, install_emotion_head
from .fitting import fit_and_score
from .metrics import compute_mf2_metrics, emotion_scores
from .recipe_progress import Progress, save_npz
from .run_setup import last_complete_checkpoint
from .scoring import tuned_thresholds
from .vision_cache import VisionTokenCollator, VisionTokenDataset

logger = logging.getLogger("mf2.recipe")


class CKPlusStages:
    """The `au` and `emotion_head` stages of the recipe."""

    # ------------------------------------------------------------------------------------------- AU stage
    def au_model(self):
        """The emotion stage's model with its whole image side frozen, the AU side (AU-VL, the AU recogniser) trainable."""
        model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("emotion") / "model"))
        model.config.vision_trainable_layers = 0
        model.mf2.apply_vision_freezing()
        model.requires_grad_(False)
        if model.mf2.au_branch is not None:  # without AU-VL (Table IV), the AU recogniser reads Emo-VL alone
            model.mf2.au_branch.requires_grad_(True)
        for name in ("au_norm", "au_weight", "au_bias"):
            getattr(model.heads, name).requires_grad_(True)
        return model

    def au_trainer(self, model, cached, indices: list[int], directory: Path):
        """The AU stage's `MF2Trainer` of `model` on the cached rows `indices` (random views; emotion labels dropped, so
        only the AU side learns), checkpointing into `directory`."""
        settings = self.settings
        train = Subset(VisionTokenDataset(cached), indices)
        args = self.training_arguments(
            directory,
            settings.au_epochs,
            settings.au_batch_size,
            settings.au_learning_rate,
            math.ceil(len(train) / settings.au_batch_size),
        )
        collator = VisionTokenCollator(branches=("emotion", "au"))
        return self.trainer(model, train, _WithoutEmotionLabels(collator), args)

    def au_fold(self, template, cached, fold: int, train_rows: np.ndarray, test_rows: np.ndarray) -> dict:
        """One cross-validation fold of the AU stage (skipped when its files are there): a copy of `template` fitted on
        `train_rows` and its predictions of `test_rows` with thresholds tuned on the training rows, by the fine-tuning
        sequence of `mf2 finetune --cv_folds` (`fit_and_score`); then its emotion-head features."""
        fold_dir = self.stage_dir("au") / f"fold-{fold}"
        predictions_file = fold_dir / "predictions.npz"  # written last: the fold's mark of completion
        done = predictions_file.is_file() and (fold_dir / "features.npz").is_file()
        if done and not np.array_equal(np.load(predictions_file)["test_rows"], test_rows):
            done = False  # kept for other folds (other CK+ rows or seed): this fold is trained anew
        if not done:
            model = copy.deepcopy(template)  # the Trainer seeds its data order and views with settings.seed
            checkpoints = fold_dir / "checkpoints"
            trainer = self.au_trainer(model, cached, train_rows.tolist(), checkpoints)
            rows = VisionTokenDataset(cached, augment=False)  # every image as it is, for the predictions
            fit = fit_and_score(
                trainer,
                model.config,
                Subset(rows, test_rows.tolist()),
                prefix="test",
                tune_set=Subset(rows, train_rows.tolist()),
                resume=last_complete_checkpoint(checkpoints),
                predict_collator=VisionTokenCollator(branches=("emotion", "au")),  # with the emotion labels
            )
            self.write_emotion_head_inputs(model, fold_dir / "features.npz", with_valid=False)
            thresholds = fit.thresholds or model.config.au_decision_thresholds
            kept = ("au_probs", "emotion_logits", "au_labels", "emotion_labels")
            parts = {key: fit.parts[key] for key in kept}
            save_npz(predictions_file, test_rows=test_rows, thresholds=np.asarray(thresholds), **parts)
            shutil.rmtree(checkpoints, ignore_errors=True)
        return dict(np.load(predictions_file))

    def stage_au(self) -> None:
        directory = self.stage_dir("au")
        template = self.au_model()
        cached = self.tokens(template, "ckplus", True)
        rows = self.dataset("ckplus")
        # CK+ labels "neutral" only on the first (onset) frames, so the peak frames are the other rows.
        peak = np.asarray(rows["emotion"]) != template.config.label2id["neutral"]
        held_out = cross_validate(
            rows["group"],
            self.settings.cv_folds,
            self.settings.seed,
            lambda fold, train_rows, test_rows: self.au_fold(template, cached, fold, train_rows, test_rows),
        )
        metrics = self.cv_metrics(held_out, template.config, peak)
        self._write("au/cv_results.json", metrics)
        logger.info(
            "CK+ %d-fold CV: %s", len(held_out), {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        )

        final = copy.deepcopy(template)
        checkpoints = directory / "checkpoints"  # removed when the stage is done
        self.resume_training(self.au_trainer(final, cached, list(range(len(rows))), checkpoints))
        merged = {k: np.concatenate([part[k] for part in held_out]) for k in ("au_probs", "au_labels")}
        thresholds = tuned_thresholds(merged, final.config)  # as each fold's: ties go to the config's thresholds
        final.config.au_thresholds = thresholds or final.config.au_decision_thresholds
        self.write_emotion_head_inputs(final, directory / "features.npz", with_valid=True)
        self.save_final(final, directory / "model")

    @staticmethod
    def cv_metrics(held_out: list[dict[str, np.ndarray]], config, peak: np.ndarray) -> dict[str, Any]:
        per_fold = []
        for part in held_out:
            thresholds = [float(t) for t in part["thresholds"]]
            metrics = compute_mf2_metrics(
                au_probs=part["au_probs"],
                au_labels=part["au_labels"],
                au_thresholds=thresholds,
                au_names=config.au_names,
            )
            rows = part["test_rows"]
            is_peak = peak[rows]
            emotion = emotion_scores(
                part["emotion_logits"][is_peak], part["emotion_labels"][is_peak], len(config.id2label)
            )
            per_fold.append(
                {
                    "au_f1": float(metrics["au_f1"]),
                    "emotion_accuracy_peak": float(emotion["accuracy"]),
                    "peak_rows": int(is_peak.sum()),
                    **{f"au_f1_{name}": float(metrics[f"au_f1_{name}"]) for name in config.au_names},
                }
            )
        mean = {key: float(np.nanmean([fold[key] for fold in per_fold])) for key in per_fold[0]}
        return {"folds": per_fold, **{f"mean_{key}": value for key, value in mean.items()}}

    # ------------------------------------------------------------------------------------------- emotion head
    def head_ferplus_rows(self):
        """The FER+ train images the emotion recogniser is refit on: a fixed random sample (every AU model of the
        cross-validation computes their features, so all of FER+ would cost minutes per fold for no accuracy)."""
        rows = self.dataset("ferplus_train")
        count = min(self.settings.head_ferplus_samples, len(rows))
        return rows.select(np.sort(np.random.default_rng(self.settings.seed).permutation(len(rows))[:count]))

    def write_emotion_head_inputs(self, model, path: Path, with_valid: bool) -> None:
        """The emotion recogniser's inputs under `model` (an AU-stage model): CK+ (both views), the FER+ train sample
        and, `with_valid`, FER+ valid, in one `.npz` keyed `<set>.<view>` / `<set>.labels`."""
        features: dict[str, np.ndarray] = {}
        sets = {"ckplus": (None, ("tokens", "flipped_tokens")), "ferplus_head": (self.head_ferplus_rows(), ("tokens",))}
        if with_valid:
            sets["ferplus_valid"] = (self.dataset("ferplus_valid"), ("tokens",))
        for name, (rows, views) in sets.items():
            dataset = "ckplus" if name == "ckplus" else "ferplus_train"
            cached = self.tokens(model, dataset, flips=len(views) > 1, rows=rows)
            found = emotion_head_inputs(model, cached, views, self.device, progress=Progress(f"features of {name}"))
            features.update({f"{name}.{key}": value for key, value in found.items()})
        save_npz(path, **features)

    def head_inputs(self, features: dict[str, np.ndarray], key: str) -> np.ndarray:
        return head_features(features, key, self.settings.head_reads_au_probabilities)

    def fit_head(self, features: dict[str, np.ndarray], ckplus_rows: np.ndarray, num_classes: int):
        """The emotion recogniser fitted on the FER+ sample and the given CK+ rows (both views); CK+ as a whole weighs
        `ckplus_weight` of FER+."""
        settings = self.settings
        views = [self.head_inputs(features, f"ckplus.{view}")[ckplus_rows] for view in ("tokens", "flipped_tokens")]
        ckplus = (
            np.concatenate(views),
            np.concatenate([features["ckplus.labels"][ckplus_rows]] * 2),
            settings.ckplus_weight,
        )
        ferplus = (self.head_inputs(features, "ferplus_head.tokens"), features["ferplus_head.labels"], 1.0)
        return fit_emotion_head(
            [ferplus, ckplus], num_classes, settings.head_steps, settings.head_learning_rate, seed=settings.seed
        )

    def stage_emotion_head(self) -> dict[str, Any]:
        model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("au") / "model"))
        rows = self.dataset("ckplus")
        labels = np.asarray(rows["emotion"])
        peak = labels != model.config.label2id["neutral"]  # CK+ says "neutral" only on onset frames
        num_classes = len(model.config.id2label)

        held_out: dict[str, list[np.ndarray]] = {"rows": [], "logits": []}

        def fold_accuracy(fold: int, train_rows: np.ndarray, test_rows: np.ndarray) -> float:
            features = dict(np.load(self.stage_dir("au") / f"fold-{fold}" / "features.npz"))
            head = self.fit_head(features, train_rows, num_classes)
            test_peak = test_rows[peak[test_rows]]
            logits = head_logits(head, self.head_inputs(features, "ckplus.tokens")[test_peak])
            held_out["rows"].append(test_peak)
            held_out["logits"].append(logits)
            return float(emotion_scores(logits, labels[test_peak], num_classes)["accuracy"])

        per_fold = cross_validate(rows["group"], self.settings.cv_folds, self.settings.seed, fold_accuracy)
        # Every peak frame's held-out prediction, for paired comparisons of runs on the same faces (`mf2 ablate`).
        test_rows = np.concatenate(held_out["rows"])
        save_npz(
            self.stage_dir("emotion_head") / "cv_predictions.npz",
            rows=test_rows,
            logits=np.concatenate(held_out["logits"]),
            labels=labels[test_rows],
        )
        features = dict(np.load(self.stage_dir("au") / "features.npz"))
        head = self.fit_head(features, np.arange(len(rows)), num_classes)
        install_emotion_head(model, head, self.settings.head_reads_au_probabilities)
        valid_logits = head_logits(head, self.head_inputs(features, "ferplus_valid.tokens"))
        valid = emotion_scores(valid_logits, features["ferplus_valid.labels"], num_classes)
        metrics = {
            "ckplus_cv_emotion_accuracy_peak_folds": per_fold,
            "ckplus_cv_mean_emotion_accuracy_peak": float(np.mean(per_fold)),
            # The au stage scored the same folds with the emotion stage's recogniser, as it reads the fold's AU-VL
            # (unchanged by AU training where the recogniser reads Emo-VL alone; a one-branch model without Emo-VL
            # reads AU-VL, which the AU stage trains).
            "ckplus_cv_mean_emotion_accuracy_peak_before_refit": self._read("au/cv_results.json")[
                "mean_emotion_accuracy_peak"
            ],
            "ferplus_valid_accuracy": float(valid["accuracy"]),
            "ferplus_valid_macro_f1": float(valid["macro_f1"]),
        }
        self._write("emotion_head/metrics.json", metrics)
        logger.info("emotion head refit: %s", metrics)
        self.save_final(model, self.stage_dir("emotion_head") / "model")
        return metrics


class _WithoutEmotionLabels:
    """The AU stage trains the AU side only: emotion labels are dropped so no emotion loss is computed."""

    def __init__(self, collator: VisionTokenCollator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        batch.pop("emotion_labels", None)
        return batch


__all__ = ["CKPlusStages"]
