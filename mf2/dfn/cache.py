"""On-disk cache of the frozen backbone's features, so that DFN epochs after the first skip the backbone entirely.

Under DFN the backbone is frozen and gets no gradient, so for an un-augmented dataset its outputs are the same in every
epoch. `DFNFeatureCache.build` runs it once over the dataset and stores, per example, what `DFNTuner.extract_features`
returns (pooled Q-Former states of the read layers, the base task representations, and with text cells the caption
features) together with the labels, in safetensors shards. Training then reads those features and runs only the side
networks, the heads and the losses: `DFNModel(cached_features=...)` gives the same loss as the uncached path.

An entry is keyed by a hash of (a) every parameter and buffer of the backbone modules the features come from, (b) the
adapter settings that shape the features (branches, modalities, read layers; not the bottleneck or the gate, so
a cache serves a whole hyperparameter sweep), and (c) a fingerprint of the data. Changing any of them gives a new key,
so a stale entry is never read; `DFNFeatureCache.clear()` removes old ones. The paper does not cache features.

Only valid for data without random augmentation (a cached epoch replays the first epoch's inputs exactly).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from .model import DFNTuner, backbone_modules

CACHE_FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Batch keys that `DFNTuner.extract_features` reads.
_BACKBONE_INPUTS = (
    "pixel_values", "au_boxes", "emotion_input_ids", "emotion_attention_mask", "au_input_ids", "au_attention_mask",
    "au_caption_mask",
)  # fmt: skip


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _hash_value(digest, name: str, value: Any) -> None:
    digest.update(name.encode())
    if isinstance(value, torch.Tensor):
        digest.update(f"{tuple(value.shape)}{value.dtype}".encode())
        digest.update(_tensor_bytes(value))
    elif isinstance(value, dict):
        for key in sorted(value):
            _hash_value(digest, f"{name}.{key}", value[key])
    else:
        digest.update(repr(value).encode())


class DFNFeatureCache:
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

    def __init__(self, model: PeftModel | DFNTuner, cache_dir: str | os.PathLike, shard_size: int = 4096):
        tuner = model.base_model if isinstance(model, PeftModel) else model
        if not isinstance(tuner, DFNTuner):
            raise TypeError(f"DFNFeatureCache needs a DFN model, got {type(model).__name__}.")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
        self.tuner = tuner
        self.cache_dir = Path(cache_dir)
        self.shard_size = shard_size

    # ------------------------------------------------------------------------------------------- keys
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

    def backbone_fingerprint(self) -> str:
        """Hash of every parameter and buffer (names, shapes, dtypes, bytes) of the modules the features come from."""
        digest = hashlib.blake2b(digest_size=32)
        for module in backbone_modules(self.tuner.model):
            for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
                _hash_value(digest, name, tensor)
        return digest.hexdigest()

    @staticmethod
    def data_fingerprint(dataset: Dataset, collate_fn: Callable | None = None, batch_size: int = 32) -> str:
        """Hash of every collated batch (one pass over the data, without the model)."""
        digest = hashlib.blake2b(digest_size=32)
        digest.update(str(len(dataset)).encode())
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
            _hash_value(digest, "batch", dict(batch))
        return digest.hexdigest()

    def components(self, data_fingerprint: str) -> dict[str, Any]:
        """What an entry's key is made of: backbone hash, feature spec and data fingerprint."""
        return {"backbone": self.backbone_fingerprint(), "spec": self.feature_spec(), "data": data_fingerprint}

    def key(self, data_fingerprint: str, components: dict[str, Any] | None = None) -> str:
        """The entry name for this backbone, feature spec and data."""
        payload = json.dumps(components or self.components(data_fingerprint), sort_keys=True)
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()

    # ------------------------------------------------------------------------------------------- build / load
    def build(
        self,
        dataset: Dataset,
        collate_fn: Callable | None = None,
        batch_size: int = 32,
        fingerprint: str | None = None,
        label_names: Sequence[str] = ("au_labels", "emotion_labels"),
        num_workers: int = 0,
        in_memory: bool | None = None,
    ) -> DFNCachedDataset:
        """Return the cached features of `dataset`, computing and storing them first if no valid entry exists.

        Args:
            dataset, collate_fn, batch_size, num_workers: how to read the data, as for a `DataLoader` (no shuffling).
                Batches must hold `pixel_values` (plus `au_boxes` and captions when used) and the `label_names`.
            fingerprint: identifies the data. `None` hashes every collated batch (one extra pass over the data, no
                model); pass your own string (e.g. a dataset version, or `datasets.Dataset._fingerprint` when no
                on-the-fly transform or collator changes the inputs) to skip that pass. Changing it invalidates the
                entry.
            label_names: batch keys stored with the features, returned by the cached dataset.
            in_memory: see `DFNCachedDataset`.
        """
        if not self.tuner.active_config.backbone_eval_mode:
            raise ValueError(
                "The feature cache needs a deterministic backbone: set DFNConfig(backbone_eval_mode=True)."
            )
        if fingerprint is None:
            fingerprint = self.data_fingerprint(dataset, collate_fn, batch_size)
        components = self.components(fingerprint)  # hashing the backbone reads every weight: do it once
        key = self.key(fingerprint, components)
        entry = self.cache_dir / key
        if (entry / MANIFEST_NAME).is_file():
            return DFNCachedDataset(entry, in_memory=in_memory)

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=self.cache_dir))
        try:
            self._write(staging, key, components, dataset, collate_fn, batch_size, label_names, num_workers)
            try:
                os.replace(staging, entry)  # atomic: a half-written entry is never visible
            except OSError:
                if not (entry / MANIFEST_NAME).is_file():  # another process finished the same entry first
                    raise
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return DFNCachedDataset(entry, in_memory=in_memory)

    def _write(self, directory, key, components, dataset, collate_fn, batch_size, label_names, num_workers) -> None:
        loader = DataLoader(
            dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn, num_workers=num_workers
        )
        device = next(self.tuner.model.parameters()).device
        modules = backbone_modules(self.tuner.model)
        modes = [module.training for module in modules]
        for module in modules:
            module.eval()
        shards, pending = [], []
        count = pending_count = 0

        def flush() -> None:
            nonlocal pending_count
            if not pending:
                return
            names = pending[0].keys()
            tensors = {name: torch.cat([part[name] for part in pending]).contiguous() for name in names}
            file = f"shard-{len(shards):05d}.safetensors"
            save_file(tensors, str(directory / file))
            shards.append({"file": file, "num_examples": pending_count, "keys": sorted(tensors)})
            pending.clear()
            pending_count = 0

        try:
            for batch in loader:
                inputs = {name: batch[name].to(device) for name in _BACKBONE_INPUTS if batch.get(name) is not None}
                features = self.tuner.extract_features(**inputs)
                part = {f"features.{name}": value.detach().to("cpu") for name, value in features.items()}
                for name in label_names:
                    if batch.get(name) is not None:
                        part[f"labels.{name}"] = torch.as_tensor(batch[name]).to("cpu")
                if pending and part.keys() != pending[0].keys() or shards and set(part) != set(shards[0]["keys"]):
                    raise ValueError("DFNFeatureCache: every batch must carry the same inputs (e.g. captions in all).")
                pending.append(part)
                size = batch["pixel_values"].shape[0]
                count, pending_count = count + size, pending_count + size
                if pending_count >= self.shard_size:
                    flush()
            flush()
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
        if not shards:
            raise ValueError("DFNFeatureCache: the dataset is empty.")
        first = shards[0]["keys"]
        manifest = {
            "format_version": CACHE_FORMAT_VERSION,
            "key": key,
            "num_examples": count,
            "shards": shards,
            "features": sorted(name.removeprefix("features.") for name in first if name.startswith("features.")),
            "labels": sorted(name.removeprefix("labels.") for name in first if name.startswith("labels.")),
            "components": components,
        }
        (directory / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True))

    def load(self, fingerprint: str) -> DFNCachedDataset | None:
        """The valid entry for data `fingerprint`, or None when there is none (stale entries are never returned)."""
        entry = self.cache_dir / self.key(fingerprint)
        return DFNCachedDataset(entry) if (entry / MANIFEST_NAME).is_file() else None

    def entries(self) -> list[Path]:
        """Every complete entry in `cache_dir`, valid or stale."""
        if not self.cache_dir.is_dir():
            return []
        return sorted(path.parent for path in self.cache_dir.glob(f"*/{MANIFEST_NAME}"))

    def clear(self, keep_current: str | None = None) -> None:
        """Delete the entries in `cache_dir`, except the one for data fingerprint `keep_current`."""
        keep = self.key(keep_current) if keep_current is not None else None
        for entry in self.entries():
            if entry.name != keep:
                shutil.rmtree(entry)


class DFNCachedDataset(Dataset):
    """Examples of a feature-cache entry: `{"cached_features": {name: tensor}, "au_labels": ..., ...}`.

    Args:
        path: the entry directory (made by `DFNFeatureCache.build`).
        in_memory: load every shard into memory (`True`), or read examples from the memory-mapped shards on demand
            (`False`). Defaults to in memory below 4 GiB.
    """

    def __init__(self, path: str | os.PathLike, in_memory: bool | None = None):
        self.path = Path(path)
        self.manifest = json.loads((self.path / MANIFEST_NAME).read_text())
        self.shards = [(self.path / shard["file"], shard["num_examples"]) for shard in self.manifest["shards"]]
        self.offsets = list(itertools.accumulate(count for _, count in self.shards))
        if in_memory is None:
            in_memory = sum(file.stat().st_size for file, _ in self.shards) < 4 * 2**30
        self.in_memory = in_memory
        self._tensors: dict[str, torch.Tensor] | None = None
        self._handles: dict[int, Any] = {}
        if in_memory:
            parts = [load_file(str(file)) for file, _ in self.shards]
            self._tensors = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    @property
    def feature_names(self) -> list[str]:
        return list(self.manifest["features"])

    @property
    def label_names(self) -> list[str]:
        return list(self.manifest["labels"])

    def __len__(self) -> int:
        return self.manifest["num_examples"]

    def _row(self, index: int) -> dict[str, torch.Tensor]:
        if self._tensors is not None:
            return {name: tensor[index] for name, tensor in self._tensors.items()}
        shard = next(number for number, end in enumerate(self.offsets) if index < end)
        local = index - (self.offsets[shard - 1] if shard else 0)
        if shard not in self._handles:  # opened lazily, so the dataset can be sent to DataLoader workers
            self._handles[shard] = safe_open(str(self.shards[shard][0]), framework="pt")
        handle = self._handles[shard]
        return {name: handle.get_slice(name)[local : local + 1][0] for name in handle.keys()}

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        row = self._row(index % len(self))
        example: dict[str, Any] = {"cached_features": {}}
        for name, value in row.items():
            kind, _, key = name.partition(".")
            if kind == "features":
                example["cached_features"][key] = value
            else:
                example[key] = value
        return example

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles do not cross process boundaries
        return state


def collate_cached_features(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack `DFNCachedDataset` examples into `{"cached_features": {...}, <labels>}` for `DFNModel.forward`."""
    batch: dict[str, Any] = {
        "cached_features": {name: torch.stack([ex["cached_features"][name] for ex in examples])
                            for name in examples[0]["cached_features"]}
    }  # fmt: skip
    for name in examples[0]:
        if name != "cached_features":
            batch[name] = torch.stack([torch.as_tensor(ex[name]) for ex in examples])
    return batch


__all__ = ["CACHE_FORMAT_VERSION", "DFNCachedDataset", "DFNFeatureCache", "collate_cached_features"]
