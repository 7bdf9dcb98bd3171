"""Where the face sits in FER+'s crops, and where it sits once the image processor has aligned them.

dlib's 68 landmarks on FER+ train crops upscaled to 192 px (research data, `../shared/data` or `$MF2_DATA_DIR`):
their median layout (eye height, eye distance, mouth height, chin) against `mf2.au_regions.canonical_landmarks()`,
and the median similarity that carries the canonical face into the crop (what `DETECTOR_CROP_SCALE` /
`DETECTOR_CROP_CENTER` hold). Then the same crops through `MF2ImageProcessor` (`no_face="fallback"`, what training
and inference both use): the layout of the aligned landmarks, which should be the canonical one.

Usage:
    python benchmarks/benchmark_crop_layout.py --rows 600
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from mf2.alignment import ALIGNMENT_POINTS, apply_affine, similarity_transform
from mf2.au_regions import canonical_landmarks
from mf2.image_processing_mf2 import MF2ImageProcessor

REPO = Path(__file__).resolve().parents[1]


def layout(points: np.ndarray) -> str:
    """Eye-centre height, eye distance, mouth-centre height and chin height of `(68, 2)` unit-crop landmarks."""
    left, right = points[36:42].mean(0), points[42:48].mean(0)
    return (
        f"eyes y {(left[1] + right[1]) / 2:.3f}, eye distance {np.linalg.norm(right - left):.3f}, "
        f"mouth y {points[48:68, 1].mean():.3f}, chin y {points[8, 1]:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MF2_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--split", default="train", choices=("train", "valid"))
    parser.add_argument("--rows", type=int, default=600)
    args = parser.parse_args(argv)
    import pyarrow.parquet as pq

    table = pq.read_table(Path(args.data) / "ferplus" / f"{args.split}.parquet", columns=["image"])
    images = [Image.open(io.BytesIO(c["bytes"])).convert("RGB") for c in table.column("image").to_pylist()[: args.rows]]
    processor = MF2ImageProcessor(size=112, no_face="fallback")
    features = processor(images, return_tensors="np")
    found = [i for i, label in enumerate(features["landmark_backend"]) if label == "dlib"]
    side = images[0].width
    raw = np.stack([(features["landmarks"][i] + 0.5) / side for i in found])
    canonical = canonical_landmarks()
    print(
        f"FER+ {args.split}: dlib found {len(found)} of {len(images)} faces (upscaled to "
        f"{processor.min_detection_size} px for detection)"
    )
    print(f"  canonical layout:        {layout(canonical)}")
    print(f"  FER+ crops, median:      {layout(np.median(raw, axis=0))}")
    fits = []
    for points in raw:
        matrix = similarity_transform(canonical[list(ALIGNMENT_POINTS)], points[list(ALIGNMENT_POINTS)])
        centre = matrix @ np.array([0.5, 0.5, 1.0])
        fits.append((np.sqrt(abs(np.linalg.det(matrix[:, :2]))), *centre))
    fits = np.array(fits)
    print(
        "  canonical -> crop similarity, median (quartiles): scale {:.3f} ({:.3f}-{:.3f}), centre x {:.3f} "
        "({:.3f}-{:.3f}), y {:.3f} ({:.3f}-{:.3f})".format(
            *np.array([np.median(fits, 0), *np.percentile(fits, [25, 75], 0)]).T.ravel()
        )
    )
    aligned = np.stack([(apply_affine(features["alignment"][i], features["landmarks"][i]) + 0.5) / 112 for i in found])
    print(f"  aligned crops, median:   {layout(np.median(aligned, axis=0))}")
    print(f"  mean |aligned median - canonical|: {np.abs(np.median(aligned, 0) - canonical).mean():.4f} crop widths")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
