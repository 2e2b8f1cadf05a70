"""Control flow: If, Loop and Scan, whose subgraphs are compiled once at load time into Plans of their own
(compiler.compile_subgraph) and run with the same run loop as the model (_core.run_steps).

A subgraph sees the values of the scopes around it: the loader lists those reads after the node's own inputs
(Node.attrs["_n_inputs"] counts its own), so the outer run order and memory plan keep them alive until the
node ran; constants among them are folded into the subgraph's Plan at load time. Sub-plans share the model's
BufferPool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ops_native import _core
from ops_native.errors import OpsNativeError
from ops_native.ops.registry import BuildContext, Fn, Node, OpBuildError, OpNotSupported, display_op, register


class SubPlan:
    """A compiled subgraph and the run of it: ``run(formal_values, outer_values) -> outputs``."""

    def __init__(self, graph: Any, node: Node, ctx: BuildContext, formal: list[str], what: str) -> None:
        from ops_native.compiler import compile_subgraph  # the compiler imports the ops: bound at build time

        n_own = int(node.attrs.get("_n_inputs", len(node.inputs)))
        self.what = f"{what} of node '{node.name}'"
        for vi in list(graph.input) + list(graph.output):
            if vi.type.WhichOneof("value") not in (None, "tensor_type"):
                raise OpNotSupported(f"{self.what}: value '{vi.name}' is a sequence / optional, not a tensor")
        self.plan = compile_subgraph(graph, ctx, formal, node.inputs[n_own:])
        self.n_formal = len(formal)
        reads = [i.name for i in self.plan.inputs[self.n_formal:]]
        outer_pos = {name: k for k, name in enumerate(node.inputs[n_own:])}
        self.outer_index = [outer_pos[r] for r in reads]   # which of the node's outer reads feed this plan
        self.input_slots = [self.plan.input_slots[i.name] for i in self.plan.inputs]
        self.output_slots = [self.plan.output_slots[o.name] for o in self.plan.outputs]
        self.output_dtypes = [o.dtype for o in self.plan.outputs]
        self.runner = _core.PlanRun(self.plan.steps, self.plan.template, tuple(self.input_slots),
                                    tuple(self.outer_index), tuple(self.output_slots), self.plan.pool, self._error)

    def _error(self, e: _core.StepError) -> OpsNativeError:
        inner = self.plan.nodes[e.index]
        return OpsNativeError(f"{self.what}: node '{inner.name}' (op {display_op(inner.op_type)}) failed: "
                              f"{type(e.error).__name__}: {e.error}")

    def run(self, formal: list, outer: list) -> list:
        """The plan's outputs for these formal inputs and the node's outer values."""
        return self.runner.run(list(formal), list(outer))


@register("If")
def _build_if(node: Node, ctx: BuildContext) -> Fn:
    then_p = SubPlan(node.attrs["then_branch"], node, ctx, [], "then_branch")
    else_p = SubPlan(node.attrs["else_branch"], node, ctx, [], "else_branch")
    n_out = len(node.outputs)
    for p in (then_p, else_p):
        if len(p.output_slots) != n_out:
            raise OpBuildError(f"{p.what} has {len(p.output_slots)} outputs, the node {n_out}")
    # a NativeStep: entering a branch is a few C calls, not a Python frame and a re-check per level
    return _core.IfStep(then_p.runner, else_p.runner, int(node.attrs.get("_n_inputs", 1)))


@register("Loop")
def _build_loop(node: Node, ctx: BuildContext) -> Fn:
    body = node.attrs["body"]
    formal = [vi.name for vi in body.input]
    if len(formal) < 2:
        raise OpBuildError(f"Loop body with {len(formal)} inputs: expected iteration number, condition, ...")
    sub = SubPlan(body, node, ctx, formal, "body")
    n_own = int(node.attrs.get("_n_inputs", len(node.inputs)))
    n_carried = n_own - 2
    n_scan = len(sub.output_slots) - 1 - n_carried
    if n_scan < 0 or len(formal) != 2 + n_carried:
        raise OpBuildError(f"Loop body with {len(formal)} inputs and {len(sub.output_slots)} outputs for "
                           f"{n_carried} carried values")
    scan_dtypes = sub.output_dtypes[1 + n_carried:]

    def fn(args: list) -> list:
        trip, cond = args[0], args[1]
        carried = list(args[2:n_own])
        outer = args[n_own:]
        max_trip = None if trip is None else int(np.asarray(trip).reshape(-1)[0])
        keep = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
        scans: list[list] = [[] for _ in range(n_scan)]
        i = 0
        while keep and (max_trip is None or i < max_trip):
            outs = sub.run([np.array(i, np.int64), np.array(keep), *carried], outer)
            keep = bool(np.asarray(outs[0]).reshape(-1)[0])
            carried = outs[1:1 + n_carried]
            for k, v in enumerate(outs[1 + n_carried:]):
                scans[k].append(v)
            i += 1
        stacked = [np.stack(s) if s else np.zeros((0,), np.float32 if dt == np.dtype(object) else dt)
                   for s, dt in zip(scans, scan_dtypes)]
        return carried + stacked

    return fn


@register("Scan")
def _build_scan(node: Node, ctx: BuildContext) -> Fn:
    if ctx.opset < 9:
        raise OpNotSupported("Scan-8 (batch axis, sequence_lens input): only Scan from opset 9 is supported")
    body = node.attrs["body"]
    formal = [vi.name for vi in body.input]
    sub = SubPlan(body, node, ctx, formal, "body")
    n_own = int(node.attrs.get("_n_inputs", len(node.inputs)))
    m = int(node.attrs["num_scan_inputs"])
    n_state = n_own - m
    n_scan_out = len(sub.output_slots) - n_state
    if n_state < 0 or n_scan_out < 0 or len(formal) != n_own:
        raise OpBuildError(f"Scan body with {len(formal)} inputs / {len(sub.output_slots)} outputs for {n_state} "
                           f"states and {m} scan inputs")
    in_axes = [int(a) for a in node.attrs.get("scan_input_axes", [0] * m)]
    in_dirs = [int(d) for d in node.attrs.get("scan_input_directions", [0] * m)]
    out_axes = [int(a) for a in node.attrs.get("scan_output_axes", [0] * n_scan_out)]
    out_dirs = [int(d) for d in node.attrs.get("scan_output_directions", [0] * n_scan_out)]

    def fn(args: list) -> list:
        states = list(args[:n_state])
        xs = args[n_state:n_own]
        outer = args[n_own:]
        axes = [a % x.ndim for a, x in zip(in_axes, xs)]
        steps = {x.shape[a] for x, a in zip(xs, axes)}
        if len(steps) > 1:
            raise OpBuildError(f"Scan inputs of different lengths {sorted(steps)} along their scan axes")
        n = steps.pop() if steps else 0
        outs: list[list] = [[] for _ in range(n_scan_out)]
        for t in range(n):
            sl = [np.take(x, n - 1 - t if d else t, axis=a) for x, a, d in zip(xs, axes, in_dirs)]
            res = sub.run(states + sl, outer)
            states = res[:n_state]
            for k, v in enumerate(res[n_state:]):
                outs[k].append(v)
        stacked = []
        for k, vs in enumerate(outs):
            if out_dirs[k]:
                vs = vs[::-1]
            y = np.stack(vs) if vs else np.zeros((0,), np.float32)
            stacked.append(np.ascontiguousarray(np.moveaxis(y, 0, out_axes[k] % y.ndim)) if vs else y)
        return states + stacked

    return fn
