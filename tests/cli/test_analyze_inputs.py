"""What `mf2 analyze` reads: folders expanded in a stable order, each image read once, unreadable ones as errors."""

import numpy as np
import pytest
from PIL import Image

from mf2.cli.analyze_inputs import expand_paths, read_image


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


def test_a_folder_lists_every_image_kind_that_is_read_when_named(tmp_path):
    """AVIF and HEIC photos in a folder are inputs as when named: read, or an error record saying why."""
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.avif")
    (tmp_path / "b.heic").write_bytes(b"\x00\x00\x00\x18ftypheic not a real one")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "c.jfif", format="JPEG")
    files = expand_paths([str(tmp_path)])
    assert [path.name for path in files] == ["a.avif", "b.heic", "c.jfif"]
    named = expand_paths([str(path) for path in files])
    for index, (listed, given) in enumerate(zip(files, named)):
        assert read_image(index, listed, False)[0] == read_image(index, given, False)[0]
    assert read_image(0, files[0], False)[1].size == (8, 8)
    heic = read_image(1, files[1], False)[0].error
    assert "pillow-heif" in heic or "not an image file" in heic


def test_a_folder_leaves_out_hidden_files_and_macos_metadata_unless_named(tmp_path):
    """A folder unzipped from macOS holds `__MACOSX/._a.jpg` (no image) beside `a.jpg`, and thumbnail folders are
    hidden: left out of the scan, where they gave error records and an exit status 1, or the same face twice."""
    folder = tmp_path / "photos"
    for path in (folder / "a.jpg", folder / ".thumbs" / "a.jpg", folder / "sub" / ".b.png", folder / "sub" / "c.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert [path.relative_to(folder).as_posix() for path in expand_paths([str(folder)])] == ["a.jpg", "sub/c.png"]
    assert expand_paths([str(folder / ".thumbs" / "a.jpg")]) == [folder / ".thumbs" / "a.jpg"]  # named: analysed
    assert expand_paths([str(folder / ".thumbs")]) == [folder / ".thumbs" / "a.jpg"]  # a hidden folder, named
