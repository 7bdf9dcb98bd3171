"""`mf2 analyze`'s checks of its command line, made before the (slow) model loading, and its two failures."""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
from pathlib import Path


class UsageError(Exception):
    """A command line that cannot run as given: one line on stderr, exit status 2."""


class AnalyzeError(Exception):
    """A failure that ends the run with a message (no traceback): exit status 1."""


def check_device(name: str | None) -> None:
    """Raise `UsageError` unless `name` is a torch device this machine has."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: this machine has no CUDA GPU that PyTorch can use; use --device cpu")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu")


def _looks_like_path(name: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else with a separator or a leading `.`, `/`, `~` is a path."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def check_model(name: str) -> None:
    """Raise `UsageError` for a `--model` that names a missing folder, a file, or a folder that is not a model."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(
                f"--model {name}: the folder holds no config.json, so it is not a saved model; pass a folder written "
                f"by save_pretrained, or a Hub id"
            )
    elif path.exists():
        raise UsageError(f"--model {name} is a file; pass the model's folder (with config.json), or a Hub id")
    elif _looks_like_path(name):
        raise UsageError(f"--model {name}: no such folder; pass a saved model's folder, or a Hub id")


def check_runtime(args: argparse.Namespace) -> None:
    """`--runtime onnx` runs a float32 graph; `--onnx-model` (an existing file) and `--quantize` need it."""
    if args.runtime != "onnx":
        for flag, value in (("--onnx-model", args.onnx_model), ("--quantize", args.quantize)):
            if value is not None:
                raise UsageError(f"{flag} needs --runtime onnx")
        return
    if args.dtype not in ("auto", "float32"):
        raise UsageError(f"--runtime onnx runs the model in float32; drop --dtype {args.dtype}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise AnalyzeError("--runtime onnx needs onnxruntime: pip install 'mf2[onnx]'")
    if args.onnx_model is not None and not Path(args.onnx_model).is_file():
        raise UsageError(f"--onnx-model {args.onnx_model}: no such file (write it with `mf2 export --output FILE`)")


def check_annotate(name: str | None) -> None:
    if name is not None and Path(name).exists() and not Path(name).is_dir():
        raise UsageError(f"--annotate {name} is an existing file; --annotate takes a folder (new or existing)")


class OutputClashError(UsageError):
    """An output option (`option`, naming `target`) that would write over `clash`, an input or a file it did not
    write, or inside an input folder; `reason` says which, `advice` what to do. One line, exit status 2."""

    def __init__(self, option: str, target: str, reason: str, clash: str, advice: str):
        self.option, self.target, self.reason, self.clash, self.advice = option, target, reason, clash, advice
        super().__init__(f"{option} {target} {reason} {clash}; {advice}")


ANNOTATION_MARK = ("Software", "mf2 analyze")
"""The PNG text chunk every `--annotate` PNG carries: the files `--annotate` may replace (a resumed or repeated run's)."""


def is_annotation(path: Path) -> bool:
    """Whether `path` is a PNG that `mf2 analyze --annotate` wrote (it carries `ANNOTATION_MARK`)."""
    from PIL import Image

    key, value = ANNOTATION_MARK
    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get(key) == value
    except (OSError, ValueError):  # not an image (or a folder): not one of ours
        return False


def check_annotation_target(folder: Path, name: str) -> None:
    """Raise `OutputClashError` when `folder/name` exists and is not an mf2 annotation: `--annotate` never replaces
    a file it did not write."""
    target = folder / name
    if (target.exists() or target.is_symlink()) and not is_annotation(target):
        raise OutputClashError("--annotate", str(folder), "would overwrite", str(target), "it is not an annotation "
                               "mf2 wrote; move it, or give --annotate another folder")  # fmt: skip


def _key(path: str | os.PathLike) -> tuple[int, int] | None:
    """The file's identity (device, inode), whatever the spelling, links or letter case; `None` if it is missing."""
    try:
        status = os.stat(path)
    except (OSError, ValueError):
        return None
    return status.st_dev, status.st_ino


def _within(path: Path, folders: dict[tuple[int, int], str], deep: bool) -> str | None:
    """The one of `folders` (by identity) that holds `path`, at any depth (`deep`) or directly, else `None`.
    `path` need not exist: its existing ancestors, symbolic links resolved, are compared."""
    resolved = Path(os.path.realpath(path))
    for ancestor in resolved.parents if deep else resolved.parents[:1]:
        found = folders.get(_key(ancestor))  # type: ignore[arg-type]
        if found is not None:
            return found
    return None


def check_outputs(args: argparse.Namespace, files: list[Path | str], names: dict[str, str]) -> None:
    """Outputs never touch inputs. Raise `OutputClashError` for an `--output` that is an input file, or an image or
    video name inside an input folder (a later run would read it as an input); for an `--annotate` folder that is an
    input folder or inside one, or that holds an input file; and for a file `--annotate` would replace that is not
    an mf2 annotation. `files` are the expanded inputs (URLs are `str`), `args.paths` as given, `names` the images'
    annotation PNG names (`mf2.analyze_shards.annotation_names`)."""
    from .inputs import IMAGE_EXTENSIONS
    from .video import VIDEO_EXTENSIONS, is_video

    recursive = not args.no_recursive
    folders = {_key(name): name for name in args.paths if Path(name).is_dir()}
    local = [path for path in files if isinstance(path, Path)]
    if args.output != "-":
        output = Path(args.output)
        key = _key(output)
        clash = next((path for path in local if key is not None and _key(path) == key), None)
        if clash is not None:
            raise OutputClashError("--output", args.output, "is the input", str(clash), "write the records to a file "
                                   "outside the inputs")  # fmt: skip
        listed = output.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS  # the name a folder's listing takes
        folder = _within(output, folders, recursive) if listed else None
        if folder is not None:
            raise OutputClashError("--output", args.output, "is an image or video name inside the input folder",
                                   folder, "a later run would read it as an input: write the records outside the "
                                   "input folders")  # fmt: skip
    if args.annotate is None:
        return
    annotate = Path(args.annotate)
    folder = _within(annotate / "_", folders, deep=True)  # the folder itself, or one above it
    if folder is not None:
        raise OutputClashError("--annotate", args.annotate, "is, or is inside, the input folder", folder, "its PNGs "
                               "could replace the inputs and a later run would analyse them: give --annotate a "
                               "folder outside the inputs")  # fmt: skip
    key = _key(annotate)
    if key is None:  # a new folder: nothing in it to overwrite
        return
    clash = next((path for path in local if _key(path.parent) == key), None)
    if clash is not None:
        raise OutputClashError("--annotate", args.annotate, "holds the input", str(clash), "give --annotate a "
                               "folder without inputs")  # fmt: skip
    for name in names.values():
        check_annotation_target(annotate, name)
    for video in dict.fromkeys(path for path in local if is_video(path)):
        frame = re.compile(re.escape(video.stem) + r"_frame\d{6}(-\d+)?\.png")
        for existing in sorted(annotate.glob(glob.escape(video.stem) + "_frame*.png")):
            if frame.fullmatch(existing.name):
                check_annotation_target(annotate, existing.name)


__all__ = [
    "ANNOTATION_MARK", "AnalyzeError", "OutputClashError", "UsageError", "check_annotate", "check_annotation_target",
    "check_device", "check_model", "check_outputs", "check_runtime", "is_annotation",
]  # fmt: skip
