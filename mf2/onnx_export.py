"""`mf2 export`: the recognition model (`MF2ForFacialStateRecognition`) as ONNX, and its onnxruntime runner.

```bash
mf2 export --output mf2-base.onnx            # the shipped model; --model for another checkpoint
mf2 analyze photos/ --runtime onnx           # the pipeline with the network run by onnxruntime
```

The graph maps `pixel_values` `(batch, 3, size, size)` float32 and `au_boxes` `(batch, num_aus, k, 4)` float32 to
`au_logits` `(batch, num_aus)` and `emotion_logits` `(batch, num_emotions)`. The batch axis is dynamic; the crop size
and the boxes per AU are those of the image processor the model was exported for. Opset `OPSET` (17), exported with
torch's TorchScript-based exporter (`dynamo=False`: it needs no onnxscript). `ONNXRecognitionModel` runs the file and
answers like the torch model (`.au_logits`, `.emotion_logits` as torch tensors), so the pipeline swaps it in for the
network alone (`pipeline("facial-state", runtime="onnx")`); detection, alignment and postprocessing are unchanged.

This module imports only `.local_files`, `.onnx_stamps` and `.int8_per_face` among mf2's modules, so the pipeline
exported as remote code can carry it.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .int8_per_face import quantize_per_face
from .local_files import mf2_home, written_aside
from .onnx_stamps import (
    GRAPH_KINDS,
    INT8_STAMP,
    STAMP_QUANTIZE,
    STAMP_WEIGHTS,
    set_stamps,
    stamp,
    stamp_of,
    stamp_of_file,
)

OPSET = 17
"""ONNX opset of the exported graph (onnxruntime >= 1.17 runs it; GridSample, the AU boxes' RoIAlign, needs >= 16)."""
MIN_OPSET = 16
INPUT_NAMES, OUTPUT_NAMES = ("pixel_values", "au_boxes"), ("au_logits", "emotion_logits")
INSTALL_HINT = "pip install 'mf2[onnx]'"
QUANTIZE_CHOICES = ("int8",)
"""`quantize=` values: "int8" is onnxruntime's dynamic int8 quantization of the float32 graph (`quantize_onnx`)."""


class MissingONNXRuntimeError(ImportError):
    """onnxruntime is not installed; the message says how to install it (one line)."""


def require_onnxruntime():
    """The `onnxruntime` module, or `MissingONNXRuntimeError` with the install command."""
    try:
        import onnxruntime
    except ImportError as error:
        raise MissingONNXRuntimeError(f"the ONNX runtime needs onnxruntime: {INSTALL_HINT}") from error
    return onnxruntime


class _RecognitionGraph(nn.Module):
    """The traced function: `(pixel_values, au_boxes)` → `(au_logits, emotion_logits)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, au_boxes: torch.Tensor):
        output = self.model(pixel_values=pixel_values, au_boxes=au_boxes, return_dict=True)
        return output.au_logits, output.emotion_logits


OUTSIDE_THE_GRAPH = {"au_thresholds", "id2label", "label2id", "dtype", "torch_dtype", "_name_or_path", "trained"}
OUTSIDE_THE_GRAPH |= {"model_name", "model_version", "training_data", "transformers_version", "architectures"}
OUTSIDE_THE_GRAPH |= {"auto_map"}  # added by `save_pretrained`: a saved model keeps its fingerprint
"""Config keys (any depth) the graph does not read: thresholds and labels apply after it, the rest names the model."""


def _graph_config(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _graph_config(item) for key, item in value.items() if key not in OUTSIDE_THE_GRAPH}
    return value


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of what the exported graph computes: the model's parameters and buffers (names, shapes, dtypes,
    values) as the float32 graph holds them, its config but for `OUTSIDE_THE_GRAPH` (head counts, epsilons, which
    features a recogniser reads), and whether a DFN model's adapters are switched off. The export cache key and stamp.
    Floating tensors are read as float32 one at a time, so a float16 model and its float32 copy share one export and
    checking a stamp never copies the whole model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu()
        tensor = (tensor.float() if tensor.is_floating_point() else tensor).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    config = getattr(model, "config", None)
    settings = _graph_config(config.to_dict()) if hasattr(config, "to_dict") else None
    switched_off = bool(getattr(model, "_adapters_disabled", False))  # DFNModel.disable_adapters: the base graph
    digest.update(json.dumps([settings, switched_off], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def check_export_matches(runner: Any, model: nn.Module, quantize: str | None) -> None:
    """Refuse an ONNX file made from another model than `model` (`model_fingerprint`), or quantized otherwise than asked: the pipeline would
    read every face with another network under this model's labels and thresholds, in silence.

    Raises:
        ValueError: one line naming the file and the fix.
    """
    metadata = stamp_of(runner.session)
    if not metadata:
        return  # an export of an mf2 that did not stamp its files: nothing to compare
    if metadata.get(STAMP_WEIGHTS) != model_fingerprint(model):
        raise ValueError(
            f"{runner.path} was exported from another model than this one (other weights or settings); export this "
            "model "
            "(`mf2 export --model MODEL --output FILE`) or run without a given ONNX file"
        )
    wanted = INT8_STAMP if quantize else "none"
    if metadata.get(STAMP_QUANTIZE, wanted) != wanted:
        found = GRAPH_KINDS.get(metadata[STAMP_QUANTIZE], metadata[STAMP_QUANTIZE])
        raise ValueError(
            f"{runner.path} holds a {found} graph, and {GRAPH_KINDS[wanted]} was asked for; give the matching "
            "export (`mf2 export`), or leave the file out"
        )


def _float32_cpu(model: nn.Module) -> nn.Module:
    """The model itself when it is float32 on the CPU, else a float32 CPU copy (the graph is float32)."""
    parameter = next(model.parameters())
    if parameter.dtype == torch.float32 and parameter.device.type == "cpu":
        return model
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32)


def _example_inputs(model: nn.Module, image_size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Trace inputs: mid-grey crops and the canonical AU boxes of an aligned face (`default_au_boxes`)."""
    channels = model.config.vision_config.num_channels
    pixel_values = torch.zeros(batch, channels, image_size, image_size)
    boxes = model.mf2.default_au_boxes.detach().to(device="cpu", dtype=torch.float32)
    return pixel_values, boxes.expand(batch, -1, -1, -1).contiguous()


def export_onnx(model: nn.Module, path: str | os.PathLike, image_size: int, opset: int = OPSET) -> Path:
    """Write `model` (an `MF2ForFacialStateRecognition`) to `path` as a float32 ONNX graph with a dynamic batch.

    Args:
        model: the recognition model; a half-precision or GPU model is exported from a float32 CPU copy.
        path: the `.onnx` file to write (its folder is created; the file is replaced atomically).
        image_size: the side of the image processor's crops (`MF2ImageProcessor.size`).
        opset: ONNX opset, `OPSET` by default (16 at least: GridSample).

    Returns:
        The path written.
    """
    if getattr(model.mf2, "emotion_branch", None) is None or getattr(model.mf2, "au_branch", None) is None:
        raise ValueError("ONNX export needs a model with both the emotion and the AU branch.")
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} has no GridSample (the AU boxes' RoIAlign); use {MIN_OPSET} or later.")
    source = _float32_cpu(model)
    was_training = source.training
    graph = _RecognitionGraph(source).eval()  # the exporter restores the wrapper's mode: it must be eval
    path = Path(path)
    dynamic = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    try:
        with written_aside(path) as partial, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                graph,
                _example_inputs(source, image_size),
                str(partial),
                dynamo=False,
                opset_version=opset,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic,
                do_constant_folding=True,
            )
            stamp(partial, {STAMP_WEIGHTS: model_fingerprint(source), STAMP_QUANTIZE: "none"})
    finally:
        source.train(was_training)
    return path


def check_quantize(quantize: str | None) -> str | None:
    """`quantize` when it is `None` or one of `QUANTIZE_CHOICES`, else a `ValueError` listing them."""
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"`quantize` must be one of {list(QUANTIZE_CHOICES)} or None, got {quantize!r}.")
    return quantize


def quantize_onnx(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the int8 version of the float32 graph `source` to `path`: onnxruntime's dynamic quantization of the
    MatMul / Gemm weights, per output channel, signed 8-bit; activations are quantized at run time, each face on its
    own (`mf2.int8_per_face`: a face's answer does not depend on the other faces of its batch).

    Per channel, because the ViT's weight rows differ widely in range: quantizing its linear layers per tensor moved
    the example faces' AU probabilities by up to 0.16, per channel by up to 0.09 (measured with PyTorch's dynamic
    quantization). Its accuracy on the development data is in the README.
    """
    require_onnxruntime()
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = Path(path)
    logger = logging.getLogger()  # the quantizer logs "consider pre-processing" on the root logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with written_aside(path) as partial:
            quantize_dynamic(
                str(source),
                str(partial),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=True,
                weight_type=QuantType.QInt8,
            )
            quantized = quantize_per_face(onnx.load(str(partial)))
            set_stamps(quantized, {**stamp_of_file(Path(source)), STAMP_QUANTIZE: INT8_STAMP})
            onnx.save(quantized, str(partial))
    finally:
        logger.setLevel(level)
    return path


def cached_onnx_path(model: nn.Module, image_size: int, opset: int = OPSET, quantize: str | None = None) -> Path:
    """Where `ensure_onnx` keeps the export of `model`:
    `$MF2_HOME/onnx/<weights sha256[:16]>-opset<N>-<size>px[-int8-per-face].onnx`."""
    suffix = f"-{INT8_STAMP}" if check_quantize(quantize) else ""
    return mf2_home() / "onnx" / f"{model_fingerprint(model)[:16]}-opset{opset}-{image_size}px{suffix}.onnx"


def ensure_onnx(
    model: nn.Module,
    image_size: int,
    path: str | os.PathLike | None = None,
    quantize: str | None = None,
    opset: int = OPSET,
) -> Path:
    """An ONNX file of `model` (`quantize="int8"`: its int8 version, made from the cached float32 one): `path` when it
    exists (written there when not), else the cache's, written once."""
    target = Path(path) if path is not None else cached_onnx_path(model, image_size, opset, quantize)
    if not target.is_file():
        if check_quantize(quantize):
            quantize_onnx(ensure_onnx(model, image_size, opset=opset), target)
        else:
            export_onnx(model, target, image_size, opset=opset)
    return target


@dataclass
class ONNXRecognitionOutput:
    """What `ONNXRecognitionModel` returns: the logits of `MF2RecognitionOutput`, as float32 torch tensors."""

    au_logits: torch.Tensor
    emotion_logits: torch.Tensor


class ONNXRecognitionModel:
    """An exported MF² recognition graph run by onnxruntime, called like the torch model.

    `runner(pixel_values=..., au_boxes=...)` takes torch tensors or numpy arrays (any float dtype; run in float32)
    and returns `.au_logits` and `.emotion_logits` as torch tensors on the CPU.

    Args:
        path: the `.onnx` file (`export_onnx`).
        providers: onnxruntime execution providers, e.g. `["CUDAExecutionProvider", "CPUExecutionProvider"]`;
            default `["CPUExecutionProvider"]`.
        session_options: an `onnxruntime.SessionOptions` (threads, graph optimisation). By default onnxruntime's
            defaults, except that its threads do not spin-wait between runs (`session.intra_op.allow_spinning` 0):
            in the pipeline the face search runs beside the network, and spinning threads took the cores it needs
            (on 2 cores, batch 1 went from 11.8 to 18.1 photos/s end to end, video tracking from 23.5 to 24.8
            frames/s).
    """

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, session_options: Any = None):
        ort = require_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX model at {self.path} (write one with `mf2 export --output PATH`)")
        if session_options is None:
            session_options = ort.SessionOptions()
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.path), sess_options=session_options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_shapes = {item.name: item.shape for item in self.session.get_inputs()}
        missing = set(INPUT_NAMES) - set(self.input_shapes)
        if missing:
            raise ValueError(f"{self.path} is not an MF² export: it has no input(s) {sorted(missing)}.")

    def _array(self, name: str, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            value = value.detach().to(device="cpu", dtype=torch.float32).numpy()
        array = np.ascontiguousarray(value, dtype=np.float32)
        fixed = self.input_shapes[name][1:]
        if array.ndim != len(fixed) + 1 or any(isinstance(s, int) and s != a for s, a in zip(fixed, array.shape[1:])):
            raise ValueError(
                f"{name} must be (batch, {', '.join(map(str, fixed))}) for {self.path.name}, got {tuple(array.shape)}."
            )
        return array

    def __call__(self, pixel_values: Any = None, au_boxes: Any = None, **kwargs: Any) -> ONNXRecognitionOutput:
        if pixel_values is None or au_boxes is None:
            raise ValueError("The ONNX runner needs both pixel_values and au_boxes.")
        feeds = {
            "pixel_values": self._array("pixel_values", pixel_values),
            "au_boxes": self._array("au_boxes", au_boxes),
        }
        if len(feeds["pixel_values"]) != len(feeds["au_boxes"]):
            raise ValueError("pixel_values and au_boxes must have the same batch size.")
        au_logits, emotion_logits = self.session.run(list(OUTPUT_NAMES), feeds)
        return ONNXRecognitionOutput(torch.from_numpy(au_logits), torch.from_numpy(emotion_logits))


def providers_for(device: Any) -> list[str]:
    """onnxruntime providers for a torch device: CUDA first when the device is CUDA and the provider is installed."""
    ort = require_onnxruntime()
    if torch.device(device or "cpu").type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


# ---------------------------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mf2 export",
        description=f"Write the MF² recognition model as ONNX (opset {OPSET}, float32, dynamic batch) for onnxruntime.",
    )
    parser.add_argument("--model", help="MF² checkpoint folder or Hub id (default: the shipped mf2-base)")
    parser.add_argument("--format", choices=("onnx",), default="onnx", help="export format (default onnx)")
    parser.add_argument(
        "--output", "-o", help="the .onnx file (default: the cache `mf2 analyze --runtime onnx` reads, $MF2_HOME/onnx/)"
    )
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET}; {MIN_OPSET} at least)")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        help="also quantize the graph: int8 weights, "
        "int8 activations quantized per face at run time (faster on CPUs; accuracy: docs/analysis.md#int8)",
    )
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a Hub checkpoint's own code")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status 0: written; 1: the model could not be loaded or exported; 2: a bad command line."""
    args = build_parser().parse_args(argv)
    # Not a relative import: the pipeline's remote-code export copies this file, and must not pull in the CLI's.
    default_model = importlib.import_module("mf2.integration.default_model")

    checks = importlib.import_module("mf2.cli.analyze_checks")
    try:
        if args.model is not None:
            checks.check_model(args.model)  # a missing folder, a file, an adapter folder: one line before loading
        if args.opset < MIN_OPSET:
            raise checks.UsageError(f"--opset {args.opset}: opset {MIN_OPSET} at least (GridSample, the AU boxes')")
        if args.output is not None and Path(args.output).is_dir():
            raise checks.UsageError(f"--output {args.output} is a folder; give the .onnx file to write")
    except checks.UsageError as error:
        print(f"mf2 export: {error}", file=sys.stderr)
        return 2
    try:
        require_onnxruntime()
        pipe = default_model.load_pipeline(
            args.model or default_model.DEFAULT_MODEL_NAME, device="cpu", trust_remote_code=args.trust_remote_code
        )
        size = int(pipe.image_processor.size)
        output = Path(args.output) if args.output else cached_onnx_path(pipe.model, size, args.opset, args.quantize)
        if args.quantize:
            quantize_onnx(ensure_onnx(pipe.model, size, opset=args.opset), output)
        else:
            export_onnx(pipe.model, output, size, opset=args.opset)
    except (ImportError, OSError, ValueError, RuntimeError) as error:
        said = str(error).strip()
        print(f"mf2 export: {said.splitlines()[0] if said else repr(error)}", file=sys.stderr)
        return 1
    kind = "int8 weights, int8 activations quantized per face" if args.quantize else "float32"
    print(
        f"mf2 export: wrote {output} (opset {args.opset}, {kind}, dynamic batch, {size}x{size} px crops)",
        file=sys.stderr,
    )
    print(output)
    return 0


def onnx_runner(
    model: nn.Module, image_size: int, device: Any, path: str | os.PathLike | None = None, quantize: str | None = None
):
    """The onnxruntime runner of `model` (`quantize="int8"`: of its int8 version): the graph at `path`, else the
    weights-keyed cache (written on first use)."""
    require_onnxruntime()  # before a (slow) export that could not run
    runner = ONNXRecognitionModel(ensure_onnx(model, image_size, path, quantize), providers=providers_for(device))
    if path is not None:  # the cache's files are named by these weights already
        check_export_matches(runner, model, quantize)
    return runner


__all__ = [
    "INPUT_NAMES",
    "OPSET",
    "OUTPUT_NAMES",
    "QUANTIZE_CHOICES",
    "MissingONNXRuntimeError",
    "ONNXRecognitionModel",
    "ONNXRecognitionOutput",
    "build_parser",
    "cached_onnx_path",
    "check_export_matches",
    "check_quantize",
    "ensure_onnx",
    "export_onnx",
    "main",
    "onnx_runner",
    "providers_for",
    "quantize_onnx",
    "require_onnxruntime",
    "model_fingerprint",
]
