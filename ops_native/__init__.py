"""ops_native: the native kernel core (C + SIMD, Cython-wrapped) of edge-agent, and its ONNX executor.

    import ops_native
    sess = ops_native.InferenceSession("model.onnx", threads=2)
    y, = sess.run(None, {"x": x})
"""

from __future__ import annotations

import os

import onnx

from ops_native import _core
from ops_native import ops as _ops
from ops_native.errors import InvalidInputError, InvalidModelError, OpsNativeError, UnsupportedOpError
from ops_native.loader import TensorInfo, convert_nodes, iter_graphs, load_model
from ops_native.session import InferenceSession

__all__ = [
    "InferenceSession", "supported_ops", "unsupported_ops", "isa", "OpsNativeError", "UnsupportedOpError",
    "InvalidModelError", "InvalidInputError", "TensorInfo",
]


def supported_ops() -> list[str]:
    """The ops the executor runs: ONNX op types, and ``domain.op_type`` for the few contrib ops it has."""
    return _ops.supported_ops()


def unsupported_ops(model: str | os.PathLike | bytes | onnx.ModelProto) -> list[str]:
    """Op types of this model the executor cannot run (empty list: it runs every node), looking into the
    subgraphs of If / Loop / Scan nodes too; ops outside the default domain are named ``domain.op_type``."""
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    return _ops.unsupported_ops([n for g in iter_graphs(proto.graph) for n in convert_nodes(g)])


def isa() -> str:
    """The instruction set the kernels use now ("avx512f", "avx2-fma", "neon" or "scalar")."""
    return _core.isa()
