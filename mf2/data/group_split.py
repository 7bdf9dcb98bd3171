"""Splits by group (video, subject): no group on both sides. `split_by_group` makes one train/validation split that
keeps group counts, image counts and classes balanced; `group_folds` deals groups into cross-validation folds.

MFA splits Aff-Wild2 by video so that no video is in both parts, with both the number of videos and the number of
images near the target fraction (the paper: 17 of 151 videos and 3,376 of 34,696 images in validation). This module
searches the group subsets of the target size for the one whose validation images are closest to that fraction,
overall and per class; random restarts followed by best-swap hill climbing, all seeded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _scores(val_counts: np.ndarray, totals: np.ndarray, fraction: float, spans: np.ndarray) -> np.ndarray:
    """Score (lower is better) of validation class-count vectors `(..., K)`."""
    target = fraction * totals.sum()
    scale = max(target, 1.0)
    size_error = np.abs(val_counts.sum(-1) - target) / scale
    class_error = np.abs(val_counts - fraction * totals).sum(-1) / scale
    # A class that spans several groups can be on both sides; being absent from one side costs a whole unit.
    absent = ((val_counts == 0) | (val_counts == totals)) & (spans >= 2)
    return size_error + class_error + absent.sum(-1)


def _climb(mask: np.ndarray, counts: np.ndarray, fraction: float, spans: np.ndarray, max_swaps: int) -> float:
    """Best-swap hill climbing from the validation groups `mask` (changed in place); returns the final score."""
    totals = counts.sum(0)
    current = counts[mask].sum(0)
    score = float(_scores(current, totals, fraction, spans))
    for _ in range(max_swaps):
        inside, outside = np.flatnonzero(mask), np.flatnonzero(~mask)
        # Validation counts after swapping every (inside, outside) pair, all at once.
        swapped = current[None, None, :] - counts[inside][:, None, :] + counts[outside][None, :, :]
        pair_scores = _scores(swapped, totals, fraction, spans)
        i, j = np.unravel_index(np.argmin(pair_scores), pair_scores.shape)
        if pair_scores[i, j] >= score - 1e-12:
            break
        mask[inside[i]], mask[outside[j]] = False, True
        current, score = swapped[i, j], float(pair_scores[i, j])
    return score


def split_by_group(
    groups: Sequence[str],
    labels: Sequence[int],
    validation_fraction: float = 0.1,
    *,
    seed: int = 0,
    restarts: int = 16,
    max_swaps: int = 1000,
) -> tuple[list[int], list[int]]:
    """Split rows into train and validation with no group on both sides.

    Args:
        groups: Group of every row (e.g. the video id).
        labels: Class index of every row (e.g. the emotion), used to keep every class on both sides where possible.
        validation_fraction: Target share of groups and of rows in validation.
        seed: Seed of the search.
        restarts: Random starting subsets tried.
        max_swaps: Bound on the hill-climbing steps of each restart.

    Returns:
        `(train_indices, validation_indices)`, each sorted.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
    if len(groups) != len(labels):
        raise ValueError(f"{len(groups)} groups for {len(labels)} labels.")
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError("A group split needs at least two groups.")
    position = {name: i for i, name in enumerate(names)}
    classes = sorted({int(label) for label in labels})
    column = {label: k for k, label in enumerate(classes)}
    counts = np.zeros((len(names), len(classes)), dtype=np.float64)
    for group, label in zip(groups, labels):
        counts[position[group], column[int(label)]] += 1
    spans = (counts > 0).sum(0)
    size = min(len(names) - 1, max(1, round(validation_fraction * len(names))))

    rng = np.random.default_rng(seed)
    best_mask, best_score = None, np.inf
    for _ in range(max(1, restarts)):
        mask = np.zeros(len(names), dtype=bool)
        mask[rng.choice(len(names), size=size, replace=False)] = True
        score = _climb(mask, counts, validation_fraction, spans, max_swaps)
        if score < best_score:
            best_mask, best_score = mask.copy(), score
    validation_groups = {names[i] for i in np.flatnonzero(best_mask)}
    train, validation = [], []
    for index, group in enumerate(groups):
        (validation if group in validation_groups else train).append(index)
    return train, validation


def group_folds(groups: Sequence[str], num_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Row indices of `num_folds` folds with no group (subject) in two folds; groups are shuffled, then dealt out so
    that folds have near-equal row counts (largest groups first)."""
    groups = np.asarray(groups)
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(names) < num_folds:
        raise ValueError(f"{len(names)} groups cannot make {num_folds} folds.")
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    load = np.zeros(num_folds)
    fold_of_group = np.empty(len(names), dtype=int)
    for group in order:
        fold = int(np.argmin(load))
        fold_of_group[group] = fold
        load[fold] += counts[group]
    return [np.flatnonzero(fold_of_group[inverse] == fold) for fold in range(num_folds)]


__all__ = ["group_folds", "split_by_group"]
