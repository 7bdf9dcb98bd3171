"""`mf2 analyze`'s checks of its command line, made before the (slow) model loading, and its two failures."""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import re
from pathlib import Path

from ..local_files import names_local_path


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


def check_model(name: str) -> None:
    """Raise `UsageError` for a `--model` that names a missing folder, a file, or a folder that is not a model."""
    path = Path(name).expanduser()
    if path.is_dir():
        if (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
            raise UsageError(
                f"--model {name} is a DFN adapter folder (adapter_config.json), not a model; pass its base model as "
                "--model, and this folder as --adapter where the command takes one (mf2 analyze)"
            )
        if not (path / "config.json").is_file():
            raise UsageError(
                f"--model {name}: the folder holds no config.json, so it is not a saved model; pass a folder written "
                f"by save_pretrained, or a Hub id"
            )
    elif path.exists():
        raise UsageError(f"--model {name} is a file; pass the model's folder (with config.json), or a Hub id")
    elif names_local_path(name):
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


def check_annotate(name: str | None, option: str = "--annotate") -> None:
    if name is not None and Path(name).exists() and not Path(name).is_dir():
        raise UsageError(f"{option} {name} is an existing file; {option} takes a folder (new or existing)")


def check_reports(args: argparse.Namespace, files: list) -> None:
    """`--summary FILE` and `--plot DIR` report on videos' tracks: refused (`UsageError`) without a video among the
    inputs, with `--summary -`, a `--summary` that is a folder, or a `--plot` that is a file or the `--annotate`
    folder."""
    from ..video import is_video

    if args.summary is None and args.plot is None:
        return
    option = "--summary" if args.summary is not None else "--plot"
    if not any(is_video(path) for path in files):
        raise UsageError(f"{option} reports on the people (tracks) of videos, and none of the inputs is a video")
    if args.summary is not None:
        if args.summary == "-":
            raise UsageError("--summary takes a file name (the records go to standard output)")
        if Path(args.summary).is_dir():
            raise UsageError(f"--summary {args.summary} is a folder; --summary takes a file (FILE.csv)")
    check_annotate(args.plot, "--plot")
    if args.plot is not None and args.annotate is not None and _same_place(args.plot, args.annotate):
        raise UsageError(f"--plot {args.plot} is the --annotate folder; give the timelines a folder of their own")


def _same_place(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b) or (_key(a) is not None and _key(a) == _key(b))


def frame_png_name(stem: str, frame: int) -> str:
    """The `--annotate` PNG of a video's frame: `<stem>_frame<6 digits>.png`."""
    return f"{stem}_frame{frame:06d}.png"


def frame_png_pattern(stem: str) -> re.Pattern:
    """Every name `frame_png_name` gives a video of PNG stem `stem`."""
    return re.compile(re.escape(stem) + r"_frame\d{6}\.png")


def track_png_name(stem: str, track: int) -> str:
    """The `--plot` timeline of a video's track: `<stem>_track<N>.png`."""
    return f"{stem}_track{track}.png"


def track_png_pattern(stem: str) -> re.Pattern:
    """Every name `track_png_name` gives a video of PNG stem `stem`, the track number as group 1."""
    return re.compile(re.escape(stem) + r"_track(\d+)\.png")


def video_stems(files: list) -> dict[str, str]:
    """The PNG stem of every video among `files` (`<stem>_track<N>.png` for `--plot`, `<stem>_frame<N>.png` for
    `--annotate`), unique over the run, in input order, and worked out over every input before a run is shared out or
    resumed: two videos of one name in two folders never write over each other's PNGs."""
    from ..video import is_video

    used: set[str] = set()
    names = {}
    for path in dict.fromkeys(path for path in files if isinstance(path, Path) and is_video(path)):
        stem, k = path.stem or "video", 1
        name = stem
        while name in used:
            name, k = f"{stem}-{k}", k + 1
        used.add(name)
        names[str(path)] = name
    return names


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


def check_annotation_target(folder: Path, name: str, option: str = "--annotate") -> None:
    """Raise `OutputClashError` when `folder/name` exists and is not a PNG mf2 analyze wrote (it carries
    `ANNOTATION_MARK`): `--annotate` and `--plot` never replace a file they did not write."""
    target = folder / name
    if (target.exists() or target.is_symlink()) and not is_annotation(target):
        raise OutputClashError(
            option,
            str(folder),
            "would overwrite",
            str(target),
            f"it is not a PNG mf2 analyze wrote; move it, or give {option} another folder",
        )


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


def check_outputs(
    args: argparse.Namespace, files: list[Path | str], names: dict[str, str], stems: dict[str, str]
) -> None:
    """Outputs never touch inputs. Raise `OutputClashError` for an `--output` or `--summary` that is an input file,
    or an image or video name inside an input folder (a later run would read it as an input), or a `--summary` that
    is the `--output`; for an `--annotate` or `--plot` folder that is an input folder or inside one, or that holds an
    input file; and for a file `--annotate` or `--plot` would replace that is not a PNG mf2 analyze wrote. `files`
    are the expanded inputs (URLs are `str`), `args.paths` as given, `names` the images' annotation PNG names
    (`mf2.cli.analyze_shards.annotation_names`), `stems` the videos' PNG stems (`video_stems`)."""
    from ..video import VIDEO_EXTENSIONS
    from .analyze_inputs import IMAGE_EXTENSIONS

    recursive = not args.no_recursive
    folders = {_key(name): name for name in args.paths if Path(name).is_dir()}
    local = [path for path in files if isinstance(path, Path)]
    what = {"--output": "the records", "--summary": "the summary"}
    for option, name in (("--output", args.output), ("--summary", args.summary)):
        if name is None or name == "-":
            continue
        output = Path(name)
        key = _key(output)
        clash = next((path for path in local if key is not None and _key(path) == key), None)
        if clash is not None:
            raise OutputClashError(
                option, name, "is the input", str(clash), f"write {what[option]} to a file outside the inputs"
            )
        listed = output.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS  # the name a folder's listing takes
        folder = _within(output, folders, recursive) if listed else None
        if folder is not None:
            raise OutputClashError(
                option,
                name,
                "is an image or video name inside the input folder",
                folder,
                f"a later run would read it as an input: write {what[option]} outside the input folders",
            )
    summary = args.summary
    if summary is not None and args.output != "-" and _same_place(summary, args.output):
        raise OutputClashError(
            "--summary", summary, "is the --output file", args.output, "give the summary a file of its own"
        )
    if args.annotate is not None:
        annotate = Path(args.annotate)
        _check_png_folder("--annotate", annotate, folders, local)
        if _key(annotate) is not None:  # an existing folder: what it would overwrite is checked
            for name in names.values():
                check_annotation_target(annotate, name)
            _check_video_pngs("--annotate", annotate, stems)
    if args.plot is not None:
        plot = Path(args.plot)
        _check_png_folder("--plot", plot, folders, local)
        if _key(plot) is not None:
            _check_video_pngs("--plot", plot, stems)


def _check_video_pngs(option: str, folder: Path, stems: dict[str, str]) -> None:
    """Every PNG of the videos (`stems`) already in `folder` that this run may replace, `<stem>_frameNNNNNN.png`
    (`--annotate`) or `<stem>_trackN.png` (`--plot`), is one mf2 analyze wrote (`check_annotation_target`)."""
    for stem in stems.values():
        kind = "_frame" if option == "--annotate" else "_track"
        pattern = frame_png_pattern(stem) if kind == "_frame" else track_png_pattern(stem)
        for existing in sorted(folder.glob(glob.escape(stem) + kind + "*.png")):
            if pattern.fullmatch(existing.name):
                check_annotation_target(folder, existing.name, option)


def _check_png_folder(option: str, folder: Path, inputs: dict, local: list[Path]) -> None:
    """A folder of PNGs (`--annotate`, `--plot`) is not an input folder, nor inside one, and holds no input."""
    within = _within(folder / "_", inputs, deep=True)  # the folder itself, or one above it
    if within is not None:
        raise OutputClashError(
            option,
            str(folder),
            "is, or is inside, the input folder",
            within,
            "its PNGs could "
            f"replace the inputs and a later run would analyse them: give {option} a folder "
            "outside the inputs",
        )
    key = _key(folder)
    if key is None:  # a new folder: nothing in it to overwrite
        return
    clash = next((path for path in local if _key(path.parent) == key), None)
    if clash is not None:
        raise OutputClashError(
            option, str(folder), "holds the input", str(clash), f"give {option} a folder without inputs"
        )


__all__ = [
    "ANNOTATION_MARK",
    "AnalyzeError",
    "OutputClashError",
    "UsageError",
    "check_annotate",
    "check_annotation_target",
    "check_device",
    "check_model",
    "check_outputs",
    "check_reports",
    "check_runtime",
    "is_annotation",
    "video_stems",
]
