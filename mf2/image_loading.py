"""Reading inputs as RGB PIL images: paths, URLs, PIL images, numpy arrays and torch tensors, with errors that name
the input (`ImageInputError`: index, path, reason).

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


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
    heif = os.path.splitext(path)[1].lower() in (".heic", ".heif")
    if heif:
        _heif_opener()
    try:
        with Image.open(path) as opened:
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


__all__ = ["AnimatedImageWarning", "ImageInputError", "as_image_list", "load_image", "path_of"]
