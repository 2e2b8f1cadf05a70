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

from ops_native.errors import InvalidModelError
from ops_native.ops import Node


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints, or str for a dynamic dim), ONNX type string and numpy dtype of a graph value."""

    name: str
    shape: list
    type: str
    dtype: np.dtype


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
    return TensorInfo(vi.name, shape, f"tensor({_TYPE_NAMES.get(elem, 'unknown')})", dtype)


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


def convert_nodes(graph: onnx.GraphProto) -> list[Node]:
    """The graph's nodes in the executor's form, with attributes decoded."""
    out = []
    for i, n in enumerate(graph.node):
        attrs: dict[str, Any] = {}
        for a in n.attribute:
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                attrs[a.name] = a  # subgraphs: kept opaque (ops with subgraphs are unsupported)
                continue
            v = helper.get_attribute_value(a)
            attrs[a.name] = v.decode() if isinstance(v, bytes) else v
        out.append(Node(_text(n.name) or f"{_text(n.op_type)}_{i}", _text(n.op_type), [_text(v) for v in n.input],
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
