"""FACS facts, EMFACS key AUs and the free-text parsers the LLM validation relies on."""

from mf2.configuration_mf2 import AU_NAMES, EMOTION_LABELS
from mf2.facs import (
    ACTION_UNITS,
    EMOTION_PROTOTYPES,
    explain,
    find_au_codes,
    key_aus,
    mentioned_emotions,
    names_emotion,
)


def test_tables_cover_the_twelve_aus_and_eight_emotions():
    assert list(ACTION_UNITS) == list(AU_NAMES)
    assert set(EMOTION_PROTOTYPES) == set(EMOTION_LABELS)
    assert all(code in AU_NAMES for prototype in EMOTION_PROTOTYPES.values() for code in prototype)
    assert ACTION_UNITS["AU12"].name == "lip corner puller"


def test_key_aus_follow_the_paper_examples():
    # MF² Fig. 7: happiness with AU6, 7, 10, 12, 25 → AU6 and AU12; surprise with AU1, 2, 25, 26 → all four.
    assert key_aus("happiness", ["AU6", "AU7", "AU10", "AU12", "AU25"]) == ["AU6", "AU12"]
    assert key_aus(6, ["AU1", "AU2", "AU25", "AU26"]) == ["AU1", "AU2", "AU25", "AU26"]
    assert key_aus("neutral", ["AU25"]) == [] and key_aus("other", AU_NAMES) == []
    assert key_aus("sadness", ["AU06", "au15"]) == ["AU15"]


def test_explain_names_only_active_key_aus():
    text = explain("happiness", ["AU6", "AU7", "AU12", "AU25"])
    assert find_au_codes(text) == ["AU6", "AU12"] and names_emotion(text, "happiness")
    none = explain("anger", ["AU12", "AU25"])
    assert find_au_codes(none) == [] and "No prototype AU is active" in none and names_emotion(none, "anger")
    assert find_au_codes(explain("neutral", ["AU25"])) == []
    assert explain(-1, ["AU1"]) == "" and explain(None, []) == ""


def test_parsers():
    assert find_au_codes("**AU06 (Cheek Raiser)** with AU 12, action unit 25 and AU12 again; AU5, AUs") == [
        "AU6",
        "AU12",
        "AU25",
        "AU5",
    ]
    assert names_emotion("She looks happy.", "happiness") and not names_emotion("unhappy?", "happiness")
    assert mentioned_emotions("Fearful, even surprised, together") == ["fear", "surprise"]
