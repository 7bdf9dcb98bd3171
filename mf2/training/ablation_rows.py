"""The rows of `mf2 ablate` (the paper's Table IV on open data) and the one stage that is not the recipe's: DFN.

Each row is the recipe (`mf2.training.recipe_stages.Recipe`) with one part removed, on the same data, seeds and
budget. Our "full" row trains the recognisers as the shipped model does: the top vision blocks, the Q-Former branch
and the recogniser are fine-tuned (the paper's "w/o DFN"); the "DFN" row keeps that whole pretrained model frozen and
trains DFN's side cells and head copies instead (the paper's full model). So the paper's DFN claim reads "DFN − full"
here, and its other claims "row − full".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from ..dfn import DFNConfig, get_dfn_model
from ..modeling_mf2 import MF2ForFacialStateRecognition
from .collator import MF2DataCollator
from .feature_cache import collate_cached_features
from .fitting import cached_features
from .recipe_stages import Recipe
from .scoring import predict

logger = logging.getLogger("mf2.ablate")

RECIPE_ROW_STAGES = ("data", "pretrain", "emotion", "au", "emotion_head")


@dataclass(frozen=True)
class AblationRow:
    """One row of the table.

    Args:
        name: as the table prints it.
        slug: its folder under the ablation's output folder.
        changes: `RecipeSettings` values that remove the part.
        kind: `recipe` (the recipe's stages with `changes`), `dfn` (the full row's pretrained model, DFN in place of
            the emotion stage's fine-tuning) or `probe` (the frozen encoder's linear probe).
        paper: the paper's Table IV effect of the part, in points of emotion accuracy against its full model, as
            this row measures it (`None`: not in the paper).
    """

    name: str
    slug: str
    changes: dict[str, Any] = field(default_factory=dict)
    kind: str = "recipe"
    paper: float | None = None


ROWS = (
    AblationRow("full (fine-tuned image side, as shipped)", "full"),
    # The paper: DFN beats full fine-tuning of what it keeps frozen by 0.92 points.
    AblationRow("DFN (frozen MF², side cells)", "dfn", kind="dfn", paper=+0.92),
    AblationRow("w/o AU-VL", "without-au-vl", {"use_au_branch": False}, paper=-2.53),
    AblationRow("w/o Emo-VL", "without-emo-vl", {"use_emotion_branch": False}, paper=-1.98),
    AblationRow("w/o MF² pretraining", "without-pretraining", {"mf2_pretraining": False}),
    AblationRow("linear probe (frozen encoder)", "linear-probe", kind="probe"),
)
PAPER_DFN_SPEEDUP = 4.9  # Table IV: an epoch without DFN takes 4.9x as long (373.4M against 52.9M trainable parameters)


class DFNRecipe(Recipe):
    """The recipe whose emotion stage is DFN on the frozen pretrained MF² (`mf2 finetune`'s model and feature cache),
    with the same targets, budget and EMA as the fine-tuned emotion stage. DFN reads the frozen backbone's features of
    each image as it is (cached once), so it sees no mirrored or augmented views."""

    def stage_emotion(self) -> None:
        settings = self.settings
        base = MF2ForFacialStateRecognition.from_pretrained(str(self.stage_dir("pretrain") / "model"))
        dfn_layers = min(7, settings.qformer_layers)  # Table VI's N = 7 cells, at most one per Q-Former layer
        read = ["emotion"] if settings.use_emotion_branch else ["au"]  # the branch the emotion recogniser reads
        model = get_dfn_model(base, DFNConfig(num_layers=dfn_layers, branches=read))
        collator = MF2DataCollator(self.processor, with_captions=False)
        train_rows = self.dataset("ferplus_train")
        args = self.emotion_training_arguments(len(train_rows))
        start = time.perf_counter()
        train = cached_features(model, train_rows, collator, self.cache_dir, settings.cache_batch_size, args)
        cache_seconds = time.perf_counter() - start
        targets, loss = self.emotion_targets(collate_cached_features)
        epoch_seconds = self.train_emotion(model, train, targets, loss, args)
        model.save_pretrained(str(self.stage_dir("emotion") / "adapter"))
        predictions = {}
        for name, key in (("ferplus_valid", "valid"), ("ckplus", "ckplus")):
            rows = cached_features(model, self.dataset(name), collator, self.cache_dir, settings.cache_batch_size, args)
            parts, _ = predict(self.predictor(model, collate_cached_features), rows)
            predictions.update({f"{key}_logits": parts["emotion_logits"], f"{key}_labels": parts["emotion_labels"]})
        # The head copies hold the AU recogniser too, which an emotion loss never reaches.
        trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and ".au_" not in n)
        self.finish_emotion_stage(base.config, predictions, epoch_seconds, trainable)
        self._write("emotion/dfn.json", {"feature_cache_seconds": cache_seconds, "cells": dfn_layers})


__all__ = ["PAPER_DFN_SPEEDUP", "RECIPE_ROW_STAGES", "ROWS", "AblationRow", "DFNRecipe"]
