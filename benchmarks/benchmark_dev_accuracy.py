"""Emotion accuracy of the default path on FER+ validation, as a user would get it.

`pipeline("facial-state")` with no option but `no_face="fallback"` on the 48x48 FER+ validation crops
(`../shared/data/ferplus/valid.parquet` or `$MF2_DATA_DIR`; research data, never shipped): the processor looks for the
face on an upscaled copy and aligns it, or places a crop without one where a detector crop holds its face. Prints
accuracy, macro-F1, per-class accuracy, the share of faces found, and faces/s. `--template` reads the crops as
already aligned instead (`landmark_backend="template"`), for comparison with older figures.

Usage:
    python benchmarks/benchmark_dev_accuracy.py                   # the shipped model
    python benchmarks/benchmark_dev_accuracy.py --model DIR --limit 1000
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

from mf2.configuration_mf2 import EMOTION_LABELS
from mf2.data.schema import map_emotion
from mf2.integration.default_model import load_pipeline
from mf2.training.metrics import emotion_scores

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mf2-base")
    parser.add_argument("--data", default=os.environ.get("MF2_DATA_DIR", str(REPO.parent / "shared" / "data")))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--template", action="store_true", help="read the crops as already aligned")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    import pyarrow.parquet as pq

    table = pq.read_table(Path(args.data) / "ferplus" / "valid.parquet", columns=["image", "emotion"])
    cells, names = table.column("image").to_pylist(), table.column("emotion").to_pylist()
    if args.limit:
        cells, names = cells[: args.limit], names[: args.limit]
    images = [np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB")) for cell in cells]
    labels = np.array([map_emotion(name) for name in names])
    options = {"landmark_backend": "template"} if args.template else {"no_face": "fallback"}
    pipe = load_pipeline(args.model)
    start = time.perf_counter()
    results = pipe(images, batch_size=16, **options)
    seconds = time.perf_counter() - start
    faces = [faces[0] for faces in results]
    predicted = np.array([EMOTION_LABELS.index(face["emotion"]["label"]) for face in faces])
    scores = emotion_scores(predicted, labels, len(EMOTION_LABELS))
    is_found = np.array([face.get("landmark_backend") == "dlib" for face in faces])
    found = is_found.mean()
    print(f"model {args.model}; FER+ valid, {len(images)} faces, {'template' if args.template else 'default path'}")
    print(
        f"accuracy {scores['accuracy']:.4f}, macro-F1 {scores['macro_f1']:.4f}, "
        f"mean class accuracy {scores['mean_class_accuracy']:.4f}; faces found {found:.1%}; "
        f"{len(images) / seconds:.1f} faces/s"
    )
    print(
        "per class: "
        + ", ".join(f"{name} {value:.3f}" for name, value in zip(EMOTION_LABELS, scores["per_class_accuracy"]))
    )
    # Where the model is weak: the faces dlib found, against the crops placed without landmarks.
    for name, rows in (("found", is_found), ("placed without landmarks", ~is_found)):
        if rows.any():
            part = emotion_scores(predicted[rows], labels[rows], len(EMOTION_LABELS))
            print(f"{name}: {rows.sum()} faces, accuracy {part['accuracy']:.4f}, macro-F1 {part['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
