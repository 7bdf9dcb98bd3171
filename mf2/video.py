"""Streaming video frames for the facial-state pipeline, one decoded frame at a time.

`VideoReader(path, fps=5)` opens a video once (its metadata in `info`) and, iterated, decodes it with PyAV (the `av`
package, whose wheels bundle FFmpeg), yielding the sampled frames as RGB arrays with their index and timestamp.
Nothing is buffered beyond the decoder's own few frames, so memory stays flat however long the video is, and the time
per frame does not grow with the frame count (the two complaints users raise about peer tools: py-feat #139 / #170
read the whole video into RAM, #182 slows down over a video).

Sampling (choose one):
- `every=N`: every N-th decoded frame (frames 0, N, 2N, ...);
- `fps=F`: about F frames per second of video time: the first frame at or after each multiple of 1/F seconds (an
  `F` above the video's rate samples every frame, however large);
- neither: every frame.

Frames come upright as players show them: a phone's video stored sideways with a display matrix (rotation metadata,
e.g. 90°) is turned by it (`VideoFrame.rotation` of PyAV, counter-clockwise degrees, in multiples of 90°; the
matrix's mirroring, rare, is not applied). `video_info` gives the size as stored.

This file has no imports from the package, so it travels with the remote-code pipeline; `av` is imported only when
a video is opened.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts", ".ogv"}
)
"""File name endings treated as videos by `is_video` (and so by the pipeline and `mf2 analyze`)."""


@dataclass
class VideoFrame:
    """One sampled frame.

    Attributes:
        index: position of the frame among all decoded frames of the stream, from 0.
        time: presentation time in seconds from the start of the stream.
        image: `(H, W, 3)` RGB `uint8` array, upright as players show it (the display matrix applied).
    """

    index: int
    time: float
    image: np.ndarray


class VideoDecodeError(ValueError):
    """A video that stops decoding before its end: FFmpeg fails mid-stream, or the stream ends before the length
    its container declares (a cut or partly copied file). The frames before it were yielded.

    Attributes:
        path: the video file.
        frame: index of the first frame that could not be decoded (= the number of frames decoded).
        time: seconds into the video where decoding stopped (`None` if unknown).
        reason: what went wrong.
    """

    def __init__(self, path: str, frame: int, time: float | None, reason: str):
        where = f"frame {frame}" + (f" (t={time:.3f} s)" if time is not None else "")
        super().__init__(f"Could not decode video '{path}' past {where}: {reason}")
        self.path, self.frame, self.time, self.reason = path, frame, time, reason


def is_video(path: Any) -> bool:
    """Whether `path` is a path (str / PathLike, not a URL) whose extension is a known video container."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    name = os.fspath(path)
    if not isinstance(name, str) or name.startswith(("http://", "https://")):
        return False
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


VIDEO_EXTRA_MISSING = "Reading videos needs PyAV: pip install 'mf2[video]' (its wheels include FFmpeg)."


def _av():
    # Imported here (and through importlib, which transformers' remote-code import check does not flag) so that
    # images work without PyAV installed.
    try:
        return importlib.import_module("av")
    except ImportError as error:
        raise ImportError(VIDEO_EXTRA_MISSING) from error


def _open(path: str | os.PathLike):
    av = _av()
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ValueError(f"Could not read video '{name}': no such file.")
    try:
        container = av.open(name)
    except av.FFmpegError as error:
        raise ValueError(f"Could not read video '{name}': FFmpeg cannot open it ({error}).") from error
    if not container.streams.video:
        container.close()
        raise ValueError(f"Could not read video '{name}': it has no video stream.")
    return container


def video_info(path: str | os.PathLike) -> dict[str, Any]:
    """Container metadata without decoding (`VideoReader.info`): `fps` (average rate), `frames` (count, 0 if
    unknown), `duration` (s, or None), `width`, `height`."""
    with VideoReader(path) as video:
        return video.info


def _info(container) -> dict[str, Any]:
    stream = container.streams.video[0]
    rate = float(stream.average_rate) if stream.average_rate else None
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # microseconds (av.time_base)
    return {
        "fps": rate,
        "frames": int(stream.frames or 0),
        "duration": duration,
        "width": stream.codec_context.width,
        "height": stream.codec_context.height,
    }


def _check_sampling(fps: float | None, every: int | None) -> None:
    if fps is not None and every is not None:
        raise ValueError(
            "Give either `fps` (frames per second to sample) or `every` (keep every N-th frame), not both."
        )
    if fps is not None and (not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0):
        raise ValueError(f"`fps` must be a positive number of frames per second, got {fps!r}.")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ValueError(f"`every` must be a positive integer (keep every N-th frame), got {every!r}.")


@dataclass
class _Sampler:
    """Which decoded frames `VideoReader` keeps: from `start` seconds on, every `every`-th, about `fps` a second."""

    start: float
    fps: float | None
    every: int | None
    next_time: float = field(init=False)  # the next sampling instant, start + k / fps

    def __post_init__(self) -> None:
        self.next_time = self.start

    def keeps(self, index: int, time: float) -> bool:
        """Whether decoded frame `index` at `time` (seconds) is sampled; frames come in order."""
        if time < self.start or (self.every is not None and index % self.every):
            return False
        if self.fps is not None:
            # Keep the first frame at or after each sampling instant; the tolerance absorbs timestamps rounded to the
            # stream's time base.
            if time + 1e-6 < self.next_time:
                return False
            steps = (time - self.start) * self.fps  # inf for a huge fps (1e308): then every frame is sampled
            self.next_time = self.start + (math.floor(steps + 1e-6) + 1) / self.fps if math.isfinite(steps) else time
        return True


class VideoReader:
    """One video, opened once: its metadata (`info`, read at once) and its sampled frames, decoded one at a time when
    iterated (see the module docstring for `fps` / `every`). Iterating it decodes the video once and closes it;
    `close()` (or a `with` block) closes a reader that is not iterated to its end.

    Args:
        path: a video file FFmpeg can read.
        fps: sample about this many frames per second of video time.
        every: keep every `every`-th decoded frame.
        start, end: only frames with `start <= time < end` (seconds) are yielded; decoding stops after `end`.
        max_frames: stop after yielding this many frames.

    Raises:
        ValueError: at construction: the file is missing or not a readable video, or the sampling options are
            invalid.
        ImportError: PyAV is not installed.
        VideoDecodeError: while iterating: decoding fails, or the stream ends before the length its container
            declares, after the frames decoded up to there were yielded.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fps: float | None = None,
        every: int | None = None,
        start: float = 0.0,
        end: float | None = None,
        max_frames: int | None = None,
    ):
        _check_sampling(fps, every)
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"`max_frames` must be a positive integer, got {max_frames!r}.")
        self.path = os.fspath(path)
        self.sampler = _Sampler(float(start), fps, every)
        self.end, self.max_frames = end, max_frames
        self._container = _open(path)
        self.info = _info(self._container)

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._container.close()

    def __iter__(self) -> Iterator[VideoFrame]:
        container = self._container
        try:
            stream = container.streams.video[0]
            # FFmpeg's own frame threading keeps a fixed small number of frames in flight: faster, still bounded.
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate) if stream.average_rate else None
            origin = stream_origin(stream)
            yielded, decoded, time, step = 0, 0, None, 1.0 / rate if rate else 0.0
            try:
                for index, frame in enumerate(container.decode(stream)):
                    decoded = index + 1
                    # Without timestamps in the container, a constant rate is assumed.
                    fallback = index / rate if rate else float(index)
                    previous, time = time, float(frame.time) - origin if frame.time is not None else fallback
                    if not rate and previous is not None and time > previous:  # no declared rate: the last gap
                        step = time - previous
                    if self.end is not None and time >= self.end:
                        return
                    if not self.sampler.keeps(index, time):
                        continue
                    # Only sampled frames are converted to RGB; the decoded frame is released right after.
                    yield VideoFrame(index=index, time=time, image=upright(frame.to_ndarray(format="rgb24"), frame))
                    yielded += 1
                    if self.max_frames is not None and yielded >= self.max_frames:
                        return
            except _av().FFmpegError as error:
                raise VideoDecodeError(self.path, decoded, _next_time(time, step), str(error)) from error
            # FFmpeg ends a cut file quietly at its last whole packet; only the declared length tells it was cut.
            missing = _missing_end(container, stream, decoded, time, step)
            if missing:
                raise VideoDecodeError(self.path, decoded, _next_time(time, step), missing)
        finally:
            container.close()


def stream_origin(stream: Any) -> float:
    """The stream's start time in seconds, which frame times count from: MPEG-TS, browser-made WebM and trimmed clips
    start their clocks past 0 (MPEG-TS typically at 1.4 s), and `VideoFrame.time` counts from the first moment."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def display_rotation(frame: Any) -> int:
    """The counter-clockwise turn, in degrees (0, 90, 180 or 270), that shows `frame` (a PyAV frame) as players do:
    its display matrix's rotation (`frame.rotation`) to the nearest quarter turn; 0 when PyAV does not say."""
    try:
        degrees = float(getattr(frame, "rotation", 0) or 0)
    except (TypeError, ValueError):
        return 0
    return int(round(degrees / 90.0)) % 4 * 90 if math.isfinite(degrees) else 0


def upright(image: np.ndarray, frame: Any) -> np.ndarray:
    """`image` (the pixels of `frame`, as stored) turned as the display matrix says."""
    turns = display_rotation(frame) // 90
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image


def _next_time(time: float | None, step: float) -> float:
    """Where the frame after one at `time` starts (the first moment not decoded), frames lasting `step` seconds."""
    if time is None:
        return 0.0
    return time + step


def _missing_end(container, stream, decoded: int, time: float | None, step: float) -> str | None:
    """Why a stream that decoded `decoded` frames (the last at `time`, each lasting `step` seconds: 1 / the declared
    rate, else the last gap between frames) stopped short of its declared end, or `None`.

    MP4 declares its frame count; Matroska and others only a duration, the container's of which may include a
    longer audio track, hence the wider margin there.
    """
    declared = int(stream.frames or 0)
    if declared:
        # A couple of frames of slack: edit lists and decoder delay may drop frames the index still counts.
        if decoded < declared - 2:
            return f"the stream ends after {decoded} of the {declared} frames its container declares (cut short?)"
        return None
    reached = _next_time(time, step) if decoded else 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration, margin = float(stream.duration * stream.time_base), 0.05
    elif container.duration is not None:
        duration, margin = container.duration / 1_000_000, 0.05 if len(container.streams) == 1 else 1.0
        # Matroska's duration counts from 0, not from a stream that starts past it (1 s into a trimmed clip):
        # compared with the end as the container's clock reads it, a whole file is not taken for a cut one.
        reached += stream_origin(stream)
    else:
        return None  # nothing declared to compare with
    if reached < duration - 2 * step - margin:
        return f"the stream ends at {reached:.3f} s of the {duration:.3f} s its container declares (cut short?)"
    return None


def write_video(path: str | os.PathLike, frames, fps: float = 25.0, codec: str = "mpeg4", rotation: int = 0) -> None:
    """Encode an iterable of `(H, W, 3)` RGB `uint8` arrays into a video file, one frame at a time.

    A small helper for tests, examples and benchmarks (e.g. synthetic clips); `frames` may be a generator, so clips
    of any length are written with constant memory. `rotation` (counter-clockwise degrees) writes a display matrix,
    as phones do for a video filmed upright and stored sideways (needs PyAV's `set_display_rotation`, PyAV 16+).
    """
    av = _av()
    container = av.open(os.fspath(path), mode="w")
    try:
        stream = None
        for array in frames:
            array = np.ascontiguousarray(array, dtype=np.uint8)
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.height, stream.width = array.shape[:2]
                stream.pix_fmt = "yuv420p"
                if rotation:
                    stream.set_display_rotation(rotation)
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    finally:
        container.close()


__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoDecodeError",
    "VideoFrame",
    "VideoReader",
    "display_rotation",
    "is_video",
    "stream_origin",
    "upright",
    "video_info",
    "write_video",
]
