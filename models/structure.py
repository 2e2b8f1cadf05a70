"""The structure the partitioner cuts: nodes in topological order, which of them can anchor a cut (everything
but constants and the subgraphs computing them), and for every tensor where it is produced and read."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from models.graph import node_inputs, topological_nodes


@dataclass
class Structure:
    """Which nodes can anchor cuts, and for every tensor where it is produced and used (anchor space)."""

    nodes: list[onnx.NodeProto]
    anchors: list[int]  # positions (in ``nodes``) of alive nodes that do not compute constants
    weights: set[str]  # initializers and constants (see _constant_subgraphs)
    const_node: dict[str, int]  # constant tensor -> position in ``nodes`` of the node computing it
    producer: dict[str, int]  # non-weight tensor -> anchor index (-1 = graph input)
    uses: dict[str, list[int]]  # non-weight tensor -> sorted anchor indices reading it
    graph_inputs: list[str]
    graph_outputs: list[str]
    anchor_reads: list[list[str]] = field(default_factory=list)
    const_deps: dict[int, tuple[int, ...]] = field(default_factory=dict)  # constant node -> chain it needs

    @property
    def n(self) -> int:
        return len(self.anchors)

    def last_use(self, t: str) -> int:
        """Last anchor needing ``t``; n for graph outputs; -2 if nothing needs it."""
        if t in self._outputs_set:
            return self.n
        u = self.uses.get(t)
        return u[-1] if u else -2

    def __post_init__(self) -> None:
        self._outputs_set = set(self.graph_outputs)


def _is_constant(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.output) == 1


# ops whose output is not a function of their inputs: never folded into a constant
_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                     "Bernoulli"}


def _constant_subgraphs(nodes: list[onnx.NodeProto], inits: set[str]
                        ) -> tuple[dict[str, int], dict[int, tuple[int, ...]]]:
    """Nodes computing constants: Constant nodes, and deterministic default-domain nodes whose inputs are all
    initializers or constants (e.g. the ConstantOfShape weights of exported "light" models, shape arithmetic
    on initializers). Returns (constant tensor -> producing node, node -> every constant node it needs,
    itself included, in topological order). A stage clones the chain of each constant it reads, so constants
    never cross a stage boundary and never anchor a cut."""
    const_node: dict[str, int] = {}
    deps: dict[int, tuple[int, ...]] = {}
    for i, n in enumerate(nodes):
        ins = [x for x in n.input if x]
        foldable = _is_constant(n) or (
            ins and len(ins) == len(n.input) and n.domain in ("", "ai.onnx") and n.op_type not in _NONDETERMINISTIC
            and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
            and all(x in inits or x in const_node for x in ins))
        if not foldable:
            continue
        need = {i}
        for x in ins:
            if x in const_node:
                need.update(deps[const_node[x]])
        deps[i] = tuple(sorted(need))
        for o in n.output:
            if o:
                const_node[o] = i
    return const_node, deps


def structure(model: onnx.ModelProto) -> Structure:
    g = model.graph
    nodes = topological_nodes(model)
    inits = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    const_node, const_deps = _constant_subgraphs(nodes, inits)
    weights = inits | set(const_node)
    graph_inputs = [vi.name for vi in g.input if vi.name not in inits]
    graph_outputs = [vi.name for vi in g.output]
    # Backward liveness: a node is alive if a graph output or an alive node needs one of its outputs.
    needed = set(graph_outputs)
    alive = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        if any(o in needed for o in nodes[i].output if o):
            alive[i] = True
            needed.update(node_inputs(nodes[i]))
    anchors = [i for i, nd in enumerate(nodes) if alive[i] and i not in const_deps]
    producer = {t: -1 for t in graph_inputs}
    uses: dict[str, list[int]] = {}
    reads: list[list[str]] = []
    for a, pos in enumerate(anchors):
        nd = nodes[pos]
        r = list(dict.fromkeys(node_inputs(nd)))
        reads.append(r)
        for t in r:
            if t not in weights:
                uses.setdefault(t, []).append(a)
        for o in nd.output:
            if o:
                producer[o] = a
    return Structure(nodes, anchors, weights, const_node, producer, uses, graph_inputs, graph_outputs, reads,
                      const_deps)


def carry_at(st: Structure, b: int) -> list[str]:
    """Non-weight tensors that must cross the boundary before anchor ``b`` (b = n: graph outputs)."""
    out = []
    for t, p in st.producer.items():  # insertion order: graph inputs, then production order
        if p < b <= st.last_use(t):
            out.append(t)
    if b == st.n:
        return list(st.graph_outputs)
    return out


def stage_io(st: Structure, a: int, b: int) -> tuple[list[str], list[str]]:
    ins: list[str] = []
    seen: set[str] = set()
    for j in range(a, b):
        for t in st.anchor_reads[j]:
            if t not in st.weights and st.producer.get(t, -1) < a and t not in seen:
                seen.add(t)
                ins.append(t)
    outs = []
    for j in range(a, b):
        for o in st.nodes[st.anchors[j]].output:
            if o and st.last_use(o) >= b:
                outs.append(o)
    if b == st.n:  # graph outputs that are constants are produced by the last stage itself
        outs += [t for t in st.graph_outputs if t in st.weights and t not in outs]
    return ins, outs
