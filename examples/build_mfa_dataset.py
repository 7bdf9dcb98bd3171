"""Build an MFA-style dataset (images + AU / emotion labels + the three caption types) from your own labelled faces.

    python examples/build_mfa_dataset.py --labels my_faces/labels.csv --output my_mfa/
    python examples/build_mfa_dataset.py --demo my_demo/ --output my_mfa/    # a 4-image demo folder first

The label file (CSV or JSON lines) has a `file_name` column relative to its folder, an `emotion` column (a name such
as `happiness`, or a class index) and AU columns (`AU1`, `AU12`, ... with 1 active, 0 inactive, empty unknown); see
`mf2.data.load_image_folder` for every accepted form. The captions (per-AU, emotion, key-AU) are FACS template
sentences (`TemplateCaptioner`, offline, deterministic), or LLM-written with `--captioner llm` when an
OpenAI-compatible endpoint is configured (see `mf2 caption --help`). The result is `<output>/train.parquet`, ready for
`mf2 train --train_data mfa:<output>/train.parquet` or `mf2 finetune`.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from mf2.data import load_image_folder
from mf2.data.caption_dataset import caption_dataset
from mf2.data.captions import TemplateCaptioner

EXAMPLE_PHOTO = Path(__file__).resolve().parent / "images" / "astronaut.png"

# Demo labels, invented for the format's sake (the astronaut smiles: AU6 + AU12 with parted lips is plausible, but
# these are not FACS-coded annotations).
DEMO_ROWS = [
    ("smile.png", "happiness", {"AU6": 1, "AU12": 1, "AU25": 1, "AU4": 0, "AU15": 0}),
    ("smile_mirrored.png", "happiness", {"AU6": 1, "AU12": 1, "AU25": 1, "AU4": 0, "AU15": 0}),
    ("smile_dim.png", "happiness", {"AU6": 1, "AU12": 1, "AU4": 0}),
    ("smile_tilted.png", "happiness", {"AU12": 1, "AU15": 0}),
]


def make_demo_folder(folder: str | Path) -> Path:
    """Write 4 labelled variants of the example photo and their `labels.csv` into `folder`; returns the CSV path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.open(EXAMPLE_PHOTO).convert("RGB")
    variants = {
        "smile.png": photo,
        "smile_mirrored.png": ImageOps.mirror(photo),
        "smile_dim.png": ImageEnhance.Brightness(photo).enhance(0.7),
        "smile_tilted.png": photo.rotate(8, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)),
    }
    au_columns = sorted({name for _, _, aus in DEMO_ROWS for name in aus}, key=lambda name: int(name[2:]))
    labels = folder / "labels.csv"
    with labels.open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file_name", "emotion", *au_columns])
        for name, emotion, aus in DEMO_ROWS:
            variants[name].save(folder / name)
            writer.writerow([name, emotion, *[aus.get(column, "") for column in au_columns]])
    return labels


def build_mfa_dataset(labels: str | Path, output: str | Path, captioner=None):
    """Labelled folder → captioned MFA dataset saved as `<output>/train.parquet` (images embedded); returns it."""
    dataset = load_image_folder(labels)
    return caption_dataset(dataset, output, captioner or TemplateCaptioner(), progress=False)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description="Labelled face folder → MFA-style captioned dataset.")
    parser.add_argument("--labels", help="label file (CSV / JSON lines) beside or above the images")
    parser.add_argument("--demo", metavar="DIR", help="first write a 4-image demo folder here and use its labels")
    parser.add_argument("--output", required=True, help="output folder (train.parquet)")
    args = parser.parse_args(argv)
    if (args.labels is None) == (args.demo is None):
        parser.error("give --labels or --demo")
    labels = make_demo_folder(args.demo) if args.demo else Path(args.labels)
    dataset = build_mfa_dataset(labels, args.output)
    row = dataset[0]
    print(f"{len(dataset)} faces → {Path(args.output) / 'train.parquet'}")
    print("emotion caption:", row["emotion_caption"])
    print("key-AU caption: ", row["key_au_caption"])
    print("AU12 caption:   ", row["au_caption"][6])
    return dataset


if __name__ == "__main__":
    main()
