"""MF² pre-processing: find the face, align it, place the AU regions, tokenise captions.

`MF2ImageProcessor` turns photos into what `MF2Model` reads: aligned, normalised face crops (`pixel_values`) and the
per-AU boxes (`au_boxes`, normalised `xyxy` in the crop) computed from 68 landmarks with `mf2.au_regions`. `MF2Processor`
adds the BERT tokenizer for emotion and per-AU captions, giving exactly what `MF2ForPreTraining` takes.

Coordinates: `landmarks`, `face_boxes` and `alignment` use the original image's pixel frame, with pixel `(i, j)`
centred at `x = j, y = i` (numpy / dlib / OpenCV). `alignment` maps those coordinates to the same kind of pixel
coordinates of the `size x size` crop; `au_boxes * size` are positions in the crop where 0 and `size` are its edges.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.processing_utils import ImagesKwargs, ProcessorMixin

from .au_regions import MEAN_SHAPE_68, au_boxes_from_landmarks, canonical_landmarks, check_au_names
from .configuration_mf2 import AU_NAMES
from .landmarks import FaceLandmarks, get_landmark_backend, resolve_backend_name, template_face

# Landmarks the alignment is fitted on: nose (27-35) and eyes (36-47). Brows and mouth move with expressions (AU1,
# AU2, AU4, AU25, AU26...), so they are left out; the jaw line is the least reliable part of every detector.
ALIGNMENT_POINTS: tuple[int, ...] = tuple(range(27, 48))

NO_FACE_CHOICES = ("error", "fallback", "skip")
MULTIPLE_FACES_CHOICES = ("largest", "all")
FALLBACK_LABEL = "template-fallback"

# Fields of the image processor's output, in order.
IMAGE_FEATURES = ("pixel_values", "au_boxes", "landmarks", "face_boxes", "image_index", "alignment", "landmark_backend")


class MF2ImagesKwargs(ImagesKwargs, total=False):
    """`ImagesKwargs` plus MF²'s own options (lets `from_pretrained(..., landmark_backend=...)` override them)."""

    landmark_backend: str
    no_face: str
    multiple_faces: str
    au_names: list[str]
    max_detection_size: int
    num_workers: int
    backend_kwargs: dict


# --------------------------------------------------------------------------------------------------- geometry


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping `source` onto `target`.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns", PAMI 1991.

    Args:
        source, target: `(n, 2)` corresponding points.

    Returns:
        `(2, 3)` matrix `[s R | t]` with `target ≈ source @ (s R).T + t`.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    variance = (centred_s**2).sum() / len(source)
    if not np.isfinite(variance) or variance < 1e-12:
        raise ValueError("Cannot align a face whose landmarks are all at one point.")
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ reflection @ vt
    scale = float(np.trace(np.diag(singular) @ reflection) / variance)
    translation = mean_t - scale * rotation @ mean_s
    return np.concatenate([scale * rotation, translation[:, None]], axis=1)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a `(2, 3)` affine matrix to `(..., 2)` points."""
    matrix = np.asarray(matrix, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a `(2, 3)` affine matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    inverse = np.linalg.inv(matrix[:, :2])
    return np.concatenate([inverse, -(inverse @ matrix[:, 2])[:, None]], axis=1)


# RMS distance (in face-box units) of 68 landmarks from dlib's mean shape after the best similarity fit. Real faces,
# profiles and strong expressions included, stay below 0.18 (dlib on 1,373 faces of 300-W AFW, CK+ and FER+); points
# scattered at random or in the wrong order are far above it.
MAX_SHAPE_RESIDUAL = 0.25


def implausible_landmarks(points: np.ndarray) -> str | None:
    """Why 68 points cannot be a face (`None` when they can): not finite, collapsed, far from any face shape, or parts
    in the wrong order (in the face's own upright frame: brows above eyes above mouth above chin, the nose tip between
    brows and mouth, the image-left eye and mouth corner left of the image-right ones).

    Every landmark back-end puts 68 points on whatever its detector boxed; this is what keeps a box on a badge, a
    pattern or a mirrored shape from being analysed as a face.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.shape != MEAN_SHAPE_68.shape or not np.isfinite(points).all():
        return "the landmarks are not 68 finite points"
    try:
        matrix = similarity_transform(points, MEAN_SHAPE_68)
    except ValueError:
        return "the landmarks collapse to one point"
    upright = apply_affine(matrix, points)  # the face frame: box (0, 0)-(1, 1), eyes level
    residual = float(np.sqrt(((upright - MEAN_SHAPE_68) ** 2).sum(axis=1).mean()))
    if residual > MAX_SHAPE_RESIDUAL:
        return f"the landmarks do not have a face's shape (residual {residual:.2f} > {MAX_SHAPE_RESIDUAL})"
    x, y = upright[:, 0], upright[:, 1]
    brows, eyes, nose, mouth, chin = y[17:27].mean(), y[36:48].mean(), y[30], y[48:68].mean(), y[8]
    # The nose tip is only asked to lie between brows and mouth: on wide-eyed faces dlib puts it at eye height.
    if not (brows < eyes < mouth < chin and brows < nose < mouth):
        return "brows, eyes, nose, mouth and chin are not in that order from top to bottom"
    if not (x[36:42].mean() < x[42:48].mean() and x[48] < x[54]):
        return "the image-left eye or mouth corner is not left of the image-right one (a mirrored shape)"
    return None


def _alignment_target(size: int) -> np.ndarray:
    """Canonical landmarks in pixel coordinates of a `size x size` crop."""
    return canonical_landmarks() * size - 0.5


def _stretch_matrix(width: int, height: int, size: int) -> np.ndarray:
    """Pixel-coordinate map of resizing a `width x height` image to `size x size`."""
    sx, sy = size / width, size / height
    return np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def _warp(image: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """The `size x size` crop that `matrix` (original → crop pixel coordinates) defines, bilinear.

    Large faces are first cropped and box-filtered down (`Image.reduce`), so shrinking a face from a 24-MP photo
    neither aliases nor touches the whole image.
    """
    linear = matrix[:, :2]
    # PIL addresses pixel k by the interval [k, k+1): shift the pixel-centre map by half a pixel on both sides.
    offset = matrix[:, 2] + 0.5 - linear @ np.array([0.5, 0.5])
    inverse = np.linalg.inv(linear)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    source = (corners - offset) @ inverse.T
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    factor = max(1, int(1.0 / (1.5 * scale)))
    width, height = image.size
    margin = 2 * factor
    x0, y0 = (np.floor(source.min(axis=0)) - margin).astype(int)
    x1, y1 = (np.ceil(source.max(axis=0)) + margin).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:  # the crop lies entirely outside the image
        return Image.new("RGB", (size, size))
    region = image if (x0, y0, x1, y1) == (0, 0, width, height) else image.crop((x0, y0, x1, y1))
    if factor > 1:
        region = region.reduce(factor)
    linear_in = inverse / factor
    offset_in = (-(inverse @ offset) - np.array([x0, y0])) / factor
    data = (linear_in[0, 0], linear_in[0, 1], offset_in[0], linear_in[1, 0], linear_in[1, 1], offset_in[1])
    return region.transform((size, size), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)


# --------------------------------------------------------------------------------------------------- image input


class ImageInputError(ValueError):
    """An input that cannot be analysed, with what a caller needs to name it in its own terms.

    Attributes:
        index: the input's position in the call (the processor's list; the pipeline re-numbers it).
        path: the file or URL when the input was given as one, else `None`.
        reason: what is wrong, without the input's name.
    """

    def __init__(self, index: int, path: str | None, reason: str):
        self.index, self.path, self.reason = index, path, reason
        super().__init__(self.describe(f"image {index}"))

    def describe(self, where: str) -> str:
        """The message with the input called `where` ("image 3", "input 3", "frame 12 (t=0.480 s)")."""
        path = f" ('{self.path}')" if self.path is not None else ""
        return f"Could not read {where}{path}: {self.reason}"


class NoFaceError(ImageInputError):
    """An image without a face under `no_face="error"`; `backend` is the landmark back-end that found none."""

    HINT = (
        "Pass no_face='fallback' to treat such images as aligned face crops, no_face='skip' to leave them out, or "
        "landmark_backend='template' for inputs that are already aligned crops."
    )

    def __init__(self, index: int, path: str | None, backend: str):
        self.backend = backend
        super().__init__(index, path, f"no face found by the '{backend}' landmark back-end. {self.HINT}")

    def describe(self, where: str) -> str:
        path = f" ('{self.path}')" if self.path is not None else ""
        return f"No face found in {where}{path} by the '{self.backend}' landmark back-end. {self.HINT}"


class AnimatedImageWarning(UserWarning):
    """An animated image (GIF, APNG, WebP) of which only the first frame is analysed."""


def _path_of(item: Any) -> str | None:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else None


def _array_to_pil(array: np.ndarray, index: int) -> Image.Image:
    """Any numeric image array, `(H, W)`, `(H, W, C)` or `(C, H, W)` with C in 1, 3, 4, to a PIL image."""
    if array.size == 0:
        raise ImageInputError(index, None, f"the array is empty (shape {array.shape}).")
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first (torch layout)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 3, 4)):
        raise ImageInputError(
            index,
            None,
            f"expected an (H, W), (H, W, C) or (C, H, W) array with C in 1, 3 or 4, got shape {array.shape}.",
        )
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise ImageInputError(index, None, f"unsupported array dtype {array.dtype}.")
        values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if np.issubdtype(array.dtype, np.floating) and values.max(initial=0.0) <= 1.0:
            values = values * 255.0  # floats in [0, 1]
        elif array.dtype == np.uint16:
            values = values / 257.0
        array = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)))  # (H, W) → L, (H, W, 3) → RGB, (H, W, 4) → RGBA


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent pixels become white, 16-bit and float images are scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0.0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0.0) <= 1.0:
            peak = 1.0
        return Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(item: Any, index: int = 0) -> Image.Image:
    """Read one input (path, PIL image, numpy array or torch tensor) as an RGB PIL image.

    An animated image (GIF, APNG, WebP) gives its first frame, with an `AnimatedImageWarning` and the frame count in
    the returned image's `info["n_frames"]`; to analyse every frame, convert it to a video.

    Raises:
        ImageInputError: (a `ValueError`) naming the input, when it cannot be read as an image.
    """
    if isinstance(item, (str, os.PathLike)):
        return _load_path(os.fspath(item), index)
    if isinstance(item, Image.Image):
        try:
            item.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageInputError(index, None, f"the PIL image cannot be decoded ({error}).") from error
        if item.width == 0 or item.height == 0:
            raise ImageInputError(index, None, f"the image is empty ({item.width}x{item.height}).")
        return _to_rgb(item)
    if type(item).__module__.startswith("torch"):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        return _array_to_pil(item, index)
    raise ImageInputError(
        index,
        None,
        f"unsupported input type {type(item).__name__}; give a path, a PIL image, a numpy array or a torch tensor.",
    )


def _load_path(path: str, index: int) -> Image.Image:
    if path.startswith(("http://", "https://")):
        from transformers.image_utils import load_image as load_url

        try:
            return _to_rgb(load_url(path))
        except Exception as error:
            raise ImageInputError(index, path, f"{type(error).__name__}: {error}") from error
    if os.path.isdir(path):
        raise ImageInputError(index, path, "it is a folder, not an image file; pass the image files in it.")
    if not os.path.isfile(path):
        raise ImageInputError(index, path, "no such file.")
    try:
        with Image.open(path) as opened:
            frames = int(getattr(opened, "n_frames", 1))
            opened.load()
            image = ImageOps.exif_transpose(opened)
            image = image.copy() if image is opened else image
    except UnidentifiedImageError as error:
        raise ImageInputError(index, path, "not an image file (PIL cannot identify it).") from error
    except Image.DecompressionBombError as error:
        raise ImageInputError(index, path, str(error)) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(index, path, f"the file is corrupt or truncated ({error}).") from error
    image = _to_rgb(image)
    if frames > 1:
        # Say so rather than silently analysing one frame of many.
        warnings.warn(
            f"'{path}' is an animated image of {frames} frames; only its first frame is analysed (convert it to a "
            f"video to analyse every frame).",
            AnimatedImageWarning,
            stacklevel=3,
        )
        image.info["n_frames"] = frames
    return image


def as_image_list(images: Any) -> list:
    """Flatten the accepted input forms (one image, a list of images, a 4-D batch array) to a list."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray) or type(images).__module__.startswith("torch"):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence):
        return list(images)
    return [images]


# --------------------------------------------------------------------------------------------------- processors

_executors: dict[tuple[int, int], ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    # Keyed by process: a forked worker (e.g. `datasets.map(num_proc=...)`) inherits the dict but not the threads.
    key = (os.getpid(), workers)
    with _executors_lock:
        if key not in _executors:
            _executors[key] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mf2-image")
        return _executors[key]


class MF2ImageProcessor(BaseImageProcessor):
    r"""
    Finds faces, puts 68 landmarks on them, aligns each face (eyes level, canonical scale: the similarity transform
    that maps its nose and eye landmarks onto `mf2.au_regions.canonical_landmarks()`), crops it to `size x size`,
    normalises it for the vision encoder, and places the per-AU boxes from the aligned landmarks.

    Args:
        landmark_backend (`str`, *optional*, defaults to `"dlib"`):
            `"dlib"`, `"face_alignment"` (FAN, as in the paper), `"mediapipe"` or `"template"` (inputs are already
            aligned face crops: no detection, the canonical shape over the whole image). See `mf2.landmarks`.
        size (`int`, *optional*, defaults to 224): side of the square face crop.
        image_mean, image_std (`list[float]`, *optional*): normalisation, ImageNet's by default.
        do_normalize (`bool`, *optional*, defaults to `True`): normalise with `image_mean` / `image_std` (else
            pixel values are in `[0, 1]`).
        no_face (`str`, *optional*, defaults to `"error"`): when an image has no face, `"error"` raises a
            `ValueError` naming it, `"fallback"` treats the whole image as an aligned crop (`landmark_backend` entry
            `"template-fallback"`), `"skip"` leaves the image out (see `image_index`).
        multiple_faces (`str`, *optional*, defaults to `"largest"`): keep the `"largest"` face of each image, or
            `"all"` (one output row per face, `image_index` says which image it came from). Both run the same
            detection; detections whose landmarks fail `implausible_landmarks` are not faces.
        au_names (`list[str]`, *optional*): AUs to place boxes for, in output order; MF²'s 12 by default.
        max_detection_size (`int`, *optional*, defaults to 1024): images whose longest side is larger are detected
            on a downscaled copy (coordinates are mapped back); the crop is always taken from the full image.
        num_workers (`int`, *optional*): threads for a batch (dlib and PIL release the GIL); defaults to the CPU count
            (at most 4).
        backend_kwargs (`dict`, *optional*): arguments of the landmark back-end, e.g. `{"upsample": 1}` (dlib),
            `{"device": "cuda"}` (face_alignment), `{"model_path": ...}` (mediapipe).

    Returns (from `__call__`) a `BatchFeature` with, for N faces:
        - `pixel_values` `(N, 3, size, size)` float
        - `au_boxes` `(N, len(au_names), 2, 4)` float: normalised `xyxy` in the `pixel_values` frame, image-left
          box first, clipped to `[0, 1]`
        - `landmarks` `(N, 68, 2)` float: original image pixels
        - `face_boxes` `(N, 4)` float: `xyxy`, original image pixels
        - `image_index` `(N,)` long: input image of each face
        - `alignment` `(N, 2, 3)` float: affine map from original image pixels to crop pixels
        - `landmark_backend` `list[str]` of length N: the back-end that placed each face's landmarks

    Example:

    ```python
    >>> from mf2 import MF2ImageProcessor
    >>> processor = MF2ImageProcessor(landmark_backend="dlib")
    >>> features = processor(["photo.jpg"], return_tensors="pt")
    >>> features["pixel_values"].shape, features["au_boxes"].shape
    (torch.Size([1, 3, 224, 224]), torch.Size([1, 12, 2, 4]))
    ```
    """

    valid_kwargs = MF2ImagesKwargs
    model_input_names = ["pixel_values", "au_boxes"]

    def __init__(
        self,
        landmark_backend: str = "dlib",
        size: int | dict = 224,
        image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: Sequence[float] = IMAGENET_DEFAULT_STD,
        do_normalize: bool = True,
        no_face: str = "error",
        multiple_faces: str = "largest",
        au_names: Sequence[str] | None = None,
        max_detection_size: int = 1024,
        num_workers: int | None = None,
        backend_kwargs: dict | None = None,
        **kwargs,
    ):
        kwargs.pop("image_processor_type", None)
        super().__init__(**kwargs)
        self.landmark_backend = landmark_backend
        self.size = size
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.do_normalize = do_normalize
        self.no_face = no_face
        self.multiple_faces = multiple_faces
        self.au_names = list(au_names) if au_names is not None else list(AU_NAMES)
        self.max_detection_size = max_detection_size
        self.num_workers = num_workers
        self.backend_kwargs = dict(backend_kwargs or {})
        self._options({})  # validate now rather than at the first call

    _OPTION_NAMES = (
        "landmark_backend", "size", "image_mean", "image_std", "do_normalize", "no_face", "multiple_faces",
        "au_names", "max_detection_size", "num_workers", "backend_kwargs",
    )  # fmt: skip

    def _options(self, overrides: dict) -> dict:
        unknown = set(overrides) - set(self._OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"MF2ImageProcessor got unknown option(s) {sorted(unknown)}; valid options: {list(self._OPTION_NAMES)}."
            )
        options = {name: overrides.get(name, getattr(self, name)) for name in self._OPTION_NAMES}
        size = options["size"]
        if isinstance(size, dict):
            sides = {size.get(key) for key in ("height", "width", "shortest_edge") if size.get(key) is not None}
            if len(sides) != 1:
                raise ValueError(f"MF2ImageProcessor makes square crops; got size={size}.")
            size = sides.pop()
        if not isinstance(size, (int, np.integer)) or size < 8:
            raise ValueError(f"`size` must be an integer >= 8 (side of the square face crop), got {size!r}.")
        options["size"] = int(size)
        options["landmark_backend"] = resolve_backend_name(options["landmark_backend"])
        for key, choices in (("no_face", NO_FACE_CHOICES), ("multiple_faces", MULTIPLE_FACES_CHOICES)):
            if options[key] not in choices:
                raise ValueError(f"`{key}` must be one of {choices}, got {options[key]!r}.")
        check_au_names(options["au_names"])
        for key in ("image_mean", "image_std"):
            values = np.asarray(options[key], dtype=np.float32).reshape(-1)
            if values.size not in (1, 3):
                raise ValueError(f"`{key}` needs 1 or 3 values, got {options[key]!r}.")
            options[key] = np.broadcast_to(values, (3,)).copy()
        if np.any(options["image_std"] == 0):
            raise ValueError("`image_std` must not contain zeros.")
        if int(options["max_detection_size"]) < 64:
            raise ValueError(f"`max_detection_size` must be >= 64, got {options['max_detection_size']}.")
        workers = options["num_workers"]
        options["num_workers"] = int(workers) if workers is not None else max(1, min(os.cpu_count() or 1, 4))
        return options

    def get_backend(self, **overrides):
        """The landmark back-end these options select (built once per process and reused)."""
        options = self._options(overrides)
        return get_landmark_backend(options["landmark_backend"], **options["backend_kwargs"])

    # ------------------------------------------------------------------ call

    def __call__(self, images, return_tensors: str | None = "pt", **overrides) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **overrides)

    def preprocess(self, images, return_tensors: str | None = "pt", **overrides) -> BatchFeature:
        """Detect, align and crop every image; see the class docstring for the outputs and options."""
        options = self._options(overrides)
        items = as_image_list(images)
        if not items:
            raise ValueError("MF2ImageProcessor got no images.")
        backend = None
        if options["landmark_backend"] != "template":
            backend = get_landmark_backend(options["landmark_backend"], **options["backend_kwargs"])

        def run(index: int) -> list[dict]:
            return self._process_one(items[index], index, backend, options)

        workers = min(options["num_workers"], len(items))
        if workers > 1:
            per_image = list(_executor(workers).map(run, range(len(items))))
        else:
            per_image = [run(index) for index in range(len(items))]
        faces = [face for image_faces in per_image for face in image_faces]
        return self._collate(faces, options, return_tensors)

    def _process_one(self, item: Any, index: int, backend, options: dict) -> list[dict]:
        image = load_image(item, index)
        width, height = image.size
        if backend is None:
            found = [(template_face(width, height), "template")]
        else:
            found = self._detect(image, backend, options)
            if not found:
                if options["no_face"] == "error":
                    raise NoFaceError(index, _path_of(item), backend.name)
                if options["no_face"] == "skip":
                    return []
                found = [(template_face(width, height), FALLBACK_LABEL)]
        return [self._align(image, face, label, index, options) for face, label in found]

    def _detect(self, image: Image.Image, backend, options: dict) -> list[tuple[FaceLandmarks, str]]:
        width, height = image.size
        limit = int(options["max_detection_size"])
        detection_image = image
        if max(width, height) > limit:
            ratio = limit / max(width, height)
            target = (max(1, round(width * ratio)), max(1, round(height * ratio)))
            detection_image = image.resize(target, Image.Resampling.BILINEAR, reducing_gap=2.0)
        # One search for both modes: "largest" keeps the largest of the faces "all" returns.
        faces = [
            face for face in backend.detect(np.asarray(detection_image)) if implausible_landmarks(face.points) is None
        ]
        if detection_image is not image:
            sx, sy = width / detection_image.width, height / detection_image.height
            faces = [face.scaled(sx, sy) for face in faces]
        faces = sorted(faces, key=lambda face: face.area, reverse=True)
        if options["multiple_faces"] == "largest":
            faces = faces[:1]
        return [(face, backend.name) for face in faces]

    def _align(self, image: Image.Image, face: FaceLandmarks, label: str, index: int, options: dict) -> dict:
        size = options["size"]
        width, height = image.size
        points = np.asarray(face.points, dtype=np.float64)
        if label.startswith("template"):
            matrix = _stretch_matrix(width, height, size)
            crop = image.resize((size, size), Image.Resampling.BILINEAR)
        else:
            target = _alignment_target(size)
            matrix = similarity_transform(points[list(ALIGNMENT_POINTS)], target[list(ALIGNMENT_POINTS)])
            crop = _warp(image, matrix, size)
        aligned = apply_affine(matrix, points)
        boxes = au_boxes_from_landmarks(aligned + 0.5, options["au_names"]) / size
        pixels = np.asarray(crop, dtype=np.float32) * np.float32(1 / 255)
        if options["do_normalize"]:
            pixels = (pixels - options["image_mean"]) / options["image_std"]
        return {
            "pixel_values": np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32),
            "au_boxes": np.clip(boxes, 0.0, 1.0).astype(np.float32),
            "landmarks": points.astype(np.float32),
            "face_boxes": np.asarray(face.box, dtype=np.float32),
            "image_index": index,
            "alignment": matrix.astype(np.float32),
            "landmark_backend": label,
        }

    @staticmethod
    def _collate(faces: list[dict], options: dict, return_tensors) -> BatchFeature:
        size, num_aus = options["size"], len(options["au_names"])
        empty = {
            "pixel_values": (3, size, size), "au_boxes": (num_aus, 2, 4), "landmarks": (68, 2), "face_boxes": (4,),
            "alignment": (2, 3),
        }  # fmt: skip
        data = {}
        for key, shape in empty.items():
            data[key] = np.stack([face[key] for face in faces]) if faces else np.zeros((0, *shape), np.float32)
        data["image_index"] = np.array([face["image_index"] for face in faces], dtype=np.int64)
        data["landmark_backend"] = [face["landmark_backend"] for face in faces]
        data = {key: data[key] for key in IMAGE_FEATURES}
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["landmark_backend"])

    def visualize(self, image, features, index: int = 0) -> Image.Image:
        """`visualize` with this processor's AU names."""
        return visualize(image, features, index=index, au_names=self.au_names)

    def to_dict(self) -> dict[str, Any]:
        output = {key: value for key, value in super().to_dict().items() if not key.startswith("_")}
        output["image_processor_type"] = type(self).__name__
        return output


class MF2Processor(ProcessorMixin):
    r"""
    `MF2ImageProcessor` + a BERT-family tokenizer: faces and AU boxes from images, token ids from emotion captions
    and per-AU captions, exactly the inputs of `MF2ForPreTraining`.

    Args:
        image_processor (`MF2ImageProcessor`): the image processor.
        tokenizer (`PreTrainedTokenizerBase`): the text encoder's tokenizer.
        emotion_caption_max_length (`int`, *optional*, defaults to 61): emotion captions are truncated to this.
        au_caption_max_length (`int`, *optional*, defaults to 169): AU captions are truncated to this.
    """

    def __init__(self, image_processor=None, tokenizer=None, emotion_caption_max_length: int = 61,
                 au_caption_max_length: int = 169, **kwargs):  # fmt: skip
        self.emotion_caption_max_length = int(emotion_caption_max_length)
        self.au_caption_max_length = int(au_caption_max_length)
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_config(cls, config, tokenizer, **image_processor_kwargs) -> MF2Processor:
        """A processor matching an `MF2Config`: its AU names and caption lengths, and for encoders with fixed
        position embeddings (ViT, DeiT) its input size. DINOv2 interpolates its position embeddings (its
        `image_size`, 518, is the pretraining size), so the crop keeps the default 224 there unless `size=` is given.
        """
        image_processor_kwargs.setdefault("au_names", list(config.au_names))
        image_size = getattr(config.vision_config, "image_size", None)
        if getattr(config.vision_config, "model_type", None) in ("vit", "deit") and isinstance(image_size, int):
            image_processor_kwargs.setdefault("size", image_size)
        return cls(
            MF2ImageProcessor(**image_processor_kwargs),
            tokenizer,
            emotion_caption_max_length=config.emotion_caption_max_length,
            au_caption_max_length=config.au_caption_max_length,
        )

    @property
    def model_input_names(self) -> list[str]:
        return [
            "pixel_values", "au_boxes", "emotion_input_ids", "emotion_attention_mask", "au_input_ids",
            "au_attention_mask", "au_caption_mask",
        ]  # fmt: skip

    def __call__(
        self,
        images=None,
        emotion_captions: Sequence[str] | None = None,
        au_captions: Sequence[Sequence[str | None] | dict] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Process images and/or captions.

        Args:
            images: anything `MF2ImageProcessor` takes; `kwargs` are its per-call options.
            emotion_captions: one caption per image → `emotion_input_ids`, `emotion_attention_mask` `(N, L)`; an empty
                caption (unknown emotion) gives an all-zero attention row, which `MF2ForPreTraining` skips.
            au_captions: per image, one caption per AU (a list in `au_names` order, or a dict AU name → caption);
                `""` or `None` means no caption → `au_input_ids`, `au_attention_mask` `(N, A, L)` and
                `au_caption_mask` `(N, A)` (0 where the caption is missing; those rows are all padding).

        With images, captions are given per input image and repeated for each face found in it (`image_index`), so
        every output row matches a face. Without images, N is the number of captions.
        """
        if images is None and emotion_captions is None and au_captions is None:
            raise ValueError("MF2Processor needs `images`, `emotion_captions` or `au_captions`.")
        data: dict[str, Any] = {}
        rows = None
        num_images = None
        if images is not None:
            items = as_image_list(images)
            num_images = len(items)
            data.update(self.image_processor(items, return_tensors=None, **kwargs))
            rows = np.asarray(data["image_index"], dtype=np.int64)
        elif kwargs:
            raise TypeError(f"MF2Processor got image options {sorted(kwargs)} but no images.")

        if emotion_captions is not None:
            captions = self._per_row(emotion_captions, "emotion_captions", num_images, rows)
            bad = [i for i, caption in enumerate(captions) if not isinstance(caption, str)]
            if bad:
                raise ValueError(f"emotion_captions must be strings; entries {bad} are not.")
            present = np.asarray([bool(caption.strip()) for caption in captions], dtype=bool)
            ids, mask = self._tokenize([c if keep else "" for c, keep in zip(captions, present)],
                                       self.emotion_caption_max_length)  # fmt: skip
            # An empty caption (unknown emotion) becomes an all-padding row, which the model leaves out of Emo-VL.
            ids[~present] = self.tokenizer.pad_token_id or 0
            mask[~present] = 0
            data["emotion_input_ids"], data["emotion_attention_mask"] = ids, mask

        if au_captions is not None:
            per_row = self._per_row(au_captions, "au_captions", num_images, rows)
            au_names = list(self.image_processor.au_names)
            flat, present = [], []
            for i, captions in enumerate(per_row):
                if isinstance(captions, dict):
                    unknown = set(captions) - set(au_names)
                    if unknown:
                        raise ValueError(f"au_captions[{i}] names unknown AUs {sorted(unknown)}; AUs: {au_names}.")
                    captions = [captions.get(name) for name in au_names]
                if isinstance(captions, str) or len(captions) != len(au_names):
                    raise ValueError(
                        f"au_captions[{i}] must hold {len(au_names)} captions (one per AU, in the order {au_names}) "
                        f"or be a dict AU name -> caption."
                    )
                for caption in captions:
                    if caption is not None and not isinstance(caption, str):
                        raise ValueError(f"au_captions[{i}] holds a {type(caption).__name__}; captions are strings.")
                    has_text = bool(caption and caption.strip())
                    present.append(has_text)
                    flat.append(caption if has_text else "")
            present = np.asarray(present, dtype=bool).reshape(len(per_row), len(au_names))
            ids, mask = self._tokenize(flat, self.au_caption_max_length)
            ids = ids.reshape(len(per_row), len(au_names), ids.shape[-1])
            mask = mask.reshape(len(per_row), len(au_names), mask.shape[-1])
            ids[~present] = self.tokenizer.pad_token_id or 0
            mask[~present] = 0
            data["au_input_ids"], data["au_attention_mask"] = ids, mask
            data["au_caption_mask"] = present.astype(np.int64)

        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["landmark_backend"])

    @staticmethod
    def _per_row(values, name: str, num_images: int | None, rows: np.ndarray | None) -> list:
        values = list(values) if not isinstance(values, str) else [values]
        if num_images is None:
            return values
        if len(values) != num_images:
            raise ValueError(f"{name} has {len(values)} entries for {num_images} images; give one per image.")
        return [values[row] for row in rows]

    def _tokenize(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64)
        encoded = self.tokenizer(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="np")
        return encoded["input_ids"].astype(np.int64), encoded["attention_mask"].astype(np.int64)

    def visualize(self, image, features, index: int = 0) -> Image.Image:
        """`visualize` with this processor's AU names."""
        return self.image_processor.visualize(image, features, index=index)


# --------------------------------------------------------------------------------------------------- drawing

_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180),
)  # fmt: skip


def _numpy(value) -> np.ndarray:
    if type(value).__module__.startswith("torch"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def visualize(image, features, index: int = 0, au_names: Sequence[str] | None = None) -> Image.Image:
    """Draw one face of `MF2ImageProcessor`'s output on the original image.

    Args:
        image: the original input (path, PIL, array), or the list of inputs given to the processor (then the one
            `features["image_index"][index]` names is used).
        features: the processor's output.
        index: which face (output row) to draw.
        au_names: names of the AU boxes; defaults to MF²'s 12 AUs (or `AU#k` if the count differs).

    Returns:
        A PIL image: the 68 landmarks, the face box with the back-end's name, and each AU box (mapped back from the
        aligned crop, so rotated with the face) labelled with its AU.
    """
    image_index = int(_numpy(features["image_index"])[index])
    if isinstance(image, (list, tuple)):
        image = image[image_index]
    canvas = load_image(image, image_index).copy()
    draw = ImageDraw.Draw(canvas)
    landmarks = _numpy(features["landmarks"])[index].astype(np.float64)
    face_box = _numpy(features["face_boxes"])[index].astype(np.float64)
    boxes = _numpy(features["au_boxes"])[index].astype(np.float64)
    inverse = invert_affine(_numpy(features["alignment"])[index])
    size = _numpy(features["pixel_values"]).shape[-1]
    if au_names is None:
        au_names = list(AU_NAMES) if len(boxes) == len(AU_NAMES) else [f"AU#{k}" for k in range(len(boxes))]

    face_size = max(face_box[2] - face_box[0], face_box[3] - face_box[1], 1.0)
    width = max(1, int(round(face_size / 150)))
    font = _font(max(9, int(face_size / 22)))
    labels = features.get("landmark_backend") if hasattr(features, "get") else None
    draw.rectangle([float(v) for v in face_box], outline=(255, 255, 255), width=width + 1)
    if labels is not None:
        draw.text((float(face_box[0]), float(face_box[1]) - font.size - 2), str(labels[index]), fill=(255, 255, 255),
                  font=font)  # fmt: skip
    for k, name in enumerate(au_names):
        colour = _PALETTE[k % len(_PALETTE)]
        for side in range(boxes.shape[1]):
            x1, y1, x2, y2 = boxes[k, side] * size - 0.5  # crop edges → crop pixel coordinates
            corners = apply_affine(inverse, np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]]))
            draw.polygon([tuple(p) for p in corners], outline=colour, width=width)
            top = corners[np.argmin(corners[:, 1])]
            draw.text((float(top[0]) + 1, float(top[1]) + 1), name, fill=colour, font=font)
    radius = max(1.0, face_size / 120)
    for x, y in landmarks:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(0, 255, 0))
    return canvas


__all__ = [
    "ALIGNMENT_POINTS",
    "MAX_SHAPE_RESIDUAL",
    "AnimatedImageWarning",
    "ImageInputError",
    "MF2ImageProcessor",
    "MF2Processor",
    "NoFaceError",
    "apply_affine",
    "as_image_list",
    "implausible_landmarks",
    "invert_affine",
    "load_image",
    "similarity_transform",
    "visualize",
]
