"""Synthetic inputs for the MFA data tests: random PNGs and a small Aff-Wild2 tree in the official layout."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mf2.configuration_mf2 import AU_NAMES, EMOTION_LABELS


def png_bytes(seed: int, size: int = 16) -> bytes:
    """A small random RGB PNG, different for every seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class SyntheticAffWild2:
    """What was written: for every (video, frame) with complete labels and an image, its AUs and emotion."""

    root: Path
    videos: list[str]
    valid: dict[tuple[str, int], tuple[tuple[int, ...], int]] = field(default_factory=dict)


def write_affwild2_tree(root: Path, num_videos: int = 20, seed: int = 0) -> SyntheticAffWild2:
    """Write annotations (under `Annotations/`) and 8x8 JPEG frames for `num_videos` videos.

    Each video has 30-80 frames drawn from four emotion classes (so every class spans many videos); some frames have
    an unannotated AU or expression or no image, which the builder must drop. Two videos form a `_left`/`_right`
    pair, and the videos are spread over the challenge's Train_Set and Validation_Set folders.
    """
    rng = np.random.default_rng(seed)
    names = [f"video{i}" for i in range(num_videos - 2)] + ["clip7_left", "clip7_right"]
    tree = SyntheticAffWild2(root, names)
    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 90, 60)).save(jpeg, format="JPEG")
    for number, video in enumerate(names):
        part = "Validation_Set" if number % 5 == 0 else "Train_Set"
        au_dir = root / "Annotations" / "AU_Detection_Challenge" / part
        expr_dir = root / "Annotations" / "EXPR_Classification_Challenge" / part
        images = root / "cropped_aligned" / video
        for folder in (au_dir, expr_dir, images):
            folder.mkdir(parents=True, exist_ok=True)
        classes = [(number + 2 * k) % len(EMOTION_LABELS) for k in range(4)]
        frames = int(rng.integers(30, 81))
        au_lines, expr_lines = [",".join(AU_NAMES)], [",".join(name.capitalize() for name in EMOTION_LABELS)]
        for frame in range(1, frames + 1):
            au = [int(v) for v in rng.integers(0, 2, len(AU_NAMES))]
            emotion = int(rng.choice(classes))
            if rng.random() < 0.08:
                au[int(rng.integers(len(AU_NAMES)))] = -1
            if rng.random() < 0.08:
                emotion = -1
            has_image = rng.random() > 0.05
            au_lines.append(",".join(map(str, au)))
            expr_lines.append(str(emotion))
            if has_image:
                (images / f"{frame:05d}.jpg").write_bytes(jpeg.getvalue())
            if has_image and emotion >= 0 and -1 not in au:
                tree.valid[(video, frame)] = (tuple(au), emotion)
        (au_dir / f"{video}.txt").write_text("\n".join(au_lines) + "\n")
        (expr_dir / f"{video}.txt").write_text("\n".join(expr_lines) + "\n")
    return tree
