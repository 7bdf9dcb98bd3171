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

Importing this package registers `peft_type="DFN"` with PEFT (`register_dfn_with_peft`, here, once), so
`get_peft_model`, `PeftModel.from_pretrained` and `PeftConfig.from_pretrained` accept DFN adapters. A process that has
not imported `mf2.dfn` fails on a DFN adapter with `KeyError: 'DFN'`.
"""

import peft
import peft.mapping

from .base_model import checkpoint_has_text_weights
from .cache import DFNCachedDataset, DFNFeatureCache, collate_cached_features
from .config import BRANCHES, DFN_PEFT_TYPE, DFN_PREFIX, MODALITIES, DFNConfig
from .features import DFNFeatures
from .layer import DFNCell, DFNSideNetwork, default_layer_indices
from .loading import AdapterBaseWarning, AdapterLoadError, check_adapter_folder, load_adapter, load_dfn_model
from .model import DFNOutput, DFNTuner
from .peft_model import DFNModel, get_dfn_model


class DFNRegistrationError(RuntimeError):
    """PEFT already maps `peft_type` to another object than DFN's."""

    def __init__(self, peft_type: str, registered: object, ours: object):
        self.peft_type, self.registered, self.ours = peft_type, registered, ours
        super().__init__(f"PEFT already maps {peft_type!r} to {registered!r}; refusing to overwrite it.")


def register_dfn_with_peft() -> None:
    """Register `peft_type="DFN"` with PEFT: its config class, its tuner and its key prefix (idempotent).

    The one place where mf2 writes into PEFT. PEFT's registration function, `peft.utils.register_peft_method`, is for
    methods inside PEFT's tree: it accepts only members of its closed `PeftType` enum, and PEFT 0.21.2 (the newest
    release) has no registration for a method defined elsewhere. PEFT does take a `peft_type` given as a plain string
    (`PeftConfig.peft_type`: `PeftType` or `str`) and finds every method through the three dicts below, so DFN's
    entries sit beside the built-in ones. The config and tuner dicts are public (`peft.__all__`); the prefix dict is
    `peft.mapping`'s only: with `mf2.dfn.model`'s imports of PEFT internals, that is why pyproject.toml pins
    `peft==0.21.*`. Switch to `register_peft_method` once PEFT accepts names outside `PeftType` there.
    """
    entries = (
        (peft.PEFT_TYPE_TO_CONFIG_MAPPING, DFNConfig),
        (peft.PEFT_TYPE_TO_TUNER_MAPPING, DFNTuner),
        (peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING, DFNTuner.prefix),
    )
    for mapping, value in entries:
        registered = mapping.get(DFN_PEFT_TYPE)
        if registered is not None and registered is not value and registered != value:
            raise DFNRegistrationError(DFN_PEFT_TYPE, registered, value)
    for mapping, value in entries:  # all three or none: a refused entry leaves PEFT as it was
        mapping[DFN_PEFT_TYPE] = value


def is_dfn_registered() -> bool:
    """Whether PEFT currently maps `peft_type="DFN"` to DFN's tuner."""
    return peft.PEFT_TYPE_TO_TUNER_MAPPING.get(DFN_PEFT_TYPE) is DFNTuner


register_dfn_with_peft()

__all__ = [
    "AdapterBaseWarning",
    "AdapterLoadError",
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
