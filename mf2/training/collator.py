"""`MF2DataCollator`: pre-processed rows → the keyword arguments of `MF2ForPreTraining` / `MF2ForFacialStateRecognition`.

Rows come from `mf2.training.preprocess` (aligned crops, AU boxes) plus the MFA label and caption columns. The
collator stacks the crops and boxes, normalises uint8 crops with the processor's mean and std, tokenises the emotion
caption and the 12 AU captions with the processor's tokenizer (truncated at the model's caption lengths), and turns
the `au` / `emotion` columns into `au_labels` / `emotion_labels`.

Targets that a stage does not train on become "unknown": labels of -1 and no captions, so the batch keys stay the
same and the model's masked losses skip them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .preprocess import ID_COLUMN

IGNORE = -1


def _stack(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.stack([np.asarray(row[key]) for row in rows])


def _strings(value: Any) -> list[str]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return ["" if item is None else str(item) for item in value]


def _tokenizer_fingerprint(tokenizer: Any) -> str | None:
    """A hash of what decides a tokenizer's ids: its vocabulary and rules, special tokens and sides."""
    if tokenizer is None:
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    sides = f"{getattr(tokenizer, 'padding_side', None)}/{getattr(tokenizer, 'truncation_side', None)}"
    payload = f"{type(tokenizer).__name__}|{sides}|{tokenizer.all_special_tokens}|{rules}"
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class MF2DataCollator:
    """Collate pre-processed MF² rows into a model batch.

    Args:
        processor: an `MF2Processor`; its tokenizer and caption lengths tokenise the captions, its image processor's
            `image_mean` / `image_std` normalise uint8 crops.
        with_captions: tokenise captions (pretraining; DFN text cells). Off for recognition-only fine-tuning and
            evaluation, which never read text.
        emotion_targets: keep emotion labels and emotion captions; otherwise labels become -1 and captions are dropped.
        au_targets: the same for AU labels and AU captions.
        max_au_captions: keep at most this many AU captions per image (drawn at random from those it has, with
            torch's global generator, so seeded runs and resumed runs draw the same); None keeps all 12 (the paper).
            AU-VL's ITM / ITG cost grows with the number of (image, AU caption) pairs, ~12x a plain image on CPU.

    Returns (from `__call__`): `pixel_values` `(B, 3, S, S)` float32, `au_boxes` `(B, A, k, 4)`, `au_labels` `(B, A)`,
    `emotion_labels` `(B,)`, `example_ids` `(B,)` when the rows have an `example_id`, and with captions
    `emotion_input_ids` / `emotion_attention_mask` `(B, L)` (when any row has an emotion caption) and `au_input_ids` /
    `au_attention_mask` `(B, A, L)` + `au_caption_mask` `(B, A)` (when any row has an AU caption).
    """

    processor: Any
    with_captions: bool = True
    emotion_targets: bool = True
    au_targets: bool = True
    max_au_captions: int | None = None

    def __post_init__(self):
        if self.max_au_captions is not None and self.max_au_captions < 1:
            raise ValueError(f"max_au_captions must be >= 1 or None, got {self.max_au_captions}.")
        image_processor = self.processor.image_processor
        self._normalize = bool(getattr(image_processor, "do_normalize", True))
        mean = np.broadcast_to(np.asarray(image_processor.image_mean, dtype=np.float32).reshape(-1), (3,))
        std = np.broadcast_to(np.asarray(image_processor.image_std, dtype=np.float32).reshape(-1), (3,))
        self._mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._std = torch.tensor(std).view(1, 3, 1, 1)

    def fingerprint(self) -> str:
        """What, besides the data, decides the batches (feature caches key on it). The tokenizer counts only where
        captions are tokenised, and by what it does, not where it lies: a resumed run may reach the same files by
        another path (another `$MF2_HOME`, a relative path) and must still find its caches."""
        key = (
            f"captions={self.with_captions},emotion={self.emotion_targets},au={self.au_targets},"
            f"max_au_captions={self.max_au_captions},"
            f"mean={self._mean.flatten().tolist()},std={self._std.flatten().tolist()}"
        )
        if not self.with_captions:
            return key
        return (
            f"{key},tokenizer={_tokenizer_fingerprint(getattr(self.processor, 'tokenizer', None))},"
            f"lengths={getattr(self.processor, 'emotion_caption_max_length', None)}/"
            f"{getattr(self.processor, 'au_caption_max_length', None)}"
        )

    def pixels(self, rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
        """Stacked crops: 8-bit crops are scaled to [0, 1] and normalised; float crops are taken as normalised.

        `datasets`' numpy format widens stored uint8 to int64, so any integer dtype counts as 8-bit pixels."""
        pixels = _stack(rows, "pixel_values")
        if np.issubdtype(pixels.dtype, np.integer):
            pixels = torch.from_numpy(pixels.astype(np.float32)).div_(255.0)
            if self._normalize:
                pixels = (pixels - self._mean) / self._std
            return pixels
        return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("MF2DataCollator got an empty batch.")
        batch: dict[str, torch.Tensor] = {
            "pixel_values": self.pixels(rows),
            "au_boxes": torch.from_numpy(_stack(rows, "au_boxes").astype(np.float32)),
        }
        au = torch.from_numpy(_stack(rows, "au").astype(np.int64))
        emotion = torch.tensor([int(row["emotion"]) for row in rows], dtype=torch.long)
        batch["au_labels"] = au if self.au_targets else torch.full_like(au, IGNORE)
        batch["emotion_labels"] = emotion if self.emotion_targets else torch.full_like(emotion, IGNORE)
        if ID_COLUMN in rows[0]:
            batch["example_ids"] = torch.tensor([int(row[ID_COLUMN]) for row in rows], dtype=torch.long)
        if self.with_captions:
            batch.update(self.captions(rows))
        return batch

    def captions(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Tokenised captions of the targets in use (see the class docstring)."""
        kwargs: dict[str, Any] = {}
        if self.emotion_targets and "emotion_caption" in rows[0]:
            captions = [str(row["emotion_caption"] or "") for row in rows]
            # A batch with no emotion caption at all has nothing to align; the model then skips Emo-VL's losses.
            if any(captions):
                kwargs["emotion_captions"] = captions
        if self.au_targets and "au_caption" in rows[0]:
            captions = [_strings(row["au_caption"]) for row in rows]
            if any(any(row) for row in captions):
                kwargs["au_captions"] = captions
        if not kwargs:
            return {}
        if self.max_au_captions is not None and "au_captions" in kwargs:
            kwargs["au_captions"] = [self._subsample(row) for row in kwargs["au_captions"]]
        encoded = self.processor(return_tensors="pt", **kwargs)
        return {key: value for key, value in encoded.items() if isinstance(value, torch.Tensor)}

    def _subsample(self, captions: list[str]) -> list[str]:
        present = [index for index, caption in enumerate(captions) if caption]
        if len(present) <= self.max_au_captions:
            return captions
        keep = {present[int(i)] for i in torch.randperm(len(present))[: self.max_au_captions]}
        return [caption if index in keep else "" for index, caption in enumerate(captions)]


__all__ = ["MF2DataCollator"]
