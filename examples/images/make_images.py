"""Regenerate the example photos in this folder from scikit-image's bundled copy of the public-domain NASA photo.

    python examples/images/make_images.py

- `astronaut.png`: `skimage.data.astronaut()`, 512 x 512, one face, unchanged.
- `two_faces.png`: the photo beside its mirror image, scaled to 768 x 384: two faces, for `multiple_faces="all"`.
"""

from pathlib import Path

from PIL import Image, ImageOps
from skimage import data

FOLDER = Path(__file__).resolve().parent


def main() -> None:
    photo = Image.fromarray(data.astronaut())
    photo.save(FOLDER / "astronaut.png", optimize=True)
    pair = Image.new("RGB", (2 * photo.width, photo.height))
    pair.paste(photo, (0, 0))
    pair.paste(ImageOps.mirror(photo), (photo.width, 0))
    # At 3/4 scale dlib finds exactly the two faces (at full size it also fires on the suit's flag patch).
    pair.resize((768, 384), Image.Resampling.LANCZOS).save(FOLDER / "two_faces.png", optimize=True)


if __name__ == "__main__":
    main()
