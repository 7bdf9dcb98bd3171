"""Template captions parse back to their labels: every AU x emotion combination of CK+ dev, and synthetic ones."""

import re
from collections import Counter

import numpy as np

from mf2.configuration_mf2 import AU_NAMES, EMOTION_LABELS
from mf2.data.captions.base import CaptionRequest
from mf2.data.captions.template import TemplateCaptioner
from mf2.facs import ACTION_UNITS, EMOTION_PROTOTYPES, key_aus

AU_SENTENCE = re.compile(r"^(AU\d+) \(([a-z ]+)\) is (active|absent): [^:]+\.$")
AU_CODE = re.compile(r"\bAU(\d+)\b")


def emotions_named(text: str) -> set[str]:
    return {name for name in EMOTION_LABELS if re.search(rf"\b{name}\b", text)}


def check(au: list[int], emotion: int, captions) -> None:
    """The captions of one image agree with its labels, read back with regular expressions only."""
    assert len(captions.au_caption) == len(AU_NAMES)
    for code, label, sentence in zip(AU_NAMES, au, captions.au_caption):
        if label == -1:
            assert sentence == ""
            continue
        match = AU_SENTENCE.match(sentence)
        assert match, sentence
        assert match.group(1) == code and match.group(2) == ACTION_UNITS[code].name
        assert match.group(3) == ("active" if label == 1 else "absent")
        assert AU_CODE.findall(sentence) == [code[2:]]
    active = [code for code, label in zip(AU_NAMES, au) if label == 1]
    if emotion == -1:
        assert captions.emotion_caption == "" and captions.key_au_caption == ""
        return
    name = EMOTION_LABELS[emotion]
    assert emotions_named(captions.emotion_caption) == {name}, captions.emotion_caption
    assert not AU_CODE.search(captions.emotion_caption)
    if all(label == -1 for label in au):
        assert captions.key_au_caption == ""
        return
    named = [f"AU{n}" for n in AU_CODE.findall(captions.key_au_caption)]
    assert set(named) <= set(active)
    assert named == key_aus(name, active)
    assert emotions_named(captions.key_au_caption) == {name}
    if not named:
        uncoded = set(EMOTION_PROTOTYPES[name]) & {code for code, label in zip(AU_NAMES, au) if label == -1}
        says = "none of the coded prototype aus is active" if uncoded else "no prototype au is active"
        assert says in captions.key_au_caption.lower()  # an uncoded AU is not said to be inactive


def test_every_ckplus_combination(data_dir, tmp_path):
    from mf2.data.sources import load_ckplus

    dataset = load_ckplus(data_dir / "ckplus" / "dev.parquet", cache_dir=str(tmp_path)).remove_columns("image")
    captioner = TemplateCaptioner()
    combinations = Counter()
    for row in dataset:
        check(row["au"], row["emotion"], captioner.caption(row["au"], row["emotion"]))
        combinations[(tuple(row["au"]), row["emotion"])] += 1
    assert len(dataset) == 648
    # Contempt rows become "other" under the default map.
    assert {EMOTION_LABELS[e] for _, e in combinations} == set(EMOTION_LABELS)
    print(f"CK+ dev: {len(dataset)} rows, {len(combinations)} distinct AU-emotion combinations")


def test_synthetic_combinations_including_unknowns():
    rng = np.random.default_rng(0)
    captioner = TemplateCaptioner()
    for emotion in range(-1, len(EMOTION_LABELS)):
        for trial in range(60):
            au = [int(v) for v in rng.choice([0, 1, -1], size=12, p=[0.5, 0.35, 0.15])]
            if trial == 0:
                au = [0] * 12
            elif trial == 1:
                au = [-1] * 12
            elif trial == 2:
                au = [1] * 12
            check(au, emotion, captioner.caption(au, emotion))


def test_batch_is_deterministic_and_advances_progress():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    requests = [CaptionRequest(au=(1,) * 12, emotion=4), CaptionRequest(au=(0,) * 12, emotion=0)]
    bar = Bar()
    first = TemplateCaptioner().caption_batch(requests, progress=bar)
    assert first == TemplateCaptioner().caption_batch(requests) and bar.n == 2
