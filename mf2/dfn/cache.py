"""On-disk cache of the frozen backbone's features, so that DFN epochs after the first skip the backbone entirely.

Under DFN the backbone is frozen and gets no gradient, so for an un-augmented dataset its outputs are the same in every
epoch. `DFNFeatureCache.build` runs it once over the dataset and stores, per example, the `DFNFeatures` that
`DFNTuner.extract_features` returns (pooled Q-Former states of the read layers, the base task representations, and
with text cells the caption features; one safetensors key per field) together with the labels, in safetensors shards. Training then reads those features and runs only the side
networks, the heads and the losses: `DFNModel(cached_features=...)` gives the same loss as the uncached path.

An entry is keyed by a hash of (a) every parameter and buffer of the backbone modules the features come from, (b) the
adapter settings that shape the features (branches, modalities, read layers; not the bottleneck or the gate, so
a cache serves a whole hyperparameter sweep), and (c) a fingerprint of the data. Changing any of them gives a new key,
so a stale entry is never read; `DFNFeatureCache.clear()` removes old ones. The paper does not cache features.

Only valid for data without random augmentation (a cached epoch replays the first epoch's inputs exactly). The
keying, shards and loading are `mf2.training.feature_cache.FeatureCache`'s, shared with the vision-token cache.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from ..training.feature_cache import CACHE_FORMAT_VERSION, CachedFeatureDataset, FeatureCache, collate_cached_features
from .features import backbone_modules
from .model import DFNTuner

DFNCachedDataset = CachedFeatureDataset
"""Examples of a DFN feature-cache entry (the shared `CachedFeatureDataset`)."""

# Batch keys that `DFNTuner.extract_features` reads.
_BACKBONE_INPUTS = (
    "pixel_values",
    "au_boxes",
    "emotion_input_ids",
    "emotion_attention_mask",
    "au_input_ids",
    "au_attention_mask",
    "au_caption_mask",
)


class DFNFeatureCache(FeatureCache):
    """Feature cache of one DFN model in `cache_dir`.

    Args:
        model: a `DFNModel` (or a `PeftModel` holding a DFN adapter); its active adapter decides which features are
            stored.
        cache_dir: directory holding one sub-directory per cache entry.
        shard_size: a shard is written once it holds at least this many examples (whole batches).

    Example:

    ```python
    >>> cache = DFNFeatureCache(dfn_model, "dfn-cache")
    >>> train_features = cache.build(train_dataset, collate_fn=collator, batch_size=64)
    >>> trainer = Trainer(model=dfn_model, train_dataset=train_features, data_collator=collate_cached_features, ...)
    ```
    """

    name = "DFNFeatureCache"

    def __init__(self, model: PeftModel | DFNTuner, cache_dir: str | os.PathLike, shard_size: int = 4096):
        tuner = model.base_model if isinstance(model, PeftModel) else model
        if not isinstance(tuner, DFNTuner):
            raise TypeError(f"DFNFeatureCache needs a DFN model, got {type(model).__name__}.")
        super().__init__(cache_dir, shard_size)
        self.tuner = tuner

    def feature_spec(self) -> dict[str, Any]:
        """The adapter settings and model facts that shape the cached features."""
        config = self.tuner.active_config
        return {
            "format_version": CACHE_FORMAT_VERSION,
            "model_class": type(self.tuner.model).__name__,
            "branches": list(config.branches),
            "modalities": list(config.modalities),
            "layer_indices": list(config.layer_indices),
        }

    def source_modules(self) -> list[nn.Module]:
        return backbone_modules(self.tuner.model)

    backbone_fingerprint = FeatureCache.source_fingerprint

    def check_buildable(self) -> None:
        if not self.tuner.active_config.backbone_eval_mode:
            raise ValueError(
                "The feature cache needs a deterministic backbone: set DFNConfig(backbone_eval_mode=True)."
            )

    def extract(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        device = next(self.tuner.model.parameters()).device
        inputs = {name: batch[name].to(device) for name in _BACKBONE_INPUTS if batch.get(name) is not None}
        return self.tuner.extract_features(**inputs)


__all__ = ["CACHE_FORMAT_VERSION", "DFNCachedDataset", "DFNFeatureCache", "collate_cached_features"]
