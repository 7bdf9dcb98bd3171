"""FER+ and CK+ in the MFA schema, from the Parquet files of the project's development data.

Both readers take the Parquet file(s) themselves (see `shared/data/README.md` for their columns); nothing here
knows where the data lives. Images pass through as encoded bytes, never decoded.

- FER+: emotion only, so `au` is all -1 (unknown); `group` is the FER+ file name without extension (every image is
  its own group); `frame` is -1.
- CK+: 12 AUs and emotion; `group` is the subject, so a split by group never puts one person on both sides;
  `frame` is -1 (peak and onset frames are used as stills).

Both sources label contempt, which MFA lacks; `emotion_map` decides where it goes (by default "other").
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import PurePath

from datasets import Dataset, Image, load_dataset

from .schema import MFA_FEATURES, NUM_AUS, UNKNOWN, au_vector, empty_captions, map_emotion

DataFiles = str | os.PathLike | Sequence[str | os.PathLike]


def content_fingerprint(files: Sequence[str | os.PathLike]) -> str:
    """A hash of the files' bytes (and their order), not of their paths or modification times."""
    digest = hashlib.blake2b(digest_size=16)
    for file in files:
        digest.update(f"{os.path.getsize(file)}:".encode())
        with open(file, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def load_parquet(data_files: DataFiles, cache_dir: str | None = None) -> Dataset:
    """Parquet file(s) as one `Dataset` whose fingerprint depends only on the files' content.

    `load_dataset` fingerprints local files by path and modification time, so a copied, re-downloaded or touched file
    would give every cache keyed on the dataset (pre-processed Arrow files, vision tokens: hours of work in the recipe)
    a new key, and a resumed run would rebuild them all."""
    files = (
        [os.fspath(data_files)] if isinstance(data_files, (str, os.PathLike)) else [os.fspath(f) for f in data_files]
    )
    content = content_fingerprint(files)
    # `load_dataset` finds its Arrow copy by path and modification time: a file replaced with its time kept (`cp -p`,
    # `rsync -a`) would be read from the old copy under the new content's key. The content names the copy instead.
    raw = load_dataset("parquet", name=f"mf2-{content}", data_files=files, split="train", cache_dir=cache_dir)
    return raw.select_columns(raw.column_names, new_fingerprint=f"parquet-{content}")


def _load(data_files: DataFiles, cache_dir: str | None) -> Dataset:
    # Keep the PNG bytes as they are: decoding 25k images only to re-encode them would be wasted work.
    return load_parquet(data_files, cache_dir).cast_column("image", Image(decode=False))


def _convert(raw: Dataset, function, source: str) -> Dataset:
    def batch_fn(batch: dict[str, list]) -> dict[str, list]:
        rows = [function({name: batch[name][i] for name in batch}) for i in range(len(batch["image"]))]
        captions = empty_captions()
        return {
            "image": batch["image"],
            "au": [row[0] for row in rows],
            "emotion": [row[1] for row in rows],
            "au_caption": [list(captions["au_caption"]) for _ in rows],
            "emotion_caption": [""] * len(rows),
            "key_au_caption": [""] * len(rows),
            "group": [row[2] for row in rows],
            "frame": [-1] * len(rows),
            "source": [source] * len(rows),
        }

    return raw.map(batch_fn, batched=True, remove_columns=raw.column_names, features=MFA_FEATURES, desc=source)


def load_ferplus(
    data_files: DataFiles, *, emotion_map: Mapping[str, str | None] | None = None, cache_dir: str | None = None
) -> Dataset:
    """FER+ Parquet file(s) (`ferplus/train.parquet`, `ferplus/valid.parquet`) as an MFA dataset.

    Args:
        data_files: One Parquet path or a list of them.
        emotion_map: Extra source→MFA emotion names on top of `DEFAULT_EMOTION_MAP` (contempt → "other").
        cache_dir: `datasets` cache folder for the Arrow copies (defaults to the Hugging Face cache).
    """
    unknown_aus = [UNKNOWN] * NUM_AUS

    def convert(row: dict) -> tuple:
        group = PurePath(row["file_name"]).stem if row.get("file_name") else PurePath(row["image"]["path"]).stem
        return unknown_aus, map_emotion(row["emotion"], emotion_map), group

    return _convert(_load(data_files, cache_dir), convert, "ferplus")


def load_ckplus(
    data_files: DataFiles, *, emotion_map: Mapping[str, str | None] | None = None, cache_dir: str | None = None
) -> Dataset:
    """CK+ Parquet file(s) (`ckplus/dev.parquet`) as an MFA dataset.

    Args:
        data_files: One Parquet path or a list of them.
        emotion_map: Extra source→MFA emotion names on top of `DEFAULT_EMOTION_MAP` (contempt → "other").
        cache_dir: `datasets` cache folder for the Arrow copies (defaults to the Hugging Face cache).
    """

    def convert(row: dict) -> tuple:
        return au_vector(row["au"]), map_emotion(row["emotion"], emotion_map), row["subject"]

    return _convert(_load(data_files, cache_dir), convert, "ckplus")


__all__ = ["content_fingerprint", "load_ckplus", "load_ferplus", "load_parquet"]
