"""`mf2 analyze`'s checks of its command line, made before the (slow) model loading, and its two failures."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path


class UsageError(Exception):
    """A command line that cannot run as given: one line on stderr, exit status 2."""


class AnalyzeError(Exception):
    """A failure that ends the run with a message (no traceback): exit status 1."""


def check_device(name: str | None) -> None:
    """Raise `UsageError` unless `name` is a torch device this machine has."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {name}: this machine has no CUDA GPU that PyTorch can use; use --device cpu")
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: MPS (Apple GPU) is not available here; use --device cpu")


def _looks_like_path(name: str) -> bool:
    """A Hub id is `name` or `owner/name`; anything else with a separator or a leading `.`, `/`, `~` is a path."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def check_model(name: str) -> None:
    """Raise `UsageError` for a `--model` that names a missing folder, a file, or a folder that is not a model."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(
                f"--model {name}: the folder holds no config.json, so it is not a saved model; pass a folder written "
                f"by save_pretrained, or a Hub id"
            )
    elif path.exists():
        raise UsageError(f"--model {name} is a file; pass the model's folder (with config.json), or a Hub id")
    elif _looks_like_path(name):
        raise UsageError(f"--model {name}: no such folder; pass a saved model's folder, or a Hub id")


def check_runtime(args: argparse.Namespace) -> None:
    """`--runtime onnx` runs a float32 graph; `--onnx-model` (an existing file) and `--quantize` need it."""
    if args.runtime != "onnx":
        for flag, value in (("--onnx-model", args.onnx_model), ("--quantize", args.quantize)):
            if value is not None:
                raise UsageError(f"{flag} needs --runtime onnx")
        return
    if args.dtype not in ("auto", "float32"):
        raise UsageError(f"--runtime onnx runs the model in float32; drop --dtype {args.dtype}")
    if importlib.util.find_spec("onnxruntime") is None:
        raise AnalyzeError("--runtime onnx needs onnxruntime: pip install 'mf2[onnx]'")
    if args.onnx_model is not None and not Path(args.onnx_model).is_file():
        raise UsageError(f"--onnx-model {args.onnx_model}: no such file (write it with `mf2 export --output FILE`)")


def check_annotate(name: str | None) -> None:
    if name is not None and Path(name).exists() and not Path(name).is_dir():
        raise UsageError(f"--annotate {name} is an existing file; --annotate takes a folder (new or existing)")


__all__ = ["AnalyzeError", "UsageError", "check_annotate", "check_device", "check_model", "check_runtime"]
