"""`mf2 analyze`: faces in images, folders and videos → Action Units and emotions as JSON lines or CSV.

```bash
mf2 analyze examples/images --output results.jsonl --annotate annotated/
mf2 analyze clip.mp4 --video-fps 5 --output clip.csv
mf2 analyze photos/ --model path/or/hub-id --batch-size 16 --device cuda --explain
```

One record per face (an image without a face gives one record with `"face": null`, an unreadable file one with
`"error"`, and the run goes on). `--annotate DIR` writes a PNG per image (per sampled frame for videos) with the face
box, landmarks and AU boxes (drawn by `MF2ImageProcessor.visualize`) and a panel with the emotion and one probability
bar per AU.

Without `--model`, the command builds MF² from the offline encoders (DINOv2-small + MiniLM-initialised Q-Formers,
`mf2 encoders`), caches it in `$MF2_HOME/models/untrained-offline` and says loudly that its AU and emotion heads are
untrained: every record then carries `"model_trained": false`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .pipeline_mf2 import InputError
from .video import VIDEO_EXTENSIONS, is_video, video_info

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
UNTRAINED_MARKER = "mf2_untrained.json"
"""File in a model folder that marks its AU and emotion heads as untrained (`"model_trained": false` in results)."""
UNTRAINED_MODEL_NAME = "untrained-offline"
DEFAULT_BATCH_SIZE = 16
DEFAULT_CROP_SIZE = 224

UNTRAINED_WARNING = (
    "WARNING: no --model given, so this run uses MF² built from the offline pretrained encoders (DINOv2-small vision "
    "encoder, MiniLM-initialised Q-Formers) whose AU and emotion heads are UNTRAINED: faces, landmarks and AU regions "
    'are real, but the probabilities are not predictions. Records say "model_trained": false. Pass --model with a '
    "trained MF² checkpoint for real results."
)


# --------------------------------------------------------------------------------------------------- the model


def models_dir() -> Path:
    """`$MF2_HOME/models` (default `~/.cache/mf2/models`)."""
    return Path(os.environ.get("MF2_HOME", Path.home() / ".cache" / "mf2")) / "models"


def untrained_model_dir() -> Path:
    return models_dir() / UNTRAINED_MODEL_NAME


def is_untrained(model: str | os.PathLike) -> bool:
    """Whether `model` is a local folder marked as untrained (see `build_untrained_model`)."""
    return (Path(model) / UNTRAINED_MARKER).is_file()


def build_untrained_model(target: str | os.PathLike | None = None, crop_size: int = DEFAULT_CROP_SIZE) -> Path:
    """Build MF² from the offline encoders with untrained heads, save it with its processor, mark it untrained.

    The folder is written under a temporary name and moved into place at the end, so an interrupted build is never
    mistaken for a finished one. Returns the folder (`$MF2_HOME/models/untrained-offline` by default).
    """
    from transformers import AutoTokenizer

    from .encoders import fetch_encoders
    from .modeling_mf2 import MF2ForFacialStateRecognition
    from .processing_mf2 import MF2Processor

    target = Path(target) if target is not None else untrained_model_dir()
    vision, text = fetch_encoders()
    model = MF2ForFacialStateRecognition.from_encoders(str(vision), str(text))
    # DINOv2's config says 518 px (its pre-training size); faces are analysed at `crop_size` with interpolated
    # position embeddings, which is ~5x cheaper and what the benchmarks measure.
    processor = MF2Processor.from_config(model.config, AutoTokenizer.from_pretrained(str(text)), size=crop_size)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        marker = {
            "model_trained": False,
            "why": "AU and emotion heads are randomly initialised; built by `mf2 analyze` from the offline encoders.",
            "vision_encoder": vision.name,
            "text_encoder": text.name,
        }
        (staging / UNTRAINED_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_pipeline(model: str | os.PathLike, device: str | None = None, dtype: str | None = None,
                  trust_remote_code: bool = False, **options):  # fmt: skip
    """`pipeline("facial-state", model=model, ...)` (importing `mf2` registered the task)."""
    import torch
    from transformers import pipeline

    kwargs: dict[str, Any] = {"device": device} if device else {}
    if dtype and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    return pipeline("facial-state", model=str(model), trust_remote_code=trust_remote_code, **kwargs, **options)


# --------------------------------------------------------------------------------------------------- inputs


def expand_paths(paths: list[str], recursive: bool = True) -> list[Path]:
    """Files to analyse, in a stable order: files as given; folders' images and videos, sorted.

    Raises:
        ValueError: a path does not exist, or a folder holds no image or video.
    """
    known = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in known)
            if not found:
                raise ValueError(f"Folder '{path}' holds no image or video ({', '.join(sorted(known))}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"No such file or folder: '{path}'.")
    return files


def _images(paths: list[Path], skipped: list[tuple[Path, str]]) -> Iterator[tuple[Path, Image.Image]]:
    """Read each image here, so an unreadable file becomes an error record rather than stopping the run."""
    from .processing_mf2 import load_image

    for path in paths:
        try:
            yield path, load_image(str(path))
        except ValueError as error:
            skipped.append((path, str(error)))


# --------------------------------------------------------------------------------------------------- records


def face_records(faces: list[dict], source: dict[str, Any], common: dict[str, Any]) -> list[dict[str, Any]]:
    """One JSON record per face (`face` numbers them within the image or frame); one `"face": null` record if none."""
    if not faces:
        return [{**source, "face": None, **common}]
    records = []
    for number, face in enumerate(faces):
        record = {**source, "face": number}
        record.update({key: value for key, value in face.items() if key not in ("features", "image_index")})
        record.update(common)
        records.append(record)
    return records


class RecordWriter:
    """Writes records as JSON lines, or as CSV rows with a fixed column set (one column per AU and per emotion)."""

    def __init__(self, stream: TextIO, fmt: str, au_names: list[str], emotion_labels: list[str]):
        self.stream, self.fmt = stream, fmt
        self.au_names, self.emotion_labels = au_names, emotion_labels
        self._csv = None

    def columns(self) -> list[str]:
        return [
            "path", "frame", "time", "face", "error", "x1", "y1", "x2", "y2", "emotion", "emotion_score",
            *[f"emotion_{label}" for label in self.emotion_labels], *self.au_names, "active_action_units",
            "landmark_backend", "explanation", "model", "model_trained",
        ]  # fmt: skip

    def write(self, record: dict[str, Any]) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(_rounded(record), ensure_ascii=False) + "\n")
            return
        if self._csv is None:
            self._csv = csv.DictWriter(self.stream, fieldnames=self.columns(), extrasaction="ignore")
            self._csv.writeheader()
        row = {key: record.get(key) for key in ("path", "frame", "time", "face", "error", "landmark_backend",
                                                "explanation", "model", "model_trained")}  # fmt: skip
        if record.get("box"):
            row.update(zip(("x1", "y1", "x2", "y2"), (round(v, 2) for v in record["box"])))
        if record.get("emotion"):
            row["emotion"], row["emotion_score"] = record["emotion"]["label"], round(record["emotion"]["score"], 6)
            for item in record.get("emotions", []):
                row[f"emotion_{item['label']}"] = round(item["score"], 6)
        for name, probability in (record.get("action_units") or {}).items():
            row[name] = round(probability, 6)
        if "active_action_units" in record:
            row["active_action_units"] = ";".join(record["active_action_units"])
        self._csv.writerow(row)


def _rounded(value: Any, digits: int = 6) -> Any:
    """Floats rounded for readable JSON (probabilities to 1e-6, pixel coordinates to 1e-2 is plenty)."""
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _rounded(item, 2 if key in ("box", "landmarks") else digits) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item, digits) for item in value]
    return value


# --------------------------------------------------------------------------------------------------- drawing


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def annotate(
    image: Image.Image, faces: list[dict], image_processor, thresholds: np.ndarray | None = None
) -> Image.Image:
    """The image with each face's box, landmarks and AU boxes (`image_processor.visualize`), its number and emotion
    under the box, and a side panel per face: the top emotions and one probability bar per AU (threshold ticked,
    active AUs filled).

    `faces` are pipeline results computed with `return_features=True`.
    """
    canvas = image.convert("RGB")
    for face in faces:
        canvas = image_processor.visualize(canvas, face["features"], index=0)
    draw = ImageDraw.Draw(canvas)
    scale = max(canvas.height / 512, 0.6)
    label_font = _font(max(10, int(14 * scale)))
    for number, face in enumerate(faces):
        x1, _, _, y2 = face["box"]
        text = f"#{number} {face['emotion']['label']} {face['emotion']['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y2 + 3), text, font=label_font)
        draw.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=(0, 0, 0))
        draw.text((x1, y2 + 3), text, fill=(255, 255, 0), font=label_font)
    if not faces:
        return canvas
    panels = [_face_panel(face, number, canvas.height, thresholds) for number, face in enumerate(faces)]
    width = canvas.width + sum(panel.width for panel in panels)
    sheet = Image.new("RGB", (width, max(canvas.height, max(panel.height for panel in panels))), (255, 255, 255))
    sheet.paste(canvas, (0, 0))
    x = canvas.width
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width
    return sheet


def _face_panel(face: dict, number: int, height: int, thresholds: np.ndarray | None) -> Image.Image:
    """Text and bars for one face, sized to the image height (at least readable on small images)."""
    aus = list(face["action_units"].items())
    rows = len(aus) + len(face["emotions"]) + 3
    line = max(14, min(28, height // rows))
    font = _font(int(line * 0.7))
    width = 16 * line
    panel = Image.new("RGB", (width, max(height, rows * line + line)), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    y = line // 2
    draw.text((line // 2, y), f"face #{number}", fill=(0, 0, 0), font=font)
    y += line
    for item in face["emotions"]:
        draw.text((line // 2, y), f"{item['label']}: {item['score']:.2f}", fill=(0, 0, 160), font=font)
        y += line
    y += line // 2
    bar_left, bar_right = 4 * line, width - 3 * line
    active = set(face["active_action_units"])
    for k, (name, probability) in enumerate(aus):
        draw.text((line // 2, y), name, fill=(0, 0, 0), font=font)
        top, bottom = y + line // 6, y + line - line // 6
        draw.rectangle([bar_left, top, bar_right, bottom], outline=(120, 120, 120))
        filled = bar_left + (bar_right - bar_left) * float(probability)
        colour = (220, 60, 40) if name in active else (150, 170, 200)
        draw.rectangle([bar_left, top, filled, bottom], fill=colour)
        if thresholds is not None and k < len(thresholds):
            tick = bar_left + (bar_right - bar_left) * float(thresholds[k])
            draw.line([tick, top - 2, tick, bottom + 2], fill=(0, 0, 0), width=2)
        draw.text((bar_right + line // 4, y), f"{probability:.2f}", fill=(0, 0, 0), font=font)
        y += line
    return panel


def _annotation_name(path: Path, frame: int | None, used: set[str]) -> str:
    stem = path.stem if frame is None else f"{path.stem}_frame{frame:06d}"
    name, k = f"{stem}.png", 1
    while name in used:  # two inputs with the same stem (different folders) must not overwrite each other
        name, k = f"{stem}-{k}.png", k + 1
    used.add(name)
    return name


# --------------------------------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mf2 analyze",
        description="Analyse faces in images, folders and videos: AU probabilities, emotion, optional explanation.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="images, folders (searched recursively) or videos")
    parser.add_argument("--model", help="MF² checkpoint folder or Hub id (default: the untrained offline model)")
    parser.add_argument("--output", "-o", default="-", help="output file (default: standard output)")
    parser.add_argument("--format", choices=("jsonl", "csv"), help="output format (default: from --output's "
                        "extension, else jsonl)")  # fmt: skip
    parser.add_argument("--annotate", metavar="DIR", help="write annotated PNGs into DIR")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="faces per forward pass")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps, ... (default: the first accelerator, else cpu)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="model weights dtype")  # fmt: skip
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--video-fps", type=float, help="sample this many frames per second of video")
    sampling.add_argument("--every-n-frames", type=int, help="sample every N-th video frame")
    parser.add_argument("--threshold", type=float, help="one AU threshold for all AUs (default: the model's)")
    parser.add_argument("--top-k", type=int, default=3, help="emotions listed per face (default 3)")
    parser.add_argument("--landmarks", action="store_true", help="include the 68 landmarks")
    parser.add_argument("--explain", action="store_true", help="include a sentence naming the deciding AUs")
    parser.add_argument("--all-faces", action="store_true", help="every face of an image, not only the largest")
    parser.add_argument("--no-face", choices=("skip", "fallback", "error"), default="skip",
                        help="image without a face: a face-less record (skip, default), analyse the whole image "
                        "(fallback), or stop (error)")  # fmt: skip
    parser.add_argument("--landmark-backend", help="dlib (default), face_alignment, mediapipe or template")
    parser.add_argument("--no-recursive", action="store_true", help="do not search sub-folders")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a Hub checkpoint's own code")
    return parser


class AnalyzeError(Exception):
    """A failure that ends the run with a message (no traceback)."""


class _Run:
    """One `mf2 analyze` run: the pipeline, the call options, the writer and the counters."""

    def __init__(self, args: argparse.Namespace, pipe, writer: RecordWriter, common: dict[str, Any]):
        self.args, self.pipe, self.writer, self.common = args, pipe, writer, common
        self.annotate_dir = Path(args.annotate) if args.annotate else None
        self.call: dict[str, Any] = {
            "top_k": args.top_k, "return_landmarks": args.landmarks, "explain": args.explain,
            "no_face": args.no_face, "multiple_faces": "all" if args.all_faces else "largest",
        }  # fmt: skip
        if args.landmark_backend:
            self.call["landmark_backend"] = args.landmark_backend
        if args.threshold is not None:
            self.call["threshold"] = args.threshold
        if writer.fmt == "csv":
            self.call["top_k"] = len(pipe.model.config.id2label)  # every emotion's probability gets a column
        if self.annotate_dir is not None:
            self.annotate_dir.mkdir(parents=True, exist_ok=True)
            self.call["return_features"] = True
        self.thresholds = pipe._thresholds(args.threshold)
        self.progress_off = True if args.no_progress else None  # None: tqdm is off when stderr is not a terminal
        self.used_names: set[str] = set()
        self.counts = {"records": 0, "faces": 0, "errors": 0}

    def emit(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.writer.write(record)
            self.counts["records"] += 1
            self.counts["faces"] += record.get("face") is not None
            self.counts["errors"] += "error" in record

    def save_annotation(self, image: Image.Image, faces: list[dict], path: Path, frame: int | None = None) -> None:
        name = _annotation_name(path, frame, self.used_names)
        annotate(image, faces, self.pipe.image_processor, self.thresholds).save(self.annotate_dir / name)

    def images(self, paths: list[Path]) -> None:
        """All images in one stream: detection runs ahead in threads, faces are batched across images."""
        from tqdm.auto import tqdm

        skipped: list[tuple[Path, str]] = []
        in_flight: deque[tuple[Path, Image.Image | None]] = deque()  # fed but not yet answered, in order

        def feed():
            for path, image in _images(paths, skipped):
                in_flight.append((path, image if self.annotate_dir is not None else None))
                yield image

        bar = tqdm(total=len(paths), desc="images", unit="img", disable=self.progress_off, file=sys.stderr)
        done = 0
        try:
            for faces in self.pipe(feed(), batch_size=self.args.batch_size, **self.call):
                path, image = in_flight.popleft()  # results come out in input order
                done += 1
                self.emit(face_records(faces, {"path": str(path)}, self.common))
                if self.annotate_dir is not None:
                    self.save_annotation(image, faces, path)
                bar.update(1)
        except InputError as error:  # `--no-face error`: the first input without a face ends the run
            raise AnalyzeError(f"{in_flight[error.index - done][0]}: {error}") from error
        finally:
            bar.update(len(skipped))  # unreadable files were never fed to the pipeline
            bar.close()
        for path, message in skipped:
            self.emit([{"path": str(path), "face": None, "error": message, **self.common}])

    def video(self, path: Path) -> None:
        """Stream one video through the pipeline, writing records (and annotated frames) as frames come out."""
        from tqdm.auto import tqdm

        args = self.args
        try:
            info = video_info(path)
        except ValueError as error:
            self.emit([{"path": str(path), "face": None, "error": str(error), **self.common}])
            return
        total = None
        if args.video_fps and info["duration"]:
            total = math.ceil(info["duration"] * args.video_fps)
        elif info["frames"]:
            total = math.ceil(info["frames"] / (args.every_n_frames or 1))
        call = dict(self.call)
        if call["no_face"] == "error":
            call["no_face"] = "skip"  # one face-less frame must not end a video: it gives a face-less record
        frames = self.pipe.video(
            path, fps=args.video_fps, every=args.every_n_frames, batch_size=args.batch_size,
            return_frames=self.annotate_dir is not None, **call,
        )  # fmt: skip
        bar = tqdm(total=total, desc=path.name, unit="frame", disable=self.progress_off, file=sys.stderr)
        for result in frames:
            source = {"path": str(path), "frame": result["frame"], "time": result["time"]}
            faces = [{key: value for key, value in face.items() if key not in source} for face in result["faces"]]
            self.emit(face_records(faces, source, self.common))
            if self.annotate_dir is not None:
                self.save_annotation(Image.fromarray(result["image"]), result["faces"], path, result["frame"])
            bar.update(1)
        bar.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size < 1 or args.top_k < 1:
        print("mf2 analyze: --batch-size and --top-k must be >= 1", file=sys.stderr)
        return 2
    try:
        files = expand_paths(args.paths, recursive=not args.no_recursive)
    except ValueError as error:
        print(f"mf2 analyze: {error}", file=sys.stderr)
        return 2
    fmt = args.format or ("csv" if args.output.lower().endswith(".csv") else "jsonl")

    model = args.model
    if model is None:
        model = untrained_model_dir()
        if not is_untrained(model):
            print(f"mf2 analyze: building the untrained offline model in {model} (once) ...", file=sys.stderr)
            build_untrained_model(model)
    trained = not is_untrained(model)
    if not trained:
        print(f"mf2 analyze: {UNTRAINED_WARNING}", file=sys.stderr)
    pipe = load_pipeline(model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    common = {"model": str(args.model or UNTRAINED_MODEL_NAME), "model_trained": trained}

    if args.output != "-":
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    output = sys.stdout if args.output == "-" else open(args.output, "w", newline="", encoding="utf-8")
    try:
        writer = RecordWriter(output, fmt, list(pipe.model.config.au_names), pipe.model.config.emotion_labels)
        run = _Run(args, pipe, writer, common)
        images = [path for path in files if not is_video(path)]
        if images:
            run.images(images)
        for path in files:
            if is_video(path):
                run.video(path)
    except AnalyzeError as error:
        print(f"mf2 analyze: {error}", file=sys.stderr)
        return 1
    finally:
        if output is sys.stdout:
            output.flush()
        else:
            output.close()
    counts = run.counts
    summary = (
        f"{len(files)} file(s), {counts['faces']} face(s), {counts['errors']} error(s), {counts['records']} record(s)"
    )
    if args.output != "-":
        summary += f" in {args.output}"
    if run.annotate_dir is not None:
        summary += f"; annotated PNGs in {run.annotate_dir}"
    print(f"mf2 analyze: {summary}", file=sys.stderr)
    if not trained:
        print(
            'mf2 analyze: reminder: the model is UNTRAINED ("model_trained": false in every record).', file=sys.stderr
        )
    return 1 if counts["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "UNTRAINED_MARKER",
    "annotate",
    "build_untrained_model",
    "expand_paths",
    "face_records",
    "is_untrained",
    "load_pipeline",
    "main",
    "untrained_model_dir",
]
