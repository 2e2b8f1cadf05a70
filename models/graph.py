"""ONNX graph helpers: loading with validation, input/output specs, static shapes, graph structure.

Everything else in :mod:`models` (cost model, partitioner) goes through these helpers so that
"which tensors are weights", "what order are the nodes in" and "what shape has this edge" are
answered in one place.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

__all__ = [
    "ModelError",
    "TensorSpec",
    "load_model",
    "input_specs",
    "output_specs",
    "with_static_shapes",
    "topological_nodes",
    "node_inputs",
    "constant_array",
    "constant_value_bytes",
    "initializer_bytes",
    "tensor_types",
    "check_inputs",
    "InvalidInputError",
]


class ModelError(ValueError):
    """A model could not be read, decoded or validated."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of a graph input or output.

    Dimensions are ``int`` when fixed, ``str`` for a named symbolic dimension and ``None`` when unknown.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]

    def to_dict(self) -> dict:
        """Plain-data form (a manifest's ``inputs``/``outputs``): dtype by name, shape as a list."""
        return {"name": self.name, "dtype": np.dtype(self.dtype).name, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], np.dtype(d["dtype"]), tuple(d["shape"]))

    def fixed_dims(self) -> list[tuple[int, int]]:
        """(axis, size) of every dimension that is fixed (a positive int)."""
        return [(i, d) for i, d in enumerate(self.shape) if isinstance(d, int) and d > 0]


class InvalidInputError(ValueError):
    """Inputs that do not match a model's specs: missing or unknown name, wrong dtype, rank or fixed dim."""


def check_inputs(specs: Iterable[TensorSpec], inputs: dict, where: str,
                 error: type[Exception] = InvalidInputError) -> None:
    """Raise ``error`` (InvalidInputError by default) unless ``inputs`` holds exactly the spec'd names, each a
    numpy array of the spec'd dtype and rank whose fixed dimensions match (symbolic or unknown dimensions take
    any size). ``error`` lets each package raise its own exception class from this one check."""
    specs = list(specs)
    names = {s.name for s in specs}
    for s in specs:
        # messages are built only on failure: this runs on every request (dtype.name is slow in numpy 2)
        if s.name not in inputs:
            raise error(f"{where}: missing input '{s.name}' (expected {np.dtype(s.dtype).name} {list(s.shape)}; "
                        f"given: {sorted(inputs) or 'none'})")
        arr = inputs[s.name]
        if not isinstance(arr, np.ndarray):
            raise error(f"{where}: input '{s.name}' must be a numpy array, got {type(arr).__name__}")
        if arr.dtype != s.dtype:
            raise error(f"{where}: input '{s.name}' expected dtype {np.dtype(s.dtype).name}, "
                                    f"got {arr.dtype.name}")
        if arr.ndim != len(s.shape) or any(arr.shape[i] != d for i, d in s.fixed_dims()):
            raise error(f"{where}: input '{s.name}' expected shape {list(s.shape)}, "
                                    f"got {list(arr.shape)}")
    extra = set(inputs) - names
    if extra:
        raise error(f"{where}: unknown input(s) {sorted(extra)}; model inputs are {sorted(names)}")


def _describe(src: object) -> str:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return f"<{len(src)} bytes>"
    if isinstance(src, onnx.ModelProto):
        return f"<ModelProto graph {src.graph.name!r}>"
    return repr(os.fspath(src))  # type: ignore[arg-type]


def load_model(src: str | os.PathLike | bytes | onnx.ModelProto, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX model from a path, serialized bytes or a ``ModelProto`` and validate it.

    The ONNX checker runs with ``full_check=True`` (strict shape inference) unless ``check`` is False.
    Raises :class:`ModelError` naming the source when the file cannot be read, the bytes are not a
    protobuf ``ModelProto``, or the model fails validation.
    """
    what = _describe(src)
    if isinstance(src, onnx.ModelProto):
        model = src
    elif isinstance(src, (bytes, bytearray, memoryview)):
        model = _decode(bytes(src), what)
    else:
        path = Path(os.fspath(src))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read ONNX model {what}: {exc.strerror or exc}") from exc
        model = _decode(data, what)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            try:
                onnx.load_external_data_for_model(model, str(path.parent))
            except Exception as exc:  # noqa: BLE001 - any failure means unreadable external data
                raise ModelError(f"cannot load external weights of ONNX model {what}: {exc}") from exc
    if not model.opset_import or not model.HasField("graph") or model.ir_version <= 0:
        raise ModelError(
            f"{what} is not an ONNX model (missing ir_version, opset_import or graph; "
            "is the file truncated or not ONNX at all?)"
        )
    if len(model.graph.node) == 0:
        raise ModelError(f"ONNX model {what} has an empty graph (no nodes)")
    if check:
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # onnx raises ValidationError / InferenceError / others
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"ONNX model {what} is invalid: {msg}") from exc
    return model


def _decode(data: bytes, what: str) -> onnx.ModelProto:
    if not data:
        raise ModelError(f"ONNX model {what} is empty (0 bytes)")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise ModelError(
            f"{what} is not a valid ONNX protobuf ({type(exc).__name__}: {exc}); "
            "the file is corrupt, truncated or not an ONNX model"
        ) from exc
    return model


# ----------------------------------------------------------------------------------------------- specs


def _dims(tt: onnx.TypeProto.Tensor) -> tuple[int | str | None, ...] | None:
    if not tt.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            out.append(d.dim_param)
        else:   # unknown, or -1 / 0: what several exporters write for "dynamic"
            out.append(None)
    return tuple(out)


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    tt = vi.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype("float32")
    return TensorSpec(vi.name, dtype, _dims(tt) or ())


def input_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Specs of the graph inputs that a caller must feed (initializer-backed inputs excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return [_spec(vi) for vi in model.graph.input if vi.name not in inits]


def output_specs(model: onnx.ModelProto) -> list[TensorSpec]:
    """Specs of the graph outputs."""
    return [_spec(vi) for vi in model.graph.output]


# ------------------------------------------------------------------------------------- static shapes


def with_static_shapes(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None, strict: bool = True,
    feeds: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Return a copy with every input dimension fixed and shapes inferred on every edge.

    Dimensions given in ``input_shapes`` win; other symbolic, unknown or non-positive (-1, 0: "dynamic" to
    several exporters) dimensions become 1 (see :mod:`models.shapes` for realistic choices). The copy
    goes through ONNX shape inference (strict mode, with data propagation so shape-computing
    subgraphs resolve). Raises :class:`ModelError` if a given shape contradicts a fixed dimension,
    names an unknown input, or inference fails. Tensors inference leaves unknown are measured by running the
    model once on ``feeds`` (a sample request) or zeros; if that fails too, ``strict`` raises, else they stay unknown (control flow whose
    branch depends on input values, e.g. an ``If`` on a sample rate).
    """
    input_shapes = dict(input_shapes or {})
    out = copy.deepcopy(model)
    del out.graph.value_info[:]
    inits = {t.name for t in out.graph.initializer}
    feedable = {vi.name for vi in out.graph.input if vi.name not in inits}
    unknown = set(input_shapes) - feedable
    if unknown:
        raise ModelError(
            f"input_shapes names {sorted(unknown)} which are not inputs; inputs are {sorted(feedable)}"
        )
    for vi in out.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        given = input_shapes.get(vi.name)
        if given is not None:
            given = tuple(int(x) for x in given)
            if tt.HasField("shape") and len(tt.shape.dim) != len(given):
                raise ModelError(
                    f"input {vi.name!r} has rank {len(tt.shape.dim)} but input_shapes gives {given}"
                )
            if tt.HasField("shape"):
                for i, (d, v) in enumerate(zip(tt.shape.dim, given, strict=True)):
                    if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != v:
                        raise ModelError(
                            f"input {vi.name!r} dim {i} is fixed to {d.dim_value} but input_shapes gives {v}"
                        )
            tt.ClearField("shape")
            for v in given:
                tt.shape.dim.add().dim_value = v
        else:
            if not tt.HasField("shape"):
                raise ModelError(f"input {vi.name!r} has no shape (not even a rank); pass input_shapes")
            for d in tt.shape.dim:
                if not d.HasField("dim_value") or d.dim_value <= 0:
                    d.Clear()
                    d.dim_value = 1
    # Graph outputs may carry stale symbolic dims; let inference fill them from the fixed inputs.
    for vi in out.graph.output:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                if not d.HasField("dim_value") or d.dim_value <= 0:
                    d.Clear()
    try:
        inferred = shape_inference.infer_shapes(out, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # strict inference failed: retry leniently, the ORT fallback covers gaps
        try:
            inferred = shape_inference.infer_shapes(out, data_prop=True)
        except Exception:
            raise ModelError(f"shape inference failed for {model.graph.name!r}: {exc}") from exc
    missing = _edges_without_static_shape(inferred)
    if missing:
        try:
            _fill_shapes_by_running(inferred, missing, feeds)
        except ModelError:
            if strict:
                raise
    return inferred


def _edges_without_static_shape(model: onnx.ModelProto) -> list[str]:
    types = tensor_types(model)
    missing = []
    for node in model.graph.node:
        for o in node.output:
            if not o:
                continue
            t = types.get(o)
            if t is None or t[1] is None or any(not isinstance(d, int) for d in t[1]):
                missing.append(o)
    return missing


def _fill_shapes_by_running(model: onnx.ModelProto, names: list[str], sample: dict | None = None) -> None:
    """Fallback for ops ONNX inference cannot resolve: run the model once in ONNX Runtime on ``sample``
    (values matter where control flow depends on them) or zeros."""
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    have = {o.name for o in probe.graph.output}
    for n in names:
        if n not in have:
            probe.graph.output.add().name = n
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.log_severity_level = 4   # a rejected shape is reported by the exception below, not on stderr
    try:
        sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        feeds = {s.name: np.asarray(sample[s.name]) if sample and s.name in sample
                 else np.zeros([int(d) for d in s.shape], s.dtype) for s in input_specs(model)}
        values = sess.run(names, feeds)
    except Exception as exc:
        raise ModelError(
            f"could not determine static shapes of {len(names)} tensors (e.g. {names[:3]}) in "
            f"{model.graph.name!r}: shape inference left them unknown and running the model failed: {exc}"
        ) from exc
    known = {vi.name: vi for vi in model.graph.value_info}
    outputs = {vi.name: vi for vi in model.graph.output}
    for n, v in zip(names, values, strict=True):
        vi = helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
        if n in outputs:
            outputs[n].CopyFrom(vi)
        elif n in known:
            known[n].CopyFrom(vi)
        else:
            model.graph.value_info.append(vi)


# ----------------------------------------------------------------------------------- graph structure


def tensor_types(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, tuple[int | str | None, ...] | None]]:
    """Map every tensor name with known type info to ``(dtype, shape)``.

    Covers graph inputs/outputs, ``value_info``, initializers and Constant node outputs.
    """
    out: dict[str, tuple[np.dtype, tuple[int | str | None, ...] | None]] = {}
    g = model.graph
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.elem_type:
            continue
        out[vi.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)), _dims(tt))
    for t in g.initializer:
        out[t.name] = (np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)), tuple(int(d) for d in t.dims))
    for node in g.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            arr = constant_array(node)
            if arr is not None:
                out[node.output[0]] = (arr.dtype, tuple(arr.shape))
    return out


def constant_array(node: onnx.NodeProto) -> np.ndarray | None:
    """Value of a ``Constant`` node as a numpy array (None for sparse values)."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), np.float32)
        if a.name == "value_int":
            return np.array(a.i, np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), np.int64)
        if a.name == "value_string":
            return np.array(a.s, object)
        if a.name == "value_strings":
            return np.array(list(a.strings), object)
    return None


def constant_value_bytes(node: onnx.NodeProto) -> int:
    """Bytes held by a ``Constant`` node's value."""
    for a in node.attribute:
        if a.name == "sparse_value":
            sv = a.sparse_tensor
            return int(_init_bytes(sv.values) + _init_bytes(sv.indices))
    arr = constant_array(node)
    return 0 if arr is None else int(arr.nbytes) if arr.dtype != object else sum(len(x) for x in arr.ravel())


def _init_bytes(t: onnx.TensorProto) -> int:
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    return n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize


def initializer_bytes(t: onnx.TensorProto) -> int:
    """Bytes of an initializer's data (computed from dims and dtype, also for external data)."""
    return int(_init_bytes(t))


def _subgraph_outer_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from enclosing scopes."""
    local = {vi.name for vi in graph.input} | {t.name for t in graph.initializer}
    local |= {t.values.name for t in graph.sparse_initializer}
    refs: set[str] = set()
    for node in graph.node:
        for name in node_inputs(node):
            if name not in local:
                refs.add(name)
        local.update(o for o in node.output if o)
    for vi in graph.output:
        if vi.name not in local:
            refs.add(vi.name)
    return refs


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Tensor names a node reads: its explicit inputs plus outer-scope names used by its subgraphs."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        subs: Iterable[onnx.GraphProto] = ()
        if a.type == onnx.AttributeProto.GRAPH:
            subs = (a.g,)
        elif a.type == onnx.AttributeProto.GRAPHS:
            subs = a.graphs
        for g in subs:
            for r in sorted(_subgraph_outer_refs(g)):
                if r not in names:
                    names.append(r)
    return names


def topological_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of the main graph in topological order.

    ONNX requires ``graph.node`` to be sorted already; then that order is returned unchanged, so node
    indices elsewhere in :mod:`models` match ``graph.node`` indices. Otherwise a stable Kahn sort is used.
    Raises :class:`ModelError` on a cycle or a read of a tensor nobody produces.
    """
    g = model.graph
    nodes = list(g.node)
    available = {vi.name for vi in g.input} | {t.name for t in g.initializer}
    available |= {t.values.name for t in g.sparse_initializer}
    ok = True
    seen = set(available)
    for node in nodes:
        if any(i not in seen for i in node_inputs(node)):
            ok = False
            break
        seen.update(o for o in node.output if o)
    if ok:
        return nodes
    producer: dict[str, int] = {}
    for idx, node in enumerate(nodes):
        for o in node.output:
            if o:
                producer[o] = idx
    deps: list[set[int]] = []
    for idx, node in enumerate(nodes):
        d = set()
        for i in node_inputs(node):
            if i in available:
                continue
            if i not in producer:
                raise ModelError(
                    f"node {node.name or idx!r} ({node.op_type}) reads {i!r} which nothing produces"
                )
            d.add(producer[i])
        deps.append(d)
    users: list[list[int]] = [[] for _ in nodes]
    for idx, d in enumerate(deps):
        for p in d:
            users[p].append(idx)
    import heapq

    remaining = [len(d) for d in deps]
    ready = [i for i, r in enumerate(remaining) if r == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ModelError(f"graph {g.name!r} has a cycle; {len(nodes) - len(order)} nodes cannot be ordered")
    return [nodes[i] for i in order]
