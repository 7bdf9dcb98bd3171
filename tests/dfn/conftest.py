"""DFN tests: put `tests/` (for `tiny.py`) and this folder (for `dfn_testing.py`) on sys.path."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for path in (os.path.dirname(HERE), HERE):
    if path not in sys.path:
        sys.path.insert(0, path)
