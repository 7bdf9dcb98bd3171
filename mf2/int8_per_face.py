"""int8 activations quantized face by face, so that a face's int8 answer does not depend on the faces beside it.

onnxruntime's dynamic quantization (`quantize_dynamic`) gives every quantized MatMul a `DynamicQuantizeLinear` node:
one scale and zero point for the whole activation tensor, computed at run time over the whole batch, so a face read
beside other faces was quantized differently than alone (mf2-base 2.1, 64 FER+ valid faces, batch 1 against batch 16:
AU probabilities apart by up to 0.33, the top emotion changed on 2 faces). `quantize_per_face` rewrites each such
node into the same arithmetic over each entry of the tensor's first axis (a face, or one of its AU regions), with
`QuantizeLinear` along that axis. `MatMulInteger` takes a per-tensor zero point only, so the product is taken without
it, and `z * sum_k w_k` (the weights `w` less their own zero point), scaled as the product is, is taken off after the
scaling: `sum_k (q_k - z) w_k = sum_k q_k w_k - z sum_k w_k`.

The cost: onnxruntime no longer fuses the quantization into the MatMul (its `DynamicQuantizeMatMul` is per tensor).
mf2-base 2.2's network alone on the 2-core CPU, 12 example faces, one sitting: 48.6 faces/s at batch 16 and 23.0 at
batch 1, against 58.1 and 26.9 quantized per batch and 39.7 and 20.5 in float32; its logits from float32's by at most
0.10 (AU) and 0.17 (emotion), against 0.19 and 0.26 per batch; a batch against each face alone, 1e-6 (per batch 0.11).

This file imports only onnx and numpy, so it travels with remote code.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def quantize_per_face(model):
    """`model` (an `onnx.ModelProto` from `quantize_dynamic`, opset 13 or later) with every `DynamicQuantizeLinear`
    rewritten to quantize each entry of its input's first axis on its own (module docstring); changed in place.

    Raises:
        ValueError: a quantized MatMul not in the form `quantize_dynamic` writes (`DynamicQuantizeLinear` ->
            `MatMulInteger` -> `Cast` -> `Mul` by the product of the two scales, the weights constants).
    """
    from onnx import numpy_helper

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    users = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    nodes, corrections = [], {}  # corrections: the nodes that follow each scaling Mul, by its renamed output
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            nodes += [later for name in node.output for later in corrections.pop(name, [])]
            continue
        quantized, scale, zero_point = node.output
        _check_users(users, quantized, zero_point, scale)
        prefix = f"{quantized}/per_face"
        nodes += _face_quantizer(node.input[0], quantized, scale, prefix)
        for matmul in users[quantized]:
            # The product is taken without the zero point, and z * sum_k w_k (scaled as the product is) taken off
            # after the scaling, which keeps the MatMulInteger -> Cast -> Mul chain onnxruntime fuses.
            scaled, weight_scale = _scaling_of(matmul, users, producer, scale)
            weight_zero = matmul.input[3] if len(matmul.input) > 3 else ""
            sums = _column_sums(constants, matmul.input[1], weight_zero) * _constant(constants, weight_scale)
            term = numpy_helper.from_array(sums.astype(np.float32), f"{prefix}/{matmul.name}/zero_point_term")
            graph.initializer.append(term)
            matmul.input[2] = ""
            output = scaled.output[0]
            corrections[f"{output}/with_zero_point"] = [
                _node("Mul", [f"{prefix}/zero_point_scaled", term.name], [f"{output}/zero_point_term"]),
                _node("Sub", [f"{output}/with_zero_point", f"{output}/zero_point_term"], [output]),
            ]
            scaled.output[0] = f"{output}/with_zero_point"  # so the corrections come right after it, in graph order
    graph.ClearField("node")
    graph.node.extend(nodes)
    return model


def _scaling_of(matmul, users: dict, producer: dict, scale: str) -> tuple:
    """The `Mul` that scales `matmul`'s product (after its `Cast`) and the name of the weights' scale in it."""
    casts = users[matmul.output[0]]
    muls = users[casts[0].output[0]] if len(casts) == 1 and casts[0].op_type == "Cast" else []
    if len(muls) == 1 and muls[0].op_type == "Mul":
        factor = next((name for name in muls[0].input if name != casts[0].output[0]), "")
        scales = producer.get(factor)
        if scales is not None and scales.op_type == "Mul" and scale in scales.input:
            return muls[0], next(name for name in scales.input if name != scale)
    raise ValueError(
        f"quantize_per_face: {matmul.name}'s product is not cast and scaled as quantize_dynamic writes it."
    )


def _constant(constants: dict, name: str) -> np.ndarray:
    from onnx import numpy_helper

    if name not in constants:
        raise ValueError(f"quantize_per_face: {name} is not a constant of the graph.")
    return numpy_helper.to_array(constants[name]).astype(np.float64)


def _node(op_type: str, inputs: list[str], outputs: list[str], **attributes):
    from onnx import helper

    return helper.make_node(op_type, inputs, outputs, **attributes)


def _check_users(users: dict, quantized: str, zero_point: str, scale: str) -> None:
    """Refuse a `DynamicQuantizeLinear` whose outputs feed anything `quantize_per_face` does not rewrite."""
    for name, allowed in ((quantized, "MatMulInteger"), (zero_point, "MatMulInteger"), (scale, "Mul")):
        others = {node.op_type for node in users[name]} - {allowed}
        if others:
            raise ValueError(f"quantize_per_face: {name} feeds {sorted(others)}, not only {allowed}.")
    for node in users[quantized]:
        if len(node.input) < 3 or node.input[2] != zero_point:
            raise ValueError(f"quantize_per_face: {node.name} does not take {zero_point} as its zero point.")


def _face_quantizer(source: str, quantized: str, scale: str, p: str) -> list:
    """Nodes giving, for each entry of `source`'s first axis, what `DynamicQuantizeLinear` gives for a whole tensor:
    `quantized` (uint8), `scale` and `{p}/zero_point_scaled` (the zero point times the scale), these two shaped
    `(N, 1, ..., 1)` to broadcast against the product; the range always holds 0, and rounding is half to even, as
    there."""
    from onnx import TensorProto, helper

    def constant(name: str, values: list, dtype=TensorProto.FLOAT) -> object:
        tensor = helper.make_tensor(f"{p}/{name}", dtype, [len(values)] if name in ("one", "minus_one") else [], values)
        return _node("Constant", [], [f"{p}/{name}"], value=tensor)

    ones = helper.make_tensor(f"{p}/one_value", TensorProto.INT64, [1], [1])
    return [
        *(constant(name, [value]) for name, value in (("zero", 0.0), ("levels", 255.0), ("tiny", 1e-30))),
        *(constant(name, [value], TensorProto.INT64) for name, value in (("one", 1), ("minus_one", -1))),
        _node("Flatten", [source], [f"{p}/rows"], axis=1),
        _node("ReduceMin", [f"{p}/rows"], [f"{p}/min"], axes=[1], keepdims=0),
        _node("ReduceMax", [f"{p}/rows"], [f"{p}/max"], axes=[1], keepdims=0),
        _node("Min", [f"{p}/min", f"{p}/zero"], [f"{p}/low"]),
        _node("Max", [f"{p}/max", f"{p}/zero"], [f"{p}/high"]),
        _node("Sub", [f"{p}/high", f"{p}/low"], [f"{p}/range"]),
        _node("Div", [f"{p}/range", f"{p}/levels"], [f"{p}/step"]),
        _node("Max", [f"{p}/step", f"{p}/tiny"], [f"{p}/scale"]),  # an all-zero face: any scale gives zeros
        _node("Div", [f"{p}/low", f"{p}/scale"], [f"{p}/low_steps"]),
        _node("Neg", [f"{p}/low_steps"], [f"{p}/zero_point_unrounded"]),
        _node("Round", [f"{p}/zero_point_unrounded"], [f"{p}/zero_point_unclipped"]),
        _node("Clip", [f"{p}/zero_point_unclipped", f"{p}/zero", f"{p}/levels"], [f"{p}/zero_point"]),
        _node("Cast", [f"{p}/zero_point"], [f"{p}/zero_point_uint8"], to=TensorProto.UINT8),
        _node("QuantizeLinear", [source, f"{p}/scale", f"{p}/zero_point_uint8"], [quantized], axis=0),
        # (N, 1, ..., 1) for the product, whatever the rank: the first axis, then one 1 per other axis.
        _node("Shape", [source], [f"{p}/shape"]),
        _node("Shape", [f"{p}/shape"], [f"{p}/rank"]),
        _node("Sub", [f"{p}/rank", f"{p}/one"], [f"{p}/other_axes"]),
        _node("ConstantOfShape", [f"{p}/other_axes"], [f"{p}/ones"], value=ones),
        _node("Concat", [f"{p}/minus_one", f"{p}/ones"], [f"{p}/broadcast_shape"], axis=0),
        _node("Reshape", [f"{p}/scale", f"{p}/broadcast_shape"], [scale]),
        _node("Mul", [f"{p}/zero_point", f"{p}/scale"], [f"{p}/zero_point_scaled_flat"]),
        _node("Reshape", [f"{p}/zero_point_scaled_flat", f"{p}/broadcast_shape"], [f"{p}/zero_point_scaled"]),
    ]


def _column_sums(constants: dict, weights: str, weight_zero: str) -> np.ndarray:
    """`(N,)` sums over K of the `(K, N)` quantized weights less their zero point (one, or one per column)."""
    values = _constant(constants, weights)
    return (values - _constant(constants, weight_zero) if weight_zero else values).sum(axis=-2)


__all__ = ["quantize_per_face"]
