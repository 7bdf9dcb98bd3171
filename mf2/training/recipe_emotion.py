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

import numpy as np
import torch
from torch.utils.data import Dataset

from ..modeling_mf2 import MF2ForFacialStateRecognition
from .ema import EMACallback
from .emotion_targets import SoftEmotionTargets, class_weights, ferplus_vote_distributions, soft_emotion_loss
from .metrics import emotion_scores
from .vision_cache import VisionTokenCollator, VisionTokenDataset

logger = logging.getLogger("mf2.recipe")


class EmotionStage:
    """The `emotion` stage of the recipe."""

    def stage_emotion(self) -> None:
        directory = self.stage_dir("emotion")
        model = self.emotion_start_model()
        train = self.emotion_training_set(model)
        collator, loss = self.emotion_targets()
        settings = self.settings
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
        args = self.training_arguments(
            directory / "checkpoints",
            settings.emotion_epochs,
            settings.emotion_batch_size,
            settings.emotion_learning_rate,
            math.ceil(len(train) / settings.emotion_batch_size),
        )
        # Trainer builds its warm-up + cosine schedule around the given optimizer; each group keeps its own peak rate.
        callbacks = [EMACallback(model, settings.ema_decay)] if settings.ema_decay > 0 else None
        self.train(model, train, collator, args, optimizer=optimizer, compute_loss_func=loss, callbacks=callbacks)
        self.save_final(model, directory / "model")
        metrics = self.emotion_metrics(model)
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

    def emotion_targets(self):
        """The emotion stage's collator and loss: FER+'s vote distributions with class weights (`soft_targets`), or
        the majority labels and the model's own loss."""
        settings = self.settings
        # The emotion recogniser reads Emo-VL; without it (Table IV's w/o Emo-VL), AU-VL.
        branches = ("emotion",) if settings.use_emotion_branch else ("au",)
        collator = VisionTokenCollator(branches=branches, keep_ids=settings.soft_targets)
        if not settings.soft_targets:
            return collator, None
        groups = self.dataset("ferplus_train")["group"]
        distributions = ferplus_vote_distributions(self.data_dir / "ferplus" / "train.parquet", groups)
        weights = class_weights(distributions, settings.class_weight_power) if settings.class_weight_power else None
        logger.info("emotion class weights: %s", None if weights is None else np.round(weights, 3).tolist())
        return SoftEmotionTargets(collator, distributions), soft_emotion_loss(weights)

    def emotion_metrics(self, model, transfer: bool = True) -> dict[str, float]:
        """FER+ valid and, `transfer` (a model trained on FER+ alone), the dev proxy of faces it never saw: CK+ dev
        peak frames (another lab, posed, 128 px)."""
        parts = self.predict(model, self.tokens(model, "ferplus_valid", False))
        scores = emotion_scores(parts["emotion_logits"], parts["emotion_labels"], len(model.config.id2label))
        metrics = {
            "ferplus_valid_accuracy": float(scores["accuracy"]),
            "ferplus_valid_macro_f1": float(scores["macro_f1"]),
            "ferplus_valid_mean_class_accuracy": float(scores["mean_class_accuracy"]),
            "ferplus_valid_rows": int(len(parts["emotion_labels"])),
        }
        if not transfer:
            return metrics
        ckplus = self.predict(model, self.tokens(model, "ckplus", True))
        peak = ckplus["emotion_labels"] != model.config.label2id["neutral"]  # CK+ says neutral only on onset frames
        accuracy = emotion_scores(
            ckplus["emotion_logits"][peak], ckplus["emotion_labels"][peak], len(model.config.id2label)
        )
        return {
            **metrics,
            "ckplus_peak_accuracy_of_ferplus_model": float(accuracy["accuracy"]),
            "ckplus_peak_rows": int(peak.sum()),
        }


__all__ = ["EmotionStage"]
