"""How steady the model's answers are under changes a photo goes through before it reaches the model.

On CK+ development photos (`../shared/data/ckplus/dev.parquet` or `$MF2_DATA_DIR`; research data, never shipped),
through the default path (`pipeline("facial-state")`, `no_face="fallback"`), each photo is also given shifted by
2 px, scaled by 3%, saved as JPEG quality 75 and mirrored. For each change it prints the share of faces whose set of
active AUs stays the same, the share whose emotion stays the same, and the 95th percentile and maximum of
|Δ AU probability| over faces and AUs. Then the astronaut photo (`examples/images/astronaut.png`) moving 2 px a frame
over 30 frames: the range of each AU's probability over the frames.

Usage:
    python benchmarks/benchmark_stability.py                  # the shipped model, every CK+ dev photo
    python benchmarks/benchmark_stability.py --model DIR --limit 200
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mf2.integration.default_model import load_pipeline

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "images" / "astronaut.png"


def shifted(image: Image.Image, pixels: int = 2) -> Image.Image:
    """The photo moved right and down by `pixels`, its edge rows repeated into the gap."""
    array = np.asarray(image)
    padded = np.pad(array, ((pixels, 0), (pixels, 0), (0, 0)), mode="edge")
    return Image.fromarray(padded[: array.shape[0], : array.shape[1]])


def scaled(image: Image.Image, factor: float = 1.03) -> Image.Image:
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def mirrored(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


CHANGES = {"shift 2 px": shifted, "scale 3%": scaled, "JPEG q75": jpeg, "mirror": mirrored}


def ckplus_photos(data_dir: Path, limit: int | None) -> list[Image.Image]:
    import pyarrow.parquet as pq

    cells = pq.read_table(data_dir / "ckplus" / "dev.parquet", columns=["image"]).column("image").to_pylist()
    return [Image.open(io.BytesIO(cell["bytes"])).convert("RGB") for cell in cells[:limit]]


def analyse(pipe, images: list[Image.Image]) -> list[dict]:
    """The largest face of each image (the fallback face when none is found)."""
    results = pipe([np.asarray(image) for image in images], batch_size=16, no_face="fallback")
    return [faces[0] for faces in results]


def compare(before: list[dict], after: list[dict]) -> dict[str, float]:
    same_aus = np.mean([set(a["active_action_units"]) == set(b["active_action_units"]) for a, b in zip(before, after)])
    same_emotion = np.mean([a["emotion"]["label"] == b["emotion"]["label"] for a, b in zip(before, after)])
    deltas = np.array(
        [[abs(a["action_units"][k] - b["action_units"][k]) for k in a["action_units"]] for a, b in zip(before, after)]
    )
    return {
        "same active AUs": same_aus,
        "same emotion": same_emotion,
        "p95 |dAU|": float(np.percentile(deltas, 95)),
        "max |dAU|": float(deltas.max()),
    }


def moving_clip(pipe, frames: int = 30, step: int = 2) -> dict[str, tuple[float, float]]:
    """Each AU's (min, max) probability over the astronaut photo moved `step` px a frame on a larger canvas."""
    photo = Image.open(PHOTO).convert("RGB")
    canvas = []
    for frame in range(frames):
        background = Image.new("RGB", (photo.width + step * frames, photo.height), (128, 128, 128))
        background.paste(photo, (step * frame, 0))
        canvas.append(background)
    faces = analyse(pipe, canvas)
    return {
        name: (min(f["action_units"][name] for f in faces), max(f["action_units"][name] for f in faces))
        for name in faces[0]["action_units"]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mf2-base")
    parser.add_argument("--data", default=os.environ.get("MF2_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--limit", type=int, default=None, help="first N CK+ dev photos (default: all 648)")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    pipe = load_pipeline(args.model)
    images = ckplus_photos(Path(args.data), args.limit)
    print(f"model {args.model}; {len(images)} CK+ dev photos")
    reference = analyse(pipe, images)
    print("| change | same active AUs | same emotion | p95 abs dAU | max abs dAU |")
    print("|---|---|---|---|---|")
    for name, change in CHANGES.items():
        figures = compare(reference, analyse(pipe, [change(image) for image in images]))
        print(
            f"| {name} | {figures['same active AUs']:.1%} | {figures['same emotion']:.1%} | "
            f"{figures['p95 |dAU|']:.3f} | {figures['max |dAU|']:.3f} |"
        )
    ranges = moving_clip(pipe)
    print("astronaut moving 2 px a frame, 30 frames, AU probability range:")
    print(", ".join(f"{name} {low:.2f}-{high:.2f}" for name, (low, high) in ranges.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
