"""Make PEFT's own entry points (`get_peft_model`, `PeftModel.from_pretrained`, `PeftConfig.from_pretrained`) know DFN.

PEFT 0.21 has no supported registration for methods outside its tree: `peft.utils.register_peft_method` accepts only
members of the closed `PeftType` enum. `PeftType` is a `str` enum, though, and PEFT looks methods up in three plain
dicts of `peft.mapping`, so a string key there works next to the built-in ones. This relies on semi-private mappings,
which is why `pyproject.toml` pins `peft==0.21.*`.

Importing `mf2.dfn` registers DFN; a process that has not imported it fails on a DFN adapter with `KeyError: 'DFN'`.
"""

from __future__ import annotations

import peft.mapping

from .config import DFN_PEFT_TYPE, DFNConfig
from .model import DFNTuner

DFN_PREFIX = "dfn_"
"""PEFT's per-method prefix: it appears in every DFN adapter key (`base_model.dfn_side....`) and in no MF² key."""


def register_dfn_with_peft() -> None:
    """Register `peft_type="DFN"` in PEFT's config, tuner and prefix mappings (idempotent)."""
    entries = (
        (peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING, DFNConfig),
        (peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING, DFNTuner),
        (peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING, DFN_PREFIX),
    )
    for mapping, value in entries:
        registered = mapping.get(DFN_PEFT_TYPE)
        if registered is not None and registered is not value:
            raise RuntimeError(f"PEFT already maps {DFN_PEFT_TYPE!r} to {registered!r}; refusing to overwrite it.")
        mapping[DFN_PEFT_TYPE] = value


def is_dfn_registered() -> bool:
    """Whether PEFT's mappings currently know DFN."""
    return peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(DFN_PEFT_TYPE) is DFNTuner


__all__ = ["DFN_PREFIX", "is_dfn_registered", "register_dfn_with_peft"]
