"""Per-person results of a video: a summary row and a timeline picture for each track (`mf2.face_identity`).

`VideoTracks` takes a video's faces frame by frame (`add`) and keeps, for each track, running sums (the summary
row: first and last time, frames seen, mean probability and share of frames active for each AU, share of frames per
emotion) and a timeline of at most `MAX_BINS` time bins (consecutive sightings averaged two by two whenever it
fills up), so that its memory does not grow with the video's length. `timeline_image` draws a track's timeline with
PIL: one row per AU, named in full ("AU6 cheek raiser"), its probability over time with its threshold dashed and the
frames where it is active in red, then the emotion of each moment as a colour strip, a time axis and a legend.

`mf2 analyze VIDEO --summary FILE.csv --plot DIR` writes them; the web demo's video tab shows the pictures.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..facs import au_label

MAX_BINS = 1024
"""Time bins a track's timeline keeps at most (the picture is about 900 px wide)."""
EMOTION_COLOURS = {
    "neutral": (170, 170, 170),
    "anger": (214, 39, 40),
    "disgust": (120, 150, 30),
    "fear": (148, 103, 189),
    "happiness": (255, 170, 0),
    "sadness": (31, 119, 180),
    "surprise": (23, 190, 207),
    "other": (140, 86, 75),
    "contempt": (227, 119, 194),
}
_SPARE_COLOURS = ((188, 189, 34), (127, 127, 127), (255, 152, 150), (197, 176, 213))
_ACTIVE, _INACTIVE = (220, 60, 40), (140, 165, 205)


def summary_columns(au_names: Sequence[str], emotion_labels: Sequence[str]) -> list[str]:
    """The columns of a `--summary` CSV: `path`, `track`, `first_time`, `last_time` (seconds), `frames` (frames the
    track was seen on), then `mean_<AU>` (mean probability) and `active_<AU>` (share of its frames where the AU was
    active) for each AU, and `share_<emotion>` (share of its frames with that emotion on top) for each emotion."""
    return [
        "path",
        "track",
        "first_time",
        "last_time",
        "frames",
        *[f"mean_{name}" for name in au_names],
        *[f"active_{name}" for name in au_names],
        *[f"share_{label}" for label in emotion_labels],
    ]


class Timeline:
    """At most `max_bins` time bins of one track: each the start and end time of the sightings it holds, their
    count, and the sums of their AU probabilities and of their top emotions (one-hot). When full, neighbouring bins
    are merged two by two: memory is bounded whatever the video's length, the resolution halving each time."""

    def __init__(self, num_aus: int, num_emotions: int, max_bins: int = MAX_BINS):
        if max_bins < 2:
            raise ValueError(f"`max_bins` must be at least 2, got {max_bins!r}.")
        self.max_bins = int(max_bins)
        # Grown as sightings arrive (doubling, up to `max_bins`): a video's many short tracks stay small.
        capacity = min(16, self.max_bins)
        self.times = np.zeros((capacity, 2))  # start, end
        self.counts = np.zeros(capacity)
        self.au_sums = np.zeros((capacity, num_aus))
        self.emotion_counts = np.zeros((capacity, num_emotions))
        self.size = 0
        self.per_bin = 1  # sightings a bin takes before the next one opens

    def add(self, time: float, au_probabilities: np.ndarray, emotion: int) -> None:
        if self.size and self.counts[self.size - 1] < self.per_bin:
            index = self.size - 1
        else:
            if self.size == self.max_bins:
                self._halve()
            elif self.size == len(self.counts):
                self._grow()
            index = self.size
            self.size += 1
            self.times[index] = time
        self.times[index, 1] = time
        self.counts[index] += 1
        self.au_sums[index] += au_probabilities
        self.emotion_counts[index, emotion] += 1

    def _grow(self) -> None:
        capacity = min(2 * len(self.counts), self.max_bins)
        for name in ("times", "counts", "au_sums", "emotion_counts"):
            array = getattr(self, name)
            grown = np.zeros((capacity, *array.shape[1:]))
            grown[: len(array)] = array
            setattr(self, name, grown)

    def _halve(self) -> None:
        half = self.size // 2
        pairs = slice(0, 2 * half, 2), slice(1, 2 * half, 2)
        self.times[:half] = np.stack([self.times[pairs[0], 0], self.times[pairs[1], 1]], axis=1)
        for array in (self.counts, self.au_sums, self.emotion_counts):
            array[:half] = array[pairs[0]] + array[pairs[1]]
        if self.size % 2:  # an odd last bin stays as it is
            for array in (self.times, self.counts, self.au_sums, self.emotion_counts):
                array[half] = array[self.size - 1]
        self.size = half + self.size % 2
        for array in (self.counts, self.au_sums, self.emotion_counts):
            array[self.size :] = 0
        self.per_bin *= 2

    def bins(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(times (B, 2), mean AU probabilities (B, A), top emotion (B,))` of the bins so far."""
        count = self.counts[: self.size, None]
        return self.times[: self.size], self.au_sums[: self.size] / count, self.emotion_counts[: self.size].argmax(1)


class TrackStats:
    """One track's running sums (its summary row) and its `Timeline`."""

    def __init__(self, number: int, au_names: Sequence[str], emotion_labels: Sequence[str], max_bins: int = MAX_BINS):
        self.number = number
        self.au_names, self.emotion_labels = list(au_names), list(emotion_labels)
        self.first = self.last = None
        self.frames = 0
        self.au_sums = np.zeros(len(self.au_names))
        self.active = np.zeros(len(self.au_names))
        self.emotions = np.zeros(len(self.emotion_labels))
        self.timeline = Timeline(len(self.au_names), len(self.emotion_labels), max_bins)

    def add(self, time: float, face: dict[str, Any]) -> None:
        """One sighting: a pipeline face (`action_units`, `active_action_units`, `emotion`) at `time` seconds."""
        probabilities = np.array([face["action_units"][name] for name in self.au_names], np.float64)
        active = set(face["active_action_units"])
        emotion = self.emotion_labels.index(face["emotion"]["label"])
        self.first = time if self.first is None else self.first
        self.last = time
        self.frames += 1
        self.au_sums += probabilities
        self.active += [name in active for name in self.au_names]
        self.emotions[emotion] += 1
        self.timeline.add(time, probabilities, emotion)

    def row(self, path: str, digits: int = 6) -> dict[str, Any]:
        """The track's `--summary` row (`summary_columns`)."""
        frames = max(self.frames, 1)
        row: dict[str, Any] = {
            "path": path,
            "track": self.number,
            "first_time": _round(self.first, digits),
            "last_time": _round(self.last, digits),
            "frames": self.frames,
        }
        row.update({f"mean_{name}": _round(value / frames, digits) for name, value in zip(self.au_names, self.au_sums)})
        row.update(
            {f"active_{name}": _round(value / frames, digits) for name, value in zip(self.au_names, self.active)}
        )
        row.update(
            {
                f"share_{label}": _round(value / frames, digits)
                for label, value in zip(self.emotion_labels, self.emotions)
            }
        )
        return row


class VideoTracks:
    """The tracks of one video, fed frame by frame: `add(time, faces)` with a `pipe.video` result's faces (those
    without a `track`, a `no_face="fallback"` stand-in, are left out).

    Attributes:
        tracks: `TrackStats` by track number, in the order the tracks appeared.
        step: the shortest time between two frames seen (the width of one frame in the timelines).
    """

    def __init__(self, au_names: Sequence[str], emotion_labels: Sequence[str], max_bins: int = MAX_BINS):
        self.au_names, self.emotion_labels, self.max_bins = list(au_names), list(emotion_labels), max_bins
        self.tracks: dict[int, TrackStats] = {}
        self.step: float | None = None
        self._last_time: float | None = None

    def add(self, time: float, faces: Iterable[dict[str, Any]]) -> None:
        time = float(time or 0.0)
        if self._last_time is not None and time > self._last_time:
            gap = time - self._last_time
            self.step = gap if self.step is None else min(self.step, gap)
        self._last_time = time
        for face in faces:
            number = face.get("track")
            if number is None or not face.get("action_units"):
                continue
            if number not in self.tracks:
                self.tracks[number] = TrackStats(number, self.au_names, self.emotion_labels, self.max_bins)
            self.tracks[number].add(time, face)

    def rows(self, path: str) -> list[dict[str, Any]]:
        """One `--summary` row per track, by track number."""
        return [self.tracks[number].row(path) for number in sorted(self.tracks)]

    def image(self, number: int, title: str, thresholds: Sequence[float] | None = None) -> Image.Image:
        """Track `number`'s timeline (`timeline_image`)."""
        return timeline_image(self.tracks[number], title, thresholds, self.step)


def write_summary_rows(stream, rows: list[dict[str, Any]], columns: list[str], header: bool) -> None:
    """`rows` as CSV lines (after the header, when `header`) in one write and a flush."""
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    stream.write(text.getvalue())
    stream.flush()


# --------------------------------------------------------------------------------------------------- the picture


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def emotion_colour(label: str, index: int) -> tuple[int, int, int]:
    return EMOTION_COLOURS.get(label, _SPARE_COLOURS[index % len(_SPARE_COLOURS)])


def _tick_step(span: float, most: int = 10) -> float:
    for step in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span / step <= most:
            return step
    return 3600 * math.ceil(span / 3600 / most)


def _clock(seconds: float, step: float) -> str:
    if seconds >= 120:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}:{rest:02d}"
    return f"{seconds:.1f} s" if step < 1 else f"{seconds:.0f} s"


def _bar_ends(times: np.ndarray, step: float) -> list[float]:
    """Where each bin's bar ends: at the next bin's start when less than two frames (`step`, the shortest spacing)
    lie between them, so that sampled frames touch however unevenly `--video-fps` spaces them (0.08 s and 0.12 s
    apart at 10 of 25 frames a second); else one frame after its last sighting, so that a missed frame shows."""
    ends = [end + step for _, end in times]
    for index in range(len(times) - 1):
        following = times[index + 1, 0]
        if following - times[index, 1] < 1.9 * step:
            ends[index] = max(ends[index], following)
    return ends


def timeline_image(
    stats: TrackStats,
    title: str,
    thresholds: Sequence[float] | None = None,
    step: float | None = None,
    width: int = 1200,
) -> Image.Image:
    """One track over time, readable at a glance: a row per AU named in full ("AU6 cheek raiser") with its mean
    probability and share of frames active, its probability over time (red where it reaches its threshold, which is
    the dashed line), the top emotion over time as a colour strip, a time axis, and each emotion's share of frames.

    Args:
        stats: the track's `TrackStats`.
        title: the heading (e.g. the video's name and the track).
        thresholds: each AU's threshold (default 0.5).
        step: seconds one frame covers (default: the shortest time between the track's bins, else 1/25 s).
        width: the picture's width in pixels.
    """
    times, probabilities, emotions = stats.timeline.bins()
    names = stats.au_names
    thresholds = [0.5] * len(names) if thresholds is None else [float(value) for value in thresholds]
    if step is None or not step > 0:
        gaps = np.diff(times[:, 0]) if len(times) > 1 else np.array([])
        step = float(gaps[gaps > 0].min()) if np.any(gaps > 0) else 0.04
    labels = [au_label(name) for name in names]
    canvas = _Canvas.for_track(stats, labels, step, width)
    canvas.heading(stats, title)
    columns = [
        (math.floor(canvas.x_of(start)), max(math.ceil(canvas.x_of(until)) - 1, math.floor(canvas.x_of(start))))
        for (start, _), until in zip(times, _bar_ends(times, step))
    ]
    y = canvas.au_rows(stats, labels, thresholds, columns, probabilities)
    y = canvas.emotion_strip(stats, columns, emotions, y)
    y = canvas.time_axis(y)
    y = canvas.emotion_legend(stats, y)
    return canvas.image.crop((0, 0, width, min(canvas.image.height, y + 24 + canvas.pad)))


@dataclass
class _Canvas:
    """The timeline picture being drawn, its fonts and where the plot area lies (`timeline_image`)."""

    image: Image.Image
    draw: ImageDraw.ImageDraw
    fonts: tuple[Any, Any, Any]  # label, small, title
    left: int
    right: int
    top: int
    first: float  # seconds at the plot's left edge
    last: float  # seconds at its right edge
    pad: int = 14
    row_height: int = 34
    row_gap: int = 8
    strip_height: int = 30

    @classmethod
    def for_track(cls, stats: TrackStats, labels: list[str], step: float, width: int) -> _Canvas:
        label_font, small_font, title_font = _font(15), _font(12), _font(19)
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        pad, row_height, row_gap, strip_height = cls.pad, cls.row_height, cls.row_gap, cls.strip_height
        left = pad + int(max(probe.textlength(text, font=label_font) for text in [*labels, "emotion"])) + pad
        info = int(probe.textlength("mean 0.00  active 100%", font=small_font)) + 2 * pad
        top = pad + 2 * 24 + 6
        height = top + len(labels) * (row_height + row_gap) + strip_height + 30 + 24 * 2 + pad
        image = Image.new("RGB", (width, height), (255, 255, 255))
        first = stats.first if stats.first is not None else 0.0
        last = (stats.last if stats.last is not None else 0.0) + step
        fonts = (label_font, small_font, title_font)
        return cls(image, ImageDraw.Draw(image), fonts, left, width - info, top, first, last)

    @property
    def span(self) -> float:
        return max(self.last - self.first, 1e-6)

    def x_of(self, time: float) -> float:
        return self.left + (time - self.first) / self.span * (self.right - self.left)

    def heading(self, stats: TrackStats, title: str) -> None:
        self.draw.text((self.pad, self.pad), title, fill=(0, 0, 0), font=self.fonts[2])
        seen = f"seen {stats.first:.2f}-{stats.last:.2f} s on {stats.frames} frames" if stats.frames else "never seen"
        self.draw.text(
            (self.pad, self.pad + 26),
            f"{seen}. AU probability over time (0 to 1); dashed: the AU's threshold; red: active.",
            fill=(70, 70, 70),
            font=self.fonts[1],
        )

    def au_rows(
        self,
        stats: TrackStats,
        labels: list[str],
        thresholds: list[float],
        columns: list[tuple[int, int]],
        probabilities: np.ndarray,
    ) -> int:
        """A row per AU: its probability per bin, its threshold dashed, its name, mean and share active."""
        draw, left, right, pad, height = self.draw, self.left, self.right, self.pad, self.row_height
        frames = max(stats.frames, 1)
        y = self.top
        for k, (label, threshold) in enumerate(zip(labels, thresholds)):
            bottom = y + height
            draw.rectangle([left, y, right, bottom], fill=(246, 246, 246), outline=(200, 200, 200))
            for (x1, x2), probability in zip(columns, probabilities[:, k]):
                level = bottom - probability * height
                draw.rectangle([x1, level, x2, bottom], fill=_ACTIVE if probability >= threshold else _INACTIVE)
            level = bottom - threshold * height
            for x in range(left, right, 10):
                draw.line([x, level, min(x + 5, right), level], fill=(40, 40, 40), width=1)
            draw.text((pad, y + (height - 15) / 2), label, fill=(0, 0, 0), font=self.fonts[0])
            mean, active = stats.au_sums[k] / frames, stats.active[k] / frames
            draw.text(
                (right + pad, y + (height - 12) / 2),
                f"mean {mean:.2f}  active {active:.0%}",
                fill=(60, 60, 60),
                font=self.fonts[1],
            )
            y = bottom + self.row_gap
        return y

    def emotion_strip(self, stats: TrackStats, columns: list[tuple[int, int]], emotions: np.ndarray, y: int) -> int:
        """The top emotion per bin as a colour strip."""
        strip = self.strip_height
        self.draw.rectangle([self.left, y, self.right, y + strip], fill=(246, 246, 246), outline=(200, 200, 200))
        for (x1, x2), emotion in zip(columns, emotions):
            colour = emotion_colour(stats.emotion_labels[emotion], emotion)
            self.draw.rectangle([x1, y + 1, x2, y + strip - 1], fill=colour)
        self.draw.text((self.pad, y + (strip - 15) / 2), "emotion", fill=(0, 0, 0), font=self.fonts[0])
        return y + strip + 4

    def time_axis(self, y: int) -> int:
        small = self.fonts[1]
        tick = _tick_step(self.span)
        value = math.ceil(self.first / tick) * tick
        while value <= self.last + 1e-9:
            x = self.x_of(value)
            self.draw.line([x, y, x, y + 5], fill=(0, 0, 0))
            text = _clock(value, tick)
            self.draw.text((x - self.draw.textlength(text, font=small) / 2, y + 7), text, fill=(0, 0, 0), font=small)
            value += tick
        self.draw.text((self.right + self.pad, y + 7), "time", fill=(0, 0, 0), font=small)
        return y + 30

    def emotion_legend(self, stats: TrackStats, y: int) -> int:
        """Each emotion's colour and share of frames, wrapped to the picture's width."""
        small, frames, width = self.fonts[1], max(stats.frames, 1), self.image.width
        x = self.left
        for index, label in enumerate(stats.emotion_labels):
            text = f"{label} {stats.emotions[index] / frames:.0%}"
            needed = 18 + int(self.draw.textlength(text, font=small)) + 16
            if x + needed > width - self.pad:
                x, y = self.left, y + 22
            self.draw.rectangle([x, y + 2, x + 12, y + 14], fill=emotion_colour(label, index), outline=(80, 80, 80))
            self.draw.text((x + 18, y + 1), text, fill=(0, 0, 0), font=small)
            x += needed
        return y


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


__all__ = [
    "EMOTION_COLOURS",
    "MAX_BINS",
    "Timeline",
    "TrackStats",
    "VideoTracks",
    "emotion_colour",
    "summary_columns",
    "timeline_image",
    "write_summary_rows",
]
