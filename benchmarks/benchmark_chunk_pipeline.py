"""Why the facial-state pipeline streams with its own `FaceStream` and not with transformers' `ChunkPipeline`: the
same stages on `ChunkPipeline`, measured side by side.

`ChunkFacialState` below is the facial-state pipeline written the way transformers turns one input into many rows:
`preprocess` yields one chunk per face (a faceless input yields one placeholder chunk, because `ChunkPipeline` needs
every input to give a chunk marked `is_last`), the base class batches chunks across inputs with its `DataLoader` and
regroups them per input, and `postprocess` gets an input's faces together. It calls `FacialStatePipeline`'s own
`preprocess`, `_forward` and `postprocess`, so both pipelines compute the same faces. Printed:

1. images per second on the same photos: `FaceStream` (detection in threads ahead of the model, the pipeline's
   default) against `ChunkPipeline` with `num_workers=0` (detection and model in turn) and `num_workers=1` (one
   `DataLoader` process: `ChunkPipeline.get_iterator` lowers any larger value to 1);
2. whether their faces agree;
3. what a caller catches when an input has no face under `no_face="error"`: `FaceStream` raises `InputError`, with
   the input's position and the error's fields (`kind`, `detail`); `ChunkPipeline` runs `preprocess` without the
   input's position, and from a `DataLoader` process the error arrives as whatever torch rebuilds from its text.

Usage:
    python benchmarks/benchmark_chunk_pipeline.py                 # 48 photos, batch 16, CPU
    python benchmarks/benchmark_chunk_pipeline.py --images 96 --batch-size 32
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.pipelines.base import ChunkPipeline

from mf2.integration.default_model import load_pipeline

REPO = Path(__file__).resolve().parents[1]
PHOTOS = [REPO / "examples" / "images" / name for name in ("astronaut.png", "two_faces.png")]


class ChunkFacialState(ChunkPipeline):
    """The facial-state pipeline's stages on `ChunkPipeline` (see the module docstring)."""

    _load_processor = None
    _load_image_processor = None
    _load_feature_extractor = False
    _load_tokenizer = False

    def __init__(self, stages, **options):
        self.stages = stages
        super().__init__(model=stages.model, image_processor=stages.image_processor, **options)

    def _sanitize_parameters(self, **kwargs):
        return self.stages._sanitize_parameters(**kwargs)

    def preprocess(self, image: Any, **options):
        inputs = self.stages.preprocess(image, **options)
        count = len(inputs["pixel_values"])
        if count == 0:  # every input must give a chunk: a placeholder face, run through the model and dropped
            yield {"is_last": True, "is_face": torch.zeros(1, dtype=torch.bool), **_placeholder(self.stages)}
        for row in range(count):
            face = {key: value[row : row + 1] for key, value in inputs.items()}
            yield {"is_last": row == count - 1, "is_face": torch.ones(1, dtype=torch.bool), **face}

    def _forward(self, model_inputs: dict[str, Any]) -> dict[str, Any]:
        marks = {key: model_inputs.pop(key) for key in ("is_last", "is_face")}
        return {**self.stages._forward(model_inputs), **marks}

    def postprocess(self, chunks: list[dict[str, Any]], **params) -> list[dict[str, Any]]:
        faces = [chunk for chunk in chunks if bool(chunk["is_face"].reshape(-1)[0])]
        if not faces:
            return []
        merged = {}
        for key, value in faces[0].items():
            if isinstance(value, torch.Tensor):
                merged[key] = torch.cat(
                    [chunk[key].reshape(1, *chunk[key].shape[-value.ndim + 1 :]) for chunk in faces]
                )
            elif isinstance(value, list):
                merged[key] = [item for chunk in faces for item in chunk[key]]
        return self.stages.postprocess(merged, **params)


def _placeholder(stages) -> dict[str, Any]:
    size, aus = int(stages.image_processor.size), len(stages.model.config.au_names)
    return {
        "pixel_values": torch.zeros(1, 3, size, size),
        "au_boxes": torch.zeros(1, aus, 2, 4),
        "face_boxes": torch.zeros(1, 4),
        "landmarks": torch.zeros(1, 68, 2),
        "alignment": torch.zeros(1, 2, 3),
        "landmark_backend": ["none"],
        "detection_scale": torch.ones(1),
    }


def photos(count: int) -> list[Image.Image]:
    """`count` decoded photos: the two example photos in turn, and every eighth a grey image with no face."""
    images = [Image.open(path).convert("RGB") for path in PHOTOS]
    blank = Image.new("RGB", (512, 512), (128, 128, 128))
    return [blank if index % 8 == 7 else images[index % 2] for index in range(count)]


def _run(pipe, images, **options) -> list:
    return list(pipe(images, **options))


def timed(function) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def same_faces(a: list[list[dict]], b: list[list[dict]]) -> bool:
    """Same face count per image and AU probabilities within 1e-4."""
    if [len(faces) for faces in a] != [len(faces) for faces in b]:
        return False
    for faces_a, faces_b in zip(a, b):
        for face_a, face_b in zip(faces_a, faces_b):
            probs_a, probs_b = (np.array(list(face["action_units"].values())) for face in (face_a, face_b))
            if not np.allclose(probs_a, probs_b, atol=1e-4) or face_a["emotion"]["label"] != face_b["emotion"]["label"]:
                return False
    return True


def caught(function) -> str:
    try:
        function()
    except Exception as error:  # what a caller gets, whatever it is
        fields = {key: getattr(error, key) for key in ("index", "kind", "detail") if hasattr(error, key)}
        return f"{type(error).__name__} {fields}: {str(error).splitlines()[0][:110]}"
    return "no error"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    options = {"multiple_faces": "all", "no_face": "skip"}
    stages = load_pipeline("mf2-base", **options)
    chunked = ChunkFacialState(stages, **options)
    images = photos(args.images)
    stages(images[:4], batch_size=4)  # warm-up: the landmark model and the first forward pass
    chunked(images[:4], batch_size=4, num_workers=0)

    print(f"{args.images} photos (512 px, 1-2 faces, every eighth without a face), batch {args.batch_size}, CPU")
    runs = {}
    runs["FaceStream (the pipeline)"] = timed(lambda: stages(images, batch_size=args.batch_size))
    for workers in (0, 1):
        name = f"ChunkPipeline, num_workers={workers}"
        runs[name] = timed(partial(_run, chunked, images, batch_size=args.batch_size, num_workers=workers))
    reference = runs["FaceStream (the pipeline)"][1]
    for name, (seconds, faces) in runs.items():
        agree = "same faces" if same_faces(reference, faces) else "DIFFERENT faces"
        print(f"  {name:34s} {args.images / seconds:6.2f} images/s  ({agree})")

    faceless = [images[0], images[7], images[1]]  # input 1 has no face
    print("an input without a face under no_face='error' (input 1 of 3):")
    print(f"  FaceStream:                  {caught(lambda: stages(faceless, no_face='error', batch_size=2))}")
    for workers in (0, 1):
        run = partial(_run, chunked, faceless, no_face="error", batch_size=2, num_workers=workers)
        print(f"  ChunkPipeline, num_workers={workers}: {caught(run)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
