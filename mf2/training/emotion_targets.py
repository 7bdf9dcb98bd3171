"""Emotion targets from FER+'s crowd votes, with class-balanced weights (the recipe's emotion stage).

FER+ gives every image ten votes. Training on the majority label alone throws away what the annotators disagreed on;
the FER+ paper's cross-entropy on the vote distribution keeps it (Barsoum et al., ICMI 2016, "CE" scheme). The rare
classes (disgust, fear, contempt → other) are a few hundred of 25,045 images, so each class's share of the loss is
also reweighted by `class_weights`.

`SoftEmotionTargets` wraps a collator: it looks each example's vote distribution up by its `example_ids`, hands it to
`Trainer` as `labels` and drops `emotion_labels` (so the model computes no loss of its own); `soft_emotion_loss` is the
`compute_loss_func` that scores the model's `emotion_logits` against it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from ..configuration_mf2 import EMOTION_LABELS

FERPLUS_VOTE_ORDER = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
"""The first eight of FER+'s ten vote counts (then unknown, not-a-face, which carry no emotion)."""
_FERPLUS_NAME = {"other": "contempt"}
"""MF²'s names that FER+ spells otherwise (MF² has no contempt; its catch-all `other` takes it, as in the labels)."""


def ferplus_vote_distributions(parquet_file: str | Path, groups: Sequence[str]) -> np.ndarray:
    """`(len(groups), 8)` vote distributions in MF²'s emotion order, for the FER+ rows named by `groups` (the file
    name stem, which `mf2.data.load_ferplus` keeps as `group`)."""
    table = pq.read_table(parquet_file, columns=["file_name", "votes"])
    votes = np.asarray(table.column("votes").to_pylist(), dtype=np.float32)[:, : len(FERPLUS_VOTE_ORDER)]
    order = [FERPLUS_VOTE_ORDER.index(_FERPLUS_NAME.get(name, name)) for name in EMOTION_LABELS]
    by_name = dict(zip((Path(name).stem for name in table.column("file_name").to_pylist()), votes[:, order]))
    missing = [group for group in groups if group not in by_name]
    if missing:
        raise KeyError(f"{len(missing)} rows have no FER+ votes in {parquet_file} (first: {missing[0]!r}).")
    rows = np.stack([by_name[group] for group in groups])
    totals = rows.sum(axis=1, keepdims=True)
    if (totals <= 0).any():
        raise ValueError(f"{int((totals <= 0).sum())} FER+ rows have no emotion vote.")
    return rows / totals


def class_weights(distributions: np.ndarray, power: float = 0.5) -> np.ndarray:
    """Per-class loss weights `(1 / share) ** power`, scaled so that an average example weighs 1 (power 0: none)."""
    share = np.maximum(distributions.mean(axis=0), 1e-4)
    weights = share**-power
    return (weights / float((distributions * weights).sum(axis=1).mean())).astype(np.float32)


class SoftEmotionTargets:
    """A collator wrapper: `labels` = the vote distribution of each example (by `example_ids`, then removed: the model
    takes no such argument), no `emotion_labels`.

    Args:
        collator: the collator whose batches carry `example_ids`.
        distributions: `(N, 8)`, indexed by example id.
        mix: weight of the one-hot majority label mixed into the votes (0: the votes alone).
    """

    def __init__(self, collator: Callable, distributions: np.ndarray, mix: float = 0.0):
        self.collator, self.mix = collator, float(mix)
        self.distributions = torch.as_tensor(distributions, dtype=torch.float32)

    def __call__(self, examples) -> dict:
        batch = self.collator(examples)
        if "example_ids" not in batch:
            raise ValueError("SoftEmotionTargets needs `example_ids` in the batch.")
        majority = batch.pop("emotion_labels")
        targets = self.distributions[batch.pop("example_ids")]
        if self.mix:
            targets = (1 - self.mix) * targets + self.mix * torch.nn.functional.one_hot(majority, targets.shape[1])
        batch["labels"] = targets
        return batch


def soft_emotion_loss(weights: np.ndarray | None = None) -> Callable:
    """`Trainer`'s `compute_loss_func`: class-weighted cross-entropy of `emotion_logits` against soft `labels`."""
    weight = None if weights is None else torch.as_tensor(weights, dtype=torch.float32)

    def loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["emotion_logits"].float()
        per_class = -labels * torch.log_softmax(logits, dim=-1)
        if weight is not None:
            per_class = per_class * weight.to(logits.device)
        return per_class.sum(dim=-1).mean()

    return loss


__all__ = [
    "FERPLUS_VOTE_ORDER",
    "SoftEmotionTargets",
    "class_weights",
    "ferplus_vote_distributions",
    "soft_emotion_loss",
]
