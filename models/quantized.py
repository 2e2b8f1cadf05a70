"""The exact ONNX Runtime reference of an 8-bit integer model: its int8 weights stored as uint8.

ONNX Runtime's x86 GEMM for uint8 activations x int8 weights, on CPUs without AVX-VNNI (this machine: AVX2),
multiplies with ``vpmaddubsw``, which saturates each sum of two u8 x s8 products at int16: with large
activations and weights of one sign the int32 result is wrong (measured: 54 % of the elements of a random
7x32x5 MatMulInteger). Its uint8 x uint8 path widens to int16 first and is exact. A weight w with zero point z
is the same number as (w + 128) with zero point (z + 128), so this copy of the model has the same meaning and
ONNX Runtime computes it exactly: the reference the native core (exact for every type pair) is compared with.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# op -> (weight input, its zero point input) pairs
_WEIGHTS = {
    ("", "MatMulInteger"): [(1, 3)],
    ("", "ConvInteger"): [(1, 3)],
    ("com.microsoft", "DynamicQuantizeMatMul"): [(1, 3)],
    ("com.microsoft", "DynamicQuantizeLSTM"): [(1, 9), (2, 11)],
}


def int8_weights_as_uint8(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of model whose constant int8 weights of integer ops (and their zero points) are uint8 + 128."""
    out = onnx.ModelProto.FromString(model.SerializeToString())
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    made: dict[str, str] = {}

    def shifted(name: str, zero_if_absent_like: np.ndarray | None = None) -> str | None:
        if name in made:
            return made[name]
        if name:
            t = inits.get(name)
            if t is None:
                return None
            a = numpy_helper.to_array(t)
            if a.dtype != np.int8:
                return None
        else:
            a = np.zeros((), np.int8)
        new = f"{name or 'zero_point'}_as_u8_{len(made)}"
        g.initializer.append(numpy_helper.from_array((a.astype(np.int16) + 128).astype(np.uint8), new))
        made[name] = new if name else made.get(name, new)
        return new

    for n in g.node:
        for w_i, z_i in _WEIGHTS.get((n.domain if n.domain != "ai.onnx" else "", n.op_type), []):
            ins = list(n.input) + [""] * (z_i + 1 - len(n.input))
            t = inits.get(ins[w_i])
            if t is None or numpy_helper.to_array(t).dtype != np.int8:
                continue
            if ins[z_i] and (ins[z_i] not in inits):
                continue   # a computed zero point: leave the node as it is
            w_new = shifted(ins[w_i])
            z_new = shifted(ins[z_i])
            if w_new is None or z_new is None:
                continue
            ins[w_i], ins[z_i] = w_new, z_new
            del n.input[:]
            n.input.extend(ins)
    return out
