"""What keeps a long recipe run observable and safe to kill: progress lines with an ETA, and files that appear whole
or not at all."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..local_files import written_aside

logger = logging.getLogger("mf2.recipe")


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """`np.savez` written aside and renamed: a kill never leaves half a file where a finished one is expected."""
    with written_aside(path) as partial, open(partial, "wb") as stream:
        np.savez(stream, **arrays)


class Progress:
    """Prints `stage: done/total, elapsed, ETA` lines (at most every `every` seconds). The first call says where the
    work starts (0, or a resumed build's finished part) and starts the clock, so the ETA counts only this process's
    pace; there is no ETA until some work is done."""

    def __init__(self, stage: str, every: float = 30.0):
        self.stage, self.every, self.last = stage, every, 0.0
        self.first: int | None = None
        self.start = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first, self.start = done, now
            logger.info("%s: %d/%d to start from", self.stage, done, total)
            self.last = now
            return
        if now - self.last < self.every and done < total:
            return
        self.last = now
        elapsed = now - self.start
        eta = elapsed / max(done - self.first, 1) * (total - done)
        logger.info("%s: %d/%d, %.0f s elapsed, ETA %.0f s", self.stage, done, total, elapsed, eta)


__all__ = ["Progress", "save_npz"]
