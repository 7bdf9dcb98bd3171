"""Benchmark `MF2ImageProcessor`: landmark accuracy on 300-W AFW and throughput on 512x512 photos.

Accuracy: every row of `300w/afw.parquet` (development data, research use only; never copied into the repository)
goes through the processor with `multiple_faces="all"`. AFW photos often hold several faces of which one is
annotated, so the detected face whose landmark box overlaps the annotation's most (IoU >= 0.3) is scored, and rows
with no such face count as "not found". The error is the mean point-to-point distance over the 68 points divided
by the outer-eye-corner distance (points 36 and 45) of the annotation (NME). 300-W coordinates are 1-based, so the
NME is reported both against the stored coordinates and against them shifted by -1 px.

Throughput: scikit-image's `astronaut` (512x512, public domain, one face) at batch 1 and batch 16.

Usage:
    python benchmarks/benchmark_processor.py [--backend dlib] [--data-dir ../shared/data] [--limit N]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mf2.landmark_backend import box_iou
from mf2.processing_mf2 import MF2ImageProcessor

REPO = Path(__file__).resolve().parents[1]


def data_dir(value: str | None) -> Path:
    return Path(value or os.environ.get("MF2_DATA_DIR") or REPO.parent / "shared" / "data")


def box_of(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def nme(pred: np.ndarray, truth: np.ndarray) -> float:
    ruler = np.linalg.norm(truth[36] - truth[45])
    return float(np.linalg.norm(pred - truth, axis=1).mean() / ruler)


def afw_accuracy(processor: MF2ImageProcessor, parquet: Path, limit: int | None) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(parquet, columns=["image", "landmarks", "file_name"])
    rows = table.to_pylist()[:limit] if limit else table.to_pylist()
    raw, shifted, ious, missed = [], [], [], []
    start = time.perf_counter()
    for row in rows:
        image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        truth = np.asarray(row["landmarks"], dtype=np.float64)
        features = processor(image, return_tensors="np", multiple_faces="all", no_face="skip")
        best, best_iou = None, 0.0
        for points in features["landmarks"]:
            overlap = box_iou(box_of(points.astype(np.float64)), box_of(truth))
            if overlap > best_iou:
                best, best_iou = points.astype(np.float64), overlap
        if best is None or best_iou < 0.3:
            missed.append(row["file_name"])
            continue
        ious.append(best_iou)
        raw.append(nme(best, truth))
        shifted.append(nme(best, truth - 1.0))
    elapsed = time.perf_counter() - start
    found = len(raw)
    print(f"AFW ({parquet}), back-end '{processor.landmark_backend}', {len(rows)} annotated faces, {elapsed:.1f} s")
    print(f"  faces found (matched by landmark-box IoU >= 0.3): {found} / {len(rows)}; not found: {len(missed)}")
    if found:
        raw_a, shifted_a = np.asarray(raw), np.asarray(shifted)
        print(
            f"  NME (outer-eye-corner), stored coordinates:       mean {raw_a.mean():.4f}  median {np.median(raw_a):.4f}"
        )
        print(
            f"  NME (outer-eye-corner), stored coordinates - 1 px: mean {shifted_a.mean():.4f}  "
            f"median {np.median(shifted_a):.4f}"
        )
        print(f"  faces with NME > 0.10 (shifted): {(shifted_a > 0.10).sum()}; mean matched IoU {np.mean(ious):.3f}")
    if missed:
        print(f"  not found: {', '.join(missed[:10])}{' ...' if len(missed) > 10 else ''}")


def throughput(processor: MF2ImageProcessor, repeats: int) -> None:
    from skimage import data

    photo = data.astronaut()  # 512 x 512 RGB, one face
    for batch in (1, 16):
        images = [photo] * batch
        processor(images)  # warm-up: loads models, starts worker threads
        calls = max(1, repeats // batch)
        start = time.perf_counter()
        for _ in range(calls):
            features = processor(images)
        elapsed = time.perf_counter() - start
        assert features["pixel_values"].shape[0] == batch
        print(
            f"  batch {batch:2d}: {calls * batch / elapsed:6.1f} images/s ({elapsed / (calls * batch) * 1000:.1f} ms "
            f"per image, {processor.num_workers or os.cpu_count()} worker thread(s) max, {os.cpu_count()} CPUs)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="dlib", help="landmark back-end (dlib, mediapipe, face_alignment)")
    parser.add_argument("--data-dir", default=None, help="folder holding 300w/afw.parquet (default ../shared/data)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N AFW rows")
    parser.add_argument("--repeats", type=int, default=64, help="images timed per batch size")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    torch.set_flush_denormal(True)

    processor = MF2ImageProcessor(landmark_backend=args.backend)
    if not args.skip_accuracy:
        parquet = data_dir(args.data_dir) / "300w" / "afw.parquet"
        if parquet.is_file():
            afw_accuracy(processor, parquet, args.limit)
        else:
            print(f"AFW accuracy skipped: {parquet} not found (set MF2_DATA_DIR or --data-dir).")
    if not args.skip_throughput:
        load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
        print(
            f"System load average (1, 5, 15 min) before timing: {load} on {os.cpu_count()} CPUs; other processes "
            f"competing for the cores lower the figures."
        )
        print(
            f"Throughput of MF2ImageProcessor(landmark_backend='{args.backend}') on 512x512 single-face photos "
            f"(skimage astronaut), size=224:"
        )
        throughput(processor, args.repeats)


if __name__ == "__main__":
    main()
