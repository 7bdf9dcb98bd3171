"""`MF2ImageProcessor`: find the faces of photos, place 68 landmarks, align each face, and place the per-AU boxes.

It turns photos into what `MF2Model` reads: aligned, normalised face crops (`pixel_values`) and the per-AU boxes
(`au_boxes`, normalised `xyxy` in the crop) computed from 68 landmarks with `mf2.au_regions`.

Coordinates: `landmarks`, `face_boxes` and `alignment` use the original image's pixel frame, with pixel `(i, j)`
centred at `x = j, y = i` (numpy / dlib / OpenCV). `alignment` maps those coordinates to the same kind of pixel
coordinates of the `size x size` crop; `au_boxes * size` are positions in the crop where 0 and `size` are its edges.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from copy import deepcopy
from typing import Any

import numpy as np
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from transformers.processing_utils import ImagesKwargs

from .alignment import (
    ALIGNMENT_POINTS,
    alignment_target,
    apply_affine,
    similarity_transform,
    square_crop_size,
    stretch_matrix,
    warp,
)
from .au_regions import au_boxes_from_landmarks, check_au_names
from .configuration_mf2 import AU_NAMES
from .face_search import (
    FALLBACK_LABEL,
    NoFaceError,
    check_boxes_in_image,
    find_faces,
    fit_faces,
    per_image_boxes,
    resolve_no_face,
    search_scale,
)
from .image_loading import (
    as_image_list,
    channels_last,
    checked_data_format,
    is_array,
    load_image,
    own_channels,
    path_of,
)
from .landmarks import (
    FaceLandmarks,
    detector_crop_face,
    get_landmark_backend,
    resolve_backend_name,
    template_face,
)
from .visualization import visualize

MULTIPLE_FACES_CHOICES = ("largest", "all")
CHANNEL_ORDERS = ("rgb", "bgr")

# Fields of the image processor's output, in order.
IMAGE_FEATURES = (
    "pixel_values",
    "au_boxes",
    "landmarks",
    "face_boxes",
    "image_index",
    "alignment",
    "landmark_backend",
    "detection_scale",
)


BOOKKEEPING_KEYS = frozenset({"auto_map", "processor_class", "_processor_class"})
"""What transformers writes beside the options in a saved processor file, and passes back when it loads one."""


class MF2ImageProcessorKwargs(ImagesKwargs, total=False):
    """MF²'s own options beside `ImagesKwargs`' (`size`, `image_mean`, `image_std`, `do_normalize`, `do_convert_rgb`
    and `input_data_format` are used too). Named `<processor class>Kwargs`, as transformers' image processors name it.

    Declared once, here: `MF2ImageProcessor` takes them at construction and per call, and `from_pretrained(...,
    landmark_backend=...)` overrides the saved ones (transformers reads `valid_kwargs`).
    """

    landmark_backend: str
    no_face: str
    multiple_faces: str
    au_names: list[str]
    max_detection_size: int
    min_detection_size: int
    num_workers: int
    backend_kwargs: dict
    channel_order: str


MF2ImagesKwargs = MF2ImageProcessorKwargs
"""The former name of `MF2ImageProcessorKwargs`."""

# Every option: the six of `ImagesKwargs` the processor honours, then MF²'s own (`ImagesKwargs` declares many more).
OPTION_NAMES: tuple[str, ...] = (
    "size",
    "image_mean",
    "image_std",
    "do_normalize",
    "do_convert_rgb",
    "input_data_format",
    *(name for name in MF2ImageProcessorKwargs.__annotations__ if name not in ImagesKwargs.__annotations__),
)
# Options for which an explicit `None` is a value (off / inferred) and is kept, as transformers keeps it; for the others
# `None` means the default.
NONE_IS_A_VALUE = ("do_normalize", "do_convert_rgb", "input_data_format")


_executors: dict[tuple[int, int], ThreadPoolExecutor] = {}
_executors_lock = threading.Lock()


def _executor(workers: int) -> ThreadPoolExecutor:
    """A pool of `workers` threads shared by every processor of this process (dlib and PIL release the GIL)."""
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
            pixel values are in `[0, 1]`). An explicit `None` is kept (and saved): no normalisation.
        do_convert_rgb (`bool`, *optional*, defaults to `True`): give RGB pixel values whatever the input (grey,
            transparent, palette images are converted; transparent pixels become white). Off (`False` or `None`),
            grey and RGBA inputs keep their channels (`(N, 1, ...)`, `(N, 4, ...)`, alpha as is) while faces are still
            found on their RGB view; `image_mean` / `image_std` then need one value, or one per channel.
        input_data_format (`str`, *optional*): `"channels_first"` or `"channels_last"`, the layout of numpy arrays
            and tensors given as images; inferred when unset (a 1-, 3- or 4-long last axis is the channels).
        no_face (`str`, *optional*, defaults to `"error"`): when an image has no face, `"error"` raises a
            `ValueError` naming it, `"fallback"` treats the whole image as an aligned crop (`landmark_backend` entry
            `"template-fallback"`; the face is placed where a typical detector crop holds it,
            `mf2.au_regions.detector_crop_landmarks`, and aligned like a found one), `"skip"` leaves the image out (see `image_index`; `"drop"`, its old spelling,
            works with a `FutureWarning`).
        multiple_faces (`str`, *optional*, defaults to `"largest"`): keep the `"largest"` face of each image, or
            `"all"` (one output row per face, `image_index` says which image it came from). "all" runs the back-end's
            whole search; "largest" first its cheaper one (`LandmarkBackend.detect_coarse`: dlib without upsampling,
            faces from ~80 px) and the whole search only when that finds no face. Detections whose landmarks fail
            `implausible_landmarks` are not faces.
        au_names (`list[str]`, *optional*): AUs to place boxes for, in output order; MF²'s 12 by default.
        max_detection_size (`int`, *optional*, defaults to 1024): images whose longest side is larger are detected
            on a downscaled copy (coordinates are mapped back); the crop is always taken from the full image. Faces
            under about `SMALLEST_FACE_SEEN / scale` px of the image are then not seen (~160 px in a 4032x3024 photo,
            ~390 px in a 10000-px panorama): `detection_scale` says the copy's scale, and a no-face error says what
            was missed. A value of at least the image's longest side searches at full resolution (slower: the
            search's time grows with the pixels).
        min_detection_size (`int`, *optional*, defaults to 192): images whose longest side is smaller (face crops
            such as FER+'s 48 px) are detected on a copy upscaled to it: dlib's detector misses faces under ~40 px.
        num_workers (`int`, *optional*): threads for a batch (dlib and PIL release the GIL); defaults to the CPU count
            (at most 4).
        backend_kwargs (`dict`, *optional*): arguments of the landmark back-end, e.g. `{"upsample": 1}` (dlib),
            `{"device": "cuda"}` (face_alignment), `{"model_path": ...}` (mediapipe).
        channel_order (`str`, *optional*, defaults to `"rgb"`): the order of the colour channels of numpy arrays
            and tensors given as images: `"rgb"`, or `"bgr"` for OpenCV's (`cv2.imread`, `VideoCapture` frames; a
            fourth channel is alpha either way). Files and PIL images carry their own order and are never swapped.

    Returns (from `__call__`) a `BatchFeature` with, for N faces:
        - `pixel_values` `(N, 3, size, size)` float
        - `au_boxes` `(N, len(au_names), 2, 4)` float: normalised `xyxy` in the `pixel_values` frame, image-left
          box first, clipped to `[0, 1]`
        - `landmarks` `(N, 68, 2)` float: original image pixels
        - `face_boxes` `(N, 4)` float: `xyxy`, original image pixels: the box the face's landmarks were placed in.
          With dlib that is the box the landmarks settle in (`mf2.landmark_settling`), not the detector's: they are
          placed again in the box they give until it stops moving, so a face gets the same landmarks whatever box
          it was found in (the detector's, a tracked one, yours).
        - `image_index` `(N,)` long: input image of each face
        - `alignment` `(N, 2, 3)` float: affine map from original image pixels to crop pixels
        - `landmark_backend` `list[str]` of length N: the back-end that placed each face's landmarks
        - `detection_scale` `(N,)` float: the scale of the copy of the image the face was searched on (below 1: a
          copy downscaled by `max_detection_size`, where faces under `SMALLEST_FACE_SEEN / scale` px are not seen;
          for a `"template-fallback"` face, the scale of the search that found none; 1 where no search ran)

    Example:

    ```python
    >>> from mf2 import MF2ImageProcessor
    >>> processor = MF2ImageProcessor(landmark_backend="dlib")
    >>> features = processor(["photo.jpg"], return_tensors="pt")
    >>> features["pixel_values"].shape, features["au_boxes"].shape
    (torch.Size([1, 3, 224, 224]), torch.Size([1, 12, 2, 4]))
    ```
    """

    valid_kwargs = MF2ImageProcessorKwargs
    model_input_names = ["pixel_values", "au_boxes"]

    # The defaults of `OPTION_NAMES`, as transformers' image processors declare theirs: class attributes.
    landmark_backend: str = "dlib"
    size: int | dict = 224
    image_mean: Sequence[float] = IMAGENET_DEFAULT_MEAN
    image_std: Sequence[float] = IMAGENET_DEFAULT_STD
    do_normalize: bool = True
    do_convert_rgb: bool = True
    input_data_format: str | None = None
    no_face: str = "error"
    multiple_faces: str = "largest"
    au_names: Sequence[str] = AU_NAMES
    max_detection_size: int = 1024
    min_detection_size: int = 192
    num_workers: int | None = None
    backend_kwargs: dict | None = None
    channel_order: str = "rgb"

    def __init__(self, **kwargs):
        kwargs.pop("image_processor_type", None)
        options = {name: kwargs.pop(name) for name in OPTION_NAMES if name in kwargs}
        # `ImagesKwargs` declares options this processor does not apply (`do_resize`, `crop_size`, ...); taken here they
        # would be saved and then ignored, so they are refused as a call refuses them. Transformers' own entries pass.
        self.resolve_options(**{name: value for name, value in kwargs.items() if name not in BOOKKEEPING_KEYS})
        super().__init__(**kwargs)
        for name in OPTION_NAMES:
            given = name in options and (options[name] is not None or name in NONE_IS_A_VALUE)
            setattr(self, name, options[name] if given else deepcopy(getattr(type(self), name)))
        self.input_data_format = checked_data_format(self.input_data_format)
        # Plain JSON-able values, so that `to_dict` and `save_pretrained` write what was given.
        self.image_mean, self.image_std = list(self.image_mean), list(self.image_std)
        self.au_names = list(self.au_names)
        self.backend_kwargs = dict(self.backend_kwargs or {})
        self.no_face = resolve_no_face(self.no_face)
        self.resolve_options()  # validate now rather than at the first call

    def resolve_options(self, **overrides) -> dict[str, Any]:
        """The options of a call, validated and normalised: this processor's settings, with `overrides` (any of
        `OPTION_NAMES`) replacing them. `size` becomes an int, `image_mean` / `image_std` arrays (of 1 value or one
        per channel: 3, or 4 for RGBA inputs kept by `do_convert_rgb=False`), the back-end name canonical,
        `input_data_format` a string or None, `num_workers` a count.

        Raises:
            TypeError: an override that is not an option. ValueError: a value outside what the option takes.
        """
        unknown = set(overrides) - set(OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"MF2ImageProcessor got unknown option(s) {sorted(unknown)}; valid options: {list(OPTION_NAMES)}."
            )
        options = {name: overrides.get(name, getattr(self, name)) for name in OPTION_NAMES}
        options["size"] = square_crop_size(options["size"])
        options["landmark_backend"] = resolve_backend_name(options["landmark_backend"])
        options["no_face"] = resolve_no_face(options["no_face"])
        if options["multiple_faces"] not in MULTIPLE_FACES_CHOICES:
            raise ValueError(
                f"`multiple_faces` must be one of {MULTIPLE_FACES_CHOICES}, got {options['multiple_faces']!r}."
            )
        check_au_names(options["au_names"])
        if options["channel_order"] not in CHANNEL_ORDERS:
            raise ValueError(f"`channel_order` must be one of {CHANNEL_ORDERS}, got {options['channel_order']!r}.")
        options["input_data_format"] = checked_data_format(options["input_data_format"])
        for key in ("image_mean", "image_std"):
            values = np.asarray(options[key], dtype=np.float32).reshape(-1)
            if values.size not in (1, 3, 4):
                raise ValueError(f"`{key}` needs 1 value or one per channel (3, or 4 for RGBA), got {options[key]!r}.")
            options[key] = values
        if np.any(options["image_std"] == 0):
            raise ValueError("`image_std` must not contain zeros.")
        if int(options["max_detection_size"]) < 64:
            raise ValueError(f"`max_detection_size` must be >= 64, got {options['max_detection_size']}.")
        if not 0 <= int(options["min_detection_size"]) <= int(options["max_detection_size"]):
            raise ValueError(
                f"`min_detection_size` must lie in [0, max_detection_size={options['max_detection_size']}], got "
                f"{options['min_detection_size']}."
            )
        workers = options["num_workers"]
        options["num_workers"] = int(workers) if workers is not None else max(1, min(os.cpu_count() or 1, 4))
        return options

    def get_backend(self, **overrides):
        """The landmark back-end these options select (built once per process and reused)."""
        options = self.resolve_options(**overrides)
        return get_landmark_backend(options["landmark_backend"], **options["backend_kwargs"])

    def __call__(self, images, return_tensors: str | None = "pt", **overrides) -> BatchFeature:
        return self.preprocess(images, return_tensors=return_tensors, **overrides)

    def preprocess(self, images, return_tensors: str | None = "pt", face_boxes=None, **overrides) -> BatchFeature:
        """Detect, align and crop every image; see the class docstring for the outputs and options.

        Args:
            face_boxes: instead of searching, the faces of each image: one `(N_i, 4)` array-like of `xyxy` boxes in
                its pixels per image (what a detector of your own found, or what video tracking expects). The
                landmark back-end places 68 landmarks inside each box ('dlib' and 'face_alignment' can; dlib's settle
                as after a search, so a box a few pixels off gives the same landmarks); the rest is as after a search
                (implausible landmarks are not a face, `multiple_faces`, `no_face`).
        """
        options = self.resolve_options(**overrides)
        items = as_image_list(images)
        if not items:
            raise ValueError("MF2ImageProcessor got no images.")
        backend = None
        if options["landmark_backend"] != "template":
            backend = get_landmark_backend(options["landmark_backend"], **options["backend_kwargs"])
        boxes = per_image_boxes(face_boxes, len(items), backend)

        def run(index: int) -> list[dict]:
            return self._process_one(items[index], index, backend, options, None if boxes is None else boxes[index])

        workers = min(options["num_workers"], len(items))
        if workers > 1:
            per_image = list(_executor(workers).map(run, range(len(items))))
        else:
            per_image = [run(index) for index in range(len(items))]
        faces = [face for image_faces in per_image for face in image_faces]
        return self._collate(faces, options, return_tensors)

    def _process_one(self, item: Any, index: int, backend, options: dict, boxes: np.ndarray | None) -> list[dict]:
        item = channels_last(item, options["input_data_format"])
        image = load_image(item, index)
        # Off, grey and RGBA inputs keep their channels in the crop; faces are found on the RGB view all the same.
        own = None if options["do_convert_rgb"] else own_channels(item, index, options["channel_order"])
        if options["channel_order"] == "bgr" and is_array(item):  # RGB(A) now: its first and third channels swap
            image = Image.fromarray(np.ascontiguousarray(np.asarray(image)[..., ::-1]))
        width, height = image.size
        scale = 1.0  # of the copy searched: 1 where no search runs (template, given boxes)
        if backend is None:
            found = [(template_face(width, height), "template")]
        else:
            if boxes is None:
                limits = int(options["max_detection_size"]), int(options["min_detection_size"])
                scale = search_scale(width, height, *limits)
                found = find_faces(image, backend, options["multiple_faces"], scale)
            else:
                check_boxes_in_image(boxes, width, height, index)
                found = fit_faces(image, boxes, backend, options["multiple_faces"])
            if not found:
                if options["no_face"] == "error":
                    raise NoFaceError(index, path_of(item), backend.name, scale, max(width, height))
                if options["no_face"] == "skip":
                    return []
                found = [(detector_crop_face(width, height), FALLBACK_LABEL)]
        return [
            {**self._align(image, face, label, index, options, own), "detection_scale": scale} for face, label in found
        ]

    def _align(self, image: Image.Image, face: FaceLandmarks, label: str, index: int, options: dict, own=None) -> dict:
        """One face's crop (from `own`, the input in its own channels, when given), boxes and geometry."""
        size = options["size"]
        width, height = image.size
        points = np.asarray(face.points, dtype=np.float64)
        if label == "template":  # an aligned crop by the caller's word: stretched, not re-aligned
            matrix = stretch_matrix(width, height, size)

            def cut(picture: Image.Image) -> Image.Image:
                return picture.resize((size, size), Image.Resampling.BILINEAR)
        else:
            target = alignment_target(size)
            matrix = similarity_transform(points[list(ALIGNMENT_POINTS)], target[list(ALIGNMENT_POINTS)])

            def cut(picture: Image.Image) -> Image.Image:
                return warp(picture, matrix, size)

        if own is None:
            crop = cut(image)
        else:  # channel by channel: PIL would resample RGBA premultiplied, changing the colours it keeps as given
            crop = Image.merge(own.mode, [cut(band).convert("L") for band in own.split()])
        aligned = apply_affine(matrix, points)
        boxes = au_boxes_from_landmarks(aligned + 0.5, options["au_names"]) / size
        pixels = np.asarray(crop, dtype=np.float32) * np.float32(1 / 255)
        pixels = pixels.reshape(size, size, -1)
        if options["do_normalize"]:
            channels = pixels.shape[-1]
            mean, std = options["image_mean"], options["image_std"]
            if {mean.size, std.size} - {1, channels}:
                raise ValueError(
                    f"`image_mean` / `image_std` hold {mean.size} / {std.size} values for {channels}-channel pixels "
                    f"(image {index}); give 1 value or one per channel."
                )
            pixels = (pixels - mean) / std
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
            "pixel_values": (3, size, size),
            "au_boxes": (num_aus, 2, 4),
            "landmarks": (68, 2),
            "face_boxes": (4,),
            "alignment": (2, 3),
        }
        data = {}
        channels = {face["pixel_values"].shape[0] for face in faces}
        if len(channels) > 1:
            raise ValueError(
                f"The images give pixel values with {sorted(channels)} channels (do_convert_rgb=False keeps each "
                "input's own): a batch needs one channel count."
            )
        for key, shape in empty.items():
            data[key] = np.stack([face[key] for face in faces]) if faces else np.zeros((0, *shape), np.float32)
        data["image_index"] = np.array([face["image_index"] for face in faces], dtype=np.int64)
        data["landmark_backend"] = [face["landmark_backend"] for face in faces]
        data["detection_scale"] = np.array([face["detection_scale"] for face in faces], dtype=np.float32)
        data = {key: data[key] for key in IMAGE_FEATURES}
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["landmark_backend"])

    def visualize(self, image, features, index: int = 0) -> Image.Image:
        """`visualize` with this processor's AU names."""
        return visualize(image, features, index=index, au_names=self.au_names)

    def to_dict(self) -> dict[str, Any]:
        output = {key: value for key, value in super().to_dict().items() if not key.startswith("_")}
        output["image_processor_type"] = type(self).__name__
        return output


__all__ = [
    "IMAGE_FEATURES",
    "MULTIPLE_FACES_CHOICES",
    "OPTION_NAMES",
    "MF2ImageProcessor",
    "MF2ImageProcessorKwargs",
    "MF2ImagesKwargs",
]
