"""The README's Python blocks run as written: in order, in one fresh process, in a folder holding the files they name
(photo.jpg, a.jpg, b.png: the example photo; clip.mp4: two seconds of it), with the shipped model, offline."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "images" / "astronaut.png"


def readme_python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), flags=re.S | re.M)


def test_the_readme_has_python_blocks_that_name_only_files_this_test_provides():
    blocks = readme_python_blocks()
    assert len(blocks) >= 5
    named = set(re.findall(r"""["']([\w./-]+\.(?:jpg|png|mp4))["']""", "\n".join(blocks)))
    assert named <= {"photo.jpg", "a.jpg", "b.png", "clip.mp4", "a_regions.png"}, named


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    pytest.importorskip("av")
    from mf2.video import write_video

    image = Image.open(PHOTO).convert("RGB")
    image.save(tmp_path / "photo.jpg")
    image.save(tmp_path / "a.jpg")
    shutil.copy(PHOTO, tmp_path / "b.png")
    write_video(tmp_path / "clip.mp4", [np.asarray(image.resize((256, 256)))] * 10, fps=5)
    script = tmp_path / "readme_blocks.py"
    script.write_text("\n\n".join(readme_python_blocks()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "a_regions.png").is_file() and (tmp_path / "my-adapter" / "adapter_config.json").is_file()
