"""What every captioner takes and returns, so `caption_dataset` can drive any of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..schema import NUM_AUS, UNKNOWN, au_vector

CAPTION_TYPES: tuple[str, ...] = ("au", "emotion", "key_au")
"""The three MFA caption kinds: per-AU captions, the emotion caption and the key-AU caption."""


@dataclass(frozen=True)
class CaptionRequest:
    """The labels of one image (and its encoded bytes when the captioner looks at images).

    Args:
        au: 12 AU labels in `AU_NAMES` order, 0 / 1 / -1 (unknown).
        emotion: Emotion class index, -1 when unknown.
        image: The encoded image file (PNG, JPEG, ...). Only captioners with `needs_images` use it.
        id: Free-form identifier used in failure reports (e.g. `"train:17"`).
    """

    au: tuple[int, ...]
    emotion: int = UNKNOWN
    image: bytes | None = None
    id: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "au", tuple(au_vector(list(self.au))))
        object.__setattr__(self, "emotion", int(self.emotion))


@dataclass
class Captions:
    """The three MFA captions of one image, in the dataset's column layout."""

    au_caption: list[str] = field(default_factory=lambda: [""] * NUM_AUS)
    emotion_caption: str = ""
    key_au_caption: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "au_caption": list(self.au_caption),
            "emotion_caption": self.emotion_caption,
            "key_au_caption": self.key_au_caption,
        }


@runtime_checkable
class Captioner(Protocol):
    """Anything that turns labelled images into `Captions`.

    `needs_images` tells callers whether to read image bytes into `CaptionRequest.image`; `progress` is an optional
    tqdm bar the captioner advances by one per finished request.
    """

    needs_images: bool

    def caption_batch(self, requests: Sequence[CaptionRequest], *, progress=None) -> list[Captions]: ...


__all__ = ["CAPTION_TYPES", "CaptionRequest", "Captioner", "Captions"]
