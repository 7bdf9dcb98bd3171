"""transformers' common test mixins (`ModelTesterMixin`, `ConfigTester`, `ImageProcessingTestMixin`) for the MF² testers.

They are not copied into this repository: the source distribution of the installed transformers version is fetched
from the package index once (`pip download --no-deps --no-binary :all: transformers==<version>`) into
`~/.cache/mf2/transformers-tests/<version>` (`$MF2_TRANSFORMERS_TESTS_CACHE` overrides the folder), and its `tests/`
become the package `transformers_tests` there. When the download is impossible (no index, no network), the MF² mixin
modules skip, saying why.

The sdist ships the mixin modules but not four helpers they import from transformers' repository; small stand-ins are
written beside them (`STAND_INS`), each saying what it replaces and why the stand-in is enough for MF².
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

import pytest
import transformers

PACKAGE = "transformers_tests"
MIXIN_MODULES = ("test_modeling_common.py", "test_configuration_common.py", "test_image_processing_common.py")

# Modules the mixins import that transformers' repository has but its sdist does not.
STAND_INS = {
    # `ModelTesterMixin` derives from it; the export tests it adds are not in the sdist, so none run here (MF²'s
    # own tests/models/mf2 compile the recognition model with fullgraph=True instead).
    f"{PACKAGE}/exporters/__init__.py": "",
    f"{PACKAGE}/exporters/test_export.py": '''
        class ExportTesterMixin:
            """Stand-in: transformers' export tests (tests/exporters/test_export.py) are not in the sdist."""
        ''',
    # Only read by `issubclass` checks (a model that cannot generate must not inherit it): an empty class is exact.
    f"{PACKAGE}/generation/__init__.py": "",
    f"{PACKAGE}/generation/test_utils.py": '''
        class GenerationTesterMixin:
            """Stand-in: the generation tests; MF² cannot generate, so its testers never inherit this."""
        ''',
    # Read only by `ConfigTester.check_config_arguments_init`, which returns before using it for composite configs
    # (MF2Config has sub-configs).
    f"{PACKAGE}/utils/__init__.py": "",
    f"{PACKAGE}/utils/test_configuration_utils.py": """
        config_common_kwargs = {}  # stand-in: unused for composite configs such as MF2Config
        """,
    # test_image_processing_common.py imports it from the repository's utils/ folder: it maps Hub fixture URLs to a
    # local cache. The stand-in maps them to local images written once (no network during the tests).
    "utils/fetch_hub_objects_for_ci.py": '''
        import hashlib
        from pathlib import Path

        import numpy as np
        from PIL import Image

        FIXTURES = Path(__file__).resolve().parent / "fixtures"


        def url_to_local_path(url, *args, **kwargs):
            """Stand-in: a local RGB image per fixture URL (random, seeded by the URL), instead of the Hub file."""
            FIXTURES.mkdir(exist_ok=True)
            path = FIXTURES / (hashlib.sha256(url.encode()).hexdigest()[:16] + ".png")
            if not path.exists():
                seed = int.from_bytes(hashlib.sha256(url.encode()).digest()[:4], "little")
                pixels = np.random.default_rng(seed).integers(0, 256, (240, 320, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path)
            return str(path)
        ''',
}


def cache_root() -> Path:
    default = Path.home() / ".cache" / "mf2" / "transformers-tests"
    return Path(os.environ.get("MF2_TRANSFORMERS_TESTS_CACHE", default)) / transformers.__version__


def _download_sdist(folder: Path) -> Path:
    """The sdist of the installed transformers version, fetched with pip into `folder`."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(folder),
        f"transformers=={transformers.__version__}",
    ]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        detail = (getattr(error, "stderr", None) or str(error)).strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"`pip download transformers=={transformers.__version__}` failed: {detail[0]}") from error
    archives = sorted(folder.glob("transformers-*.tar.gz"))
    if not archives:
        raise RuntimeError(f"`pip download` left no transformers sdist in {folder}.")
    return archives[0]


def _build(root: Path) -> None:
    """Download, extract the sdist's tests/ as the package `transformers_tests`, and add the stand-ins; the folder
    appears whole (built aside, then renamed) so a half-built cache is never used."""
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        archive = _download_sdist(staging)
        package = staging / PACKAGE
        package.mkdir()
        (package / "__init__.py").write_text("")
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if len(parts) == 3 and parts[1] == "tests" and parts[2].endswith(".py") and member.isfile():
                    (package / parts[2]).write_bytes(tar.extractfile(member).read())
        missing = [name for name in MIXIN_MODULES if not (package / name).exists()]
        if missing:
            raise RuntimeError(f"The transformers {transformers.__version__} sdist has no tests/{missing}.")
        for relative, text in STAND_INS.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip())
        archive.unlink()
        try:
            staging.rename(root)
        except OSError:  # another process built it meanwhile
            if not (root / PACKAGE / MIXIN_MODULES[0]).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def transformers_tests_root() -> Path:
    """The folder holding `transformers_tests` for the installed version (built on first use), put on `sys.path`.

    Skips the calling test module, with the reason, when the sdist cannot be fetched.
    """
    root = cache_root()
    if not (root / PACKAGE / MIXIN_MODULES[0]).exists():
        try:
            _build(root)
        except (OSError, RuntimeError) as error:
            pytest.skip(
                f"transformers' common test mixins are unavailable: the transformers {transformers.__version__} "
                f"source distribution could not be fetched from the package index ({error})",
                allow_module_level=True,
            )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root
