"""compile_model: a checked ModelProto -> the Plan InferenceSession runs (compile_subgraph: the Plan of an If
branch or a Loop / Scan body, run by ops/control.py).

Steps, in order: convert nodes (loader), refuse unsupported ops (ops.is_supported), topological order,
constant folding (passes.folding, with the executor's own kernels), fusions (passes.fusions), blocked
layouts and the conv + residual fusion (passes.layout), channel Concats written in place by their convolutions
(passes.concat), shape-only subgraphs run once per input shape (passes.shapes), binding of every node to a
callable (weights packed once; ops.build), and the memory plan (memory.plan_memory) that turns each node into
a Step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ops_native.errors import InvalidModelError, UnsupportedOpError
from ops_native.loader import (
    TensorInfo,
    convert_nodes,
    default_opset,
    iter_graphs,
    outer_names,
    read_initializers,
    tensor_info,
    topo_sort,
)
from ops_native.memory import plan_memory
from ops_native.ops import DEFAULT_DOMAINS, BufferPool, BuildContext, Node, build, is_supported, supported_ops
from ops_native.passes import concat, fusions, layout, prelu, shapes
from ops_native.passes.folding import fold_constants
from ops_native.steps import Step


@dataclass
class Plan:
    """Everything InferenceSession.run needs."""

    steps: list[Step]    # one per node, in run order
    nodes: list[Node]    # the node of each step (for error messages and profiling)
    template: list       # initial slot values: constants filled, everything else None
    input_slots: dict[str, int]
    output_slots: dict[str, int]
    const_slots: set[int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    pool: BufferPool
    blocked_values: int = 0  # intermediate tensors kept in NCHWc8 (layout.assign_blocked_layouts)


def raise_unsupported(nodes: list[Node]) -> None:
    """UnsupportedOpError naming the first node whose op the executor does not have (internal ops included:
    a model may not use them)."""
    for n in nodes:
        if not is_supported(n):
            dom = f" domain '{n.domain}'" if n.domain not in DEFAULT_DOMAINS else ""
            raise UnsupportedOpError(f"node '{n.name}' (op {n.op_type}{dom}) is not supported; supported ops: "
                                     f"{', '.join(supported_ops())}")


def compile_model(proto: onnx.ModelProto, threads: int, fuse: bool = True, blocked: bool | None = None) -> Plan:
    """Turn a checked ModelProto into a Plan. Raises UnsupportedOpError / InvalidModelError.

    blocked: keep tensors between convolutions in NCHWc8 (None: layout.blocked_layout_default())."""
    graph = proto.graph
    # every op of every nested subgraph is checked now, not when its If / Loop is built
    raise_unsupported([n for g in iter_graphs(graph) for n in convert_nodes(g)])
    consts = read_initializers(graph)
    inputs = [tensor_info(vi) for vi in graph.input if vi.name not in consts]
    ctx = BuildContext(consts=consts, opset=default_opset(proto), threads=threads)
    return compile_graph(graph, ctx, inputs, fuse=fuse, blocked=blocked)


def compile_subgraph(graph: onnx.GraphProto, outer: BuildContext, formal: list[str], reads: list[str],
                     fuse: bool = True) -> Plan:
    """The Plan of an If branch or a Loop / Scan body: its inputs are the ``formal`` ones (a body's iteration
    number, condition and carried values) then the ``reads`` it takes from outer scopes at run time (outer
    values that are constants at load time are folded into it instead, like its own initializers)."""
    consts = read_initializers(graph)
    used = outer_names(graph)
    for name in used:
        if name in outer.consts and name not in consts:
            consts[name] = outer.consts[name]
    infos = {vi.name: vi for vi in graph.input}
    inputs = [tensor_info(infos[n]) if n in infos else TensorInfo(name=n, dtype=np.dtype(object), shape=[], type="outer value")
              for n in formal + [r for r in reads if r in used and r not in consts]]
    ctx = BuildContext(consts=consts, opset=outer.opset, threads=outer.threads, pool=outer.pool)
    return compile_graph(graph, ctx, inputs, fuse=fuse, blocked=None)


def compile_graph(graph: onnx.GraphProto, ctx: BuildContext, inputs: list[TensorInfo], fuse: bool = True,
                  blocked: bool | None = None) -> Plan:
    """The Plan of one graph whose constants are ctx.consts (initializers, and outer constants for a subgraph)."""
    consts = ctx.consts
    outputs = [tensor_info(vi) for vi in graph.output]
    nodes = convert_nodes(graph)
    raise_unsupported(nodes)
    nodes = topo_sort(nodes, set(consts) | {i.name for i in inputs})
    nodes = fold_constants(nodes, consts, ctx)
    graph_outputs = {o.name for o in outputs}
    if fuse:
        prelu.uniform_prelu_to_leaky_relu(nodes, consts)
        nodes = fusions.fuse(nodes, consts, graph_outputs)
        nodes = layout.fuse_channel_shuffle(nodes, consts, graph_outputs)
    n_blocked = layout.assign_blocked_layouts(nodes, consts, graph_outputs) if (
        layout.blocked_layout_default() if blocked is None else blocked) else 0
    if fuse and n_blocked:
        nodes = layout.fuse_conv_residual(nodes, consts, graph_outputs)
        nodes = layout.subsample_strided_pointwise(nodes, consts)
    if fuse:
        nodes = concat.write_concats_in_place(nodes, consts, graph_outputs)
        nodes = shapes.memoize_shape_subgraphs(nodes, consts, graph_outputs)
    for o in outputs:
        if o.name not in consts and o.name not in {i.name for i in inputs} and \
                not any(o.name in n.outputs for n in nodes):
            raise InvalidModelError(f"graph output '{o.name}' is not produced by any node")

    mem = plan_memory(nodes, consts, [i.name for i in inputs], [o.name for o in outputs])
    steps = [Step(build(n, ctx), mem.ins[k], mem.outs[k], mem.recycle[k], mem.clear[k]) for k, n in enumerate(nodes)]
    return Plan(steps=steps, nodes=nodes, template=mem.template, input_slots=mem.input_slots,
                output_slots=mem.output_slots, const_slots=mem.const_slots, inputs=inputs, outputs=outputs,
                pool=ctx.pool, blocked_values=n_blocked)
