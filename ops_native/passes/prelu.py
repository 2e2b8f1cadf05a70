"""PRelu whose constant slope is one value everywhere becomes LeakyRelu, which fusions.fuse_activation then
folds into the epilogue of the Conv / Gemm / MatMul before it.

A per-channel slope (MTCNN's) stays a PRelu node (its own SIMD kernel): the conv epilogue's activation takes
scalar parameters only (on_act_t), so folding it would need a per-channel pointer in every conv path."""

from __future__ import annotations

import numpy as np

from ops_native.ops import Node


def _broadcasts(s: np.ndarray, producer: Node | None, consts: dict[str, np.ndarray]) -> bool:
    """Whether slope s surely broadcasts to the PRelu's input: one value, or one per output channel of the Conv
    that makes the input (s of shape [OC, 1, ..., 1], as many dims as the conv output has after N)."""
    if s.size == 1:
        return True
    w = consts.get(producer.inputs[1]) if producer is not None and producer.op_type == "Conv" else None
    return w is not None and s.ndim == w.ndim - 1 and s.shape == (w.shape[0],) + (1,) * (s.ndim - 1)


def uniform_prelu_to_leaky_relu(nodes: list[Node], consts: dict[str, np.ndarray]) -> int:
    """Rewrite in place; returns how many nodes it rewrote."""
    producers = {o: n for n in nodes for o in n.outputs if o}
    done = 0
    for n in nodes:
        if n.op_type != "PRelu" or n.domain not in ("", "ai.onnx") or len(n.inputs) != 2:
            continue
        s = consts.get(n.inputs[1])
        if s is None or s.dtype != np.float32 or s.size == 0 or not np.all(s == s.reshape(-1)[0]) or \
                not _broadcasts(s, producers.get(n.inputs[0]), consts):
            continue
        n.op_type, n.inputs, n.attrs = "LeakyRelu", [n.inputs[0]], {"alpha": float(s.reshape(-1)[0])}
        done += 1
    return done
