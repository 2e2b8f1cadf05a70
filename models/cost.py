"""Per-node cost model: FLOPs, weight bytes and activation bytes on every edge.

FLOPs count a multiply-add as 2 (Conv incl. grouped/depthwise, ConvTranspose, Gemm, batched MatMul;
bias adds are not counted);
elementwise ops cost one FLOP per output element (a few more for transcendental functions);
pooling and reductions cost one FLOP per input element; pure data-movement ops (Reshape, Flatten,
Squeeze, Shape, Constant, ...) cost nothing. "Weights" are initializers and Constant node values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from models.graph import (
    constant_value_bytes,
    initializer_bytes,
    node_inputs,
    tensor_types,
    topological_nodes,
    with_static_shapes,
)

__all__ = ["NodeCost", "ModelCost", "model_cost", "node_flops"]


@dataclass
class NodeCost:
    """Cost of one node in topological order."""

    index: int
    name: str
    op_type: str
    flops: int
    weight_bytes: int
    out_bytes: int
    inputs: list[str]
    outputs: list[str]


@dataclass
class ModelCost:
    """Costs of all nodes plus the byte size of every tensor (edges, inputs, weights)."""

    nodes: list[NodeCost]
    tensor_bytes: dict[str, int]
    total_flops: int
    total_weight_bytes: int
    weights: dict[str, int] = field(default_factory=dict)
    """Bytes of every constant tensor (initializers and Constant node outputs)."""
    graph_inputs: list[str] = field(default_factory=list)
    graph_outputs: list[str] = field(default_factory=list)


# Extra FLOPs per output element for ops that are more than one arithmetic instruction.
_ELEMENTWISE_FACTOR = {
    "Exp": 4,
    "Log": 4,
    "Erf": 4,
    "Tanh": 4,
    "Sigmoid": 4,
    "Softplus": 4,
    "Gelu": 8,
    "Pow": 4,
    "Sqrt": 2,
    "Reciprocal": 1,
    "HardSigmoid": 2,
    "HardSwish": 3,
    "LeakyRelu": 2,
    "Elu": 4,
    "Selu": 4,
    "Softmax": 5,
    "LogSoftmax": 6,
    "BatchNormalization": 2,
    "LayerNormalization": 5,
    "InstanceNormalization": 5,
    "GroupNormalization": 5,
    "Clip": 1,
    "Mish": 8,
    "Sin": 4,
    "Cos": 4,
}
_FREE = {
    "Constant",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    "Shape",
    "Size",
    "Dropout",
    "ConstantOfShape",
    "Range",
    "EyeLike",
}
_COPY = {
    "Transpose",
    "Concat",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "Split",
    "Pad",
    "Tile",
    "Expand",
    "Cast",
    "DepthToSpace",
    "SpaceToDepth",
    "ScatterND",
    "Where",
}
_REDUCE = {
    "GlobalAveragePool",
    "GlobalMaxPool",
    "AveragePool",
    "MaxPool",
    "LpPool",
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
    "ReduceLogSumExp",
    "ArgMax",
    "ArgMin",
    "TopK",
}


def _numel(shape: tuple | None) -> int:
    if shape is None or any(not isinstance(d, int) for d in shape):
        return 0
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _attr(node: onnx.NodeProto, name: str, default: object) -> object:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def node_flops(node: onnx.NodeProto, shapes: dict[str, tuple | None]) -> int:
    """FLOPs of one node given static shapes of its tensors (missing shapes count as 0)."""
    op = node.op_type
    ins = [shapes.get(i) if i else None for i in node.input]
    outs = [shapes.get(o) if o else None for o in node.output]
    out0 = outs[0] if outs else None
    if op == "Conv" and len(ins) >= 2 and ins[1] is not None:
        w = ins[1]  # (Cout, Cin/group, k...)
        return 2 * _numel(out0) * _numel(w[1:])
    if op == "ConvTranspose" and len(ins) >= 2 and ins[0] is not None and ins[1] is not None:
        w = ins[1]  # (Cin, Cout/group, k...): every input element scatters into Cout/group * k outputs
        return 2 * _numel(ins[0]) * _numel(w[1:])
    if op == "Gemm" and len(ins) >= 2 and ins[0] is not None:
        a = ins[0]
        k = a[0] if _attr(node, "transA", 0) else a[1]
        return 2 * _numel(out0) * int(k)
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul") and ins and ins[0] is not None:
        a = ins[0]
        k = a[-1] if len(a) >= 1 else 1
        return 2 * _numel(out0) * int(k)
    if op in ("Einsum",):
        return 2 * max(_numel(out0), max((_numel(s) for s in ins), default=0))
    if op in _FREE:
        return 0
    if op in _REDUCE:
        return _numel(ins[0]) if ins else 0
    if op in _COPY:
        return _numel(out0)
    if op == "Resize":
        return 4 * _numel(out0)
    return _ELEMENTWISE_FACTOR.get(op, 1) * sum(_numel(s) for s in outs)


def model_cost(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None,
               strict: bool = True, sample: dict | None = None) -> ModelCost:
    """Cost every node of ``model`` with its inputs fixed to ``input_shapes`` (symbolic dims -> 1). With
    ``strict`` False, tensors whose shape cannot be determined count as empty (the costs are estimates)."""
    static = with_static_shapes(model, input_shapes, strict=strict, feeds=sample)
    types = tensor_types(static)
    shapes = {k: v[1] for k, v in types.items()}
    tensor_bytes: dict[str, int] = {}
    for name, (dtype, shape) in types.items():
        item = dtype.itemsize if dtype != np.dtype(object) else 8
        tensor_bytes[name] = _numel(shape) * item
    g = static.graph
    weights: dict[str, int] = {t.name: initializer_bytes(t) for t in g.initializer}
    for t in g.sparse_initializer:
        weights[t.values.name] = initializer_bytes(t.values) + initializer_bytes(t.indices)
    nodes: list[NodeCost] = []
    for idx, node in enumerate(topological_nodes(static)):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            weights[node.output[0]] = constant_value_bytes(node)
            tensor_bytes[node.output[0]] = weights[node.output[0]]
        ins = node_inputs(node)
        wb = sum(weights[i] for i in dict.fromkeys(ins) if i in weights)
        outs = [o for o in node.output if o]
        flops = 0 if node.op_type == "Constant" else node_flops(node, shapes)
        nodes.append(
            NodeCost(
                index=idx,
                name=node.name or f"{node.op_type}_{idx}",
                op_type=node.op_type,
                flops=int(flops),
                weight_bytes=int(wb),
                out_bytes=int(sum(tensor_bytes.get(o, 0) for o in outs)),
                inputs=ins,
                outputs=outs,
            )
        )
    init_names = set(weights)
    return ModelCost(
        nodes=nodes,
        tensor_bytes=tensor_bytes,
        total_flops=int(sum(n.flops for n in nodes)),
        total_weight_bytes=int(sum(weights.values())),
        weights=weights,
        graph_inputs=[vi.name for vi in g.input if vi.name not in init_names],
        graph_outputs=[vi.name for vi in g.output],
    )


def peak_activation_bytes(cost: ModelCost) -> int:
    """Largest total size of the activations alive at once when the nodes run in topological order (graph
    inputs included, weights excluded; a tensor is freed after its last reader, graph outputs never)."""
    last: dict[str, int] = {}
    for n in cost.nodes:
        for t in n.inputs:
            last[t] = n.index
    keep = set(cost.graph_outputs)
    live = {t: cost.tensor_bytes.get(t, 0) for t in cost.graph_inputs}
    peak = sum(live.values())
    for n in cost.nodes:
        for o in n.outputs:
            if o not in cost.weights:
                live[o] = cost.tensor_bytes.get(o, 0)
        peak = max(peak, sum(live.values()))
        for t in list(live):
            if t not in keep and last.get(t, -1) <= n.index:
                del live[t]
    return int(peak)
