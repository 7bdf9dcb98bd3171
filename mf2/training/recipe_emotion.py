"""The recipe's `emotion` stage: recognition fine-tuning of the image side on FER+ train (the top vision blocks,
Emo-VL and the emotion recogniser, on cached tokens with random views), with FER+'s vote distributions as targets,
an exponential moving average of the weights, and the dev figures of the result (FER+ valid, and CK+ dev peak frames
as the proxy of faces it never saw).

`EmotionStage` is mixed into `mf2.training.recipe.Recipe`, whose data, token caches, training helpers and bookkeeping
(`dataset`, `tokens`, `train`, `training_arguments`, `predict`, `save_final`, `stage_dir`, `_write`) it uses.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from torch.utils.data import Dataset

from ..modeling_mf2 import MF2ForFacialStateRecognition
from .ema import EMACallback
from .emotion_targets import SoftEmotionTargets, class_weights, ferplus_vote_distributions, soft_emotion_loss
from .metrics import emotion_scores
from .recipe_progress import save_npz
from .vision_cache import VisionTokenCollator, VisionTokenDataset

logger = logging.getLogger("mf2.recipe")


class EmotionStage:
    """The `emotion` stage of the recipe."""

    def stage_emotion(self) -> None:
        directory = self.stage_dir("emotion")
        model = self.emotion_start_model()
        train = self.emotion_training_set(model)
        branches = ("emotion",) if self.settings.use_emotion_branch else ("au",)  # what the recogniser reads
        collator, loss = self.emotion_targets(
            VisionTokenCollator(branches=branches, keep_ids=self.settings.soft_targets)
        )
        settings = self.settings
        trainable = trainable_parameters(model, branches)
        vision = [p for p in model.mf2.vision_model.parameters() if p.requires_grad]
        vision_ids = {id(p) for p in vision}
        rest = [p for p in model.parameters() if p.requires_grad and id(p) not in vision_ids]
        optimizer = torch.optim.AdamW(
            [
                {"params": vision, "lr": settings.vision_learning_rate},
                {"params": rest, "lr": settings.emotion_learning_rate},
            ],
            weight_decay=0.05,
        )
        # Trainer builds its warm-up + cosine schedule around the given optimizer; each group keeps its own peak rate.
        args = self.emotion_training_arguments(len(train))
        epoch_seconds = self.train_emotion(model, train, collator, loss, args, optimizer=optimizer)
        self.save_final(model, directory / "model")
        predictions = self.emotion_predictions(model)
        self.finish_emotion_stage(model.config, predictions, epoch_seconds, trainable)

    def emotion_training_arguments(self, train_size: int):
        """The emotion stage's schedule (its epochs, batch size and peak rate) for a training set of `train_size`."""
        settings = self.settings
        return self.training_arguments(
            self.stage_dir("emotion") / "checkpoints",
            settings.emotion_epochs,
            settings.emotion_batch_size,
            settings.emotion_learning_rate,
            math.ceil(train_size / settings.emotion_batch_size),
        )

    def train_emotion(self, model, train, collator, loss, args, optimizer=None) -> float:
        """Train the emotion stage (resuming from its checkpoints), with the weights' moving average when the settings
        ask for one; the training seconds per epoch (a resumed stage counts only its last part)."""
        decay = self.settings.ema_decay
        callbacks = [EMACallback(model, decay)] if decay > 0 else None
        start = time.perf_counter()
        self.train(model, train, collator, args, optimizer=optimizer, compute_loss_func=loss, callbacks=callbacks)
        return (time.perf_counter() - start) / self.settings.emotion_epochs

    def finish_emotion_stage(self, config, predictions: dict[str, np.ndarray], epoch_seconds: float, trainable: int):
        """Write the emotion stage's dev predictions (`emotion/predictions.npz`) and figures (`emotion/metrics.json`,
        with its training seconds per epoch and trainable parameters)."""
        save_npz(self.stage_dir("emotion") / "predictions.npz", **predictions)
        metrics = emotion_metrics(predictions, config)
        metrics["train_seconds_per_epoch"] = epoch_seconds
        metrics["trainable_parameters"] = trainable
        self._write("emotion/metrics.json", metrics)
        logger.info("FER+ valid after the emotion stage: %s", {k: round(v, 4) for k, v in metrics.items()})

    def emotion_start_model(self) -> MF2ForFacialStateRecognition:
        """The emotion stage's starting point: the pretrained model, frozen as its config says."""
        model = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("pretrain") / "model"))
        model.mf2.apply_vision_freezing()
        return model

    def emotion_training_set(self, model) -> Dataset:
        """What the emotion stage learns from: every FER+ train image, a random cached view per read."""
        return VisionTokenDataset(self.tokens(model, "ferplus_train", True))

    def emotion_targets(self, collator):
        """The emotion stage's collator and loss: `collator`'s batches with FER+'s vote distributions as targets and
        class weights (`soft_targets`), or `collator` itself and the model's own loss on the majority labels."""
        settings = self.settings
        if not settings.soft_targets:
            return collator, None
        groups = self.dataset("ferplus_train")["group"]
        distributions = ferplus_vote_distributions(self.data_dir / "ferplus" / "train.parquet", groups)
        weights = class_weights(distributions, settings.class_weight_power) if settings.class_weight_power else None
        logger.info("emotion class weights: %s", None if weights is None else np.round(weights, 3).tolist())
        return SoftEmotionTargets(collator, distributions), soft_emotion_loss(weights)

    def emotion_predictions(self, model, transfer: bool = True) -> dict[str, np.ndarray]:
        """The emotion logits and labels of FER+ valid and, `transfer` (a model trained on FER+ alone), of CK+ dev
        (another lab, posed, 128 px: the dev proxy of faces it never saw)."""
        valid = self.predict(model, self.tokens(model, "ferplus_valid", False))
        predictions = {"valid_logits": valid["emotion_logits"], "valid_labels": valid["emotion_labels"]}
        if transfer:
            ckplus = self.predict(model, self.tokens(model, "ckplus", True))
            predictions.update(ckplus_logits=ckplus["emotion_logits"], ckplus_labels=ckplus["emotion_labels"])
        return predictions


def trainable_parameters(model, branches: tuple[str, ...]) -> int:
    """The parameters the emotion stage trains: those that require gradients on the path to the emotion recogniser
    (the other branch and the AU recogniser get none from an emotion loss)."""
    unused = ("mf2.au_branch.", "heads.au_") if branches == ("emotion",) else ("mf2.emotion_branch.", "heads.au_")
    return sum(p.numel() for name, p in model.named_parameters() if p.requires_grad and not name.startswith(unused))


def emotion_metrics(predictions: dict[str, np.ndarray], config) -> dict[str, float]:
    """FER+ valid's figures of `EmotionStage.emotion_predictions` and, with CK+ in them, the FER+-only model's accuracy
    on CK+ dev peak frames."""
    classes = len(config.id2label)
    scores = emotion_scores(predictions["valid_logits"], predictions["valid_labels"], classes)
    metrics = {
        "ferplus_valid_accuracy": float(scores["accuracy"]),
        "ferplus_valid_macro_f1": float(scores["macro_f1"]),
        "ferplus_valid_mean_class_accuracy": float(scores["mean_class_accuracy"]),
        "ferplus_valid_rows": int(len(predictions["valid_labels"])),
    }
    if "ckplus_logits" not in predictions:
        return metrics
    peak = predictions["ckplus_labels"] != config.label2id["neutral"]  # CK+ says neutral only on onset frames
    accuracy = emotion_scores(predictions["ckplus_logits"][peak], predictions["ckplus_labels"][peak], classes)
    return {
        **metrics,
        "ckplus_peak_accuracy_of_ferplus_model": float(accuracy["accuracy"]),
        "ckplus_peak_rows": int(peak.sum()),
    }


__all__ = ["EmotionStage", "emotion_metrics", "trainable_parameters"]
