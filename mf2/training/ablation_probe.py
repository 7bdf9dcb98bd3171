"""The floor of `mf2 ablate`: linear probes on the frozen image encoder (DINOv2, no MF² at all), scored as the recipe
scores its model, and written in the recipe's file layout so the table reads every row alike.

The probe reads the encoder's final class token and mean patch token of each face (one vector, from the recipe's
vision-token cache: the top blocks run frozen). Emotion: a LayerNorm + linear recogniser (`fit_emotion_head`) on the
FER+ train images' majority labels, scored on FER+ valid and CK+ dev peak frames. CK+: over the recipe's subject folds,
a linear AU recogniser (both views of the training subjects, thresholds tuned on their predictions) and the emotion
recogniser refit on the FER+ sample and the training subjects, as the recipe's `emotion_head` stage does.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..modeling_mf2 import MF2ForFacialStateRecognition
from .cross_validation import cross_validate
from .emotion_head import fit_emotion_head, head_logits
from .metrics import UNKNOWN, tune_au_thresholds
from .recipe_progress import save_npz
from .recipe_stages import Recipe


def encoder_features(model, cached, view: str = "tokens") -> np.ndarray:
    """`(N, 2D)`: the frozen encoder's class token and mean patch token of every cached face in `view`."""
    parts = []
    loader = DataLoader(cached, batch_size=128, collate_fn=lambda rows: rows)
    with torch.no_grad():
        for rows in loader:
            tokens = torch.stack([row["cached_features"][view] for row in rows]).float()
            encoded = model.mf2.trainable_vision_tokens(tokens)
            parts.append(torch.cat([encoded[:, 0], encoded[:, 1:].mean(dim=1)], dim=-1).numpy())
    return np.concatenate(parts)


def au_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the labelled (image, AU) pairs."""
    known = labels != UNKNOWN
    return torch.nn.functional.binary_cross_entropy_with_logits(logits[known], labels[known].float())


class ProbeRecipe(Recipe):
    """The probe over a recipe run's data stage (its base model's frozen encoder and its token caches)."""

    def stage_emotion_head(self) -> None:
        """The probes, in place of the recipe's stages after `data` (run as its last stage, so it resumes and is held
        by the run's lock as every stage is)."""
        start = time.perf_counter()
        model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("data") / "base")).eval()
        model.config.emotion_reads_au_features = False
        train = self.tokens(model, "ferplus_train", True)  # the recipe rows' cache entry; its original view only
        valid = self.tokens(model, "ferplus_valid", False)
        ckplus = self.tokens(model, "ckplus", True)
        features = {
            "ferplus_train": encoder_features(model, train),
            "ferplus_valid": encoder_features(model, valid),
            "ckplus": encoder_features(model, ckplus),
            "ckplus_flipped": encoder_features(model, ckplus, "flipped_tokens"),
        }
        labels = {
            name: cached.labels("emotion_labels").numpy()
            for name, cached in (("ferplus_train", train), ("ferplus_valid", valid), ("ckplus", ckplus))
        }
        labels["au"] = ckplus.labels("au_labels").numpy()
        self.probe_emotion(model.config, features, labels, time.perf_counter() - start)
        self.probe_ckplus(model.config, features, labels)

    def emotion_probe(self, features, labels, classes: int, ckplus_rows=None):
        settings = self.settings
        sets = [(features["ferplus_train"], labels["ferplus_train"], 1.0)]
        if ckplus_rows is not None:
            both = np.concatenate([features["ckplus"][ckplus_rows], features["ckplus_flipped"][ckplus_rows]])
            sets.append((both, np.concatenate([labels["ckplus"][ckplus_rows]] * 2), settings.ckplus_weight))
        return fit_emotion_head(sets, classes, settings.head_steps, settings.head_learning_rate, settings.seed)

    def probe_emotion(self, config, features, labels, feature_seconds: float) -> None:
        start = time.perf_counter()
        head = self.emotion_probe(features, labels, len(config.id2label))
        seconds = time.perf_counter() - start
        predictions = {
            "valid_logits": head_logits(head, features["ferplus_valid"]),
            "valid_labels": labels["ferplus_valid"],
            "ckplus_logits": head_logits(head, features["ckplus"]),
            "ckplus_labels": labels["ckplus"],
        }
        trainable = sum(p.numel() for p in head.parameters())
        # One full-batch step over the training set stands for an epoch.
        self.finish_emotion_stage(config, predictions, seconds / max(1, self.settings.head_steps), trainable)
        self._write("emotion/probe.json", {"feature_seconds": feature_seconds, "fit_seconds": seconds})

    def probe_ckplus(self, config, features, labels) -> None:
        settings = self.settings
        rows = self.dataset("ckplus")
        peak = labels["ckplus"] != config.label2id["neutral"]

        def fold(index: int, train_rows: np.ndarray, test_rows: np.ndarray) -> dict:
            both = np.concatenate([features["ckplus"][train_rows], features["ckplus_flipped"][train_rows]])
            au_targets = np.concatenate([labels["au"][train_rows]] * 2)  # the 12 AUs are bilateral
            au_head = fit_emotion_head(
                [(both, au_targets, 1.0)],
                au_targets.shape[1],
                settings.head_steps,
                settings.head_learning_rate,
                settings.seed + index,
                loss_function=au_loss,
            )
            train_probs = 1 / (1 + np.exp(-head_logits(au_head, features["ckplus"][train_rows])))
            thresholds = tune_au_thresholds(train_probs, labels["au"][train_rows])
            emotion_head = self.emotion_probe(features, labels, len(config.id2label), train_rows)
            test_peak = test_rows[peak[test_rows]]
            part = {
                "test_rows": test_rows,
                "thresholds": np.asarray(thresholds),
                "au_probs": 1 / (1 + np.exp(-head_logits(au_head, features["ckplus"][test_rows]))),
                "au_labels": labels["au"][test_rows],
                "emotion_logits": head_logits(emotion_head, features["ckplus"][test_rows]),
                "emotion_labels": labels["ckplus"][test_rows],
                "peak_rows": test_peak,
            }
            save_npz(self.stage_dir("au") / f"fold-{index}" / "predictions.npz", **part)
            return part

        held_out = cross_validate(rows["group"], settings.cv_folds, settings.seed, fold)
        self._write("au/cv_results.json", self.cv_metrics(held_out, config, peak))
        test = np.concatenate([part["test_rows"] for part in held_out])
        logits = np.concatenate([part["emotion_logits"] for part in held_out])
        keep = peak[test]
        save_npz(
            self.stage_dir("emotion_head") / "cv_predictions.npz",
            rows=test[keep],
            logits=logits[keep],
            labels=labels["ckplus"][test[keep]],
        )


__all__ = ["ProbeRecipe", "au_loss", "encoder_features"]
