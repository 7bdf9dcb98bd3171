"""The metadata mf2 writes into its ONNX exports: set without losing the file's other entries, read back from a file
and from an onnxruntime session, and named in errors."""

import pytest

from mf2.onnx_stamps import GRAPH_KINDS, INT8_STAMP, STAMP_QUANTIZE, STAMP_WEIGHTS, stamp, stamp_of, stamp_of_file

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


@pytest.fixture
def graph_file(tmp_path):
    """A one-node graph carrying another tool's metadata entry."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "producer_note", "kept"
    path = tmp_path / "graph.onnx"
    onnx.save(model, str(path))
    return path


def test_stamps_are_set_over_old_ones_and_other_entries_are_kept(graph_file):
    assert stamp_of_file(graph_file) == {}
    stamp(graph_file, {STAMP_WEIGHTS: "abc", STAMP_QUANTIZE: "none"})
    stamp(graph_file, {STAMP_QUANTIZE: INT8_STAMP})
    assert stamp_of_file(graph_file) == {STAMP_WEIGHTS: "abc", STAMP_QUANTIZE: INT8_STAMP}
    entries = {entry.key: entry.value for entry in onnx.load(str(graph_file)).metadata_props}
    assert entries["producer_note"] == "kept"


def test_a_session_reads_the_same_stamps(graph_file):
    ort = pytest.importorskip("onnxruntime")
    stamp(graph_file, {STAMP_WEIGHTS: "abc", STAMP_QUANTIZE: INT8_STAMP})
    session = ort.InferenceSession(str(graph_file), providers=["CPUExecutionProvider"])
    assert stamp_of(session) == stamp_of_file(graph_file)


def test_every_quantization_mf2_ever_stamped_has_a_name_for_errors():
    assert GRAPH_KINDS["none"] == "float32" and GRAPH_KINDS[INT8_STAMP] == "int8"
    assert "older mf2" in GRAPH_KINDS["int8"]  # the per-batch int8 of earlier versions
