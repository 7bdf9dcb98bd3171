"""The frozen vision encoder's tokens, computed once per image and its mirror image, for fast MF² training.

In MF² pretraining and recognition training the vision encoder is frozen below `MF2Model.vision_cache_layer` (all of
it by default, all but the top `config.vision_trainable_layers` blocks otherwise). The tokens entering the trainable
part depend only on the image, so `VisionTokenCache` computes them once, for each image and for its horizontal flip
and, when asked, for `augmented_views` seeded variations of it (`mf2.training.view_augmentation`: shift, scale,
rotation, contrast, blur, with the AU boxes carried along), with the shared keyed mechanism of
`mf2.training.feature_cache`: changing the encoder's weights, the cache layer, the storage dtype or the data gives a new
entry, never a stale one.

`VisionTokenDataset` serves the cached tokens to `Trainer`: each time an example is read it takes one of its views at
random (the flipped view with mirrored AU boxes, an augmented view with its own), together with its labels and, for pretraining, its
captions. `VisionTokenCollator` stacks them into the keyword arguments of `MF2ForPreTraining` /
`MF2ForFacialStateRecognition` (`vision_tokens=` instead of `pixel_values=`). Cached and uncached batches give the
same loss (`tests/training/test_vision_cache.py`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .feature_cache import CACHE_FORMAT_VERSION, CachedFeatureDataset, FeatureCache
from .view_augmentation import DEFAULT_JITTER, ViewJitter, augmented_view, view_generator

VIEW_NAMES = ("tokens", "flipped_tokens")
"""Feature names of the original and mirrored views of an image."""


def augmented_view_names(view: int) -> tuple[str, str]:
    """Feature names of augmented view `view`'s tokens and AU boxes."""
    return f"view{view}_tokens", f"view{view}_au_boxes"


def flip_au_boxes(au_boxes: torch.Tensor) -> torch.Tensor:
    """AU boxes `(..., 4)` (normalised xyxy) of the horizontally mirrored image."""
    x1, y1, x2, y2 = au_boxes.unbind(-1)
    return torch.stack([1 - x2, y1, 1 - x1, y2], dim=-1)


class VisionTokenCache(FeatureCache):
    """Cache of `model.mf2.frozen_vision_tokens` for every image and its mirror image.

    Args:
        model: an MF² model (`MF2ForPreTraining`, `MF2ForFacialStateRecognition`) or its `MF2Model`.
        cache_dir: directory holding one sub-directory per entry.
        dtype: storage dtype of the tokens (float16 halves the disk and memory; float32 is exact).
        flips: also store the mirror image's tokens.
        augmented_views: also store this many augmented views (`mf2.training.view_augmentation`), seeded by each
            example's `example_ids` entry, so a rebuilt entry holds the same views; they need `au_boxes` in the batch.
        jitter: how far the augmented views vary.
    """

    name = "VisionTokenCache"

    def __init__(
        self,
        model: nn.Module,
        cache_dir: str | os.PathLike,
        dtype: torch.dtype = torch.float16,
        flips: bool = True,
        shard_size: int = 4096,
        augmented_views: int = 0,
        jitter: ViewJitter = DEFAULT_JITTER,
    ):
        super().__init__(cache_dir, shard_size)
        self.mf2 = getattr(model, "mf2", model)
        if not hasattr(self.mf2, "frozen_vision_tokens"):
            raise TypeError(f"VisionTokenCache needs an MF² model, got {type(model).__name__}.")
        self.dtype = dtype
        self.flips = flips
        self.augmented_views = int(augmented_views)
        self.jitter = jitter

    def source_modules(self) -> list[nn.Module]:
        """The modules the cached tokens come from: embeddings and the blocks below the cache layer (and the final
        norm when every block is frozen); training the blocks above leaves the entry valid."""
        vision = self.mf2.vision_model
        layers = self.mf2.config.vision_config.num_hidden_layers
        modules = [vision.embeddings, *self.mf2.vision_blocks[: self.mf2.vision_cache_layer]]
        return modules + [vision.layernorm] if self.mf2.vision_cache_layer == layers else modules

    def feature_spec(self) -> dict[str, Any]:
        return {
            "format_version": CACHE_FORMAT_VERSION,
            "kind": "vision_tokens",
            "vision_model": type(self.mf2.vision_model).__name__,
            "cache_layer": self.mf2.vision_cache_layer,
            "dtype": str(self.dtype),
            "flips": self.flips,
            **({"augmented_views": self.augmented_views, "jitter": repr(self.jitter)} if self.augmented_views else {}),
        }

    def extract(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        device = next(self.mf2.vision_model.parameters()).device
        pixels = batch["pixel_values"].to(device)
        features = {"tokens": self.mf2.frozen_vision_tokens(pixels).to(self.dtype)}
        if self.flips:
            features["flipped_tokens"] = self.mf2.frozen_vision_tokens(pixels.flip(-1)).to(self.dtype)
        if self.augmented_views:
            if batch.get("example_ids") is None or batch.get("au_boxes") is None:
                raise ValueError(
                    "VisionTokenCache(augmented_views=...) needs `example_ids` and `au_boxes` in each batch."
                )
            ids, boxes = batch["example_ids"].tolist(), batch["au_boxes"]
            for view in range(1, self.augmented_views + 1):
                views = [
                    augmented_view(pixels[i].cpu(), boxes[i], view_generator(ids[i], view), self.jitter)
                    for i in range(len(ids))
                ]
                tokens_name, boxes_name = augmented_view_names(view)
                features[tokens_name] = self.mf2.frozen_vision_tokens(
                    torch.stack([pixels for pixels, _ in views]).to(device)
                ).to(self.dtype)
                features[boxes_name] = torch.stack([boxes for _, boxes in views])
        return features


class VisionTokenDataset(Dataset):
    """Training examples from a `VisionTokenCache` entry: a random view per read, its AU boxes, labels and captions.

    Args:
        cached: the entry (`VisionTokenCache.build(..., label_names=(..., "au_boxes"))`).
        rows: the rows the entry was built from, in the same order; their caption columns (`emotion_caption`,
            `au_caption`) travel with the example when given (pretraining).
        augment: draw one of the entry's views at random (original, flipped, augmented; torch's global generator,
            which `Trainer` seeds); off, always `view` (evaluation).
        dtype: dtype the tokens are handed to the model in.
        augmented_views: draw from at most this many of the entry's augmented views (`None`: all it has), so a
            comparison can leave them out without building another cache.
        view: the view read when `augment` is off: `"tokens"` (the original) or `"flipped_tokens"` (the mirror image,
            for a flip test-time average).
    """

    def __init__(
        self,
        cached: CachedFeatureDataset,
        rows: Any | None = None,
        augment: bool = True,
        dtype: torch.dtype = torch.float32,
        augmented_views: int | None = None,
        view: str = "tokens",
    ):
        if rows is not None and len(rows) != len(cached):
            raise ValueError(
                f"{len(rows)} rows for a cache entry of {len(cached)} examples; pass the rows it was built from."
            )
        if augment and "flipped_tokens" not in cached.feature_names:
            raise ValueError("augment=True needs a cache entry with flipped views (VisionTokenCache(flips=True)).")
        if view not in cached.feature_names:
            raise ValueError(f"view {view!r} is not in this cache entry; it has {sorted(cached.feature_names)}.")
        self.cached, self.rows, self.augment, self.dtype, self.view = cached, rows, augment, dtype, view
        names = set(cached.feature_names)
        augmented = [name for number in range(1, len(names) + 1) if (name := augmented_view_names(number)[0]) in names]
        self.views = [name for name in VIEW_NAMES if name in names] + augmented[:augmented_views]
        self._captions = None
        if rows is not None:
            columns = [name for name in ("emotion_caption", "au_caption") if name in rows.column_names]
            self._captions = rows.select_columns(columns) if columns else None

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self.cached[index]
        features = example.pop("cached_features")
        view = self.views[int(torch.randint(len(self.views), ()).item())] if self.augment else self.view
        example["vision_tokens"] = features[view].to(self.dtype)
        if "au_boxes" in example and view != "tokens":
            boxes = features.get(view.replace("_tokens", "_au_boxes"))
            example["au_boxes"] = flip_au_boxes(example["au_boxes"]) if boxes is None else boxes
        if self._captions is not None:
            example.update(self._captions[int(index)])
        return example


@dataclass
class VisionTokenCollator:
    """Stack `VisionTokenDataset` examples into model keyword arguments.

    Args:
        processor: an `MF2Processor`, needed only to tokenise captions (`with_captions`).
        with_captions: tokenise the examples' captions (pretraining), as `MF2DataCollator` does.
        branches: passed to the model (`("emotion",)` skips AU-VL when a stage has no AU targets).
        max_au_captions: as in `MF2DataCollator`.
        keep_ids: keep the examples' `example_ids` in the batch (for a wrapper that reads them and removes them,
            `mf2.training.emotion_targets.SoftEmotionTargets`); the models take no such argument.
    """

    processor: Any = None
    with_captions: bool = False
    branches: tuple[str, ...] | None = None
    max_au_captions: int | None = None
    keep_ids: bool = False

    def __post_init__(self):
        self._captioner = None
        if self.with_captions:
            if self.processor is None:
                raise ValueError("VisionTokenCollator(with_captions=True) needs the MF2Processor that tokenises them.")
            from .collator import MF2DataCollator

            self._captioner = MF2DataCollator(self.processor, max_au_captions=self.max_au_captions)

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not examples:
            raise ValueError("VisionTokenCollator got an empty batch.")
        tensors = [name for name, value in examples[0].items() if isinstance(value, torch.Tensor)]
        batch: dict[str, Any] = {name: torch.stack([example[name] for example in examples]) for name in tensors}
        ids = batch.pop("example_id", batch.pop("example_ids", None))
        if self.keep_ids and ids is not None:
            batch["example_ids"] = ids
        if self._captioner is not None:
            batch.update(self._captioner.captions(examples))
        if self.branches is not None:
            batch["branches"] = tuple(self.branches)
        return batch


__all__ = [
    "VIEW_NAMES",
    "VisionTokenCache",
    "augmented_view_names",
    "VisionTokenCollator",
    "VisionTokenDataset",
    "flip_au_boxes",
]
