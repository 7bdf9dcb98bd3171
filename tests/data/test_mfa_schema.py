"""The MFA schema and the label helpers every builder uses."""

import pytest
from datasets import ClassLabel, Dataset, Image, List, Value

from mf2.configuration_mf2 import AU_NAMES, EMOTION_LABELS
from mf2.data.schema import MFA_FEATURES, active_aus, au_vector, map_emotion, mfa_row, rows_to_columns


def test_columns_and_types_follow_the_contract():
    assert list(MFA_FEATURES) == [
        "image",
        "au",
        "emotion",
        "au_caption",
        "emotion_caption",
        "key_au_caption",
        "group",
        "frame",
        "source",
    ]
    assert MFA_FEATURES["image"] == Image()
    assert MFA_FEATURES["au"] == List(Value("int8"), length=12)
    assert MFA_FEATURES["emotion"] == ClassLabel(names=list(EMOTION_LABELS))
    assert MFA_FEATURES["au_caption"] == List(Value("string"), length=12)
    assert MFA_FEATURES["frame"] == Value("int32")


def test_rows_round_trip_through_a_dataset():
    rows = [mfa_row(None, [1, 0, -1] + [0] * 9, 4, "S010"), mfa_row(None, None, -1, "fer1", source="ferplus")]
    dataset = Dataset.from_dict(rows_to_columns(rows), features=MFA_FEATURES)
    assert dataset[0]["au"] == [1, 0, -1] + [0] * 9 and dataset[0]["emotion"] == 4
    assert dataset[1]["au"] == [-1] * 12 and dataset[1]["emotion"] == -1 and dataset[1]["frame"] == -1
    assert dataset[1]["au_caption"] == [""] * 12


def test_map_emotion_defaults_and_overrides():
    assert map_emotion("contempt") == EMOTION_LABELS.index("other")
    assert map_emotion("Happy") == EMOTION_LABELS.index("happiness")
    assert map_emotion("surprise") == 6 and map_emotion(3) == 3
    for unknown in (None, "", -1, "unknown"):
        assert map_emotion(unknown) == -1
    assert map_emotion("contempt", {"contempt": None}) == -1
    assert map_emotion("contempt", {"contempt": "disgust"}) == EMOTION_LABELS.index("disgust")
    with pytest.raises(ValueError, match="mapping"):
        map_emotion("boredom")
    with pytest.raises(ValueError):
        map_emotion(8)


def test_au_helpers():
    assert (
        au_vector(["1", "0", "", None, float("nan"), 3.0, -1, "2", 0, 0, 0, 0])
        == [1, 0, -1, -1, -1, 1, -1, 1] + [0] * 4
    )
    with pytest.raises(ValueError):
        au_vector([0] * 11)
    assert au_vector([5] + [0] * 11)[0] == 1  # the top of the intensity scale (E)
    for not_coded in (9, "9", 99.0):  # BP4D / DISFA's "not coded", or a slip: not an active AU
        with pytest.raises(ValueError, match="above the intensity scale"):
            au_vector([not_coded] + [0] * 11)
    assert active_aus([1] + [0] * 10 + [1]) == [AU_NAMES[0], AU_NAMES[-1]]
