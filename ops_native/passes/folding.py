"""Constant folding: nodes whose inputs are all constant run once at load time, with the executor's own
kernels, and become constants; an If whose condition is constant is replaced by the nodes of the branch it
always takes."""

from __future__ import annotations

from collections import deque

import numpy as np

from ops_native.errors import InvalidModelError, UnsupportedOpError
from ops_native.ops import REGISTRY, BuildContext, Node, OpNotSupported, build

_NO_FOLD = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def fold_constants(nodes: list[Node], consts: dict[str, np.ndarray], ctx: BuildContext) -> list[Node]:
    """Run every node whose inputs are all constant once, now; inline the taken branch of every If whose
    condition is constant; return the nodes left to run."""
    rest = []
    taken = {o for n in nodes for o in n.outputs if o} | set(consts) | {i for n in nodes for i in n.inputs if i}
    todo = deque(nodes)
    while todo:
        n = todo.popleft()
        if n.op_type == "If" and n.inputs and n.inputs[0] in consts:
            inlined = inline_if(n, consts, taken)
            if inlined is not None:
                todo.extendleft(reversed(inlined))
                continue
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


def inline_if(node: Node, consts: dict[str, np.ndarray], taken: set[str]) -> list[Node] | None:
    """The nodes that replace an If with the constant condition consts[node.inputs[0]]: the taken branch's
    nodes (its initializers join ``consts``), then an Identity per If output from the branch's output.
    None (keep the If) when the condition is not one value or a name of the branch is already used
    outside it (``taken``, updated with the branch's names when it is inlined)."""
    from ops_native.loader import convert_nodes, read_initializers

    cond = consts[node.inputs[0]]
    if np.size(cond) != 1:
        return None
    branch = node.attrs["then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch"]
    inner = convert_nodes(branch)
    inits = read_initializers(branch)
    local = set(inits) | {o for n in inner for o in n.outputs if o}
    if local & taken or len(branch.output) != len(node.outputs):
        return None
    taken |= local
    consts.update(inits)
    outs = [Node(f"{node.name}/{o.name}", "Identity", [o.name], [name])
            for o, name in zip(branch.output, node.outputs) if name]
    return inner + outs
