"""The op registry of the ops_native executor: ONNX op type -> builder, and the one support check.

Each op has a *builder* ``build(node, ctx) -> fn``. The builder runs once at load time: it parses the
attributes, checks what it can, and pre-binds constant inputs (weights are packed here, once). The
returned ``fn(args: list) -> list`` runs the node; ``args`` holds one value per node input (None for an
absent optional input). float32 compute goes to the C kernels of ``ops_native._core``; int64 / bool
tensors (shape subgraphs) use numpy.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ops_native import _core
from ops_native.errors import InvalidModelError, UnsupportedOpError

Fn = Callable[[list], list]

F32 = np.dtype(np.float32)


class OpBuildError(ValueError):
    """A node cannot be built: bad or unsupported attribute / input combination."""


class OpNotSupported(OpBuildError):
    """The op exists in the registry, but this variant of it (attribute, rank, dtype) is not supported."""


@dataclass
class Node:
    """One graph node in the executor's own form (after fusions)."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""


MAX_TENSOR_BYTES = 4 << 30  # no single tensor may need more: a damaged model or feed is refused, not OOM-killed


def check_alloc(shape: Any, dtype: Any, what: str) -> tuple:
    """shape as a tuple of ints, or OpBuildError if it is negative or the tensor would exceed MAX_TENSOR_BYTES."""
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise OpBuildError(f"{what}: negative dimension in shape {list(dims)}")
    nbytes = math.prod(dims) * np.dtype(dtype).itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise OpBuildError(f"{what}: shape {list(dims)} needs {nbytes / (1 << 30):.1f} GiB, more than the "
                           f"{MAX_TENSOR_BYTES >> 30} GiB per-tensor limit")
    return dims


class BufferPool(_core.BufferPool):
    """The executor's buffer pool (ops_native/pool.pxi, in Cython so that native steps and the run loop
    take and return buffers with C calls), plus give() for Python callers."""

    def give(self, arr: Any) -> None:
        """Take back arr's buffer if it came from this pool and nothing else still uses it."""
        # arr: the caller's variable + this argument + getrefcount's argument. Each link of the view chain
        # arr -> base -> ... -> pooled buffer: its child's .base + `node` + getrefcount's argument.
        if type(arr) is not np.ndarray or sys.getrefcount(arr) > 3:
            return
        node = arr.base
        while node is not None:
            if sys.getrefcount(node) > 3:
                return
            if type(node) is _core._PoolBuffer:
                self._recycle(node)
                return
            node = getattr(node, "base", None)


def _new_pool() -> BufferPool:
    return BufferPool(MAX_TENSOR_BYTES, check_alloc)


@dataclass
class BuildContext:
    """What a builder may know at load time."""

    consts: dict[str, np.ndarray]
    opset: int
    threads: int
    pool: BufferPool = field(default_factory=_new_pool)

    def const(self, name: str) -> np.ndarray | None:
        """The constant value of input ``name`` (None if it is computed at run time or absent)."""
        if not name:
            return None
        return self.consts.get(name)


REGISTRY: dict[str, Callable[[Node, BuildContext], Fn]] = {}


def register(*op_types: str) -> Callable:
    """Decorator: register a builder for the given op types (an op outside the default domain by its op key,
    ``com.microsoft.DynamicQuantizeLSTM``)."""

    def deco(fn: Callable[[Node, BuildContext], Fn]) -> Callable[[Node, BuildContext], Fn]:
        for op in op_types:
            REGISTRY[op] = fn
        return fn

    return deco


DEFAULT_DOMAINS = ("", "ai.onnx")


def is_internal(op_type: str) -> bool:
    """Ops the compiler makes itself (``_Affine``...): registered, but never part of a user's model or of any
    user-facing list or error."""
    return op_type.startswith("_")


# what each internal op stands for, in the user's terms (error messages, profiles)
_INTERNAL_OP_NAMES = {"_Affine": "Mul+Add", "_FromBlocked": "NCHWc8->NCHW", "_Subsample": "Conv(stride)",
                      "_ChannelShuffle": "Reshape+Transpose+Reshape",
                      "_ShapeMemo": "shape subgraph", "_MomentNorm": "LayerNorm(moments)"}


def display_op(op_type: str) -> str:
    """The op type to show a user: an internal op by the ops it replaced (``_Affine`` -> ``Mul+Add``)."""
    return _INTERNAL_OP_NAMES.get(op_type, op_type.lstrip("_")) if is_internal(op_type) else op_type


def is_supported(node: Node) -> bool:
    """Whether the executor has an implementation for this node's op (registered under its op key, public).

    The one support check: ``ops_native.supported_ops()`` / ``unsupported_ops()`` and the compiler use it.
    (A supported op may still refuse a variant of itself when it is built: OpNotSupported.)
    """
    return op_key(node) in REGISTRY and not is_internal(node.op_type)


def op_key(node: Node) -> str:
    """The node's op as users name it: ``Conv``, or ``com.microsoft.FusedConv`` outside the default domain."""
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def build(node: Node, ctx: BuildContext) -> Fn:
    """Bind a node to its callable (the op's builder); a refused variant raises UnsupportedOpError, bad
    attributes or inputs InvalidModelError, both naming the node."""
    op = display_op(node.op_type)
    try:
        return REGISTRY[op_key(node)](node, ctx)
    except OpNotSupported as e:
        raise UnsupportedOpError(f"node '{node.name}' (op {op}): {e}") from e
    except (OpBuildError, KeyError, TypeError, ValueError, IndexError) as e:
        raise InvalidModelError(f"node '{node.name}' (op {op}): invalid attributes or inputs: "
                                f"{type(e).__name__}: {e}") from e


def supported_ops() -> list[str]:
    """The op keys (see op_key: ONNX op types, ``domain.op_type`` outside the default domain) the executor runs,
    sorted; internal ops excluded."""
    return sorted(op for op in REGISTRY if not is_internal(op))


def unsupported_ops(nodes: list[Node]) -> list[str]:
    """Op keys (see op_key), in first-seen order, of the nodes the executor has no implementation for."""
    seen: list[str] = []
    for n in nodes:
        if not is_supported(n) and op_key(n) not in seen:
            seen.append(op_key(n))
    return seen


_NATIVE_DTYPES = {np.dtype(t) for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64,
                                         np.uint8, np.uint16, np.uint32, np.uint64, np.bool_)}


def is_native_dtype(dtype: np.dtype) -> bool:
    """True for the element types the executor handles (numpy's own; not float8/int4/bfloat16)."""
    return np.dtype(dtype) in _NATIVE_DTYPES


def is_f32(*arrays: Any) -> bool:
    """True when every value is a float32 ndarray (the C kernels' type)."""
    return all(isinstance(a, np.ndarray) and a.dtype == F32 for a in arrays)


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    """axis in [0, rank) (negative counts from the end); OpBuildError when out of range."""
    if not -rank <= axis < max(rank, 1):
        raise OpBuildError(f"{what} {axis} out of range for rank {rank}")
    return axis % rank if rank else 0


def attr_str(attrs: dict, key: str, default: str) -> str:
    """A string attribute (onnx gives bytes) as str."""
    v = attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


PARALLEL_MIN_FLOPS = 1_000_000   # below this (~10 us of work) a split costs more than it saves


def threads_for(flops: float, threads: int) -> int:
    """Threads worth using for one call: small kernels run inline on the calling thread."""
    return threads if flops >= PARALLEL_MIN_FLOPS else 1

