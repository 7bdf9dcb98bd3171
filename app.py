"""The Hugging Face Space entry point: the same web demo as `mf2 demo`, served where the Space expects it.

A Space (`sdk: gradio`, `app_file: app.py`) runs `python app.py` in a copy of this repository after installing
`requirements.txt`; the package itself is not installed there, so it is imported from this folder.
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mf2.cli.demo import main  # noqa: E402 - after the path is set

if __name__ == "__main__":
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0 (the container's port is proxied); locally this stays on loopback.
    host = os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1")
    port = os.environ.get("GRADIO_SERVER_PORT", "7860")
    raise SystemExit(main(["--host", host, "--port", port, *sys.argv[1:]]))
