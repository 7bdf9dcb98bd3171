"""`mf2 analyze`: faces in images, folders and videos → Action Units and emotions as JSON lines or CSV.

```bash
mf2 analyze examples/images --output results.jsonl --annotate annotated/
mf2 analyze clip.mp4 --video-fps 5 --output clip.csv
mf2 analyze interview.mp4 --all-faces -o faces.jsonl --summary people.csv --plot timelines/
mf2 analyze photos/ --model path/or/hub-id --batch-size 16 --device cuda --explain
```

One record per face (an image without a face gives one record with `"face": null`, an unreadable file one with
`"error"`, and the run goes on); `face` numbers an image's (or video frame's) faces and `faces` counts them. A video's
faces also carry `track`, the person: the same number from frame to frame (`mf2.face_identity`). `--summary FILE.csv`
adds one row per video and track (first and last time, frames seen, each AU's mean probability and share of frames
active, each emotion's share of frames), `--plot DIR` a PNG timeline per video and track (`mf2.cli.track_report`); both
are outputs, kept away from the inputs as `--output` and `--annotate` are. Records
are written as each input is done, in input order, the records of one image or frame in one write and a flush: a
killed run's output holds whole inputs but for the last one, which `--resume` analyses again. `--annotate DIR` writes a PNG per image (per sampled frame for videos) with the face
box, landmarks and AU boxes (`mf2.visualization.annotate`) and a panel with the emotion and one probability
bar per AU. Outputs never touch inputs: an `--output` or `--annotate` that would write over an input or into an input
folder is refused before the run (`mf2.cli.analyze_checks.check_outputs`), and `--annotate` replaces only the PNGs that
mf2 annotated (they carry a mark; a repeated or `--resume`d run's), never another file of the same name.

Faces are searched for on a copy of each image (and video frame) downscaled to `--max-detection-size` px on its
longest side (1024 by default), where faces under about 40 px of the copy are not seen (~160 px in a 4032x3024
photo): a face found there carries `detection_scale` (the copy's scale), and a record without a face (or the
`--no-face fallback` face, or the `--no-face error` message) says so in its `warning`. A `--max-detection-size` of at
least the images' longest side searches at full resolution, finding the smaller faces, more slowly.

File names of any bytes are analysed: a name that is not UTF-8 (`b\\xe9.png`) is carried in JSON as its surrogate
escape (`"b\\udce9.png"`; `os.fsencode(record["path"])` gives its bytes back) and in CSV as its bytes
(`mf2.cli.analyze_records`). A failure ends the run with one line on stderr, never a traceback: exit status 2 for a bad
command line, 1 for a failed run (a model that cannot be loaded, an output that cannot be written: disk full) or an
input's error record, 130 for Ctrl-C. A write that fails or is interrupted is cut back, so the output holds whole inputs
only and `--resume` goes on from it; an annotated PNG is written aside and renamed, so none is left cut. A `--resume`
with another model or other record-shaping options (`--adapter`, `--threshold`, `--all-faces`, ...) than the run that
began the output is refused: one file holds one model's answers read one way (`mf2.cli.analyze_resume`).

Without `--model`, the command uses the trained MF² shipped inside the package (`mf2-base`,
`mf2.integration.default_model`). Every record carries the model's name, version and whether it is trained (`model`,
`model_version`, `model_trained`), read from the model's config, and with `--adapter` the adapter as given (`adapter`).

This module is the command: it checks the command line, loads the model and starts the run, whose loop is
`mf2.cli.analyze_run`. The rest lives beside it: the command line's checks in
`mf2.cli.analyze_checks`, runs over several processes (`accelerate launch`) and `--resume` in `mf2.cli.analyze_shards`
(what a resumed output must agree on in `mf2.cli.analyze_resume`),
the inputs and their one read in `mf2.cli.analyze_inputs`, the records and writers in `mf2.cli.analyze_records`, the
drawing in `mf2.visualization`, the pipeline factory in `mf2.integration.default_model`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO

from ..image_loading import AnimatedImageWarning
from ..integration.default_model import (
    DEFAULT_MODEL_NAME,
    DefaultModelMissingError,
    load_pipeline,
    model_identity,
    silence_loading_bars,
)
from ..landmarks import MissingBackendError, MissingModelFileError
from ..local_files import env_flag
from ..video import VIDEO_EXTRA_MISSING, is_video
from .analyze_checks import (
    AnalyzeError,
    UsageError,
    check_annotate,
    check_device,
    check_model,
    check_outputs,
    check_reports,
    check_runtime,
    video_stems,
)
from .analyze_inputs import InputPath, expand_paths
from .analyze_parser import build_parser
from .analyze_records import RecordWriter
from .analyze_resume import begin_output, check_resumed_run, record_settings
from .analyze_run import AnalyzeRun, open_output
from .analyze_shards import annotation_names, device_for, launched, run_sharded


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _load(model: str | os.PathLike, args: argparse.Namespace):
    """`load_pipeline`, with a failure (missing download, unreadable checkpoint) as one `AnalyzeError` line."""
    from ..dfn.loading import AdapterLoadError  # here: `mf2 analyze --help` imports neither torch nor peft

    try:
        runtime = {}
        if args.runtime == "onnx":
            runtime = {"runtime": "onnx", "onnx_path": args.onnx_model, "quantize": args.quantize}
        if args.adapter is not None:
            runtime["adapter"] = args.adapter
        return load_pipeline(
            model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code, **runtime
        )
    except (DefaultModelMissingError, ImportError) as error:  # ImportError: --runtime onnx without onnxruntime
        raise AnalyzeError(_first_line(error)) from error
    except AdapterLoadError as error:  # the adapter's failure, not the model's
        raise AnalyzeError(
            f"{error} (pass the --output_dir of `mf2 finetune`, or the Hub id of a DFN adapter)"
        ) from error
    except Exception as error:  # noqa: BLE001 - whatever the loaders raise (a damaged safetensors, a refused pickle,
        # an ONNX file onnxruntime cannot parse) is one line: the run cannot start
        hint, reason = "pass a saved model's folder or a Hub id", _first_line(error)
        if isinstance(error, pickle.UnpicklingError):  # torch.load(weights_only=True) refused it: not shown whole
            reason = "its pickled weights (pytorch_model.bin) hold more than tensors, code that loading would run"
            hint = "resave the model as safetensors (save_pretrained) where you trust it"
        elif args.onnx_model is not None and type(error).__module__.startswith("onnxruntime"):
            hint = "write the --onnx-model file again with `mf2 export --output FILE`"
        elif type(error).__name__ == "SafetensorError":
            hint = "its model.safetensors is damaged or truncated: copy or download it again"
        elif env_flag("HF_HUB_OFFLINE") and not Path(model).exists():
            hint = "it is not a local folder and HF_HUB_OFFLINE=1 forbids the download: download it once online"
        raise AnalyzeError(f"could not load the model {model}: {reason} ({hint})") from error


def check_detection_size(image_processor, value: int | None) -> None:
    """Raise `UsageError` for a `--max-detection-size` the model's image processor refuses (under its own
    `min_detection_size`, the size small images are searched at)."""
    if value is None:
        return
    smallest = int(image_processor.min_detection_size)
    if value < smallest:
        raise UsageError(
            f"--max-detection-size {value} is under the model's min_detection_size ({smallest} px, the "
            f"size small images are searched at); give {smallest} or more"
        )
    try:
        image_processor.resolve_options(max_detection_size=value)
    except ValueError as error:
        raise UsageError(f"--max-detection-size {value}: {error}") from error


def main(argv: list[str] | None = None) -> int:
    """Exit status 0: every input analysed; 1: some input gave an error record, or the run failed (a model that
    cannot be loaded, an output that cannot be written: disk full); 2: a bad command line; 130: interrupted (Ctrl-C),
    the output holding whole inputs only. Failures are one line on stderr, never a traceback."""
    try:
        with contextlib.ExitStack() as cleanup:
            return _main(argv, cleanup)
    except UsageError as error:
        print(f"mf2 analyze: {error}", file=sys.stderr)
        return 2
    except (AnalyzeError, MissingBackendError, MissingModelFileError) as error:
        print(f"mf2 analyze: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "mf2 analyze: interrupted; the output holds the inputs done so far, whole (--resume goes on)",
            file=sys.stderr,
        )
        return 130


def _main(argv: list[str] | None, cleanup: contextlib.ExitStack) -> int:
    args = build_parser().parse_args(argv)
    files, names, stems = _checked_inputs(args)
    fmt = args.format or ("csv" if args.output.lower().endswith(".csv") else "jsonl")
    if fmt == "csv" and args.landmarks:  # refused, not dropped: a user who asked for them would not find them
        raise UsageError("--landmarks: CSV has one column per value and no room for 68 points; write JSON lines")
    if args.no_progress:
        cleanup.callback(silence_loading_bars())
    processes = launched()
    sharded = processes.distributed or args.resume
    _check_sharding(args, sharded)
    args.device = device_for(processes, args.device)
    pipe = _load(args.model or DEFAULT_MODEL_NAME, args)
    check_detection_size(pipe.image_processor, args.max_detection_size)
    common = model_identity(pipe.model.config, args.model or DEFAULT_MODEL_NAME)
    if args.adapter is not None:  # the probabilities are the adapted model's, not those of `model` alone
        common["adapter"] = args.adapter
    if args.resume:
        check_resumed_run(Path(args.output), fmt, common, record_settings(args), keep=processes.rank == 0)
    elif args.output != "-" and processes.rank == 0:
        begin_output(Path(args.output), record_settings(args))  # replaced: its parts go, this run's options stay
    if sharded:  # each process's share into its part, merged by process 0
        names = (
            names if names is not None else annotation_names(files, stems)
        )  # the same PNG names everywhere, every run
        done, counts = run_sharded(
            processes,
            Path(args.output),
            fmt,
            files,
            args.resume,
            lambda output, share: _analyse(args, pipe, output, fmt, common, share, stems, names),
        )
        if done is None:  # not process 0, which reports for all
            return 1 if counts["errors"] else 0
    else:
        output = open_output(args.output)
        cleanup.callback(output.flush if output is sys.stdout else output.close)
        counts, done = _analyse(args, pipe, output, fmt, common, files, stems), f"{len(files)} file(s)"
    print(f"mf2 analyze: {_run_summary(args, done, counts)}", file=sys.stderr)
    if not common["model_trained"]:  # said last, beside the summary: a run that fails still says one line
        print(
            f"mf2 analyze: warning: {common['model']} is not a trained model (its config says trained=false): "
            'the probabilities are not predictions; records say "model_trained": false.',
            file=sys.stderr,
        )
    return 1 if counts["errors"] else 0


def _checked_inputs(args: argparse.Namespace) -> tuple[list[InputPath], dict[str, str] | None, dict[str, str]]:
    """The input files, with `--annotate` their images' PNG names, and their videos' PNG stems, once everything the
    command line alone can tell is checked: before the (slow) model loading."""
    check_device(args.device)
    if args.model is not None:
        check_model(args.model)
    check_annotate(args.annotate)
    check_runtime(args)
    try:
        files = expand_paths(args.paths, recursive=not args.no_recursive)
    except ValueError as error:
        raise UsageError(str(error)) from error
    videos = [path for path in files if is_video(path)]
    if videos and importlib.util.find_spec("av") is None:  # before any image is read: not a traceback at the video
        raise UsageError(f"{videos[0]} is a video. {VIDEO_EXTRA_MISSING}")
    check_reports(args, files)
    # outputs never touch inputs, nor files they did not write; images' PNG names are fixed over the whole input list
    # over every input, before a share or a resume: the same PNG names every run
    stems = video_stems(files)
    names = annotation_names(files, stems) if args.annotate is not None else None
    check_outputs(args, files, names or {}, stems)
    return files, names, stems


def _check_sharding(args: argparse.Namespace, sharded: bool) -> None:
    """`--resume` and runs over several processes write parts merged at the end: they need a file, and one whole
    run for the per-video reports."""
    if sharded and args.output == "-":
        raise UsageError("--resume, and a launch over several processes, need --output FILE (not standard output)")
    if sharded and (args.summary is not None or args.plot is not None):
        raise UsageError(
            f"{'--summary' if args.summary is not None else '--plot'} needs one whole run over the "
            "videos: drop --resume, and run in one process"
        )


def _run_summary(args: argparse.Namespace, done: str, counts: dict[str, int]) -> str:
    """The run's one-line summary: inputs, faces, errors, records, and where each output went."""
    summary = f"{done}, {counts['faces']} face(s), {counts['errors']} error(s), {counts['records']} record(s)"
    if counts["warnings"]:
        summary += f", {counts['warnings']} with a warning"
    if args.output != "-":
        summary += f" in {args.output}"
    if args.annotate:
        summary += f"; annotated PNGs in {args.annotate}"
    if args.summary or args.plot:
        where = [f"summary in {args.summary}"] if args.summary else []
        where += [f"timelines in {args.plot}"] if args.plot else []
        summary += f"; {counts['tracks']} track(s), {' and '.join(where)}"
    return summary


def _analyse(
    args,
    pipe,
    output: TextIO,
    fmt: str,
    common: dict[str, Any],
    files: list[InputPath],
    stems: dict[str, str],
    names: dict[str, str] | None = None,
) -> dict[str, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnimatedImageWarning)  # records of animated images carry a "warning"
        writer = RecordWriter(output, fmt, list(pipe.model.config.au_names), pipe.model.config.emotion_labels)
        run = AnalyzeRun(args, pipe, writer, common)
        run.names = names or {}
        run.video_stems = stems
        finished = False
        try:
            run.run(files)  # a missing landmark back-end or model file is raised by the first image it sees
            finished = True
        finally:
            run.close(finished)
    return run.counts


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["AnalyzeError", "UsageError", "build_parser", "main"]
