"""Test images for the face pre-processing tests, all generated at test time (nothing binary is committed).

The photos are scikit-image's `astronaut` (NASA, public domain: one frontal face, 512x512 RGB) and, as a second
person for the video tracking tests, matplotlib's `grace_hopper.jpg` (Commodore Grace M. Hopper's official US Navy
portrait, public domain: one frontal face, 512x600 RGB; matplotlib comes with the test extra).
"""

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

# iBUG 68-point index of each point's mirror image (left/right swapped), for horizontal-flip checks.
MIRROR_68 = np.array(
    list(range(16, -1, -1))  # jaw
    + list(range(26, 16, -1))  # brows
    + [27, 28, 29, 30, 35, 34, 33, 32, 31]  # nose
    + [45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40]  # eyes
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55]  # outer lips
    + [64, 63, 62, 61, 60, 67, 66, 65]  # inner lips
)

# Where the astronaut's face is (dlib box ≈ x 179-267, y 83-171); this crop holds the face and hair, not the
# mission patch lower down (which dlib sometimes takes for a small face).
ASTRONAUT_FACE_CROP = (120, 20, 330, 240)


@cache
def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def astronaut() -> np.ndarray:
    """512x512x3 uint8 RGB photo with one face (a fresh copy)."""
    return _astronaut().copy()


def on_canvas(image: np.ndarray, canvas_size: tuple[int, int], offset: tuple[int, int], fill=128) -> np.ndarray:
    """`image` pasted at `offset = (dx, dy)` on a `canvas_size = (width, height)` grey canvas."""
    width, height = canvas_size
    dx, dy = offset
    canvas = np.full((height, width, 3), fill, dtype=np.uint8)
    canvas[dy : dy + image.shape[0], dx : dx + image.shape[1]] = image
    return canvas


def two_faces() -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """A 720x560 canvas with the astronaut's face pasted twice: full size at (20, 30), 0.7x at (430, 260).

    Returns the image and `[(dx, dy, scale), ...]`, largest face first.
    """
    face = Image.fromarray(astronaut()).crop(ASTRONAUT_FACE_CROP)
    small = face.resize((round(face.width * 0.7), round(face.height * 0.7)), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (720, 560), (90, 110, 130))
    placements = [(20, 30, 1.0), (430, 260, 0.7)]
    canvas.paste(face, placements[0][:2])
    canvas.paste(small, placements[1][:2])
    return np.asarray(canvas).copy(), placements


def no_face(width: int = 400, height: int = 300, seed: int = 0) -> np.ndarray:
    """A smooth colour gradient with noise: no face anywhere."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def data_dir() -> Path:
    """The shared development data (`../shared/data` next to the repository, or `$MF2_DATA_DIR`)."""
    return Path(os.environ.get("MF2_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def afw_rows(limit: int) -> list[dict]:
    """The first `limit` rows of the 300-W AFW Parquet as dicts (image bytes, landmarks, file_name)."""
    import pyarrow.parquet as pq

    table = pq.read_table(data_dir() / "300w" / "afw.parquet", columns=["image", "landmarks", "file_name"])
    return table.slice(0, limit).to_pylist()


def moving_face_frames(photo: np.ndarray, count: int, size: tuple[int, int] = (640, 480), scale: float = 1.0):
    """`count` frames of `photo` moving about a `size = (width, height)` grey canvas as a head does in a video:
    sliding up to 90 px sideways and 30 px up and down, growing and shrinking by 10 % and rolling by up to 5
    degrees, at most ~10 px from one frame to the next (at 25 fps, a brisk but ordinary head movement).

    `photo` is centred at `scale` times its size; the frames are `(height, width, 3)` uint8 RGB arrays, generated
    one at a time.
    """
    source = Image.fromarray(photo)
    width, height = size
    for t in range(count):
        zoom = scale * (1.0 + 0.1 * np.sin(2 * np.pi * t / 50))
        angle = np.deg2rad(5.0 * np.sin(2 * np.pi * t / 70))
        centre = np.array([width / 2 + 90 * np.sin(2 * np.pi * t / 60), height / 2 + 30 * np.sin(2 * np.pi * t / 45)])
        # PIL's affine transform maps output pixels to input pixels: the inverse of photo → frame.
        cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
        inverse = np.array([[cos, sin], [-sin, cos]])
        offset = np.array([source.width / 2, source.height / 2]) - inverse @ centre
        data = (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1])
        frame = source.transform(size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR, fillcolor=(128,) * 3)
        yield np.asarray(frame)


def write_moving_face_video(path: Path, count: int, fps: float = 25) -> Path:
    """A 640x480 video of `count` `moving_face_frames` of the astronaut (the tests' and benchmarks' tracking clip),
    generated and encoded one frame at a time."""
    from mf2.video import write_video

    write_video(path, moving_face_frames(astronaut(), count), fps=fps)
    return path


# Where Grace Hopper's face is in matplotlib's 512x600 portrait (dlib box ≈ x 169-365, y 130-326); the crop holds it as
# ASTRONAUT_FACE_CROP holds the astronaut's, so that both heads come out alike in size.
HOPPER_FACE_CROP = (38, 0, 506, 480)


@cache
def _hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as stream:
        return np.asarray(Image.open(stream).convert("RGB"))


def hopper() -> np.ndarray:
    """512x600x3 uint8 RGB portrait of a second person (Grace Hopper, US Navy, public domain; a fresh copy)."""
    return _hopper().copy()


def head(person: str, height: int = 176) -> Image.Image:
    """A person's head and shoulders as an RGBA patch `height` px tall with a soft oval edge, to move about a scene:
    `"astronaut"`, `"mirrored"` (the astronaut's mirror image: the same person, turned the other way) or
    `"hopper"`. The face is about 0.4 `height` wide, in the middle of the patch."""
    if person in ("astronaut", "mirrored"):
        patch = Image.fromarray(astronaut()).crop(ASTRONAUT_FACE_CROP)
        if person == "mirrored":
            patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif person == "hopper":
        patch = Image.fromarray(hopper()).crop(HOPPER_FACE_CROP)
    else:
        raise ValueError(f"no such person: {person!r}")
    width = round(patch.width * height / patch.height)
    patch = patch.resize((width, height), Image.Resampling.LANCZOS).convert("RGBA")
    from PIL import ImageDraw, ImageFilter

    mask = Image.new("L", patch.size, 0)
    ImageDraw.Draw(mask).ellipse([width * 0.04, height * 0.02, width * 0.96, height * 0.98], fill=255)
    patch.putalpha(mask.filter(ImageFilter.GaussianBlur(height / 40)))
    return patch


@dataclass
class Actor:
    """One person of a `scene`: `person` (as `head` takes it) whose patch is centred at `path(frame)`, or absent from
    the frame where `path` gives `None`. Actors are drawn in their order: a later one passes in front."""

    person: str
    path: Callable[[int], tuple[float, float] | None]
    height: int = 176
    patch: Image.Image = field(init=False, repr=False)

    def __post_init__(self):
        self.patch = head(self.person, self.height)

    def rect(self, frame: int) -> tuple[float, float, float, float] | None:
        """The patch's `xyxy` rectangle on `frame`, or `None` when the actor is absent."""
        centre = self.path(frame)
        if centre is None:
            return None
        x, y = centre
        return x - self.patch.width / 2, y - self.patch.height / 2, x + self.patch.width / 2, y + self.patch.height / 2


def scene(
    actors: Sequence[Actor],
    count: int,
    size: tuple[int, int] = (640, 480),
    occluders: Sequence[tuple[int, int, tuple[int, int, int, int]]] = (),
) -> Iterator[np.ndarray]:
    """`count` frames `(height, width, 3)` of `actors` on a grey-blue `size` canvas, generated one at a time;
    `occluders` are `(first frame, end frame, xyxy)` grey boards drawn over everything on frames first..end-1."""
    from PIL import ImageDraw

    for frame in range(count):
        canvas = Image.new("RGB", size, (105, 115, 128))
        for actor in actors:
            rect = actor.rect(frame)
            if rect is not None:
                canvas.paste(actor.patch, (round(rect[0]), round(rect[1])), actor.patch)
        for first, end, box in occluders:
            if first <= frame < end:
                ImageDraw.Draw(canvas).rectangle(box, fill=(70, 72, 76))
        yield np.asarray(canvas)


def actor_of(box: Sequence[float], actors: Sequence[Actor], frame: int) -> int | None:
    """Which actor a face box found on `frame` belongs to: the one whose patch holds the box's centre, the nearest
    patch centre if several do; `None` if none does."""
    x, y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    best, distance = None, float("inf")
    for index, actor in enumerate(actors):
        rect = actor.rect(frame)
        if rect is None or not (rect[0] <= x <= rect[2] and rect[1] <= y <= rect[3]):
            continue
        away = np.hypot(x - (rect[0] + rect[2]) / 2, y - (rect[1] + rect[3]) / 2)
        if away < distance:
            best, distance = index, away
    return best
