"""One on-disk, keyed, invalidating cache of what a frozen part of a model computes from a dataset.

Whenever part of a model is frozen and the data are not randomly augmented, that part's outputs are the same in every
epoch. `FeatureCache.build` runs it once over the dataset and stores, per example, the tensors `extract` returns
together with chosen batch keys (labels, boxes), in safetensors shards. Training then reads them back
(`CachedFeatureDataset`) instead of running the frozen part again.

An entry is keyed by a hash of (a) every parameter and buffer of the modules the features come from
(`source_modules`), (b) the settings that shape the features (`feature_spec`), and (c) a fingerprint of the data.
Changing any of them gives a new key, so a stale entry is never read; `clear()` removes old ones. An entry is written
in a staging folder named by its key and renamed into place, so an interrupted build leaves nothing that could be read,
and the next build of the same entry resumes after the last shard it wrote (an hour of vision tokens in the recipe is
not recomputed because a session ended). One process builds an entry at a time; another waits for it and reads it.

Two caches share this mechanism: `mf2.dfn.DFNFeatureCache` (DFN's side networks read pooled backbone states) and
`mf2.training.vision_cache.VisionTokenCache` (MF² pretraining and recognition training read the frozen vision encoder's
tokens, for an image and its horizontal flip).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..local_files import exclusive_lock, write_json

CACHE_FORMAT_VERSION = 1
DEFAULT_LABELS = ("au_labels", "emotion_labels")  # the batch keys stored beside the features unless told
MANIFEST_NAME = "manifest.json"
PROGRESS_NAME = "progress.json"
STAGING_PREFIX = ".building-"


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def hash_value(digest, name: str, value: Any) -> None:
    """Feed `value` (a tensor, a dict of values, or anything with a stable `repr`) into `digest` under `name`."""
    digest.update(name.encode())
    if isinstance(value, torch.Tensor):
        digest.update(f"{tuple(value.shape)}{value.dtype}".encode())
        digest.update(_tensor_bytes(value))
    elif isinstance(value, dict):
        for key in sorted(value):
            hash_value(digest, f"{name}.{key}", value[key])
    else:
        digest.update(repr(value).encode())


def _finished_shards(staging: Path, key: str, label_names: Sequence[str]) -> list[dict[str, Any]]:
    """The shards an interrupted build of entry `key` with `label_names` wrote into `staging` (the folder made ready
    when there are none)."""
    try:
        state = json.loads((staging / PROGRESS_NAME).read_text())
        same = state["key"] == key and state["label_names"] == list(label_names)
        if same and all((staging / shard["file"]).is_file() for shard in state["shards"]):
            return list(state["shards"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet, or unreadable: start again
        pass
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return []


def _write_manifest(directory: Path, key: str, components: dict[str, Any], shards: list[dict[str, Any]]) -> None:
    """The entry's manifest: what `CachedFeatureDataset` reads (shards, feature and label names) and the key's parts."""
    first = shards[0]["keys"]
    manifest = {
        "format_version": CACHE_FORMAT_VERSION,
        "key": key,
        "num_examples": sum(shard["num_examples"] for shard in shards),
        "shards": shards,
        "features": sorted(name.removeprefix("features.") for name in first if name.startswith("features.")),
        "labels": sorted(name.removeprefix("labels.") for name in first if name.startswith("labels.")),
        "components": components,
    }
    write_json(directory / MANIFEST_NAME, manifest)


class FeatureCache:
    """Base class of the feature caches: keys, building, loading and clearing of entries in `cache_dir`.

    A subclass says what the features are: `source_modules()` (whose weights the key hashes), `feature_spec()` (the
    settings that shape them), `extract(batch)` (the features of one collated batch, `{name: (B, ...) tensor}`) and
    `batch_size_of(batch)`.

    Args:
        cache_dir: directory holding one sub-directory per cache entry.
        shard_size: a shard is written once it holds at least this many examples (whole batches).
    """

    name = "FeatureCache"

    def __init__(self, cache_dir: str | os.PathLike, shard_size: int = 4096):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
        self.cache_dir = Path(cache_dir)
        self.shard_size = shard_size

    # ------------------------------------------------------------------------------------------- what subclasses say
    def source_modules(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def feature_spec(self) -> dict[str, Any]:
        raise NotImplementedError

    def extract(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def check_buildable(self) -> None:
        """Raise if the features would not be deterministic (e.g. dropout in the source modules)."""

    @staticmethod
    def batch_size_of(batch: Mapping[str, Any]) -> int:
        return int(batch["pixel_values"].shape[0])

    # ------------------------------------------------------------------------------------------- keys
    def source_fingerprint(self) -> str:
        """Hash of every parameter and buffer (names, shapes, dtypes, bytes) of the modules the features come from."""
        digest = hashlib.blake2b(digest_size=32)
        for module in self.source_modules():
            for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
                hash_value(digest, name, tensor)
        return digest.hexdigest()

    @staticmethod
    def data_fingerprint(dataset: Dataset, collate_fn: Callable | None = None, batch_size: int = 32) -> str:
        """Hash of every collated batch (one pass over the data, without the model)."""
        digest = hashlib.blake2b(digest_size=32)
        digest.update(str(len(dataset)).encode())
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
            hash_value(digest, "batch", dict(batch))
        return digest.hexdigest()

    def components(self, data_fingerprint: str, label_names: Sequence[str] = DEFAULT_LABELS) -> dict[str, Any]:
        """What an entry's key is made of: source-module hash, feature spec, data fingerprint and the labels stored
        beside the features (an entry built without a label must not serve a build that asks for it)."""
        return {
            "backbone": self.source_fingerprint(),
            "spec": self.feature_spec(),
            "data": data_fingerprint,
            "labels": sorted(set(label_names)),
        }

    def key(
        self,
        data_fingerprint: str,
        components: dict[str, Any] | None = None,
        label_names: Sequence[str] = DEFAULT_LABELS,
    ) -> str:
        """The entry name for these source modules, feature spec, data and labels."""
        payload = json.dumps(components or self.components(data_fingerprint, label_names), sort_keys=True)
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()

    # ------------------------------------------------------------------------------------------- build / load
    def build(
        self,
        dataset: Dataset,
        collate_fn: Callable | None = None,
        batch_size: int = 32,
        fingerprint: str | None = None,
        label_names: Sequence[str] = DEFAULT_LABELS,
        num_workers: int = 0,
        in_memory: bool | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> CachedFeatureDataset:
        """Return the cached features of `dataset`, computing and storing them first if no valid entry exists.

        Args:
            dataset, collate_fn, batch_size, num_workers: how to read the data, as for a `DataLoader` (no shuffling).
            fingerprint: identifies the data. `None` hashes every collated batch (one extra pass over the data, no
                model); pass your own string (e.g. a dataset version, or `datasets.Dataset._fingerprint` when no
                on-the-fly transform or collator changes the inputs) to skip that pass. Changing it invalidates the
                entry.
            label_names: batch keys stored beside the features, returned by the cached dataset.
            in_memory: see `CachedFeatureDataset`.
            progress: called as `progress(done, total)` once before the first batch (`done`: the examples an
                interrupted build already wrote) and after each batch.
        """
        self.check_buildable()
        if fingerprint is None:
            fingerprint = self.data_fingerprint(dataset, collate_fn, batch_size)
        components = self.components(fingerprint, label_names)  # hashing the source modules reads every weight: once
        key = self.key(fingerprint, components)
        entry = self.cache_dir / key
        if (entry / MANIFEST_NAME).is_file():
            return CachedFeatureDataset(entry, in_memory=in_memory)

        self.cache_dir.mkdir(parents=True, exist_ok=True)
        lock = self.cache_dir / f"{STAGING_PREFIX}{key}.lock"
        with exclusive_lock(lock):
            if not (entry / MANIFEST_NAME).is_file():  # not made by another process while this one waited
                staging = self.cache_dir / f"{STAGING_PREFIX}{key}"
                loader_options = {"batch_size": batch_size, "collate_fn": collate_fn, "num_workers": num_workers}
                self._write(staging, key, components, dataset, loader_options, label_names, progress)
                os.replace(staging, entry)  # atomic: a half-written entry is never visible
                lock.unlink(missing_ok=True)  # a process still waiting holds it open, wakes up, finds the entry
        return CachedFeatureDataset(entry, in_memory=in_memory)

    def _write(self, directory, key, components, dataset, loader_options, label_names, progress) -> None:
        """Write `dataset`'s shards and manifest into `directory`, after the shards an earlier attempt finished."""
        shards = _finished_shards(directory, key, label_names)
        count = sum(shard["num_examples"] for shard in shards)
        remaining = Subset(dataset, range(count, len(dataset))) if count else dataset
        batches = DataLoader(remaining, shuffle=False, **loader_options)
        total = len(dataset)
        modules = list(self.source_modules())
        modes = [module.training for module in modules]
        for module in modules:
            module.eval()
        pending, pending_count = [], 0
        if progress is not None:
            progress(count, total)  # where this build starts: 0, or after the shards an earlier one wrote

        def flush() -> None:
            nonlocal pending_count
            if not pending:
                return
            names = pending[0].keys()
            tensors = {name: torch.cat([part[name] for part in pending]).contiguous() for name in names}
            file = f"shard-{len(shards):05d}.safetensors"
            save_file(tensors, str(directory / file))
            with open(directory / file, "rb") as written:  # on disk before the progress file names it (a host crash)
                os.fsync(written.fileno())
            shards.append({"file": file, "num_examples": pending_count, "keys": sorted(tensors)})
            state = {"key": key, "label_names": list(label_names), "shards": shards}
            write_json(directory / PROGRESS_NAME, state)  # after the shard: the build resumes from here
            pending.clear()
            pending_count = 0

        try:
            for batch in batches:
                with torch.no_grad():
                    features = self.extract(batch)
                part = {f"features.{name}": value.detach().to("cpu") for name, value in features.items()}
                for name in label_names:
                    if batch.get(name) is not None:
                        part[f"labels.{name}"] = torch.as_tensor(batch[name]).to("cpu")
                if pending and part.keys() != pending[0].keys() or shards and set(part) != set(shards[0]["keys"]):
                    raise ValueError(f"{self.name}: every batch must carry the same inputs (e.g. captions in all).")
                pending.append(part)
                size = self.batch_size_of(batch)
                count, pending_count = count + size, pending_count + size
                if progress is not None:
                    progress(count, total)
                if pending_count >= self.shard_size:
                    flush()
            flush()
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
        if not shards:
            raise ValueError(f"{self.name}: the dataset is empty.")
        _write_manifest(directory, key, components, shards)

    def load(self, fingerprint: str, label_names: Sequence[str] = DEFAULT_LABELS) -> CachedFeatureDataset | None:
        """The valid entry for data `fingerprint` and `label_names` (as built), or None when there is none (stale
        entries are never returned)."""
        entry = self.cache_dir / self.key(fingerprint, label_names=label_names)
        return CachedFeatureDataset(entry) if (entry / MANIFEST_NAME).is_file() else None

    def entries(self) -> list[Path]:
        """Every complete entry in `cache_dir`, valid or stale."""
        if not self.cache_dir.is_dir():
            return []
        manifests = self.cache_dir.glob(f"*/{MANIFEST_NAME}")
        return sorted(path.parent for path in manifests if not path.parent.name.startswith(STAGING_PREFIX))

    def clear(self, keep_current: str | None = None, label_names: Sequence[str] = DEFAULT_LABELS) -> None:
        """Delete the entries in `cache_dir` and what interrupted builds left, except the entry for data fingerprint
        `keep_current` and `label_names` (and its unfinished build). Not while another process builds in `cache_dir`."""
        keep = self.key(keep_current, label_names=label_names) if keep_current is not None else None
        for entry in self.entries():
            if entry.name != keep:
                shutil.rmtree(entry)
        for leftover in self.cache_dir.glob(f"{STAGING_PREFIX}*"):
            if keep is None or not leftover.name.startswith(f"{STAGING_PREFIX}{keep}"):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()


class CachedFeatureDataset(Dataset):
    """Examples of a feature-cache entry: `{"cached_features": {name: tensor}, "au_labels": ..., ...}`.

    Args:
        path: the entry directory (made by `FeatureCache.build`).
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

    def labels(self, name: str) -> torch.Tensor:
        """`(N, ...)`: label `name` of every example, read without the features."""
        if name not in self.label_names:
            raise KeyError(f"{self.path}: no label {name!r}; the entry holds {self.label_names}.")
        key = f"labels.{name}"
        if self._tensors is not None:
            return self._tensors[key]
        parts = []
        for file, _ in self.shards:
            with safe_open(str(file), framework="pt") as handle:
                parts.append(handle.get_tensor(key))
        return torch.cat(parts)

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
    """Stack `CachedFeatureDataset` examples into `{"cached_features": {...}, <labels>}`."""
    batch: dict[str, Any] = {
        "cached_features": {
            name: torch.stack([ex["cached_features"][name] for ex in examples])
            for name in examples[0]["cached_features"]
        }
    }
    for name in examples[0]:
        if name != "cached_features":
            batch[name] = torch.stack([torch.as_tensor(ex[name]) for ex in examples])
    return batch


__all__ = [
    "CACHE_FORMAT_VERSION",
    "MANIFEST_NAME",
    "CachedFeatureDataset",
    "FeatureCache",
    "collate_cached_features",
    "hash_value",
]
