"""FACS knowledge the captioners need: what each of the 12 AUs looks like, and which AUs make up each emotion.

The AU descriptions follow the Facial Action Coding System (Ekman, Friesen & Hager, 2002); the emotion prototypes
follow EMFACS (Friesen & Ekman, 1983), restricted to the 12 AUs MF² recognises. The wording is this project's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .configuration_mf2 import AU_NAMES, EMOTION_LABELS


@dataclass(frozen=True)
class ActionUnit:
    """One FACS Action Unit: its code, FACS name, main muscle, and what is seen when it is active or absent."""

    code: str
    name: str
    muscle: str
    action: str
    rest: str

    @property
    def label(self) -> str:
        """Code and FACS name, e.g. `"AU12 (lip corner puller)"`."""
        return f"{self.code} ({self.name})"


ACTION_UNITS: dict[str, ActionUnit] = {
    unit.code: unit
    for unit in (
        ActionUnit(
            "AU1",
            "inner brow raiser",
            "frontalis, medial part",
            "the inner ends of the eyebrows are lifted, which can crease the middle of the forehead",
            "the inner ends of the eyebrows stay level",
        ),
        ActionUnit(
            "AU2",
            "outer brow raiser",
            "frontalis, lateral part",
            "the outer ends of the eyebrows are lifted, arching the brows",
            "the outer ends of the eyebrows stay at rest",
        ),
        ActionUnit(
            "AU4",
            "brow lowerer",
            "corrugator and depressor supercilii, procerus",
            "the eyebrows are pulled down and drawn together, with vertical lines between them",
            "the eyebrows are neither lowered nor drawn together",
        ),
        ActionUnit(
            "AU6",
            "cheek raiser",
            "orbicularis oculi, orbital part",
            "the cheeks are lifted, narrowing the eyes from below and creasing their outer corners",
            "the cheeks are not lifted",
        ),
        ActionUnit(
            "AU7",
            "lid tightener",
            "orbicularis oculi, palpebral part",
            "the eyelids are tightened, narrowing the eye opening",
            "the eyelids are not tightened",
        ),
        ActionUnit(
            "AU10",
            "upper lip raiser",
            "levator labii superioris",
            "the upper lip is drawn upwards, deepening the fold beside the nose",
            "the upper lip is not drawn upwards",
        ),
        ActionUnit(
            "AU12",
            "lip corner puller",
            "zygomaticus major",
            "the lip corners are pulled up and back",
            "the lip corners are not pulled up",
        ),
        ActionUnit(
            "AU15",
            "lip corner depressor",
            "depressor anguli oris",
            "the lip corners are pulled downwards",
            "the lip corners are not pulled down",
        ),
        ActionUnit(
            "AU23",
            "lip tightener",
            "orbicularis oris",
            "the lips are tightened and narrowed, their red parts looking thinner",
            "the lips are not tightened",
        ),
        ActionUnit(
            "AU24",
            "lip pressor",
            "orbicularis oris",
            "the lips are pressed firmly together",
            "the lips are not pressed together",
        ),
        ActionUnit(
            "AU25",
            "lips part",
            "depressor labii inferioris, relaxed mentalis",
            "the lips are parted",
            "the lips are not parted",
        ),
        ActionUnit(
            "AU26",
            "jaw drop",
            "relaxed masseter and temporalis",
            "the jaw is lowered, opening the mouth",
            "the jaw is not lowered",
        ),
    )
}
"""The 12 AUs of `AU_NAMES`, keyed by code."""

EMOTION_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "neutral": (),
    # EMFACS anger is AU4+5+7 with a lip action (10, 17, 22-25); AU5, AU17 and AU22 are outside the 12.
    "anger": ("AU4", "AU7", "AU23", "AU24"),
    # EMFACS disgust centres on AU9 (not among the 12) or AU10, often with AU15/AU16.
    "disgust": ("AU10", "AU15"),
    # EMFACS fear: AU1+2+4 with AU5, AU7, AU20 and an open mouth (25/26/27).
    "fear": ("AU1", "AU2", "AU4", "AU7", "AU25", "AU26"),
    "happiness": ("AU6", "AU12"),
    "sadness": ("AU1", "AU4", "AU15"),
    # EMFACS surprise is AU1+2+5B+26/27; the lips part whenever the jaw drops, and the MF² paper counts AU25 too.
    "surprise": ("AU1", "AU2", "AU25", "AU26"),
    # MFA's catch-all class has no prototype (FER+/CK+ contempt maps here by default).
    "other": (),
}
"""EMFACS prototype AUs of each MFA emotion, restricted to the 12 AUs of `AU_NAMES`."""

EMOTION_APPEARANCE: dict[str, str] = {
    "neutral": "the face is relaxed, without a clear muscle movement",
    "anger": "the brows are lowered and drawn in, the eyes are tense and the lips are pressed or tightened",
    "disgust": "the nose wrinkles and the upper lip is drawn upwards",
    "fear": "the brows are raised and drawn in, the eyes are tense and the mouth is stretched open",
    "happiness": "the cheeks lift and the lip corners are pulled up into a smile",
    "sadness": "the inner brows are raised and the lip corners are pulled down",
    "surprise": "the brows are raised high, the eyes are wide open and the jaw drops",
    "other": "the expression fits none of the seven basic categories",
}
"""How each emotion typically shows on a face, used when no AU label is known."""

EMOTION_PHRASES: dict[str, str] = {
    "neutral": "looks neutral",
    "anger": "shows anger",
    "disgust": "shows disgust",
    "fear": "shows fear",
    "happiness": "shows happiness",
    "sadness": "shows sadness",
    "surprise": "shows surprise",
    "other": "shows an expression labelled other",
}
"""Verb phrase naming each emotion, for sentences that start with "The person"."""

EMOTION_WORDS: dict[str, tuple[str, ...]] = {
    "neutral": ("neutral", "neutrality", "expressionless"),
    "anger": ("anger", "angry", "angrily", "rage", "furious"),
    "disgust": ("disgust", "disgusted", "disgusting", "revulsion"),
    "fear": ("fear", "fearful", "afraid", "scared", "frightened", "terrified"),
    "happiness": ("happiness", "happy", "happily", "joy", "joyful"),
    "sadness": ("sadness", "sad", "sadly", "sorrow", "sorrowful"),
    "surprise": ("surprise", "surprised", "astonished", "astonishment"),
    "other": ("other",),
}
"""Words that name each emotion in free text (whole-word, case-insensitive)."""

_EMOTION_PATTERNS = {
    emotion: re.compile(r"\b(?:" + "|".join(words) + r")\b", re.IGNORECASE) for emotion, words in EMOTION_WORDS.items()
}
# "AU12", "AU 12", "AU-12", "AU06", "action unit 12"; a trailing L/R side marker is allowed ("AU12L").
_AU_CODE = re.compile(r"\b(?:AU|action\s+units?)\s*[-#]?\s*0*(\d{1,2})(?:[LR])?\b", re.IGNORECASE)


def normalize_au(code: str) -> str:
    """Canonical AU code: `"au06"` / `"AU 6"` / `"6"` → `"AU6"`."""
    match = re.fullmatch(r"\s*(?:AU)?\s*0*(\d{1,2})\s*", str(code), re.IGNORECASE)
    if match is None:
        raise ValueError(f"Not an AU code: {code!r}")
    return f"AU{int(match.group(1))}"


def au_label(name: str) -> str:
    """An AU's code and FACS name for people to read, e.g. `"AU6 cheek raiser"` (the annotated images' panel and
    the `--plot` timelines); a name that is not one of the known AUs as it is."""
    try:
        unit = ACTION_UNITS.get(normalize_au(name))
    except ValueError:
        unit = None
    return f"{unit.code} {unit.name}" if unit is not None else str(name)


def find_au_codes(text: str) -> list[str]:
    """AU codes mentioned in `text`, canonical and in order of first mention (including AUs outside the 12)."""
    seen: dict[str, None] = {}
    for match in _AU_CODE.finditer(text):
        seen.setdefault(f"AU{int(match.group(1))}", None)
    return list(seen)


def emotion_name(emotion: str | int) -> str:
    """MFA emotion name of a class index or name."""
    if isinstance(emotion, int) and not isinstance(emotion, bool):
        if not 0 <= emotion < len(EMOTION_LABELS):
            raise ValueError(f"Emotion index {emotion} is outside 0..{len(EMOTION_LABELS) - 1}.")
        return EMOTION_LABELS[emotion]
    name = str(emotion).strip().lower()
    if name not in EMOTION_LABELS:
        raise ValueError(f"Emotion {emotion!r} is not one of {EMOTION_LABELS}.")
    return name


def names_emotion(text: str, emotion: str | int) -> bool:
    """Whether `text` names `emotion` (one of its `EMOTION_WORDS`, as a whole word)."""
    return _EMOTION_PATTERNS[emotion_name(emotion)].search(text) is not None


def mentioned_emotions(text: str) -> list[str]:
    """Every MFA emotion that `text` names, in `EMOTION_LABELS` order."""
    return [emotion for emotion in EMOTION_LABELS if _EMOTION_PATTERNS[emotion].search(text)]


def key_aus(emotion: str | int, active_aus: Iterable[str]) -> list[str]:
    """Active AUs that belong to the EMFACS prototype of `emotion`, in `AU_NAMES` order.

    These are the AUs that decide the emotion: e.g. `key_aus("happiness", ["AU6", "AU12", "AU25"])` is
    `["AU6", "AU12"]`. Neutral and other have no prototype, so they never have key AUs.
    """
    prototype = set(EMOTION_PROTOTYPES[emotion_name(emotion)])
    active = {normalize_au(code) for code in active_aus}
    return [code for code in AU_NAMES if code in prototype and code in active]


def join_words(items: list[str]) -> str:
    """`["a"]` → `"a"`, `["a", "b", "c"]` → `"a, b and c"`."""
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def join_clauses(clauses: list[str]) -> str:
    """Clauses that may contain commas, joined with semicolons: `"a; b; and c"`."""
    if len(clauses) <= 2:
        return " and ".join(clauses)
    return "; ".join(clauses[:-1]) + "; and " + clauses[-1]


def explain(emotion: str | int | None, active_aus: Iterable[str], unknown_aus: Iterable[str] = ()) -> str:
    """One deterministic paragraph naming the emotion and the active AUs that decide it (the key-AU caption).

    Returns `""` when the emotion is unknown (`None` or -1). When no prototype AU of the emotion is active, the
    sentence says so instead of naming an AU, and where some of them are `unknown_aus` (not coded in the labels) it
    says that none of the coded ones is, not that none is.
    """
    if emotion is None or emotion == -1:
        return ""
    name = emotion_name(emotion)
    keys = key_aus(name, active_aus)
    opening = f"The person {EMOTION_PHRASES[name]}."
    if keys:
        units = [ACTION_UNITS[code] for code in keys]
        verb = "is" if len(units) == 1 else "are"
        return (
            f"{opening} The action {'unit' if len(units) == 1 else 'units'} of its prototype that {verb} active and "
            f"decide{'s' if len(units) == 1 else ''} this judgement {verb} {join_words([u.label for u in units])}: "
            f"{join_clauses([u.action for u in units])}."
        )
    prototype = EMOTION_PROTOTYPES[name]
    if not prototype:
        return f"{opening} This class has no prototype action units, so no prototype AU is active."
    # Only active AUs may be named, so the prototype is described by its appearance, not by its codes.
    uncoded = set(prototype) & {normalize_au(code) for code in unknown_aus}
    none = "None of the coded prototype AUs" if uncoded else "No prototype AU"
    return f"{opening} {none} is active for this emotion; typically, {EMOTION_APPEARANCE[name]}."


def explanation(emotion: str, active_action_units: Sequence[str]) -> str:
    """The pipeline's `explanation`: the key-AU sentence of `emotion` given the active AUs ("" for an unknown label)."""
    try:
        return explain(emotion, active_action_units)
    except (KeyError, ValueError):  # a fine-tuned label set outside MF²'s eight emotions has no FACS prototype
        return ""


__all__ = [
    "ACTION_UNITS",
    "EMOTION_APPEARANCE",
    "EMOTION_PHRASES",
    "EMOTION_PROTOTYPES",
    "EMOTION_WORDS",
    "ActionUnit",
    "au_label",
    "emotion_name",
    "explain",
    "explanation",
    "find_au_codes",
    "join_clauses",
    "join_words",
    "key_aus",
    "mentioned_emotions",
    "names_emotion",
    "normalize_au",
]
