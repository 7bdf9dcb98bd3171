"""One `mf2 analyze` run over its inputs (`AnalyzeRun`): images read once and analysed in batches, videos frame by
frame with their tracks, and what each input gives written as it is done: records (`mf2.cli.analyze_records`),
annotated PNGs (written whole, `mf2.local_files`), the per-person summary and timelines (`mf2.cli.track_report`). An input
that cannot be analysed becomes an error record in its place and the run goes on; an output that cannot be written
ends the run with an `AnalyzeError`.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import math
import os
import sys
from collections import deque
from itertools import count, groupby
from pathlib import Path
from typing import Any, TextIO

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..face_search import FALLBACK_LABEL, search_scale, search_warning
from ..local_files import PARTIAL_SUFFIX, written_aside
from ..pipeline_mf2 import InputError
from ..video import VideoDecodeError, VideoReader, is_video
from ..visualization import annotate
from .analyze_checks import (
    ANNOTATION_MARK,
    AnalyzeError,
    OutputClashError,
    check_annotation_target,
    frame_png_name,
    is_annotation,
    track_png_name,
    track_png_pattern,
)
from .analyze_inputs import InputPath, ReadImage, read_image
from .analyze_records import OUTPUT_ERRORS, RecordWriter, annotation_name, face_records
from .track_report import VideoTracks, summary_columns, write_summary_rows


def open_output(name: str, buffering: int = -1) -> TextIO:
    if name == "-":
        with contextlib.suppress(AttributeError, ValueError):  # a CSV record may carry a file name's odd bytes
            sys.stdout.reconfigure(errors=OUTPUT_ERRORS)
        return sys.stdout
    try:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        return open(name, "w", buffering, newline="", encoding="utf-8", errors=OUTPUT_ERRORS)
    except OSError as error:
        raise AnalyzeError(
            f"cannot write the output file {name} ({error.strerror or error}); give -o a file in a writable folder"
        ) from error


def partial_name(name: str) -> str:
    """Where an output named at the end of the run is written until then (`-`, standard output, streams as it is)."""
    return name if name == "-" else name + PARTIAL_SUFFIX


class AnalyzeRun:
    """One `mf2 analyze` run: the pipeline, the call options, the writer and the counters."""

    def __init__(self, args: argparse.Namespace, pipe, writer: RecordWriter, common: dict[str, Any]):
        self.args, self.pipe, self.writer, self.common = args, pipe, writer, common
        self.annotate_dir = Path(args.annotate) if args.annotate else None
        self.call: dict[str, Any] = {
            "top_k": args.top_k,
            "return_landmarks": args.landmarks,
            "explain": args.explain,
            "no_face": args.no_face,
            "multiple_faces": "all" if args.all_faces else "largest",
        }
        if args.landmark_backend:
            self.call["landmark_backend"] = args.landmark_backend
        if args.max_detection_size is not None:
            self.call["max_detection_size"] = args.max_detection_size
        options = pipe.image_processor.resolve_options(
            **{key: self.call[key] for key in ("landmark_backend", "max_detection_size") if key in self.call}
        )
        # Where faces are searched (not with 'template'): on a copy of at most this size, and at least that one.
        self.search_sizes = None
        if options["landmark_backend"] != "template":
            self.search_sizes = int(options["max_detection_size"]), int(options["min_detection_size"])
        if args.threshold is not None:
            self.call["threshold"] = args.threshold
        if writer.fmt == "csv":
            self.call["top_k"] = len(pipe.model.config.id2label)  # every emotion's probability gets a column
        if self.annotate_dir is not None:
            try:
                self.annotate_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise AnalyzeError(
                    f"cannot create the --annotate folder {self.annotate_dir} ({error.strerror or error}); give "
                    f"--annotate a writable place"
                ) from error
            self.call["return_features"] = True
        self.thresholds = pipe.thresholds(args.threshold)
        self.progress_off = True if args.no_progress else None  # None: tqdm is off when stderr is not a terminal
        self.used_names: set[str] = set()
        self.names: dict[str, str] = {}  # images' PNG names fixed in advance (runs in parts: `annotation_names`)
        self.counts = {"records": 0, "faces": 0, "errors": 0, "warnings": 0, "tracks": 0}
        config = pipe.model.config
        self.au_names, self.emotion_labels = list(config.au_names), list(config.emotion_labels)
        self.summary = None  # --summary: the CSV, its header written now, a video's rows when the video is done
        if args.summary is not None:
            self._open_summary(args.summary)
        self.plot_dir = Path(args.plot) if args.plot else None
        self.video_stems: dict[str, str] = {}  # each video's PNG stem, for --plot and --annotate (`video_stems`)
        if self.plot_dir is not None:
            try:
                self.plot_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise AnalyzeError(
                    f"cannot create the --plot folder {self.plot_dir} ({error.strerror or error}); give "
                    "--plot a writable place"
                ) from error

    def _open_summary(self, name: str) -> None:
        """Written as SUMMARY.partial and named SUMMARY when the run ends: a killed run's rows (its finished videos)
        must not read as a whole run's, nor an earlier run's file as this one's."""
        with contextlib.suppress(FileNotFoundError):
            Path(name).unlink()
        self.summary = open_output(partial_name(name))
        self.summary_columns = summary_columns(self.au_names, self.emotion_labels)
        self._write_summary([], header=True)

    def close(self, finished: bool = False) -> None:
        """Close the summary, and give it its name where the run `finished` (else it stays SUMMARY.partial)."""
        if self.summary is not None and self.summary is not sys.stdout:
            self.summary.close()
            if finished:
                os.replace(partial_name(self.args.summary), self.args.summary)

    def emit(self, records: list[dict[str, Any]]) -> None:
        """The records of one input (an image, a video frame, a failed file): written together, at once."""
        self.writer.write_input(records)
        for record in records:
            self.counts["records"] += 1
            self.counts["faces"] += record.get("face") is not None
            self.counts["errors"] += "error" in record
            self.counts["warnings"] += "warning" in record

    def search_note(self, size: tuple[int, int] | None) -> str | None:
        """What the face search of an image (or video frame) of `size` (width, height) cannot see, when it runs on a
        downscaled copy (`search_warning`, in the command line's terms); else `None`."""
        if self.search_sizes is None or not size or min(size) <= 0:
            return None
        return search_warning(max(size), search_scale(*size, *self.search_sizes), "--max-detection-size ")

    def error_record(self, path: InputPath, message: str, **where: Any) -> None:
        self.emit([{"path": str(path), **where, "face": None, "error": message, **self.common}])

    def save_annotation(self, image: Image.Image, faces: list[dict], path: InputPath, frame: int | None = None) -> None:
        if frame is None:
            name = self.names.get(str(path)) or annotation_name(path, None, self.used_names)
        elif str(path) in self.video_stems:
            name = frame_png_name(self.video_stems[str(path)], frame)
        else:
            name = annotation_name(path, frame, self.used_names)
        drawn = annotate(image, faces, self.pipe.image_processor, self.thresholds)
        self._save_png(drawn, self.annotate_dir, name, "--annotate", "annotated image")

    def _save_png(self, drawn: Image.Image, folder: Path, name: str, option: str, what: str) -> None:
        """`drawn` as `folder/name`, marked as mf2 analyze's (`ANNOTATION_MARK`), written aside and renamed."""
        try:
            check_annotation_target(folder, name, option)  # checked before the run; a file may have come since
        except OutputClashError as error:
            raise AnalyzeError(str(error)) from error
        mark = PngInfo()
        mark.add_text(*ANNOTATION_MARK)
        target = folder / name
        try:
            with written_aside(target) as partial:  # whole PNGs only: disk full or Ctrl-C leave no cut PNG
                drawn.save(partial, format="PNG", pnginfo=mark)
        except OSError as error:
            raise AnalyzeError(
                f"cannot write the {what} {target} ({error.strerror or error}); the records before it are whole: "
                f"free some space and rerun with --resume"
            ) from error

    def _write_summary(self, rows: list[dict[str, Any]], header: bool = False) -> None:
        try:
            write_summary_rows(self.summary, rows, self.summary_columns, header)
        except OSError as error:
            raise AnalyzeError(
                f"cannot write the summary {self.args.summary} ({error.strerror or error}); free some "
                "space and run again"
            ) from error

    def report(self, path: Path, tracks: VideoTracks) -> None:
        """A video's `--summary` rows and `--plot` timelines, once the video is done (or stopped by a decode error)."""
        self.counts["tracks"] += len(tracks.tracks)
        if self.summary is not None:
            self._write_summary(tracks.rows(str(path)))
        if self.plot_dir is None:
            return
        stem = self.video_stems.get(str(path)) or path.stem or "video"
        self._drop_stale_timelines(stem, set(tracks.tracks))
        for number in sorted(tracks.tracks):
            title = f"{path.name} - track {number}"
            self._save_png(
                tracks.image(number, title, self.thresholds),
                self.plot_dir,
                track_png_name(stem, number),
                "--plot",
                "timeline",
            )

    def _drop_stale_timelines(self, stem: str, numbers: set[int]) -> None:
        """Remove the timelines an earlier run drew for tracks of this video that this run did not find: the folder
        would show more people than the run saw. Only PNGs mf2 analyze wrote (`is_annotation`)."""
        pattern = track_png_pattern(stem)
        for path in self.plot_dir.glob(f"{glob.escape(stem)}_track*.png"):
            match = pattern.fullmatch(path.name)
            if match and int(match.group(1)) not in numbers and is_annotation(path):
                path.unlink()

    def run(self, files: list[InputPath]) -> None:
        """Every input in the order given: each stretch of images streams through the pipeline together, each video
        on its own, so records come out in input order."""
        for video, group in groupby(enumerate(files), key=lambda entry: is_video(entry[1])):
            if video:
                for index, path in group:
                    self.video(index, path)
            else:
                self.images(list(group))

    def images(self, inputs: list[tuple[int, InputPath]]) -> None:
        """Images in one stream: detection runs ahead in threads, faces are batched across images. An unreadable
        file is never fed to the pipeline; its error record is written in its place among the results. A non-finite
        output is its input's error record, and a new stream takes the inputs after it."""
        while inputs:
            inputs = self._image_stream(inputs)

    def _image_stream(self, inputs: list[tuple[int, InputPath]]) -> list[tuple[int, InputPath]]:
        """`images` until the end of `inputs` or an input whose output is not finite; returns the inputs after it."""
        from tqdm.auto import tqdm

        in_flight: deque[ReadImage] = deque()  # read but not yet written, in input order
        keep_images = self.annotate_dir is not None

        # Fed to the pipeline and not yet written, by position in its input (which leaves unreadable files out): an
        # entry (and the image it keeps for --annotate) goes once written, so memory is bounded by what is in flight.
        fed: dict[int, ReadImage] = {}
        positions = count()

        def feed():
            for index, path in inputs:
                entry, image = read_image(index, path, keep_images)
                in_flight.append(entry)
                if image is not None:
                    fed[next(positions)] = entry
                    yield image

        def write_failed_reads():
            while in_flight and in_flight[0].error is not None:
                entry = in_flight.popleft()
                self.error_record(entry.path, entry.error)
                bar.update(1)

        bar = tqdm(total=len(inputs), desc="images", unit="img", disable=self.progress_off, file=sys.stderr)
        try:
            for position, faces in enumerate(self.pipe(feed(), batch_size=self.args.batch_size, **self.call)):
                write_failed_reads()
                entry = in_flight.popleft()  # results come out in input order
                del fed[position]
                records = _with_warnings(
                    face_records(faces, {"path": str(entry.path)}, self.common),
                    self.search_note(entry.size),
                    entry.warning,
                )
                if keep_images:  # drawn first: an image whose records are out has its PNG (--resume skips it)
                    self.save_annotation(entry.image, faces, entry.path)
                self.emit(records)
                bar.update(1)
            write_failed_reads()
        except InputError as error:
            if error.kind != "not_finite":  # `--no-face error`: the first faceless input
                raise AnalyzeError(_cli_input_error(error, fed[error.index].path)) from error  # ends the run
            failed = fed[error.index]
            while in_flight and in_flight[0] is not failed:  # only failed reads can stand before it
                entry = in_flight.popleft()
                self.error_record(entry.path, entry.error or f"input {entry.index}: not analysed")
            self.error_record(failed.path, f"input {failed.index}: {error.reason}")
            rest = [(index, path) for index, path in inputs if index > failed.index]
        else:
            rest = []
        finally:
            bar.close()
        return rest

    def video(self, index: int, path: Path) -> None:
        """Stream one video through the pipeline, writing records (and annotated frames) as frames come out. A video
        that cannot be decoded to its end gives an error record after the frames that were read."""
        from tqdm.auto import tqdm

        args = self.args
        try:  # opened once: its metadata here, its frames in the pipeline
            video = VideoReader(path, fps=args.video_fps, every=args.every_n_frames)
        except ValueError as error:
            self.error_record(path, f"input {index}: {error}")
            return
        info = video.info
        total = math.ceil(info["frames"] / (args.every_n_frames or 1)) if info["frames"] else None
        if args.video_fps and info["duration"]:
            sampled = info["duration"] * args.video_fps  # inf for --video-fps 1e308: every frame, which `frames` counts
            total = math.ceil(sampled) if math.isfinite(sampled) and (total is None or sampled < total) else total
        note = self.search_note((info["width"], info["height"]))  # a frame searched on a downscaled copy
        call = dict(self.call)
        if call["no_face"] == "error":
            call["no_face"] = "skip"  # one face-less frame must not end a video: it gives a face-less record
        try:
            frames = self.pipe.video(
                video,
                batch_size=args.batch_size,
                return_frames=self.annotate_dir is not None,
                detect_every=args.detect_every,
                max_gap=args.max_gap,
                **call,
            )
        except BaseException:
            video.close()
            raise
        tracks = None
        if self.summary is not None or self.plot_dir is not None:
            tracks = VideoTracks(self.au_names, self.emotion_labels)
        bar = tqdm(total=total, desc=path.name, unit="frame", disable=self.progress_off, file=sys.stderr)
        try:
            for result in frames:
                if tracks is not None:
                    tracks.add(result["time"], result["faces"])
                source = {"path": str(path), "frame": result["frame"], "time": result["time"]}
                if self.annotate_dir is not None:
                    self.save_annotation(Image.fromarray(result["image"]), result["faces"], path, result["frame"])
                # Each face carries its frame and time already; `face_records` keeps them where `source` put them.
                self.emit(_with_warnings(face_records(result["faces"], source, self.common), note))
                bar.update(1)
        except VideoDecodeError as error:
            self.error_record(path, f"input {index}: {error}", frame=error.frame, time=error.time)
        except InputError as error:  # a frame the model gives no finite output for: the video's error record there,
            # and the run goes on with the next input
            self.error_record(path, f"input {index}: {error}", frame=error.frame, time=error.time)
        finally:
            bar.close()
        if tracks is not None:  # the frames analysed, also of a video that stopped early
            self.report(path, tracks)


def _with_warnings(records: list[dict[str, Any]], search_note: str | None, *notes: str | None) -> list[dict]:
    """`records` of one input with their `warning`: for a record without a face, or with the fallback face, that no
    face was found in a search on a downscaled copy (`search_note`, replacing the pipeline's words for the Python
    option), then `notes` (e.g. an animated image's), joined by "; "."""
    marked = []
    for record in records:
        said = [record["warning"]] if record.get("warning") else []
        if search_note and (record.get("face") is None or record.get("landmark_backend") == FALLBACK_LABEL):
            said = [f"no face found: {search_note}"]
        said += [note for note in notes if note]
        if said:
            record = {**{key: value for key, value in record.items() if key != "warning"}, "warning": "; ".join(said)}
        marked.append(record)
    return marked


def _cli_input_error(error: InputError, path: InputPath) -> str:
    """The pipeline's error in the command line's terms (its flags, not the Python options)."""
    if error.kind == "no_face":
        longest, scale = error.detail["longest"], error.detail["scale"]
        note = search_warning(longest, scale, "--max-detection-size ") if longest else None
        searched = f" ({note})" if note else ""
        return (
            f"{path}: no face found by the '{error.detail['backend']}' landmark back-end{searched}; pass --no-face skip (a "
            f"record without a face) or --no-face fallback (analyse the whole image), or --landmark-backend template "
            f"for images that are already aligned face crops"
        )
    return f"{path}: {error.reason}"


__all__ = ["AnalyzeRun", "open_output"]
