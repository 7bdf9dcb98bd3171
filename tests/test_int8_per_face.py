"""`quantize_per_face` on small graphs: each face's activations quantized on their own, exactly as onnxruntime's
`DynamicQuantizeLinear` would quantize that face alone, for 2-D and 3-D activations; graphs it cannot rewrite are
refused."""

import numpy as np
import pytest

from mf2.int8_per_face import quantize_per_face

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import QuantType, quantize_dynamic  # noqa: E402


def linear_graph(tmp_path, shape: list, weights: np.ndarray) -> str:
    """A float32 graph `x @ weights` with `x` of `shape` (its first axis dynamic), quantized by onnxruntime as mf2
    quantizes the model (weights per output channel, signed 8 bit); the path of the int8 file."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *shape[1:]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "linear", [x], [y], [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "float.onnx"))
    quantize_dynamic(
        str(tmp_path / "float.onnx"), str(tmp_path / "int8.onnx"), per_channel=True, weight_type=QuantType.QInt8
    )
    return str(tmp_path / "int8.onnx")


def run(path: str, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("shape", [[5, 16], [5, 7, 16]], ids=["2-D", "3-D"])
def test_each_face_is_quantized_as_if_it_were_alone(tmp_path, shape):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(16, 8)).astype(np.float32)
    x = rng.normal(size=shape).astype(np.float32)
    x[1] *= 40  # one face with a far wider range, which per batch coarsened every other face's steps
    x[2] = np.abs(x[2])  # one face without negative values (its zero point at 0)
    per_batch = linear_graph(tmp_path, shape, weights)
    rewritten = onnx.load(per_batch)
    onnx.save(quantize_per_face(rewritten), str(tmp_path / "per-face.onnx"))
    onnx.checker.check_model(rewritten)
    per_face = str(tmp_path / "per-face.onnx")
    together = run(per_face, x)
    alone = np.concatenate([run(per_batch, x[[row]]) for row in range(len(x))])
    assert np.abs(together - alone).max() <= 1e-5 * np.abs(alone).max()  # what onnxruntime gives each face alone
    assert np.abs(run(per_batch, x) - alone).max() > 0.1  # per batch, the wide face changes the others' answers


def test_an_activation_used_otherwise_is_refused():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    out = helper.make_tensor_value_info("q", TensorProto.UINT8, None)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
        helper.make_node("Identity", ["q"], ["o"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "other", [x], [out]))
    with pytest.raises(ValueError, match=r"q feeds \['Identity'\], not only MatMulInteger"):
        quantize_per_face(model)
