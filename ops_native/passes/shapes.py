"""Shape subgraphs computed once per input shape.

Exporters compute reshape targets, head counts, mask shapes and sequence lengths at run time from the
shapes of dynamic tensors: ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape`` (PyTorch's exporter
writes one such chain per reshape; a 3-layer BERT has over a hundred such nodes). Those values depend on
the *shapes* of some tensors only, never on their contents, so for a given set of input shapes they are
the same on every run. Each connected group of such nodes becomes one ``_ShapeMemo`` node (ops/memo.py):
it runs its nodes the first time it sees a combination of shapes, and returns the cached values after
that, one step instead of dozens of tiny ones.

A node belongs to a group when it is ``Shape`` / ``Size`` (which read only the shape of their input), or
when every input is a constant or a value of the group; random ops, nodes with subgraphs and nodes
producing graph outputs stay out (their values are handed to the caller, who may modify them).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ops_native.ops import Node
from ops_native.passes.folding import _NO_FOLD

SHAPE_READERS = ("Shape", "Size")


def memoize_shape_subgraphs(nodes: list[Node], consts: dict[str, np.ndarray], graph_outputs: set[str]) -> list[Node]:
    """Replace every connected group of shape-only nodes (two or more) with one ``_ShapeMemo`` node, placed
    where its inputs are ready; a group that cannot be placed before all its consumers is left as it was."""
    shape_vals: set[str] = set()
    member: dict[int, bool] = {}
    for n in nodes:
        ok = n.op_type not in _NO_FOLD and "_n_inputs" not in n.attrs and \
            not any(o in graph_outputs for o in n.outputs) and \
            (n.op_type in SHAPE_READERS or all((not i) or i in consts or i in shape_vals for i in n.inputs))
        member[id(n)] = ok
        if ok:
            shape_vals.update(o for o in n.outputs if o)
    # connected components over shape values (union-find on node index)
    parent = list(range(len(nodes)))

    def find(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    producer = {o: k for k, n in enumerate(nodes) for o in n.outputs if o}
    for k, n in enumerate(nodes):
        if not member[id(n)]:
            continue
        for i in n.inputs:
            if i in shape_vals:
                parent[find(k)] = find(producer[i])
    groups: dict[int, list[int]] = defaultdict(list)
    for k, n in enumerate(nodes):
        if member[id(n)]:
            groups[find(k)].append(k)
    consumers: dict[str, list[int]] = defaultdict(list)
    for k, n in enumerate(nodes):
        for i in n.inputs:
            if i:
                consumers[i].append(k)
    placed: dict[int, list[Node]] = defaultdict(list)   # original index -> _ShapeMemo nodes run before it
    dead: set[int] = set()
    for ks in groups.values():
        if len(ks) < 2:
            continue
        inner = set(ks)
        made = {o for k in ks for o in nodes[k].outputs}
        sources = list(dict.fromkeys(i for k in ks if nodes[k].op_type in SHAPE_READERS
                                     for i in nodes[k].inputs[:1] if i not in consts and i not in made))
        outputs = list(dict.fromkeys(o for k in ks for o in nodes[k].outputs
                                     if o and any(c not in inner for c in consumers.get(o, []))))
        if not outputs:
            continue
        # run where the last source is ready (sources come from outside the group)
        at = max([producer[s] + 1 for s in sources if s in producer] + [min(ks)])
        first_use = min(c for o in outputs for c in consumers[o] if c not in inner)
        if first_use < at:
            continue   # a consumer runs before a source exists: keep the nodes as they are
        memo = Node(f"{nodes[min(ks)].name}_shape_memo", "_ShapeMemo", sources, outputs,
                    {"_nodes": [nodes[k] for k in sorted(ks)]})
        placed[at].append(memo)
        dead |= inner
    if not placed:
        return nodes
    out = []
    for k in range(len(nodes) + 1):
        out.extend(placed.get(k, ()))
        if k < len(nodes) and k not in dead:
            out.append(nodes[k])
    return out
