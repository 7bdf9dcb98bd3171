"""The package's one cross-validation loop: subject-wise folds (`mf2.data.group_split.group_folds`), each fold's work
given as a function. `mf2 finetune --cv_folds` and the recipe's CK+ stages both run through it, so every figure called
"CV" in this project comes from the same folds for the same groups, fold count and seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from ..data.group_split import group_folds

FoldResult = TypeVar("FoldResult")


def cross_validate(
    groups: Sequence[str],
    num_folds: int,
    seed: int,
    run_fold: Callable[[int, np.ndarray, np.ndarray], FoldResult],
) -> list[FoldResult]:
    """Run `run_fold(fold, train_rows, test_rows)` for every fold of `groups` and return its results in fold order.

    Args:
        groups: the group (subject) of every row; no group is in two folds.
        num_folds: how many folds (at most the number of groups).
        seed: the seed of the dealing of groups into folds.
        run_fold: a fold's work; `train_rows` are every row outside `test_rows`, both sorted row indices.
    """
    folds = group_folds(groups, num_folds, seed=seed)
    every_row = np.arange(len(groups))
    return [run_fold(fold, np.setdiff1d(every_row, test_rows), test_rows) for fold, test_rows in enumerate(folds)]


__all__ = ["cross_validate"]
