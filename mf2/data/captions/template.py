"""Deterministic, offline captions built from FACS descriptions and EMFACS prototypes (no model, no network)."""

from __future__ import annotations

from collections.abc import Sequence

from ...configuration_mf2 import AU_NAMES
from ...facs import ACTION_UNITS, EMOTION_APPEARANCE, EMOTION_PHRASES, emotion_name, explain, join_clauses
from ..schema import UNKNOWN, au_vector
from .base import CaptionRequest, Captions


def au_sentence(code: str, value: int) -> str:
    """Caption of one AU: `"AU12 (lip corner puller) is active: ..."`, `"... is absent: ..."`, or `""` if unknown."""
    unit = ACTION_UNITS[code]
    if value == 1:
        return f"{unit.label} is active: {unit.action}."
    if value == 0:
        return f"{unit.label} is absent: {unit.rest}."
    return ""


def au_captions(au: Sequence[int]) -> list[str]:
    """The 12 per-AU captions of an AU label vector, in `AU_NAMES` order."""
    return [au_sentence(code, value) for code, value in zip(AU_NAMES, au_vector(list(au)))]


def emotion_sentence(emotion: int | str, au: Sequence[int]) -> str:
    """Emotion caption: names the emotion, then the visible cues of the active AUs (or the emotion's usual look).

    Returns `""` when the emotion is unknown.
    """
    if emotion is None or emotion == UNKNOWN:
        return ""
    name = emotion_name(emotion)
    labels = au_vector(list(au))
    active = [ACTION_UNITS[code].action for code, value in zip(AU_NAMES, labels) if value == 1]
    opening = f"The person {EMOTION_PHRASES[name]}"
    if active:
        return f"{opening}: {join_clauses(active)}."
    if all(value == UNKNOWN for value in labels):
        # Nothing is known about this face's AUs, so describe the emotion's usual appearance instead.
        return f"{opening}; typically, {EMOTION_APPEARANCE[name]}."
    if name == "neutral":
        return f"{opening}: {EMOTION_APPEARANCE[name]}."
    return f"{opening}, although none of the coded facial movements is clearly visible."


class TemplateCaptioner:
    """Offline captioner: FACS sentences per AU, an emotion sentence, and the EMFACS key-AU explanation.

    The same labels always give the same captions, so it needs no cache; it is the default when no LLM endpoint
    is configured.

    Example:

    ```python
    >>> from mf2.data.captions import TemplateCaptioner
    >>> captions = TemplateCaptioner().caption([0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0], "happiness")
    >>> captions.au_caption[6]
    'AU12 (lip corner puller) is active: the lip corners are pulled up and back.'
    ```
    """

    needs_images = False

    def caption(self, au: Sequence[int], emotion: int | str | None) -> Captions:
        """Captions of one image from its 12 AU labels and its emotion (index, name, or -1/`None` if unknown)."""
        labels = au_vector(list(au))
        emotion = UNKNOWN if emotion is None else emotion
        known = any(value != UNKNOWN for value in labels)
        active = [code for code, value in zip(AU_NAMES, labels) if value == 1]
        unknown = [code for code, value in zip(AU_NAMES, labels) if value == UNKNOWN]
        return Captions(
            au_caption=au_captions(labels),
            emotion_caption=emotion_sentence(emotion, labels),
            key_au_caption=explain(emotion, active, unknown) if known else "",
        )

    def caption_batch(self, requests: Sequence[CaptionRequest], *, progress=None) -> list[Captions]:
        """Captions of many requests, in order (images are ignored)."""
        results = []
        for request in requests:
            results.append(self.caption(request.au, request.emotion))
            if progress is not None:
                progress.update(1)
        return results


__all__ = ["TemplateCaptioner", "au_captions", "au_sentence", "emotion_sentence"]
