"""DFN: MF²'s Decoupled Fine-tuning Network, as a PEFT-style adapter (config / layer / model, as PEFT's tuners).

Importing this package registers `peft_type="DFN"` with PEFT, so `get_peft_model` and `PeftModel.from_pretrained`
accept DFN adapters.
"""

from .cache import DFNCachedDataset, DFNFeatureCache, collate_cached_features
from .config import BRANCHES, DFN_PEFT_TYPE, MODALITIES, DFNConfig
from .layer import DFNCell, DFNSideNetwork, default_layer_indices
from .model import DFNModel, DFNOutput, DFNTuner, get_dfn_model
from .peft_integration import is_dfn_registered, register_dfn_with_peft

register_dfn_with_peft()

__all__ = [
    "BRANCHES",
    "DFN_PEFT_TYPE",
    "MODALITIES",
    "DFNCachedDataset",
    "DFNCell",
    "DFNConfig",
    "DFNFeatureCache",
    "DFNModel",
    "DFNOutput",
    "DFNSideNetwork",
    "DFNTuner",
    "collate_cached_features",
    "default_layer_indices",
    "get_dfn_model",
    "is_dfn_registered",
    "register_dfn_with_peft",
]
