"""The command line of `mf2 analyze`: its parser alone, importing neither torch nor transformers, so that
`mf2 analyze --help` answers at once (`mf2.cli` builds it for `--help`; `mf2.cli.analyze` for a run).

`--adapter DIR` runs a DFN adapter (the `--output_dir` of `mf2 finetune`) on the model (`--model`, default the shipped
`mf2-base`): `pipeline("facial-state", model=..., adapter=DIR)`.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..face_identity import DEFAULT_MAX_GAP
from ..face_tracking import DEFAULT_DETECT_EVERY
from ..integration.default_model import DEFAULT_MODEL_NAME
from ..local_files import names_local_path
from .analyze_checks import UsageError

DEFAULT_BATCH_SIZE = 16
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SUBFOLDER = "dfn"  # = mf2.dfn.loading.ADAPTER_SUBFOLDER (this module imports no torch)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # argparse prints the whole usage and exits; one line saying what is wrong and where to look instead.
        raise UsageError(f"{message} (see `mf2 analyze --help`)")

    def parse_args(self, args=None, namespace=None):
        parsed = super().parse_args(args, namespace)
        if getattr(parsed, "adapter", None) is not None and parsed.runtime != "torch":
            self.error(f"--adapter runs in PyTorch; drop --runtime {parsed.runtime}")
        return parsed


def _checked(convert: Callable[[str], Any], accept: Callable[[Any], bool], requirement: str) -> Callable[[str], Any]:
    """An argparse `type` that converts a flag's value and refuses it, in one line, unless `accept` holds."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):  # nan fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda value: value >= 1, "a whole number >= 1")
_positive_float = _checked(float, lambda value: math.isfinite(value) and value > 0, "a number > 0")
_seconds = _checked(float, lambda value: math.isfinite(value) and value >= 0, "a number of seconds >= 0")
_probability = _checked(float, lambda value: 0.0 <= value <= 1.0, "a probability from 0 to 1")
_detection_size = _checked(int, lambda value: value >= 64, "a whole number of pixels >= 64")  # as the processor's


def _backend_name(text: str) -> str:
    from ..landmarks import resolve_backend_name

    try:
        return resolve_backend_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def adapter_problem(name: str) -> str | None:
    """What is wrong with a DFN adapter argument (`--adapter`, `pipeline(..., adapter=)`), or None: a folder must hold
    `adapter_config.json`, itself or in `dfn/` (a repository `mf2 push` wrote); a name that is no local path is taken
    as a Hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / ADAPTER_CONFIG).is_file() or (path / ADAPTER_SUBFOLDER / ADAPTER_CONFIG).is_file():
            return None  # an adapter folder, or a repository `mf2 push` wrote (its adapter in dfn/)
        found = "a saved model (config.json), not an adapter" if (path / "config.json").is_file() else "no adapter"
        return f"{name} holds {found}: no {ADAPTER_CONFIG}; pass the --output_dir of `mf2 finetune`"
    if path.exists():
        return f"{name} is a file; pass the adapter's folder (the --output_dir of `mf2 finetune`)"
    if names_local_path(name):
        return f"{name}: no such folder; pass the --output_dir of `mf2 finetune`"
    return None


def _adapter(text: str) -> str:
    problem = adapter_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mf2 analyze",
        description="Analyse faces in images, folders and videos: AU probabilities, emotion, optional explanation.",
    )
    _add_inputs_and_outputs(parser)
    _add_runtime_options(parser)
    _add_video_options(parser)
    _add_face_options(parser)
    parser.add_argument("--no-recursive", action="store_true", help="do not search sub-folders")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="analyse only the inputs not yet in --output (a killed run's unfinished last input again); "
        "the options that shape the records are kept in OUTPUT.resume.json, and a --resume with others is refused",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a Hub checkpoint's own code")
    return parser


def _add_inputs_and_outputs(parser: argparse.ArgumentParser) -> None:
    """What to read (paths, model, adapter) and what to write (records, annotated PNGs)."""
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="images, folders (searched recursively; hidden files and __MACOSX left out), videos or image URLs",
    )
    parser.add_argument(
        "--model",
        help=f"MF² checkpoint folder or Hub id (default: {DEFAULT_MODEL_NAME}, the trained model shipped with mf2)",
    )
    parser.add_argument(
        "--adapter",
        type=_adapter,
        metavar="DIR",
        help="a DFN adapter to run on the model (its tuned AU thresholds too): the --output_dir of `mf2 finetune`, "
        "or a Hub repo or folder `mf2 push` wrote",
    )
    parser.add_argument(
        "--output",
        "-o",
        default="-",
        help="output file (default: standard output); never an input, "
        "nor an image or video name inside an input folder",
    )
    parser.add_argument(
        "--format", choices=("jsonl", "csv"), help="output format (default: from --output's extension, else jsonl)"
    )
    parser.add_argument(
        "--annotate",
        metavar="DIR",
        help="write annotated PNGs into the folder DIR, outside the "
        "input folders and holding no input; it replaces only PNGs that mf2 annotated (marked in the "
        "PNG: a repeated or --resume'd run's) and refuses to run over any other file of the same "
        "name",
    )


def _add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """What runs the network, and how: batch, device, dtype, PyTorch or onnxruntime."""
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="faces per forward pass")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, mps, ... (default: the first accelerator, else cpu)")
    parser.add_argument(
        "--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto", help="model weights dtype"
    )
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="what runs the network: "
        "PyTorch (default) or onnxruntime on the model's float32 ONNX export (needs mf2[onnx]; "
        "exported into $MF2_HOME/onnx/ on first use)",
    )
    parser.add_argument("--onnx-model", metavar="FILE", help="with --runtime onnx: this `mf2 export` file instead")
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        help="with --runtime onnx: the int8 version of the graph (faster on a CPU; accuracy: docs/analysis.md#int8)",
    )


def _add_video_options(parser: argparse.ArgumentParser) -> None:
    """How videos are sampled and followed, and the per-person summary and timelines."""
    sampling = parser.add_mutually_exclusive_group()
    sampling.add_argument("--video-fps", type=_positive_float, help="sample this many frames per second of video")
    sampling.add_argument("--every-n-frames", type=_positive_int, help="sample every N-th video frame")
    parser.add_argument(
        "--detect-every",
        type=_positive_int,
        default=DEFAULT_DETECT_EVERY,
        help="in videos, search "
        f"for faces every N sampled frames and follow them in between (default {DEFAULT_DETECT_EVERY}; "
        "1 searches every frame)",
    )
    parser.add_argument(
        "--max-gap",
        type=_seconds,
        default=DEFAULT_MAX_GAP,
        metavar="SECONDS",
        help="in videos, "
        "how long a person may be out of sight (occluded, missed, out of view) and come back with "
        f"their track (default {DEFAULT_MAX_GAP:g})",
    )
    parser.add_argument(
        "--summary",
        metavar="FILE.csv",
        help="videos: one CSV row per video and track (person): "
        "first and last time, frames seen, each AU's mean probability and share of frames active, "
        "each emotion's share of frames",
    )
    parser.add_argument(
        "--plot",
        metavar="DIR",
        help="videos: a PNG timeline per video and track in the folder DIR "
        "(outside the input folders): the 12 AUs and the emotion over time",
    )


def _add_face_options(parser: argparse.ArgumentParser) -> None:
    """Which faces are read, how, and what each face's record holds."""
    parser.add_argument(
        "--threshold", type=_probability, help="one AU threshold for all AUs, from 0 to 1 (default: the model's)"
    )
    parser.add_argument("--top-k", type=_positive_int, default=3, help="emotions listed per face (default 3)")
    parser.add_argument("--landmarks", action="store_true", help="include the 68 landmarks")
    parser.add_argument("--explain", action="store_true", help="include a sentence naming the deciding AUs")
    parser.add_argument("--all-faces", action="store_true", help="every face of an image, not only the largest")
    parser.add_argument(
        "--no-face",
        choices=("skip", "fallback", "error"),
        default="skip",
        help="image without a face: a face-less record (skip, default), analyse the whole image "
        "(fallback), or stop (error)",
    )
    parser.add_argument(
        "--landmark-backend", type=_backend_name, help="dlib (default), face_alignment, mediapipe or template"
    )
    parser.add_argument(
        "--max-detection-size",
        type=_detection_size,
        metavar="N",
        help="search for faces on a copy "
        "of each image or frame downscaled to N px on its longest side (default: the model's "
        "processor's, 1024), where faces under about 40 px of the copy (~160 px in a 4032x3024 "
        "photo) are not seen; N of at least the images' longest side searches at full resolution "
        "(slower)",
    )


__all__ = ["ADAPTER_CONFIG", "DEFAULT_BATCH_SIZE", "adapter_problem", "build_parser"]
