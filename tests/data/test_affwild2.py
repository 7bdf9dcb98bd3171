"""Aff-Wild2 → MFA on a synthetic tree in the official layout: filtering, class balance and the video split."""

from collections import Counter
from pathlib import Path

import pytest
from datasets import Image

from mf2.configuration_mf2 import EMOTION_LABELS
from mf2.data.affwild2 import build_affwild2_mfa, default_split_key, iter_affwild2_frames, read_expr_file
from mf2.data.balance import balance_classes
from mf2.data.group_split import split_by_group
from mf2.data.schema import MFA_FEATURES


@pytest.fixture(scope="module")
def mfa(affwild2_tree):
    return build_affwild2_mfa(affwild2_tree.root, validation_fraction=0.1, seed=0)


def test_reader_keeps_exactly_the_fully_labelled_frames_with_images(affwild2_tree):
    frames = list(iter_affwild2_frames(affwild2_tree.root))
    assert {(f.video, f.frame): (f.au, f.emotion) for f in frames} == affwild2_tree.valid
    assert all(f.image.endswith(f"{f.video}/{f.frame:05d}.jpg") for f in frames)


def test_every_kept_frame_has_both_labels(mfa, affwild2_tree):
    assert set(mfa) == {"train", "validation"}
    for split in mfa.values():
        assert split.features == MFA_FEATURES
        for row in split.cast_column("image", Image(decode=False)):
            assert row["source"] == "affwild2"
            video = Path(row["image"]["path"]).parent.name
            assert row["group"] == default_split_key(video)  # the split unit: a clip's two tracks together
            assert affwild2_tree.valid[(video, row["frame"])] == (tuple(row["au"]), row["emotion"])


def test_classes_are_balanced(mfa):
    counts = Counter(mfa["train"]["emotion"]) + Counter(mfa["validation"]["emotion"])
    assert set(counts) == set(range(len(EMOTION_LABELS)))
    assert max(counts.values()) - min(counts.values()) <= 1


def _videos(split) -> set[str]:
    return {Path(image["path"]).parent.name for image in split.cast_column("image", Image(decode=False))["image"]}


def test_split_is_by_video_and_near_the_target_fraction(mfa, affwild2_tree):
    train_videos, validation_videos = _videos(mfa["train"]), _videos(mfa["validation"])
    assert not train_videos & validation_videos
    # The two tracks of one clip stay on one side, and share a group, so a later split by group keeps them so.
    assert {"clip7_left", "clip7_right"} <= train_videos or {"clip7_left", "clip7_right"} <= validation_videos
    assert not set(mfa["train"]["group"]) & set(mfa["validation"]["group"])
    assert "clip7" in set(mfa["train"]["group"]) | set(mfa["validation"]["group"])
    units = {default_split_key(video) for video in train_videos | validation_videos}
    validation_units = {default_split_key(video) for video in validation_videos}
    assert len(validation_units) == round(0.1 * len(units))
    fraction = len(mfa["validation"]) / (len(mfa["train"]) + len(mfa["validation"]))
    assert abs(fraction - 0.1) < 0.03, fraction
    # Every class is on both sides (possible here: each video mixes four classes).
    assert set(mfa["validation"]["emotion"]) == set(mfa["train"]["emotion"]) == set(range(len(EMOTION_LABELS)))


def test_build_is_deterministic_and_per_class_caps(affwild2_tree, mfa):
    again = build_affwild2_mfa(affwild2_tree.root, validation_fraction=0.1, seed=0)
    for name in ("train", "validation"):
        assert again[name]["group"] == mfa[name]["group"] and again[name]["frame"] == mfa[name]["frame"]
    capped = build_affwild2_mfa(affwild2_tree.root, per_class=20, seed=1)
    counts = Counter(capped["train"]["emotion"]) + Counter(capped["validation"]["emotion"])
    assert set(counts.values()) == {20}


def test_balance_and_split_helpers():
    labels = [0] * 10 + [1] * 4 + [2] * 7 + [-1] * 3
    kept = balance_classes(labels, seed=3)
    assert Counter(labels[i] for i in kept) == {0: 4, 1: 4, 2: 4}
    assert kept == balance_classes(labels, seed=3)
    groups = [f"g{i // 5}" for i in range(100)]
    train, validation = split_by_group(groups, [i % 4 for i in range(100)], 0.2, seed=0)
    assert sorted(train + validation) == list(range(100))
    assert not {groups[i] for i in train} & {groups[i] for i in validation}
    assert len(validation) == 20


def test_expression_header_maps_names(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n4\n-1\n7\n")
    assert read_expr_file(path) == [4, -1, 7]


def test_a_cell_that_is_not_a_number_names_its_file_and_line(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n4\n4,\n")
    with pytest.raises(ValueError, match=r"v\.txt:3: '4,' is not a label value"):
        read_expr_file(path)


def test_missing_annotations_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="AU_Detection_Challenge"):
        build_affwild2_mfa(tmp_path)
