"""DFN: MF²'s Decoupled Fine-tuning Network, as a PEFT method laid out like PEFT's `tuners/lora`.

| module          | job                                                                               |
|-----------------|-----------------------------------------------------------------------------------|
| `config.py`     | `DFNConfig`, the `peft_type` and the key prefix                                   |
| `layer.py`      | the cell and the side network of N cells                                          |
| `features.py`   | `DFNFeatures`: what the frozen backbone gives the side networks (and the cache)  |
| `model.py`      | `DFNTuner`, the `BaseTuner`: side networks, freezing, the adapted forward pass    |
| `peft_model.py` | `DFNModel` (the `PeftModel` users train) and `get_dfn_model`                      |
| `cache.py`      | `DFNFeatureCache`, the on-disk cache of `DFNFeatures`                             |
| `loading.py`    | `load_adapter` / `load_dfn_model`: a trained adapter folder on a base model       |

Importing this package registers `peft_type="DFN"` with PEFT (here, once), so `get_peft_model`,
`PeftModel.from_pretrained` and `PeftConfig.from_pretrained` accept DFN adapters.

PEFT 0.21 has no supported registration for methods outside its tree: `peft.utils.register_peft_method` accepts only
members of the closed `PeftType` enum. `PeftType` is a `str` enum, though, and PEFT looks methods up in three plain
dicts of `peft.mapping`, so a string key there works next to the built-in ones. This relies on semi-private mappings,
which is why `pyproject.toml` pins `peft==0.21.*`. A process that has not imported `mf2.dfn` fails on a DFN adapter
with `KeyError: 'DFN'`.
"""

import peft.mapping

from .cache import DFNCachedDataset, DFNFeatureCache, collate_cached_features
from .config import BRANCHES, DFN_PEFT_TYPE, DFN_PREFIX, MODALITIES, DFNConfig
from .features import DFNFeatures
from .layer import DFNCell, DFNSideNetwork, default_layer_indices
from .loading import check_adapter_folder, load_adapter, load_dfn_model
from .model import DFNOutput, DFNTuner, checkpoint_has_text_weights
from .peft_model import DFNModel, get_dfn_model


class DFNRegistrationError(RuntimeError):
    """PEFT already maps `peft_type` to another object than DFN's."""

    def __init__(self, peft_type: str, registered: object, ours: object):
        self.peft_type, self.registered, self.ours = peft_type, registered, ours
        super().__init__(f"PEFT already maps {peft_type!r} to {registered!r}; refusing to overwrite it.")


def _peft_entries() -> tuple[tuple[dict, object], ...]:
    return (
        (peft.mapping.PEFT_TYPE_TO_CONFIG_MAPPING, DFNConfig),
        (peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING, DFNTuner),
        (peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING, DFNTuner.prefix),
    )


def register_dfn_with_peft() -> None:
    """Register `peft_type="DFN"` in PEFT's config, tuner and prefix mappings (idempotent)."""
    for mapping, value in _peft_entries():
        registered = mapping.get(DFN_PEFT_TYPE)
        if registered is not None and registered is not value and registered != value:
            raise DFNRegistrationError(DFN_PEFT_TYPE, registered, value)
        mapping[DFN_PEFT_TYPE] = value


def is_dfn_registered() -> bool:
    """Whether PEFT's mappings currently know DFN."""
    return peft.mapping.PEFT_TYPE_TO_TUNER_MAPPING.get(DFN_PEFT_TYPE) is DFNTuner


register_dfn_with_peft()

__all__ = [
    "BRANCHES",
    "DFN_PEFT_TYPE",
    "DFN_PREFIX",
    "MODALITIES",
    "DFNCachedDataset",
    "DFNCell",
    "DFNConfig",
    "DFNFeatureCache",
    "DFNFeatures",
    "DFNModel",
    "DFNOutput",
    "DFNRegistrationError",
    "DFNSideNetwork",
    "DFNTuner",
    "check_adapter_folder",
    "checkpoint_has_text_weights",
    "collate_cached_features",
    "default_layer_indices",
    "get_dfn_model",
    "is_dfn_registered",
    "load_adapter",
    "load_dfn_model",
    "register_dfn_with_peft",
]
