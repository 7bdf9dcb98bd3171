"""The user-facing DFN model: a `peft.PeftModel` around an MF² recognition model and its `DFNTuner`.

`get_dfn_model` builds one with a fresh adapter; `DFNModel.from_pretrained` (PEFT's) loads an adapter directory onto a
base model. Everything else of `PeftModel` applies (saving adapter-only checkpoints, `disable_adapter()`,
`print_trainable_parameters()`).
"""

from __future__ import annotations

import copy
import functools
import warnings

import torch
from peft import PeftModel
from torch import nn

from .base_model import base_fingerprint
from .config import DFNConfig
from .features import DFNFeatures
from .model import DFNOutput, DFNTuner
from .thresholds import read_thresholds


class DFNModel(PeftModel):
    """A DFN-adapted MF² model: the frozen base model plus the active adapter's side networks and head copies.

    Everything of `peft.PeftModel` applies: `save_pretrained(dir)` writes only `adapter_config.json` and
    `adapter_model.safetensors`; `DFNModel.from_pretrained(base_model, dir)` loads them onto a base model;
    `disable_adapter()` is a context manager giving the base model's outputs; `print_trainable_parameters()`.
    `forward` runs the backbone without a graph and accepts `cached_features` from `mf2.dfn.DFNFeatureCache`.

    Example:

    ```python
    >>> from mf2 import MF2ForFacialStateRecognition
    >>> from mf2.dfn import DFNConfig, get_dfn_model
    >>> model = get_dfn_model(MF2ForFacialStateRecognition.from_pretrained(path), DFNConfig())
    >>> model.print_trainable_parameters()
    >>> model(pixel_values=..., au_labels=..., emotion_labels=...).loss.backward()
    >>> model.save_pretrained("dfn-adapter")
    ```
    """

    def __init__(self, model: nn.Module, peft_config: DFNConfig, adapter_name: str = "default", **kwargs):
        with warnings.catch_warnings():  # PEFT reads transformers' deprecated `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            super().__init__(model, peft_config, adapter_name=adapter_name, **kwargs)

    def load_adapter(self, model_id, adapter_name: str, *args, **kwargs):
        """PEFT's `load_adapter`, with the adapter's own AU thresholds (`thresholds.json` beside it), as
        `mf2.dfn.load_adapter` reads them; they are the model's while that adapter is active."""
        result = super().load_adapter(model_id, adapter_name, *args, **kwargs)
        thresholds = read_thresholds(model_id, kwargs.get("subfolder"))
        if thresholds is not None:
            self.peft_config[adapter_name].au_thresholds = thresholds
        self.base_model.apply_au_thresholds()
        return result

    @property
    def dfn_config(self) -> DFNConfig:
        """The active adapter's configuration."""
        return self.base_model.active_config

    @functools.wraps(DFNTuner.forward)  # one signature and docstring: the tuner's (Trainer reads the signature)
    def forward(self, *args, **kwargs) -> DFNOutput | tuple[torch.Tensor, ...]:
        return self.base_model(*args, **kwargs)

    def extract_features(self, *args, **kwargs) -> DFNFeatures:
        """Frozen-backbone features of a batch; see `DFNTuner.extract_features`."""
        return self.base_model.extract_features(*args, **kwargs)

    def enable_adapters(self) -> None:
        """Use the adapter (side networks and head copies) in the forward pass."""
        self.base_model.enable_adapter_layers()
        self._adapters_disabled = False

    def disable_adapters(self) -> None:
        """Run as the base model (original heads, no side networks) until `enable_adapters()`."""
        self.base_model.disable_adapter_layers()
        self._adapters_disabled = True

    def create_or_update_model_card(self, output_dir: str) -> None:
        """No model card: an adapter directory holds exactly `adapter_config.json` and `adapter_model.safetensors`.
        Write the card when publishing (e.g. `huggingface_hub.ModelCard`)."""


def get_dfn_model(model: nn.Module, config: DFNConfig | None = None, adapter_name: str = "default") -> DFNModel:
    """Wrap an MF² recognition or pretraining model with a new DFN adapter (frozen backbone, trainable side networks
    and head copies)."""
    if isinstance(model, PeftModel):
        raise ValueError(
            "The model already carries PEFT adapters; add another one with `model.add_adapter(name, config)`."
        )
    if getattr(model, "is_activation_checkpointing", False):
        warnings.warn(
            "Gradient checkpointing is useless under DFN (the backbone builds no graph); disabling it.", stacklevel=2
        )
        model.gradient_checkpointing_disable()
    # A copy: the wrapped model fills in its own defaults and fingerprint, which must not reach another model that
    # the caller's config object is given to next.
    config = copy.deepcopy(config) if config is not None else DFNConfig()
    config.base_model_fingerprint = base_fingerprint(model)
    return DFNModel(model, config, adapter_name=adapter_name)


__all__ = ["DFNModel", "get_dfn_model"]
