"""The metadata an ONNX export of mf2 carries (`metadata_props`): the float32 weights it was made from and its
quantization, so that a file made from another model, or quantized otherwise, is refused instead of read in silence.

This file imports no mf2 module, so it travels with remote code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INT8_STAMP = "int8-per-face"
"""The quantization an int8 export carries: activations quantized face by face (`mf2.int8_per_face`); an older mf2's
"int8" was quantized per batch."""
STAMP_WEIGHTS, STAMP_QUANTIZE = "mf2_weights_sha256", "mf2_quantize"
"""The metadata an export carries: the float32 weights it was made from, and its quantization ("none", `INT8_STAMP`)."""
GRAPH_KINDS = {"none": "float32", INT8_STAMP: "int8", "int8": "int8 (quantized per batch: an older mf2's export)"}
"""What each stamped quantization is, in the words of an error message."""


def set_stamps(model, values: dict[str, str]) -> None:
    """Set `values` in an `onnx.ModelProto`'s metadata (`metadata_props`), keeping its other entries."""
    kept = {entry.key: entry.value for entry in model.metadata_props if entry.key not in values}
    del model.metadata_props[:]
    for key, value in {**kept, **values}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def stamp(path: Path, values: dict[str, str]) -> None:
    """Set `values` in the ONNX file's metadata (`set_stamps`), keeping the other entries."""
    import onnx

    graph = onnx.load(str(path))
    set_stamps(graph, values)
    onnx.save(graph, str(path))


def stamp_of_file(path: Path) -> dict[str, str]:
    """The mf2 metadata of an ONNX file (empty when it has none)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return {entry.key: entry.value for entry in graph.metadata_props if entry.key in (STAMP_WEIGHTS, STAMP_QUANTIZE)}


def stamp_of(session: Any) -> dict[str, str]:
    """The mf2 metadata of an onnxruntime session's graph (empty for an export made before mf2 wrote it)."""
    metadata = session.get_modelmeta().custom_metadata_map
    return {key: metadata[key] for key in (STAMP_WEIGHTS, STAMP_QUANTIZE) if key in metadata}


__all__ = [
    "GRAPH_KINDS",
    "INT8_STAMP",
    "STAMP_QUANTIZE",
    "STAMP_WEIGHTS",
    "set_stamps",
    "stamp",
    "stamp_of",
    "stamp_of_file",
]
