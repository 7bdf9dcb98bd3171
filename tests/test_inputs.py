"""What `mf2 analyze` reads: folders expanded in a stable order, each image read once, unreadable ones as errors."""

import numpy as np
import pytest
from PIL import Image

from mf2.inputs import expand_paths, read_image


def test_folders_expand_sorted_and_unreadable_files_become_errors(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b.png")
    (tmp_path / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("skipped: not an image or video")
    files = expand_paths([str(tmp_path)])
    assert [path.name for path in files] == ["a.jpg", "b.png"]
    broken, image = read_image(0, files[0], keep_image=True)
    assert image is None and broken.error.startswith("Could not read input 0") and "not an image file" in broken.error
    entry, image = read_image(1, files[1], keep_image=False)
    assert entry.error is None and entry.image is None and image.size == (8, 8)  # kept only for --annotate
    with pytest.raises(ValueError, match="No such file or folder"):
        expand_paths([str(tmp_path / "missing")])
