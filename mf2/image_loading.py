"""Reading inputs as RGB PIL images: paths, URLs, PIL images, numpy arrays and torch tensors, with errors that name
the input (`ImageInputError`: index, path, reason); and the layouts and channels of arrays given as images.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import importlib
import io
import os
import urllib.request
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

URL_TIMEOUT = 30.0  # seconds to download an image given by URL
UNIT_RANGE_LIMIT = 2.0
"""A float image whose largest value is at most this holds values in [0, 1] (scaled by 255, the rest clipped): resizing
a [0, 1] image (bicubic, antialiased) overshoots 1 by some percent, and reading it as 0-255 made it black. A 0-255
image this dark is black either way."""


class ImageInputError(ValueError):
    """An input that cannot be analysed, with what a caller needs to name it in its own terms.

    Attributes:
        index: the input's position in the call (the processor's list; the pipeline re-numbers it).
        path: the file or URL when the input was given as one, else `None`.
        reason: what is wrong, without the input's name.
        kind: what kind of failure it is, for callers to act on without reading the message (`"unreadable"`; a
            subclass names its own, e.g. `NoFaceError`'s `"no_face"`).
    """

    kind = "unreadable"

    def __init__(self, index: int, path: str | None, reason: str):
        self.index, self.path, self.reason = index, path, reason
        super().__init__(self.describe(f"image {index}"))

    def fields(self) -> dict[str, Any]:
        """The error's own fields beyond index, path and reason (none here; a subclass adds its own)."""
        return {}

    def describe(self, where: str) -> str:
        """The message with the input called `where` ("image 3", "input 3", "frame 12 (t=0.480 s)")."""
        path = f" ('{self.path}')" if self.path is not None else ""
        return f"Could not read {where}{path}: {self.reason}"


class AnimatedImageWarning(UserWarning):
    """An animated image (GIF, APNG, WebP) of which only the first frame is analysed."""


def path_of(item: Any) -> str | None:
    """The file or URL an input was given as, else `None`."""
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
        values = array.astype(np.float64)
        if not np.isfinite(values).all():  # no brightness reading of the rest would be right
            raise ImageInputError(index, None, NOT_FINITE)
        if np.issubdtype(array.dtype, np.floating) and values.max(initial=0.0) <= UNIT_RANGE_LIMIT:
            values = values * 255.0  # floats in [0, 1], overshoot clipped below
        elif array.dtype == np.uint16 or (np.issubdtype(array.dtype, np.integer) and values.max(initial=0.0) > 255):
            values = values / 257.0  # 16-bit values (a PIL "I" image's array is int32): _to_rgb's rule
        array = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)), index)  # (H, W) → L, (H, W, 3) → RGB, (H, W, 4) → RGBA


NOT_FINITE = "the image holds NaN or infinite values."


def _to_rgb(image: Image.Image, index: int = 0, path: str | None = None) -> Image.Image:
    """RGB; transparent pixels become white, 16-bit and float images are scaled to 8 bits (a float image with a value
    that is not finite is an `ImageInputError` of input `index` / `path`)."""
    if "transparency" in image.info and image.mode in ("RGB", "L", "P"):
        image = image.convert("RGBA")  # a PNG colour key (tRNS): its pixels are transparent, as alpha would say
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise ImageInputError(index, path, NOT_FINITE)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0.0) > 255 else 255.0
        if image.mode == "F" and array.max(initial=0.0) <= UNIT_RANGE_LIMIT:
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
        return _to_rgb(ImageOps.exif_transpose(item), index)  # a phone photo from Image.open, upright as from its path
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
        try:
            with urllib.request.urlopen(path, timeout=URL_TIMEOUT) as response:  # noqa: S310 - http(s) only
                data = response.read()
        except (OSError, ValueError) as error:
            raise ImageInputError(index, path, f"cannot download it ({error}).") from error
        return _decoded(io.BytesIO(data), path, index, heif=False)  # the bytes read as a file's are
    if os.path.isdir(path):
        raise ImageInputError(index, path, "it is a folder, not an image file; pass the image files in it.")
    if not os.path.isfile(path):
        raise ImageInputError(index, path, "no such file.")
    heif = os.path.splitext(path)[1].lower() in (".heic", ".heif")
    if heif:
        _heif_opener()
    return _decoded(path, path, index, heif)


def _decoded(source: Any, path: str, index: int, heif: bool) -> Image.Image:
    """An image file's (or downloaded bytes') first frame, upright (EXIF) and in RGB, with an `AnimatedImageWarning`
    when it has more frames."""
    try:
        with warnings.catch_warnings():
            # A photo between PIL's pixel limit and twice it (90 to 179 MP, a large camera's) is read in silence;
            # beyond that PIL refuses it (DecompressionBombError, below).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as opened:
                frames = int(getattr(opened, "n_frames", 1))
                opened.load()
                image = ImageOps.exif_transpose(opened)
                image = image.copy() if image is opened else image
    except UnidentifiedImageError as error:
        if heif and not _heif_opener():
            raise ImageInputError(
                index, path, "a HEIC / HEIF image needs pillow-heif: pip install pillow-heif"
            ) from error
        raise ImageInputError(index, path, "not an image file (PIL cannot identify it).") from error
    except Image.DecompressionBombError as error:
        raise ImageInputError(
            index,
            path,
            f"{error} Downscale it, or, trusting the file, raise PIL.Image.MAX_IMAGE_PIXELS (Python) first.",
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(index, path, f"the file is corrupt or truncated ({error}).") from error
    image = _to_rgb(image, index, path)
    if frames > 1:
        # Say so rather than silently analysing one frame of many.
        warnings.warn(
            f"'{path}' is an animated image of {frames} frames; only its first frame is analysed (convert it to a "
            f"video to analyse every frame).",
            AnimatedImageWarning,
            stacklevel=4,
        )
        image.info["n_frames"] = frames
    return image


def _heif_opener() -> bool:
    """Let PIL open HEIC / HEIF files (phones' photos) when `pillow-heif` is installed; whether it is."""
    try:
        importlib.import_module("pillow_heif").register_heif_opener()
    except ImportError:
        return False
    return True


def as_image_list(images: Any) -> list:
    """Flatten the accepted input forms (one image, a list of images, a 4-D batch array) to a list."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray) or type(images).__module__.startswith("torch"):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, Sequence):
        return list(images)
    return [images]


INPUT_DATA_FORMATS = ("channels_first", "channels_last")


def checked_data_format(value) -> str | None:
    """`input_data_format` as a string (`ChannelDimension` members too), checked."""
    value = getattr(value, "value", value)
    if value is not None and value not in INPUT_DATA_FORMATS:
        raise ValueError(f"`input_data_format` must be one of {INPUT_DATA_FORMATS} or None, got {value!r}.")
    return value


def channels_last(item: Any, data_format: str | None) -> Any:
    """An array or tensor given as `(C, H, W)` (`input_data_format="channels_first"`) as `(H, W, C)`; anything else
    unchanged (with no format given, `load_image` infers the layout)."""
    if data_format != "channels_first" or not is_array(item) or item.ndim != 3:
        return item
    array = item.detach().cpu().numpy() if not isinstance(item, np.ndarray) else item
    return np.moveaxis(array, 0, -1)


def own_channels(item: Any, index: int, channel_order: str) -> Image.Image | None:
    """For `do_convert_rgb=False`: the input in its own channels, as a PIL image of mode L, LA or RGBA (values scaled
    to 8 bits as `load_image` scales them), or None when they are RGB (or a kind that only converts to RGB)."""
    if isinstance(item, (str, os.PathLike)) and os.path.isfile(item):  # read already, by `load_image`
        with Image.open(item) as opened:
            item = ImageOps.exif_transpose(opened)
            item.load()
    if isinstance(item, Image.Image):
        item = ImageOps.exif_transpose(item)  # upright, as `load_image` reads it
        return item if item.mode in ("L", "LA", "RGBA") else None
    if not is_array(item):
        return None
    array = item.detach().cpu().numpy() if not isinstance(item, np.ndarray) else item
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 4):
        array = np.moveaxis(array, 0, -1)  # channels-first, as `load_image` reads it
    channels = 1 if array.ndim == 2 else array.shape[-1]
    if channels == 1:
        return load_image(array, index).convert("L")
    if channels != 4:
        return None
    colour = array[..., 2::-1] if channel_order == "bgr" else array[..., :3]
    alpha = load_image(np.ascontiguousarray(array[..., 3]), index).getchannel(0)
    return Image.merge("RGBA", (*load_image(np.ascontiguousarray(colour), index).split(), alpha))


def is_array(item: Any) -> bool:
    """A numpy array or a torch tensor (whose channel order `channel_order` says), not a file or a PIL image."""
    return isinstance(item, np.ndarray) or type(item).__module__.startswith("torch")


__all__ = [
    "INPUT_DATA_FORMATS",
    "AnimatedImageWarning",
    "ImageInputError",
    "as_image_list",
    "channels_last",
    "checked_data_format",
    "is_array",
    "load_image",
    "own_channels",
    "path_of",
]
