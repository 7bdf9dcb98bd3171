"""End-to-end faces per second of `pipeline("facial-state")`: detection, landmarks, alignment and the model.

The model is the shipped `mf2-base` (or `--model`), run by PyTorch and, with `--runtimes torch onnx`, by
onnxruntime on its float32 ONNX export (`mf2[onnx]`; exported into `$MF2_HOME/onnx/` on first use). Inputs are copies
of the 512x512 single-face example photo (`examples/images/astronaut.png`, public domain). For each runtime and
batch size it reports:

- end to end: `pipe(images, batch_size=b)` on a list (detection in worker threads overlaps the model);
- detection only: `MF2ImageProcessor` on the same images (dlib HOG + 68 landmarks + alignment);
- model only: forward passes on ready `pixel_values` / `au_boxes` batches;
- video: frames/s of `pipe.video(clip, batch_size=16)` on a 640x480 clip of the same photo moving as a head does
  (`tests/face_images.moving_face_frames`), decoding included, searching for the face every frame and every
  `DEFAULT_DETECT_EVERY` frames (tracking in between), and how far the tracked AU probabilities are from those of
  the search on every frame.

Runtimes: `torch`, `onnx` (onnxruntime, float32 graph) and `onnx-int8` (its int8 version, `quantize="int8"`).

Usage:
    python benchmarks/benchmark_pipeline.py                       # CPU, float32, batch 1 and 16
    python benchmarks/benchmark_pipeline.py --runtimes torch onnx onnx-int8   # the README's table
    python benchmarks/benchmark_pipeline.py --dtype bfloat16      # bfloat16 weights (AMX / AVX-512-BF16 CPUs)
    python benchmarks/benchmark_pipeline.py --no-settle           # dlib's landmarks not settled: what it costs
    python benchmarks/benchmark_pipeline.py --device cuda --batch-sizes 1 16 64
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mf2.face_tracking import DEFAULT_DETECT_EVERY
from mf2.integration.default_model import load_pipeline

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "images" / "astronaut.png"
RUNTIME_OPTIONS = {"torch": {}, "onnx": {"runtime": "onnx"}, "onnx-int8": {"runtime": "onnx", "quantize": "int8"}}


def timed(function, repeats: int = 1) -> float:
    """Best of `repeats` wall-clock runs (the machine may be shared; the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mf2-base", help="checkpoint folder (default: the shipped mf2-base)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--runtimes", nargs="+", choices=tuple(RUNTIME_OPTIONS), default=["torch"])
    parser.add_argument("--video-frames", type=int, default=150, help="frames of the 640x480 clip (0: no video)")
    parser.add_argument("--images", type=int, default=32, help="photos per measurement (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement, best kept (default 2)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, help="detection threads (default: the processor's)")
    parser.add_argument("--size", type=int, help="face crop side in px (default: the processor's, 224)")
    parser.add_argument(
        "--no-settle",
        action="store_true",
        help="dlib's landmarks of the detector's box, not settled (what settling costs)",
    )
    args = parser.parse_args()

    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    clip = write_clip(args.video_frames) if args.video_frames else None
    for runtime in args.runtimes:
        pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype, **RUNTIME_OPTIONS[runtime])
        measure(pipe, args, runtime)
        if clip is not None:
            measure_video(pipe, clip)


def write_clip(frames: int) -> Path:
    """The benchmark's 640x480 clip (25 fps) of the example photo moving about, in a temporary folder."""
    sys.path.insert(0, str(REPO / "tests"))
    from face_images import write_moving_face_video

    return write_moving_face_video(Path(tempfile.mkdtemp(prefix="mf2-benchmark-")) / "moving-face.mp4", frames)


def measure_video(pipe, clip: Path, batch_size: int = 16) -> None:
    """Frames/s of `pipe.video` on `clip`, searching every frame and tracking, and the tracked results' distance."""
    results, rates = {}, {}
    for detect_every in (1, DEFAULT_DETECT_EVERY):
        start = time.perf_counter()
        results[detect_every] = list(pipe.video(clip, batch_size=batch_size, detect_every=detect_every))
        rates[detect_every] = len(results[detect_every]) / (time.perf_counter() - start)
    difference = au_difference(results[1], results[DEFAULT_DETECT_EVERY])
    print(
        f"video 640x480, batch {batch_size}: {rates[1]:.2f} frames/s searching every frame, "
        f"{rates[DEFAULT_DETECT_EVERY]:.2f} searching every {DEFAULT_DETECT_EVERY} (tracking); tracked - searched AU "
        f"probabilities |d|: mean {difference.mean():.4f}, 95th percentile {np.quantile(difference, 0.95):.3f}, "
        f"99th {np.quantile(difference, 0.99):.3f}, max {difference.max():.3f}; from one frame to the next the "
        f"searched ones move by {au_steps(results[1]):.4f} on average"
    )


def au_matrix(results: list[dict]) -> np.ndarray:
    """`(frames, AUs)` probabilities of the first face of each frame (frames without a face are left out)."""
    return np.array([list(frame["faces"][0]["action_units"].values()) for frame in results if frame["faces"]])


def au_difference(searched: list[dict], tracked: list[dict]) -> np.ndarray:
    both = [(a, b) for a, b in zip(searched, tracked) if a["faces"] and b["faces"]]
    return np.abs(au_matrix([a for a, _ in both]) - au_matrix([b for _, b in both]))


def au_steps(results: list[dict]) -> float:
    return float(np.abs(np.diff(au_matrix(results), axis=0)).mean())


def measure(pipe, args: argparse.Namespace, runtime: str) -> None:
    """Print one table (end to end, detection, model) of `pipe` for every batch size."""
    if args.size:
        pipe.image_processor.size = args.size  # the ViT interpolates its position embeddings to the new grid
    if args.no_settle:
        pipe.image_processor.backend_kwargs = {**pipe.image_processor.backend_kwargs, "settle": False}
    device = pipe.device
    config = pipe.model.config
    size = pipe.image_processor.size
    photo = Image.open(PHOTO).convert("RGB")
    images = [photo.copy() for _ in range(args.images)]
    parameters = sum(p.numel() for p in pipe.model.parameters()) / 1e6
    settled = " (settled)" if getattr(pipe.image_processor.get_backend(), "settle", False) else ""
    print(
        f"runtime {runtime}; device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor()}), "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
        f"dtype {args.dtype}; load average {os.getloadavg()[0]:.1f} (other processes share these CPUs)"
    )
    print(
        f"model: {config.vision_config.model_type} hidden {config.vision_config.hidden_size} + Q-Formers "
        f"{config.qformer_config.num_hidden_layers} layers, {parameters:.1f} M parameters; crop {size} px; "
        f"landmarks: {pipe.image_processor.landmark_backend}{settled}; {args.images} x {photo.width}x{photo.height} "
        "photos"
    )

    features = pipe.image_processor(images[:1], return_tensors="pt")
    pipe(images[:2], batch_size=2)  # warm-up: detector models, kernels, caches
    print(f"{'batch':>5}  {'end-to-end faces/s':>18}  {'detection faces/s':>17}  {'model faces/s':>13}")
    for batch_size in args.batch_sizes:
        end_to_end = end_to_end_rate(pipe, images, batch_size, args.workers, args.repeats)
        detection = detection_rate(pipe.image_processor, images, batch_size, args.repeats)
        model_rate = model_only_rate(pipe, features, batch_size, max(1, args.images // batch_size), args.repeats)
        print(f"{batch_size:>5}  {end_to_end:>18.2f}  {detection:>17.2f}  {model_rate:>13.2f}")


def end_to_end_rate(pipe, images: list, batch_size: int, workers: int | None, repeats: int) -> float:
    """Faces per second of `pipe(images, batch_size=...)` (one face per image)."""
    options = {"num_workers": workers} if workers else {}
    return len(images) / timed(lambda: pipe(images, batch_size=batch_size, **options), repeats)


def detection_rate(image_processor, images: list, batch_size: int, repeats: int) -> float:
    """Faces per second of the image processor alone, called on `batch_size` images at a time."""

    def detect():
        for start in range(0, len(images), batch_size):
            image_processor(images[start : start + batch_size], return_tensors="pt")

    return len(images) / timed(detect, repeats)


def model_only_rate(pipe, features, batch_size: int, steps: int, repeats: int) -> float:
    """Faces per second of `steps` forward passes on ready batches of `batch_size` faces."""
    device, dtype = pipe.device, pipe.model.dtype
    pixel_values = features["pixel_values"].repeat(batch_size, 1, 1, 1).to(device, dtype)
    au_boxes = features["au_boxes"].repeat(batch_size, 1, 1, 1).to(device, dtype)

    network = pipe.onnx_model if pipe.onnx_model is not None else pipe.model  # the runtime the pipeline runs

    def forward():
        with torch.no_grad():
            for _ in range(steps):
                network(pixel_values=pixel_values, au_boxes=au_boxes)
        synchronize(device)

    forward()  # warm-up at this batch size
    return steps * batch_size / timed(forward, repeats)


if __name__ == "__main__":
    main()
