"""What the web demo shows, computed from the `facial-state` pipeline's results, without Gradio.

One job: turn an upload (or a webcam snapshot, or a video) into page-ready pieces — the annotated image, the
emotion probabilities, the AU bars as HTML, the explanation, the JSON record, the per-frame table and the AU curves —
or into one clear message when the input cannot be analysed. `mf2.cli.demo` only wires these into Gradio, so this part
is tested without a browser (and without Gradio installed).

Only the package's documented API is used: `pipeline("facial-state")` calls (`explain`, `return_landmarks`,
`return_features`, `multiple_faces`, `no_face`, `top_k`), `pipe.video(...)`, the record fields, the model config's
identity and AU thresholds, and `mf2.visualize` for boxes, landmarks and AU regions.
"""

from __future__ import annotations

import html
import json
import math
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..face_search import SMALLEST_FACE_SEEN
from ..integration.default_model import model_identity

MAX_UPLOAD_MB = 25
"""Largest upload accepted (Gradio refuses larger files before they reach the server's disk for long)."""
MAX_MEGAPIXELS = 50.0
"""Largest photo analysed. Bigger ones are refused before decoding: a small PNG can decode to gigabytes."""
DISPLAY_SIZE = 1600
"""Longest side of the annotated image sent to the browser (the analysis itself reads the face at full resolution)."""
DETECTION_SIZE = 2048
"""Longest side of the copy faces are searched on (the pipeline's default is 1024, which misses faces under about
160 px in a 12-megapixel phone photo; here about 80 px, for a longer search)."""
VIDEO_FPS = 5.0
MAX_VIDEO_FRAMES = 300
"""Sampled frames analysed per video (60 s at 5 fps): the demo runs on a shared CPU; `mf2 analyze` has no limit."""


class DemoInputError(ValueError):
    """An input the demo cannot analyse; its message is shown in the page as it is."""


@dataclass
class ImageResult:
    """One analysed image: what the page shows. `faces` are pipeline records (all 8 emotions, no features)."""

    message: str
    annotated: Image.Image | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] | None = None
    crops: list[Image.Image] = field(default_factory=list)
    """Each face zoomed out of the annotated image (AU regions are unreadable on a small face in a big photo)."""


@dataclass
class VideoUpdate:
    """The results of a video so far: one table row per face of each sampled frame (one row for a frame without a
    face), with its `track` (the person); the AU curves of the person seen most; one row per person (`people`);
    and, in the last update, each person's timeline picture (`timelines`, as `mf2 analyze --plot` draws it)."""

    message: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    curves: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    people: list[dict[str, Any]] = field(default_factory=list)
    timelines: list[tuple[Image.Image, str]] = field(default_factory=list)
    main_track: int | None = None
    """The track the curves follow: the person seen on the most frames."""


# --------------------------------------------------------------------------------------------------- inputs


def check_upload(path: str | Path, max_megapixels: float = MAX_MEGAPIXELS, max_mb: float = MAX_UPLOAD_MB) -> Path:
    """The uploaded file if it is a photo the demo takes; otherwise a `DemoInputError` saying why, in user terms.

    Only the header is read here (size in pixels), so a non-image or a decompression bomb is refused cheaply; a file
    whose header is fine but whose data is corrupt is reported by the pipeline's own error."""
    path = Path(path)
    if not path.is_file():
        raise DemoInputError("The upload did not arrive; please upload the file again.")
    megabytes = path.stat().st_size / 2**20
    if megabytes > max_mb:
        raise DemoInputError(f"This file is {megabytes:.0f} MB; the demo takes files up to {max_mb:.0f} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise DemoInputError(_too_large("This photo", None, max_megapixels)) from None
    except Exception:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError...) for bad files
        raise DemoInputError(
            f"Cannot read '{path.name}' as an image: it is not an image file, or it is corrupt. "
            "Upload a photo (JPEG, PNG, WebP, ...)."
        ) from None
    check_size(width, height, max_megapixels)
    return path


def check_size(width: int, height: int, max_megapixels: float = MAX_MEGAPIXELS, what: str = "This photo") -> None:
    """A `DemoInputError` for an image over `max_megapixels`, whatever it came from (upload or webcam snapshot)."""
    if width * height > max_megapixels * 1e6:
        raise DemoInputError(_too_large(f"{what} ({width} × {height} pixels)", width * height, max_megapixels))


def _too_large(what: str, pixels: int | None, limit: float) -> str:
    size = f" has {pixels / 1e6:.0f} megapixels;" if pixels else " is far too large;"
    return f"{what}{size} the demo takes photos up to {limit:.0f} megapixels. Please downscale it and try again."


def _without_path(error: Exception, path: str | Path) -> str:
    """The first line of `error` with the upload's server-side path (a private temporary folder) cut to its name."""
    return str(error).splitlines()[0].replace(str(path), Path(path).name)


def _pipeline_message(error: Exception) -> str:
    """The pipeline's error without the server-side temporary path it names."""
    reason = getattr(error, "reason", None)
    if reason:
        return f"Cannot analyse this image: {reason}."
    return f"Cannot analyse this input: {str(error).splitlines()[0]}"


# --------------------------------------------------------------------------------------------------- images


def analyze_image(
    pipe, image: Image.Image | str | Path | None, name: str = "image", max_mb: float = MAX_UPLOAD_MB
) -> ImageResult:
    """Every face of one photo (a path, as uploaded, or a PIL image from the webcam), or a message saying why not.
    Faces are searched for on a copy of at most `DETECTION_SIZE` px, and the message says which are too small there."""
    if image is None:
        return ImageResult("Upload a photo, take a webcam snapshot or click an example.")
    if isinstance(image, Image.Image):  # a webcam snapshot: the same size limit as an upload
        check_size(*image.size, what="This snapshot")
    else:
        image = str(check_upload(image, max_mb=max_mb))
    emotions = len(pipe.model.config.id2label)
    try:
        faces = pipe(
            image,
            explain=True,
            return_landmarks=True,
            return_features=True,
            multiple_faces="all",
            no_face="skip",
            top_k=emotions,
            max_detection_size=DETECTION_SIZE,
        )
    except ValueError as error:  # the pipeline's input errors (unreadable data, non-finite output) are ValueErrors
        raise DemoInputError(_pipeline_message(error)) from error
    unseen = _unseen_faces(image)
    if not faces:
        raise DemoInputError(
            f"No face was found in this image.{unseen} Try a photo where the face is frontal and well lit."
        )
    annotated = draw_faces(image, faces)
    crops = [face_crop(annotated, face["box"]) for face in faces]
    annotated.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE), Image.Resampling.LANCZOS)  # only ever shrinks
    faces = [{key: value for key, value in face.items() if key != "features"} for face in faces]
    config = pipe.model.config
    record = {**model_identity(config, config.name_or_path), "input": name, "faces": faces}
    summary = ", ".join(
        f"#{n + 1} {face['emotion']['label']} ({face['emotion']['score']:.2f})" for n, face in enumerate(faces)
    )
    plural = "s" if len(faces) > 1 else ""
    return ImageResult(f"Found {len(faces)} face{plural}: {summary}.{unseen}", annotated, faces, record, crops)


def _unseen_faces(image: Image.Image | str) -> str:
    """The sentence on the faces too small to be seen in a photo larger than `DETECTION_SIZE`, else ""."""
    if isinstance(image, Image.Image):
        longest = max(image.size)
    else:
        with Image.open(image) as opened:
            longest = max(opened.size)
    if longest <= DETECTION_SIZE:
        return ""
    smallest = math.ceil(SMALLEST_FACE_SEEN * longest / DETECTION_SIZE)
    return f" In a photo this large ({longest} px), faces under about {smallest} px across are not seen."


def thresholds(pipe) -> dict[str, float]:
    """Each AU's activation threshold: the tuned ones stored in the config, 0.5 where unset (as the pipeline)."""
    config = pipe.model.config
    values = getattr(config, "au_thresholds", None) or [0.5] * len(config.au_names)
    return dict(zip(config.au_names, (float(value) for value in values)))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def draw_faces(image: Image.Image | str, faces: list[dict[str, Any]]) -> Image.Image:
    """Boxes, landmarks and AU regions (`mf2.visualize`), then each face's number and emotion under its box, the
    numbers matching the per-face tabs; at the photo's resolution (it is downscaled for the browser after drawing,
    so lines keep their weight)."""
    from mf2 import visualize

    canvas: Image.Image | str = image
    for face in faces:
        canvas = visualize(canvas, face["features"], index=0)
    canvas = canvas.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    font = _font(max(12, int(max(canvas.size) / 45)))
    for number, face in enumerate(faces, start=1):
        x1, _, _, y2 = face["box"]
        text = f"#{number} {face['emotion']['label']} {face['emotion']['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y2 + 4), text, font=font)
        draw.rectangle([left - 3, top - 3, right + 3, bottom + 3], fill=(0, 0, 0))
        draw.text((x1, y2 + 4), text, fill=(255, 230, 0), font=font)
    return canvas


def face_crop(annotated: Image.Image, box: list[float], margin: float = 0.45, size: int = 320) -> Image.Image:
    """The face's box with a margin (for its label below), cut from the full-resolution annotated image and
    scaled to `size` pixels wide."""
    x1, y1, x2, y2 = box
    pad = margin * max(x2 - x1, y2 - y1)
    area = (max(0, x1 - pad), max(0, y1 - pad), min(annotated.width, x2 + pad), min(annotated.height, y2 + pad))
    crop = annotated.crop(tuple(int(round(v)) for v in area))
    return crop.resize((size, max(1, round(size * crop.height / max(crop.width, 1)))), Image.Resampling.LANCZOS)


def emotion_scores(face: dict[str, Any]) -> dict[str, float]:
    """{emotion: probability} for Gradio's `Label`, which draws them as bars, most probable first."""
    return {item["label"]: float(item["score"]) for item in face["emotions"]}


def au_bars_html(face: dict[str, Any], au_thresholds: dict[str, float]) -> str:
    """One bar per AU: its probability, a tick at its threshold, active AUs filled in red and marked "active"."""
    active = set(face["active_action_units"])
    rows = []
    for name, probability in face["action_units"].items():
        is_active = name in active
        tick = 100 * au_thresholds.get(name, 0.5)
        state = "active" if is_active else ""
        rows.append(
            f'<div class="mf2-au-row{" mf2-au-active" if is_active else ""}" data-au="{html.escape(name)}">'
            f'<span class="mf2-au-name">{html.escape(name)}</span>'
            f'<span class="mf2-au-track"><span class="mf2-au-bar" style="width:{100 * probability:.1f}%"></span>'
            f'<span class="mf2-au-tick" style="left:{tick:.1f}%" title="threshold {tick / 100:.2f}"></span></span>'
            f'<span class="mf2-au-value">{probability:.2f}</span><span class="mf2-au-state">{state}</span></div>'
        )
    title = '<div class="mf2-au-title">Action Units (presence probability)</div>'
    legend = '<div class="mf2-au-legend">bar: probability · tick: threshold · red: active</div>'
    return f'<div class="mf2-au-bars">{title}{"".join(rows)}{legend}</div>'


AU_BARS_CSS = """
.mf2-au-title { font-weight: 600; margin-bottom: 6px; }
.mf2-au-row { display: flex; align-items: center; gap: 8px; margin: 3px 0; font-size: 14px; }
.mf2-au-name { width: 48px; font-weight: 600; }
.mf2-au-track { position: relative; flex: 1; height: 14px; background: #e5e7eb; border-radius: 3px; }
.mf2-au-bar { position: absolute; left: 0; top: 0; bottom: 0; background: #93a5c8; border-radius: 3px; }
.mf2-au-active .mf2-au-bar { background: #dc3c28; }
.mf2-au-tick { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #111; }
.mf2-au-value { width: 36px; text-align: right; font-variant-numeric: tabular-nums; }
.mf2-au-state { width: 44px; color: #dc3c28; font-weight: 600; }
.mf2-au-legend { margin-top: 6px; font-size: 12px; color: #6b7280; }
"""


def write_record(record: dict[str, Any] | list[dict[str, Any]], folder: str | Path, stem: str) -> Path:
    """The JSON record (or JSON lines, for a video) in the demo's temporary folder, under a unique name."""
    lines = record if isinstance(record, list) else None
    path = Path(folder) / f"{stem}-{uuid.uuid4().hex[:8]}.{'jsonl' if lines is not None else 'json'}"
    with open(path, "w", encoding="utf-8") as stream:
        if lines is not None:
            stream.writelines(json.dumps(line) + "\n" for line in lines)
        else:
            json.dump(record, stream, indent=2)
    return path


# --------------------------------------------------------------------------------------------------- videos


def expected_frames(path: str | Path, fps: float, max_frames: int) -> int | None:
    """About how many frames `pipe.video(path, fps=fps)` yields (for the progress bar); None when unknown."""
    try:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / 1e6
    except Exception:  # unreadable: the pipeline says why, this is only for the bar
        return None
    return min(max_frames, math.ceil(seconds * fps)) if seconds > 0 else None


def analyze_video(
    pipe,
    path: str | Path | None,
    fps: float = VIDEO_FPS,
    max_frames: int = MAX_VIDEO_FRAMES,
    progress: Callable[[int, int | None], None] | None = None,
    every: int = 10,
    max_mb: float = MAX_UPLOAD_MB,
) -> Iterator[VideoUpdate]:
    """Stream a video through `pipe.video`, yielding the results so far every `every` frames and at the end.

    Every face is analysed and followed from frame to frame (`track`, `mf2.face_identity`): the table has a row per
    face, the curves follow the person seen most, `people` sums each person up, and the last update adds each
    person's timeline."""
    if path is None:
        yield VideoUpdate("Upload a video to analyse it frame by frame.")
        return
    if Path(path).stat().st_size > max_mb * 2**20:
        raise DemoInputError(f"This video is larger than {max_mb:g} MB; please upload a shorter clip.")
    total = expected_frames(path, fps, max_frames)
    try:
        frames = pipe.video(str(path), fps=fps, max_frames=max_frames, explain=False, multiple_faces="all")
    except ValueError as error:
        raise DemoInputError(f"Cannot read this file as a video: {_without_path(error, path)}") from error
    from mf2.cli.track_report import VideoTracks

    config = pipe.model.config
    tracks = VideoTracks(config.au_names, config.emotion_labels)
    update = VideoUpdate("")
    try:
        for count, result in enumerate(frames, start=1):
            tracks.add(result["time"], result["faces"])
            _add_frame(update, result, tracks)
            if progress is not None:
                progress(count, total)
            if count % every == 0:
                update.message = f"Analysed {count} frame(s)…"
                yield update
    except ValueError as error:  # a decode error mid-way: keep the frames read, say where it stopped
        update.message = f"The video could not be decoded to its end ({_without_path(error, path)}); "
    else:
        update.message = ""
    frames_seen = len(update.records)
    with_face = sum(1 for record in update.records if record["faces"])
    people = len(tracks.tracks)
    update.message += (
        f"Analysed {frames_seen} frame(s) at {fps:g} fps, {with_face} with a face; "
        f"{people} {'person' if people == 1 else 'people'} (tracks)."
    )
    if update.main_track is not None and people > 1:
        update.message += f" The curves follow track {update.main_track}, seen most."
    if frames_seen >= max_frames:
        update.message += f" The demo stops after {max_frames} frames; `mf2 analyze` takes whole videos."
    au_thresholds = list(thresholds(pipe).values())
    update.timelines = [
        (tracks.image(number, f"track {number}", au_thresholds), f"track {number}") for number in sorted(tracks.tracks)
    ]
    yield update


def _add_frame(update: VideoUpdate, result: dict[str, Any], tracks) -> None:
    """The table rows (one per face, one for a frame without a face), the JSON line and the per-person rows of one
    sampled frame; the curves are those of the person seen most (`tracks`: `mf2.cli.track_report.VideoTracks`)."""
    faces = result["faces"]
    time = round(float(result["time"] or 0.0), 3)
    for face in faces or [None]:
        row: dict[str, Any] = {"frame": result["frame"], "time": time}
        row["track"] = face.get("track") if face else None
        row["emotion"] = face["emotion"]["label"] if face else ""
        row["score"] = round(face["emotion"]["score"], 3) if face else None
        row["active AUs"] = " ".join(face["active_action_units"]) if face else ""
        for name, probability in (face["action_units"] if face else {}).items():
            row[name] = round(probability, 3)
        update.rows.append(row)
    update.records.append({"frame": result["frame"], "time": result["time"], "faces": faces})
    if tracks.tracks:
        main = max(tracks.tracks.values(), key=lambda stats: stats.frames).number
        # The curves grow with the frame's row of the person seen most, or are redrawn when another person leads.
        rows = update.rows if main != update.main_track else update.rows[-max(len(faces), 1) :]
        if main != update.main_track:
            update.main_track, update.curves = main, []
        update.curves.extend(
            {"time": row["time"], "AU": name, "probability": row[name]}
            for row in rows
            if row["track"] == main
            for name in tracks.au_names
        )
    update.people = [_person(stats) for _, stats in sorted(tracks.tracks.items())]


def _person(stats) -> dict[str, Any]:
    """One row of the people table: when the person was seen, their most frequent emotion, their most active AUs."""
    frames = max(stats.frames, 1)
    emotion = stats.emotion_labels[int(stats.emotions.argmax())]
    active = sorted(zip(stats.active / frames, stats.au_names), reverse=True)
    return {
        "track": stats.number,
        "from (s)": round(stats.first, 2),
        "to (s)": round(stats.last, 2),
        "frames": stats.frames,
        "emotion (most frames)": f"{emotion} ({stats.emotions.max() / frames:.0%})",
        "most active AUs": ", ".join(f"{name} {share:.0%}" for share, name in active[:3] if share > 0),
    }


__all__ = [
    "AU_BARS_CSS",
    "DemoInputError",
    "ImageResult",
    "VideoUpdate",
    "analyze_image",
    "analyze_video",
    "au_bars_html",
    "check_upload",
    "draw_faces",
    "emotion_scores",
    "face_crop",
    "thresholds",
    "write_record",
]
