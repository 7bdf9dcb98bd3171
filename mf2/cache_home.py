"""Where mf2 keeps the files it makes: `$MF2_HOME`, default `~/.cache/mf2`.

Below it: `encoders/` (the offline encoders `mf2 encoders` converts) and `cache/` (pre-processed datasets and feature
caches of the training scripts). Read at every call, so a changed environment variable takes effect at once.
"""

from __future__ import annotations

import os
from pathlib import Path

MF2_HOME_VARIABLE = "MF2_HOME"


def mf2_home() -> Path:
    """`$MF2_HOME`, else `~/.cache/mf2`."""
    return Path(os.environ.get(MF2_HOME_VARIABLE, Path.home() / ".cache" / "mf2"))


__all__ = ["MF2_HOME_VARIABLE", "mf2_home"]
