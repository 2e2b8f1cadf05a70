"""The ops of the ops_native executor, one module per family, and the registry they fill.

    registry.py     Node, BuildContext, register / REGISTRY, the support check, errors, BufferPool, limits
    elementwise.py  arithmetic, comparison, logic, activations, Clip, Where, Identity (+ internal _Affine)
    norm.py         Softmax, LayerNormalization, BatchNormalization
    pooling.py      MaxPool / AveragePool (+ global) and the ONNX padding rules (shared with Conv)
    reduce.py       Reduce*
    resize.py       Resize / Upsample
    data.py         data movement and metadata (Transpose, Concat, Slice, Gather, Reshape, Cast...)
    linalg.py       MatMul, Gemm
    conv.py         Conv, ConvTranspose
    indexing.py     TopK, ArgMax / ArgMin, GatherElements, ScatterND, CumSum, NonMaxSuppression
    einsum.py       Einsum
    control.py      If, Loop, Scan (subgraphs compiled into their own plans)
    channel.py      LRN, PRelu, InstanceNormalization, GroupNormalization (over the channel axis)
    recurrent.py    LSTM, GRU, RNN (the whole sequence in one native call)
    quant.py        (Dynamic)QuantizeLinear, DequantizeLinear, MatMulInteger, ConvInteger, com.microsoft.DynamicQuantize*

Each op has a *builder* ``build(node, ctx) -> fn``, run once at load time (attributes parsed, constant
weights packed); ``fn(args: list) -> list`` runs the node. Importing this package registers every op.
"""

from __future__ import annotations

from ops_native.ops import (  # noqa: F401 - registers the ops
    channel,
    control,
    conv,
    data,
    einsum,
    elementwise,
    indexing,
    linalg,
    memo,
    norm,
    pooling,
    quant,
    recurrent,
    reduce,
    resize,
)
from ops_native.ops.registry import (
    DEFAULT_DOMAINS,
    MAX_TENSOR_BYTES,
    REGISTRY,
    BufferPool,
    BuildContext,
    Fn,
    Node,
    OpBuildError,
    OpNotSupported,
    build,
    check_alloc,
    display_op,
    is_internal,
    is_supported,
    op_key,
    register,
    supported_ops,
    unsupported_ops,
)

__all__ = [
    "DEFAULT_DOMAINS", "MAX_TENSOR_BYTES", "REGISTRY", "BufferPool", "BuildContext", "Fn", "Node", "OpBuildError", "OpNotSupported",
    "build", "check_alloc", "display_op", "is_internal", "is_supported", "op_key", "register", "supported_ops", "unsupported_ops",
]
