"""FER+ and CK+ Parquet files mapped onto the MFA schema (skipped when the research data are absent)."""

from collections import Counter

import pyarrow.parquet as pq

from mf2.configuration_mf2 import EMOTION_LABELS
from mf2.data.schema import MFA_FEATURES
from mf2.data.sources import load_ckplus, load_ferplus

OTHER = EMOTION_LABELS.index("other")


def test_ferplus(data_dir, tmp_path):
    path = data_dir / "ferplus" / "valid.parquet"
    dataset = load_ferplus(path, cache_dir=str(tmp_path))
    raw = pq.read_table(path, columns=["emotion", "file_name"]).to_pydict()
    assert dataset.features == MFA_FEATURES and len(dataset) == len(raw["emotion"])
    labels = dataset.remove_columns("image")
    expected = [OTHER if e == "contempt" else EMOTION_LABELS.index(e) for e in raw["emotion"]]
    assert labels["emotion"] == expected
    assert labels["group"] == [name.removesuffix(".png") for name in raw["file_name"]]
    assert all(au == [-1] * 12 for au in labels["au"]) and set(labels["frame"]) == {-1}
    assert set(labels["source"]) == {"ferplus"}
    assert dataset[0]["image"].size == (48, 48)
    unknown = load_ferplus(path, emotion_map={"contempt": None}, cache_dir=str(tmp_path)).remove_columns("image")
    assert Counter(unknown["emotion"])[-1] == Counter(raw["emotion"])["contempt"] > 0


def test_ckplus(data_dir, tmp_path):
    path = data_dir / "ckplus" / "dev.parquet"
    dataset = load_ckplus(path, cache_dir=str(tmp_path))
    raw = pq.read_table(path, columns=["emotion", "au", "subject"]).to_pydict()
    labels = dataset.remove_columns("image")
    assert dataset.features == MFA_FEATURES
    assert labels["au"] == raw["au"] and labels["group"] == raw["subject"]
    assert labels["emotion"] == [OTHER if e == "contempt" else EMOTION_LABELS.index(e) for e in raw["emotion"]]
    assert set(labels["frame"]) == {-1} and set(labels["source"]) == {"ckplus"}
    assert dataset[0]["image"].size == (128, 128)
