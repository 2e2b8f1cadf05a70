"""From a path, bytes or ModelProto to the executor's nodes: parse + onnx.checker, graph value info, the
node form (attributes decoded), initializers and a topological order."""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from models.graph import TensorSpec
from ops_native.errors import InvalidModelError
from ops_native.ops import Node


@dataclass(frozen=True)
class TensorInfo(TensorSpec):
    """The project's tensor spec (:class:`models.graph.TensorSpec`: name, numpy dtype, shape) as ops_native's
    ONNX Runtime-like API reports it in ``get_inputs()`` / ``get_outputs()``: ``shape`` a list (ints, or a str
    for a dynamic dim, as ORT's NodeArg) and ``type`` the ONNX type string (``"tensor(float)"``)."""

    type: str = ""


_TYPE_NAMES = {
    1: "float", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
    10: "float16", 11: "double", 12: "uint32", 13: "uint64",
}


def tensor_info(vi: onnx.ValueInfoProto) -> TensorInfo:
    """The TensorInfo of a graph input / output."""
    tt = vi.type.tensor_type
    elem = tt.elem_type
    shape: list = []
    if tt.HasField("shape"):
        for i, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value"):
                shape.append(int(d.dim_value))
            else:
                shape.append(d.dim_param or f"unk__{i}")
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    except Exception:  # noqa: BLE001 - unknown element type codes raise various errors
        dtype = np.dtype(object)
    return TensorInfo(name=vi.name, dtype=dtype, shape=shape, type=f"tensor({_TYPE_NAMES.get(elem, 'unknown')})")


def load_model(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Parse and check a model given as a path, serialized bytes or a ModelProto."""
    try:
        if isinstance(model, onnx.ModelProto):
            proto = model
        elif isinstance(model, (bytes, bytearray, memoryview)):
            proto = onnx.load_from_string(bytes(model))
        elif isinstance(model, (str, os.PathLike)):
            proto = onnx.load(os.fspath(model))
        else:
            raise InvalidModelError(f"model: expected a path, bytes or onnx.ModelProto, got {type(model).__name__}")
    except InvalidModelError:
        raise
    except FileNotFoundError as e:
        raise InvalidModelError(f"model file not found: {e.filename}") from e
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and others for bad bytes
        raise InvalidModelError(f"cannot parse the model: {type(e).__name__}: {e}") from e
    try:
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - ValidationError and C++ errors
        raise InvalidModelError(f"model fails onnx.checker: {e}") from e
    if len(proto.graph.node) == 0 and len(proto.graph.output) == 0:
        raise InvalidModelError("model has an empty graph")
    return proto


def default_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _text(v: str | bytes) -> str:
    """A protobuf string field as str (invalid UTF-8 in a damaged model comes back as bytes)."""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _subgraphs(n: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in n.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def iter_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The graph and every subgraph nested in it (If branches, Loop / Scan bodies), outermost first."""
    out = [graph]
    for n in graph.node:
        for g in _subgraphs(n):
            out.extend(iter_graphs(g))
    return out


def outer_names(graph: onnx.GraphProto) -> list[str]:
    """Names a (sub)graph reads from the scopes around it, in first-read order: every value its nodes (or the
    subgraphs nested in them) use that is not one of its inputs, initializers or node outputs."""
    defined = {vi.name for vi in graph.input} | {i.name for i in graph.initializer} | \
        {i.values.name for i in graph.sparse_initializer} | {o for n in graph.node for o in n.output}
    seen: list[str] = []
    for n in graph.node:
        reads = list(n.input) + [v for g in _subgraphs(n) for v in outer_names(g)]
        for v in reads:
            if v and v not in defined and v not in seen:
                seen.append(v)
    for o in graph.output:
        if o.name not in defined and o.name not in seen:
            seen.append(o.name)
    return seen


def convert_nodes(graph: onnx.GraphProto) -> list[Node]:
    """The graph's nodes in the executor's form, with attributes decoded.

    A node with subgraphs (If, Loop, Scan) keeps them as GraphProto attributes, and lists the outer values they
    read after its own inputs (attribute ``_n_inputs`` counts its own): the run order, the constant folding
    and the memory plan then see those reads like any other input."""
    out = []
    for i, n in enumerate(graph.node):
        attrs: dict[str, Any] = {}
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                attrs[a.name] = a.g if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
                continue
            v = helper.get_attribute_value(a)
            attrs[a.name] = v.decode() if isinstance(v, bytes) else v
        inputs = [_text(v) for v in n.input]
        subs = _subgraphs(n)
        if subs:
            attrs["_n_inputs"] = len(inputs)
            for v in (v for g in subs for v in outer_names(g)):
                if v not in inputs[attrs["_n_inputs"]:]:
                    inputs.append(v)
        out.append(Node(_text(n.name) or f"{_text(n.op_type)}_{i}", _text(n.op_type), inputs,
                        [_text(v) for v in n.output], attrs, _text(n.domain)))
    return out


def topo_sort(nodes: list[Node], available: set[str]) -> list[Node]:
    """Kahn's order; raises InvalidModelError for an input nothing produces or a cycle."""
    producers = {o: n for n in nodes for o in n.outputs if o}
    for n in nodes:
        for i in n.inputs:
            if i and i not in available and i not in producers:
                raise InvalidModelError(f"node '{n.name}' ({n.op_type}): input '{i}' is neither a graph input, "
                                        "an initializer nor produced by any node")
    pending = {id(n): len({i for i in n.inputs if i and i not in available}) for n in nodes}
    waiting: dict[str, list[Node]] = defaultdict(list)
    for n in nodes:
        for i in {i for i in n.inputs if i and i not in available}:
            waiting[i].append(n)
    ready = [n for n in nodes if pending[id(n)] == 0]
    order: list[Node] = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for o in n.outputs:
            for m in waiting.pop(o, []):
                pending[id(m)] -= 1
                if pending[id(m)] == 0:
                    ready.append(m)
    if len(order) != len(nodes):
        raise InvalidModelError("graph has a cycle")
    return order



def read_initializers(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The graph's initializers as arrays; InvalidModelError names one that cannot be read."""
    consts: dict[str, np.ndarray] = {}
    for init in graph.initializer:
        try:
            consts[init.name] = numpy_helper.to_array(init)
        except Exception as e:  # noqa: BLE001 - external data missing etc.
            raise InvalidModelError(f"initializer '{init.name}' cannot be read: {e}") from e
    return consts
