"""Aff-Wild2 → MFA: the paper's recipe (§II-A) on the official ABAW annotation layout.

Expected layout under `root` (the `Annotations/` level is optional):

```
[Annotations/]AU_Detection_Challenge/{Train_Set,Validation_Set}/<video>.txt
[Annotations/]EXPR_Classification_Challenge/{Train_Set,Validation_Set}/<video>.txt
cropped_aligned/<video>/<frame:05d>.jpg
```

An AU file starts with the header `AU1,AU2,...,AU26` and has one line per frame of 0/1 values (-1 = unannotated); an
EXPR file starts with `Neutral,Anger,...,Other` and has one class index per line (-1 = unannotated). Line i (1-based,
after the header) belongs to frame `cropped_aligned/<video>/<i:05d>.jpg`. The challenge's own train/validation
sets are pooled, as MFA re-splits them.

Recipe: keep frames that have all 12 AU labels, an expression label and an image; balance the 8 classes; split by
video so that validation holds about `validation_fraction` of the videos and of the images, each class on both sides.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, DatasetDict

from ..configuration_mf2 import AU_NAMES
from ..facs import normalize_au
from .balance import balance_classes
from .group_split import split_by_group
from .schema import MFA_FEATURES, UNKNOWN, map_emotion, mfa_row, rows_to_columns

logger = logging.getLogger(__name__)

AU_CHALLENGE = "AU_Detection_Challenge"
EXPR_CHALLENGE = "EXPR_Classification_Challenge"
CHALLENGE_SETS: tuple[str, ...] = ("Train_Set", "Validation_Set")
IMAGES_DIR = "cropped_aligned"
SOURCE = "affwild2"


@dataclass(frozen=True)
class AffWild2Frame:
    """One Aff-Wild2 frame with complete labels: video name, 1-based frame number, 12 AUs, emotion, image path."""

    video: str
    frame: int
    au: tuple[int, ...]
    emotion: int
    image: str


def default_split_key(video: str) -> str:
    """Split unit of a video: Aff-Wild2 names the two people of one clip `<clip>_left` / `<clip>_right`, and both
    go to the same side so the clip's scene does not leak across the split."""
    return re.sub(r"_(left|right)$", "", video)


def _annotation_root(root: Path) -> Path:
    for candidate in (root, root / "Annotations", root / "annotations"):
        if (candidate / AU_CHALLENGE).is_dir() and (candidate / EXPR_CHALLENGE).is_dir():
            return candidate
    raise FileNotFoundError(
        f"No {AU_CHALLENGE}/ and {EXPR_CHALLENGE}/ under {root} or {root / 'Annotations'}; "
        "pass the folder that holds the ABAW annotations."
    )


def _annotation_files(folder: Path) -> dict[str, Path]:
    """Video name → annotation file, pooled over the challenge's train and validation sets."""
    files: dict[str, Path] = {}
    for name in CHALLENGE_SETS:
        for path in sorted((folder / name).glob("*.txt")):
            files.setdefault(path.stem, path)
    return files


def _lines(path: Path) -> tuple[list[str], list[str]]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    if not lines:
        raise ValueError(f"{path} is empty; expected a header line.")
    return [cell.strip() for cell in lines[0].split(",")], lines[1:]


def _whole_number(cell: str, path, line: int) -> int:
    """A label cell as an int; a cell that is not a number names its file and line (releases have hundreds)."""
    try:
        return int(float(cell))
    except ValueError:
        raise ValueError(f"{path}:{line}: {cell.strip()!r} is not a label value (a number per cell).") from None


def read_au_file(path: str | os.PathLike) -> list[tuple[int, ...] | None]:
    """Per-frame AU labels in `AU_NAMES` order; `None` for a frame with any unannotated (-1) AU."""
    header, lines = _lines(Path(path))
    codes = [normalize_au(cell) for cell in header]
    missing = [code for code in AU_NAMES if code not in codes]
    if missing:
        raise ValueError(f"{path}: header lacks {missing}.")
    order = [codes.index(code) for code in AU_NAMES]
    frames: list[tuple[int, ...] | None] = []
    for number, line in enumerate(lines, start=2):
        values = [_whole_number(cell, path, number) for cell in line.split(",")] if line else []
        if len(values) != len(codes):
            frames.append(None)
            continue
        au = tuple(values[i] for i in order)
        frames.append(None if any(v not in (0, 1) for v in au) else au)
    return frames


def read_expr_file(path: str | os.PathLike) -> list[int]:
    """Per-frame MFA emotion index (-1 where unannotated), mapping the file's header names onto `EMOTION_LABELS`."""
    header, lines = _lines(Path(path))
    classes = [map_emotion(name) for name in header]
    frames: list[int] = []
    for number, line in enumerate(lines, start=2):
        value = _whole_number(line, path, number) if line else UNKNOWN
        frames.append(classes[value] if 0 <= value < len(classes) else UNKNOWN)
    return frames


def iter_affwild2_frames(
    root: str | os.PathLike,
    *,
    annotations_dir: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    image_suffix: str = ".jpg",
) -> Iterator[AffWild2Frame]:
    """Frames annotated for all 12 AUs and for expression whose cropped-aligned image exists, video by video."""
    root = Path(root)
    annotations = _annotation_root(Path(annotations_dir) if annotations_dir is not None else root)
    images = Path(images_dir) if images_dir is not None else root / IMAGES_DIR
    au_files = _annotation_files(annotations / AU_CHALLENGE)
    expr_files = _annotation_files(annotations / EXPR_CHALLENGE)
    for video in sorted(set(au_files) & set(expr_files)):
        folder = images / video
        if not folder.is_dir():
            logger.info("Aff-Wild2: no image folder for %s; skipped.", video)
            continue
        # One directory listing per video instead of one stat per frame.
        present = {entry.name for entry in os.scandir(folder)}
        aus, emotions = read_au_file(au_files[video]), read_expr_file(expr_files[video])
        for index, (au, emotion) in enumerate(zip(aus, emotions), start=1):
            name = f"{index:05d}{image_suffix}"
            if au is None or emotion == UNKNOWN or name not in present:
                continue
            yield AffWild2Frame(video, index, au, emotion, str(folder / name))


def build_affwild2_mfa(
    root: str | os.PathLike,
    *,
    per_class: int | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    split_key: Callable[[str], str] = default_split_key,
    annotations_dir: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
) -> DatasetDict:
    """Build the uncaptioned MFA dataset from an Aff-Wild2 release.

    Args:
        root: Folder with the annotations (optionally under `Annotations/`) and `cropped_aligned/`.
        per_class: Images kept per emotion; defaults to the size of the smallest class (all classes equal).
        validation_fraction: Target share of videos and of images in validation (the paper's split is ~10%).
        seed: Seed of the class sampling and of the split search.
        split_key: Maps a video name to its split unit; by default the `_left`/`_right` tracks of a clip stay
            together.
        annotations_dir, images_dir: Override the locations found under `root`.

    Returns:
        `DatasetDict` with `train` and `validation` in the `MFA_FEATURES` schema; images are referenced by path
        (`caption_dataset` or `save_to_disk` embeds them), `group` is the video's split unit (`split_key`: by default the clip, both tracks) and `frame` the frame
        number.
    """
    frames = list(iter_affwild2_frames(root, annotations_dir=annotations_dir, images_dir=images_dir))
    if not frames:
        raise ValueError(f"No Aff-Wild2 frame under {root} has both AU and expression labels and an image.")
    kept = [frames[i] for i in balance_classes([f.emotion for f in frames], per_class, seed=seed)]
    train, validation = split_by_group(
        [split_key(f.video) for f in kept], [f.emotion for f in kept], validation_fraction, seed=seed
    )
    logger.info(
        "Aff-Wild2 → MFA: %d labelled frames, %d after balancing, %d train / %d validation.",
        len(frames),
        len(kept),
        len(train),
        len(validation),
    )

    def to_dataset(indices: list[int]) -> Dataset:
        # `group` is the split unit (a clip's `_left`/`_right` tracks together), so a later split by group keeps
        # what this one kept apart; the video is still in the image path.
        rows = (
            mfa_row(f.image, f.au, f.emotion, split_key(f.video), f.frame, SOURCE) for f in (kept[i] for i in indices)
        )
        return Dataset.from_dict(rows_to_columns(rows), features=MFA_FEATURES)

    return DatasetDict({"train": to_dataset(train), "validation": to_dataset(validation)})


__all__ = [
    "AU_CHALLENGE",
    "EXPR_CHALLENGE",
    "AffWild2Frame",
    "build_affwild2_mfa",
    "default_split_key",
    "iter_affwild2_frames",
    "read_au_file",
    "read_expr_file",
]
