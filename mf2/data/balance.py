"""Class balancing by deterministic subsampling (MFA keeps the same number of images of each emotion)."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from ..configuration_mf2 import EMOTION_LABELS

logger = logging.getLogger(__name__)


def balance_classes(labels: Sequence[int], per_class: int | None = None, *, seed: int = 0) -> list[int]:
    """Indices of a class-balanced subset: at most `per_class` rows of each class, drawn with `random.Random(seed)`.

    Args:
        labels: Class index of every row; rows labelled -1 (unknown) are never kept.
        per_class: Cap of each class. Defaults to the size of the smallest class present, which makes every present
            class the same size. A class smaller than the cap keeps all of its rows.
        seed: Seed of the sampling; the same labels, cap and seed always give the same subset.

    Returns:
        Sorted row indices of the kept rows.
    """
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        if label >= 0:
            by_class.setdefault(int(label), []).append(index)
    if not by_class:
        return []
    if per_class is None:
        per_class = min(len(rows) for rows in by_class.values())
    missing = [name for c, name in enumerate(EMOTION_LABELS) if c not in by_class]
    if missing:
        logger.warning("balance_classes: no rows of %s; the balanced set lacks these classes.", ", ".join(missing))
    rng = random.Random(seed)
    kept: list[int] = []
    for label in sorted(by_class):
        rows = by_class[label]
        kept.extend(rows if len(rows) <= per_class else rng.sample(rows, per_class))
    return sorted(kept)


__all__ = ["balance_classes"]
