"""What `mf2 analyze` reads: command-line paths expanded to files and URLs, and each image read once, an unreadable
one becoming an error in its place rather than the end of the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..image_loading import ImageInputError, load_image
from ..video import VIDEO_EXTENSIONS

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".avif",
        ".heic",
        ".heif",
    }
)
"""The image files a folder's listing takes: the same names are analysed when given one by one. AVIF is read by PIL;
HEIC / HEIF with `pillow-heif` installed (`mf2.image_loading`), else each is an error record saying so, never skipped
unseen."""

InputPath = Path | str
"""A local file (`Path`) or a URL (`str`, kept as given: `Path` would fold `http://` into `http:/`)."""


def is_url(name: str) -> bool:
    """Whether a command-line path is an image URL (read over HTTP by the image loader)."""
    return name.startswith(("http://", "https://"))


def _hidden(path: Path, folder: Path) -> bool:
    """Whether `path`, found in `folder`, is or lies in a hidden file or folder (`.name`) or macOS's `__MACOSX` (its
    `._name` files hold no image): thumbnails and metadata, not the user's photos. Named on the command line, such a
    file is analysed."""
    return any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(folder).parts)


def expand_paths(paths: list[str], recursive: bool = True) -> list[InputPath]:
    """Files to analyse, in a stable order: files and URLs as given; folders' images and videos, sorted, hidden
    files and folders (`.name`, `__MACOSX`) left out.

    Raises:
        ValueError: a path does not exist, or a folder holds no image or video.
    """
    known = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    files: list[InputPath] = []
    for name in paths:
        if is_url(name):
            files.append(name)
            continue
        path = Path(name)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(
                p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in known and not _hidden(p, path)
            )
            if not found:
                raise ValueError(f"Folder '{path}' holds no image or video ({', '.join(sorted(known))}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"No such file or folder: '{path}'.")
    return files


@dataclass
class ReadImage:
    """One image of the stream: read (`image`, kept only for annotation; `size`, its width and height), or not
    (`error`, never fed to the model)."""

    index: int
    path: InputPath
    image: Image.Image | None = None
    error: str | None = None
    warning: str | None = None
    size: tuple[int, int] | None = None


def read_image(index: int, path: InputPath, keep_image: bool) -> tuple[ReadImage, Image.Image | None]:
    """Read one image, the only time it is decoded: the pipeline analyses, and `--annotate` draws on, the image
    returned here. An unreadable file gives a `ReadImage` with its `error` (its record) and no image."""
    try:
        image = load_image(str(path), index)  # `main` silences its AnimatedImageWarning: the record says it
    except ImageInputError as error:
        return ReadImage(index, path, error=error.describe(f"input {index}")), None
    frames = image.info.get("n_frames", 1)
    warning = None
    if frames > 1:
        warning = f"animated image of {frames} frames: only the first frame was analysed (convert it to a video)"
    return ReadImage(index, path, image if keep_image else None, warning=warning, size=image.size), image


__all__ = ["IMAGE_EXTENSIONS", "InputPath", "ReadImage", "expand_paths", "is_url", "read_image"]
