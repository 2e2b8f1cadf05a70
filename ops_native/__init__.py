"""ops_native: the native kernel core (C + SIMD, Cython-wrapped) of edge-agent, and its ONNX executor.

    import ops_native
    sess = ops_native.InferenceSession("model.onnx", threads=2)
    y, = sess.run(None, {"x": x})
"""

from __future__ import annotations

import os

import onnx

from ops_native import _core
from ops_native.graph import (
    InvalidInputError,
    InvalidModelError,
    OpsNativeError,
    TensorInfo,
    UnsupportedOpError,
    convert_nodes,
    load_model,
)
from ops_native.ops import REGISTRY
from ops_native.session import InferenceSession

__all__ = [
    "InferenceSession", "supported_ops", "unsupported_ops", "isa", "OpsNativeError", "UnsupportedOpError",
    "InvalidModelError", "InvalidInputError", "TensorInfo",
]


def supported_ops() -> list[str]:
    """The ONNX op types (default domain) the executor runs."""
    ops = [op for op in REGISTRY if not op.startswith("_")]
    if not hasattr(_core, "Conv2d"):
        ops = [op for op in ops if op != "Conv"]
    if not hasattr(_core, "ConvTranspose2d"):
        ops = [op for op in ops if op != "ConvTranspose"]
    return sorted(ops)


def unsupported_ops(model: str | os.PathLike | bytes | onnx.ModelProto) -> list[str]:
    """Op types of this model the executor cannot run (empty list: it runs every node)."""
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    supported = set(supported_ops())
    missing: list[str] = []
    for n in convert_nodes(proto.graph):
        default = n.domain in ("", "ai.onnx")
        key = n.op_type if default else f"{n.domain}.{n.op_type}"
        if (not default or n.op_type not in supported) and key not in missing:
            missing.append(key)
    return missing


def isa() -> str:
    """The instruction set the kernels use now ("avx512f", "avx2-fma", "neon" or "scalar")."""
    return _core.isa()
