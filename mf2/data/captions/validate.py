"""Checks that an LLM reply agrees with the ground truth before it may become a caption.

- AU reply: one `AU<n> (<name>): <text>` line per active AU, naming exactly the ground-truth active AUs.
- Emotion reply: names the ground-truth emotion, and no other in its first sentence.
- Key-AU reply: the same, and no AU outside the ground-truth active set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ...configuration_mf2 import AU_NAMES
from ...facs import ACTION_UNITS, emotion_name, find_au_codes, mentioned_emotions, names_emotion

# A line of the AU format, once markdown emphasis and list markers are stripped: "AU12 (lip corner puller): ...".
_AU_LINE = re.compile(r"^AU\s*0*(\d{1,2})\b\s*(?:\([^)]*\))?\s*[:\-\u2013\u2014]\s*(.+)$", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:[-\u2022]|\d+\s*[.)])\s*")
# The label "other" as the prompt asks for it ("falls into the 'other' category"), not the everyday word.
_OTHER_LABEL = re.compile(
    r"['\"\u2018\u201c]other['\"\u2019\u201d]|\bother\s+(?:category|class|label)\b|\blabell?ed\s+other\b", re.IGNORECASE
)
_FIRST_SENTENCE = re.compile(r"[^.!?]*(?:[.!?]|$)")


@dataclass
class Verdict:
    """Outcome of validating one reply: `ok`, a `reason` when rejected, and the parsed caption(s) when accepted."""

    ok: bool
    reason: str = ""
    text: str = ""
    au_texts: dict[str, str] = field(default_factory=dict)


def _clean_line(line: str) -> str:
    return _LIST_MARKER.sub("", re.sub(r"[*_`#]", "", line)).strip()


def validate_au_reply(reply: str, au: Sequence[int]) -> Verdict:
    """Parse the per-AU lines; accept only if they cover exactly the active AUs, once each, and nothing else."""
    active = [code for code, label in zip(AU_NAMES, au) if label == 1]
    extra = [code for code in find_au_codes(reply) if code not in active]
    if extra:
        return Verdict(False, f"mentions AUs that are not active: {', '.join(extra)}")
    texts: dict[str, str] = {}
    for line in reply.splitlines():
        match = _AU_LINE.match(_clean_line(line))
        if match is None:
            continue
        code, text = f"AU{int(match.group(1))}", match.group(2).strip()
        if code in texts:
            return Verdict(False, f"{code} has more than one line")
        if not text:
            return Verdict(False, f"{code} has an empty description")
        texts[code] = text
    missing = [code for code in active if code not in texts]
    if missing:
        return Verdict(False, f"no line for active AUs: {', '.join(missing)}")
    return Verdict(True, au_texts={code: f"{ACTION_UNITS[code].label}: {texts[code]}" for code in active})


def validate_emotion_reply(reply: str, emotion: int) -> Verdict:
    """Accept a non-empty reply that names the ground-truth emotion and, in its first sentence (where the judgement
    is), no other. "other" is an everyday word, so that label must be named as a label ("the 'other' category")."""
    text = reply.strip()
    name = emotion_name(emotion)
    if not text:
        return Verdict(False, "empty reply")
    named = _OTHER_LABEL.search(text) is not None if name == "other" else names_emotion(text, name)
    if not named:
        return Verdict(False, f"does not name the emotion {name!r}")
    first = _FIRST_SENTENCE.match(text).group(0)
    contradicting = [found for found in mentioned_emotions(first) if found not in (name, "other")]
    if contradicting:
        return Verdict(False, f"names {', '.join(contradicting)} beside {name!r}")
    return Verdict(True, text=text)


def validate_key_au_reply(reply: str, au: Sequence[int], emotion: int) -> Verdict:
    """Accept a reply that names the ground-truth emotion and only ground-truth active AUs."""
    verdict = validate_emotion_reply(reply, emotion)
    if not verdict.ok:
        return verdict
    active = {code for code, label in zip(AU_NAMES, au) if label == 1}
    extra = [code for code in find_au_codes(reply) if code not in active]
    if extra:
        return Verdict(False, f"names AUs that are not active: {', '.join(extra)}")
    return verdict


def validate_reply(caption_type: str, reply: str, au: Sequence[int], emotion: int) -> Verdict:
    """Dispatch to the validator of `caption_type` (`"au"`, `"emotion"` or `"key_au"`)."""
    if caption_type == "au":
        return validate_au_reply(reply, au)
    if caption_type == "emotion":
        return validate_emotion_reply(reply, emotion)
    if caption_type == "key_au":
        return validate_key_au_reply(reply, au, emotion)
    raise ValueError(f"Unknown caption type {caption_type!r}.")


__all__ = ["Verdict", "validate_au_reply", "validate_emotion_reply", "validate_key_au_reply", "validate_reply"]
