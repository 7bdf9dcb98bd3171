"""FER+ and CK+ Parquet files mapped onto the MFA schema (skipped when the research data are absent)."""

import os
import shutil
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
from mfa_fixtures import png_bytes

from mf2.configuration_mf2 import EMOTION_LABELS
from mf2.data.schema import MFA_FEATURES
from mf2.data.sources import content_fingerprint, load_ckplus, load_ferplus

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


def _write_ferplus_like(path, emotions):
    images = [{"bytes": png_bytes(seed), "path": None} for seed in range(len(emotions))]
    names = [f"fer{index:07d}.png" for index in range(len(emotions))]
    pq.write_table(pa.table({"image": images, "emotion": emotions, "file_name": names}), path)


def test_fingerprint_follows_content_not_file_time(tmp_path):
    """Caches keyed on the dataset survive a copied or touched file (a resumed recipe rebuilds nothing) and a changed
    file gets a new key."""
    first, copy = tmp_path / "a" / "train.parquet", tmp_path / "b" / "train.parquet"
    first.parent.mkdir(), copy.parent.mkdir()
    _write_ferplus_like(first, ["happiness", "neutral"])
    shutil.copy(first, copy)
    os.utime(copy, (1, 1))
    cache = str(tmp_path / "hf")
    fingerprint = load_ferplus(first, cache_dir=cache)._fingerprint
    assert load_ferplus(copy, cache_dir=cache)._fingerprint == fingerprint
    _write_ferplus_like(copy, ["happiness", "anger"])
    assert load_ferplus(copy, cache_dir=cache)._fingerprint != fingerprint
    assert content_fingerprint([first]) != content_fingerprint([copy])


def test_a_file_replaced_with_its_time_kept_is_read_anew(tmp_path):
    """`cp -p`, `rsync -a` and `tar x` keep a file's modification time: the rows read must be the new file's, as its
    key says, not those of `datasets`' copy of the old one."""
    path = tmp_path / "train.parquet"
    _write_ferplus_like(path, ["happiness", "neutral"])
    cache = str(tmp_path / "hf")
    before = os.stat(path)
    assert load_ferplus(path, cache_dir=cache)["emotion"] == [EMOTION_LABELS.index(e) for e in ("happiness", "neutral")]
    _write_ferplus_like(path, ["anger", "sadness"])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert load_ferplus(path, cache_dir=cache)["emotion"] == [EMOTION_LABELS.index(e) for e in ("anger", "sadness")]
