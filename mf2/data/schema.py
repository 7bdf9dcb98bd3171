"""The MFA dataset schema shared by every builder, and the helpers that bring source labels into it.

Every MF² dataset, whatever its source, has exactly the columns of `MFA_FEATURES`:

- `image`: the face image (`datasets.Image()`).
- `au`: 12 AU labels in the order of `AU_NAMES`; 1 active, 0 absent, -1 unknown.
- `emotion`: class index into `EMOTION_LABELS`; -1 unknown.
- `au_caption`: one caption per AU, in AU order; a sentence for an active or absent AU, `""` for an unknown one.
- `emotion_caption`: `""` when the emotion is unknown.
- `key_au_caption`: `""` when it cannot be derived (unknown emotion or no known AU).
- `group`: the unit a split must not cut: the video id for Aff-Wild2, the subject for CK+, a per-image id otherwise.
- `frame`: frame number inside the video, -1 for still images.
- `source`: where the row comes from (`"affwild2"`, `"ferplus"`, `"ckplus"`, `"folder"`, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from datasets import ClassLabel, Features, Image, List, Value

from ..configuration_mf2 import AU_NAMES, EMOTION_LABELS

NUM_AUS = len(AU_NAMES)
UNKNOWN = -1
CAPTION_COLUMNS: tuple[str, ...] = ("au_caption", "emotion_caption", "key_au_caption")


class DataError(ValueError):
    """Data that cannot be read as given (a missing folder, a label file with a missing column or an unknown emotion):
    the message is one line that names the file, the row where there is one, and the fix. The training commands print
    it and exit with status 2."""


class MissingDataError(DataError, FileNotFoundError):
    """A `DataError` about something that does not exist: a dataset path, or images a label file lists."""


MFA_FEATURES = Features(
    {
        "image": Image(),
        "au": List(Value("int8"), length=NUM_AUS),
        "emotion": ClassLabel(names=list(EMOTION_LABELS)),
        "au_caption": List(Value("string"), length=NUM_AUS),
        "emotion_caption": Value("string"),
        "key_au_caption": Value("string"),
        "group": Value("string"),
        "frame": Value("int32"),
        "source": Value("string"),
    }
)
"""Features of every MFA-style dataset; see the module docstring for the meaning of each column."""

DEFAULT_EMOTION_MAP: dict[str, str | None] = {
    # FER+ and CK+ have contempt, which MFA's 8 classes do not; MFA's catch-all class is the closest.
    "contempt": "other",
    # Spellings used by other datasets and tools.
    "neutrality": "neutral",
    "angry": "anger",
    "disgusted": "disgust",
    "fearful": "fear",
    "afraid": "fear",
    "happy": "happiness",
    "joy": "happiness",
    "sad": "sadness",
    "surprised": "surprise",
}
"""Source emotion names that are not MFA names, and the MFA name each becomes (`None` = unknown)."""


def map_emotion(name: str | int | None, mapping: Mapping[str, str | None] | None = None) -> int:
    """Class index in `EMOTION_LABELS` of a source emotion label, or -1 for an unknown one.

    Args:
        name: An emotion name (any case), a class index, or `None` / `""` / -1 for unknown.
        mapping: Source name → MFA name (or `None` to mark the name unknown). It is applied on top of
            `DEFAULT_EMOTION_MAP`, so `{"contempt": None}` turns contempt into "unknown" and keeps the other aliases.

    Raises:
        ValueError: The name is neither an MFA emotion nor mapped to one, or the index is out of range.
    """
    if name is None:
        return UNKNOWN
    if isinstance(name, int) and not isinstance(name, bool):
        if name == UNKNOWN:
            return UNKNOWN
        if 0 <= name < len(EMOTION_LABELS):
            return name
        raise ValueError(f"Emotion index {name} is outside 0..{len(EMOTION_LABELS) - 1} (or -1 for unknown).")
    key = str(name).strip().lower()
    if key in ("", "-1", "unknown", "none", "nan"):
        return UNKNOWN
    table = {**DEFAULT_EMOTION_MAP, **{k.lower(): v for k, v in (mapping or {}).items()}}
    target = table[key] if key in table else key
    if target is None:
        return UNKNOWN
    if target not in EMOTION_LABELS:
        raise ValueError(
            f"Emotion {name!r} is not one of {EMOTION_LABELS}; pass a mapping such as {{{key!r}: 'other'}}."
        )
    return EMOTION_LABELS.index(target)


def au_vector(values: Sequence[int | float | str | None] | None) -> list[int]:
    """Normalise 12 AU labels to 0 / 1 / -1; `None` gives all unknown, and `None`/NaN/""/-1 entries mean unknown."""
    if values is None:
        return [UNKNOWN] * NUM_AUS
    if len(values) != NUM_AUS:
        raise ValueError(f"Expected {NUM_AUS} AU labels in the order {AU_NAMES}, got {len(values)}.")
    return [au_value(value) for value in values]


MAX_AU_INTENSITY = 5  # FACS intensities A-E as 1-5


def au_value(value: int | float | str | None) -> int:
    """One AU label as 0 / 1 / -1: `None`, NaN, `""` and negatives are unknown; any positive intensity (up to 5) is
    active. Raises `ValueError` above the intensity scale (a "not coded" 9 would otherwise count as active)."""
    if value is None:
        return UNKNOWN
    if isinstance(value, str):
        value = value.strip()
        if value.lower() in ("", "nan", "none", "-1"):
            return UNKNOWN
        value = float(value)
    if value != value:  # NaN
        return UNKNOWN
    if value < 0:
        return UNKNOWN
    if value > MAX_AU_INTENSITY:  # 9 is "not coded" in BP4D / DISFA files, 99 a slip: neither is "active"
        raise ValueError(
            f"AU label {value:g} is above the intensity scale (0-{MAX_AU_INTENSITY}); write -1 or leave it empty for "
            "an AU that is not coded"
        )
    # Intensity-coded sources (0-5) count any positive intensity as present.
    return 1 if value > 0 else 0


def active_aus(au: Sequence[int]) -> list[str]:
    """Names of the AUs labelled active (1), in `AU_NAMES` order."""
    return [name for name, value in zip(AU_NAMES, au) if value == 1]


def empty_captions() -> dict[str, object]:
    """Caption columns with nothing in them, for builders that leave captioning to `caption_dataset`."""
    return {"au_caption": [""] * NUM_AUS, "emotion_caption": "", "key_au_caption": ""}


def mfa_row(
    image: object,
    au: Sequence[int] | None,
    emotion: int,
    group: str,
    frame: int = -1,
    source: str = "",
) -> dict[str, object]:
    """One uncaptioned row in the MFA schema (`image` is anything `datasets.Image()` encodes: path, PIL, dict)."""
    return {
        "image": image,
        "au": au_vector(au),
        "emotion": int(emotion),
        **empty_captions(),
        "group": str(group),
        "frame": int(frame),
        "source": source,
    }


def rows_to_columns(rows: Iterable[Mapping[str, object]]) -> dict[str, list[object]]:
    """Column-wise dict of MFA rows, ready for `Dataset.from_dict(..., features=MFA_FEATURES)`."""
    columns: dict[str, list[object]] = {name: [] for name in MFA_FEATURES}
    for row in rows:
        for name in MFA_FEATURES:
            columns[name].append(row[name])
    return columns


__all__ = [
    "AU_NAMES",
    "CAPTION_COLUMNS",
    "DEFAULT_EMOTION_MAP",
    "DataError",
    "EMOTION_LABELS",
    "MFA_FEATURES",
    "MissingDataError",
    "NUM_AUS",
    "UNKNOWN",
    "active_aus",
    "au_value",
    "au_vector",
    "empty_captions",
    "map_emotion",
    "mfa_row",
    "rows_to_columns",
]
