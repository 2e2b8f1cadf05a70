"""Einsum: two-operand float32 contractions (matmul, batched matmul, bilinear forms, outer products...) on the
GEMM kernels as one batched product; every other equation (one operand, three or more, diagonals, ellipses)
through numpy's einsum, the reference."""

from __future__ import annotations

import math

import numpy as np

from ops_native import _core
from ops_native.ops.registry import F32, BuildContext, Fn, Node, OpBuildError, attr_str, register


def _parse(equation: str, n_inputs: int) -> tuple[list[str], str | None]:
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise OpBuildError(f"Einsum '{equation}' has {len(terms)} operands, the node {n_inputs} inputs")
    return terms, (rhs if "->" in eq else None)


def _gemm_plan(terms: list[str], out: str | None) -> tuple | None:
    """(a_perm, b_perm, batch, m, k, n letters, out) when the equation is a plain two-operand contraction."""
    if len(terms) != 2 or any("." in t or len(set(t)) != len(t) for t in terms):
        return None
    a, b = terms
    if out is None:   # implicit output: the letters seen once, in alphabetical order
        out = "".join(sorted(c for c in set(a + b) if (a + b).count(c) == 1))
    if "." in out or len(set(out)) != len(out) or any(c not in a + b for c in out):
        return None
    batch = [c for c in a if c in b and c in out]
    k = [c for c in a if c in b and c not in out]
    m = [c for c in a if c not in b]
    n = [c for c in b if c not in a]
    if any(c not in out for c in m + n):   # a letter summed out of one operand alone: the reference does it
        return None
    return batch, m, k, n, out


def _contiguous(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """x as a C-contiguous array of dtype, keeping rank 0 (np.ascontiguousarray makes scalars 1-D)."""
    x = np.asarray(x, dtype=dtype)
    return x if x.flags.c_contiguous else x.copy()


@register("Einsum")
def _build_einsum(node: Node, ctx: BuildContext) -> Fn:
    equation = attr_str(node.attrs, "equation", "")
    terms, out = _parse(equation, len(node.inputs))
    plan = _gemm_plan(terms, out)
    threads = ctx.threads

    def reference(args: list) -> list:
        r = np.einsum(equation.replace(" ", ""), *args)
        return [_contiguous(r, args[0].dtype)]

    if plan is None:
        return reference
    batch, m, k, n, out_s = plan
    a_t, b_t = terms

    def fn(args: list) -> list:
        a, b = args
        if a.dtype != F32 or b.dtype != F32 or a.ndim != len(a_t) or b.ndim != len(b_t):
            return reference(args)
        da, db = dict(zip(a_t, a.shape)), dict(zip(b_t, b.shape))
        if any(da[c] != db[c] for c in batch + k):
            return reference(args)   # broadcasting a size-1 dimension
        dims = {**da, **db}
        sb, sm, sk, sn = (math.prod(dims[c] for c in g) for g in (batch, m, k, n))
        a3 = np.ascontiguousarray(a.transpose([a_t.index(c) for c in batch + m + k])).reshape(sb, sm, sk)
        b3 = np.ascontiguousarray(b.transpose([b_t.index(c) for c in batch + k + n])).reshape(sb, sk, sn)
        y = _core.matmul(a3, b3, threads=threads).reshape([dims[c] for c in batch + m + n])
        order = batch + m + n
        return [_contiguous(y.transpose([order.index(c) for c in out_s]), F32)]

    return fn
