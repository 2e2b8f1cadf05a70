"""Constant folding: nodes whose inputs are all constant run once at load time, with the executor's own
kernels, and become constants."""

from __future__ import annotations

import numpy as np

from ops_native.errors import InvalidModelError, UnsupportedOpError
from ops_native.ops import REGISTRY, BuildContext, Node, OpNotSupported, build

_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def fold_constants(nodes: list[Node], consts: dict[str, np.ndarray], ctx: BuildContext) -> list[Node]:
    """Run every node whose inputs are all constant once, now; return the nodes left to run."""
    rest = []
    for n in nodes:
        if n.op_type not in _NO_FOLD and n.op_type in REGISTRY and \
                all((not i) or i in consts for i in n.inputs):
            fn = build(n, ctx)
            try:
                outs = fn([consts.get(i) if i else None for i in n.inputs])
            except OpNotSupported as e:
                raise UnsupportedOpError(f"node '{n.name}' (op {n.op_type}): {e}") from e
            except Exception as e:  # noqa: BLE001 - any kernel/shape error on constant data
                raise InvalidModelError(f"node '{n.name}' (op {n.op_type}) fails on its constant inputs: "
                                        f"{type(e).__name__}: {e}") from e
            for name, v in zip(n.outputs, outs):
                if name:
                    consts[name] = np.asarray(v)
            continue
        rest.append(n)
    return rest

