"""Start-up cost of the package: `import torch`, `import mf2` and `mf2 --help`, each in fresh processes.

    python benchmarks/benchmark_import.py             # 7 runs each, the minimum is reported
    python benchmarks/benchmark_import.py --runs 15

Targets (project's 2-core CPU): `mf2 --help` under 1 s; `import mf2` at most 1 s more than `import torch`. The
minimum of several runs is the figure, because a shared machine only ever adds time. Each run is a whole interpreter
start, as a user sees it (`python -c ...`, the `mf2` entry point).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

HELP_TARGET_S = 1.0
IMPORT_OVER_TORCH_TARGET_S = 1.0


def wall_time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def minimum(command: list[str], runs: int) -> float:
    wall_time(command)  # warm the file cache once; not counted
    return min(wall_time(command) for _ in range(runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="fresh processes per figure (the minimum is reported)")
    args = parser.parse_args(argv)
    python = sys.executable
    entry_point = shutil.which("mf2", path=str(Path(python).parent)) or shutil.which("mf2")
    help_command = [entry_point, "--help"] if entry_point else [python, "-m", "mf2.cli", "--help"]

    figures = {
        "python (empty)": minimum([python, "-c", "pass"], args.runs),
        "import torch": minimum([python, "-c", "import torch"], args.runs),
        "import mf2": minimum([python, "-c", "import mf2"], args.runs),
        "mf2 --help": minimum(help_command, args.runs),
        # For reference, not a target: the first use of transformers' pipelines pays for what it registers.
        "import mf2 + transformers.pipeline": minimum(
            [python, "-c", "import mf2; from transformers import pipeline"], args.runs
        ),
    }
    for name, seconds in figures.items():
        print(f"{name:<34} {seconds:6.3f} s  (minimum of {args.runs})")
    over_torch = figures["import mf2"] - figures["import torch"]
    help_ok = figures["mf2 --help"] < HELP_TARGET_S
    import_ok = over_torch <= IMPORT_OVER_TORCH_TARGET_S
    print(f"mf2 --help < {HELP_TARGET_S:.1f} s: {'yes' if help_ok else 'NO'}")
    print(
        f"import mf2 - import torch = {over_torch:+.3f} s <= {IMPORT_OVER_TORCH_TARGET_S:.1f} s: "
        f"{'yes' if import_ok else 'NO'}"
    )
    return 0 if help_ok and import_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
