"""SGEMM of the native core vs ONNX Runtime's MatMul (MLAS), 1 and 2 threads.

    python -m benchmarks.bench_gemm [--quick] [--attention] [--json out.json]

Weights are constant on both sides (our PackedB; an ORT initializer, which MLAS prepacks). Each
measurement alternates blocks of ours and ORT calls and keeps the best run, which on a shared 2-core
machine is the figure least disturbed by other processes. "speed" = ORT ms / ours ms (> 1: we are
faster); "%peak" is per core against the FMA peak of the active ISA, measured at the start of the
run by a register-only FMA loop (``ops_native._core.fma_peak_gflops``): e.g. ~125 GFLOP/s/core for
AVX2 and ~250 for AVX-512 on a Zen 5 core, 93 for AVX2 on Zen 3.

--attention adds the batched products of attention (Q.K^T with K read transposed in place, P.V) at
the head counts and sequence lengths of the corpus transformers, against ORT's MatMul (it fuses the
Transpose into the product) on the same operands.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import cache, partial

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import fmt, fmt_ratio, parser, table, write_json
from ops_native import _core as core


@cache
def peak_gflops_per_core() -> float:
    """Single-core FMA peak (GFLOP/s) of the ISA the kernels use, measured once per process."""
    return core.fma_peak_gflops(seconds=0.5)


def best_pair_ms(ours: Callable[[], object], base: Callable[[], object], budget_s: float,
                 rounds: int = 3) -> tuple[float, float]:
    """Best latency (ms) of each callable, measured in alternating blocks (ours, base, ours, ...).

    Blocks rather than single calls: ORT's intra-op threads spin for a while after each run, and would
    steal the second core from our workers if the calls were interleaved one by one."""
    best = [float("inf"), float("inf")]
    fns = (ours, base)
    block = budget_s / (2 * rounds)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            fn()
            t_end = time.perf_counter() + block
            n = 0
            while n < 3 or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t0)
                n += 1
                if n >= 1000:
                    break
            time.sleep(0.005)  # let the other side's spinning threads go to sleep
    return best[0] * 1e3, best[1] * 1e3


def ort_session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def matmul_model(b: np.ndarray, m: int) -> bytes:
    """y = a @ B with B a constant initializer."""
    k, n = b.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "B"], ["y"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        initializer=[numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def shapes(quick: bool) -> list[tuple[int, int, int]]:
    """(M, N, K): square 64..2048, then skinny M=1 and M=8 with K = N in 256..2048."""
    sq = [64, 128, 256, 512, 1024] + ([] if quick else [2048])
    sk = [256, 512, 1024] + ([] if quick else [2048])
    return [(s, s, s) for s in sq] + [(m, s, s) for m in (1, 8) for s in sk]


def attention_model(sa: list[int], sb: list[int], perm_b: list[int] | None) -> bytes:
    """y = a @ Transpose(b, perm_b) (or a @ b) with both operands inputs, as attention computes them."""
    nodes = [helper.make_node("MatMul", ["a", "bt" if perm_b else "b"], ["y"])]
    if perm_b:
        nodes.insert(0, helper.make_node("Transpose", ["b"], ["bt"], perm=perm_b))
    graph = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("a", TensorProto.FLOAT, sa),
                                              helper.make_tensor_value_info("b", TensorProto.FLOAT, sb)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def attention_rows(budget: float) -> list[dict]:
    """Q.K^T and P.V per (heads, tokens, head dim): ViT-S/16 at 3 and 12 heads, MiniLM-like 12 x 64 x 32."""
    rng = np.random.default_rng(0)
    records = []
    for heads, t, hd in ((3, 197, 64), (12, 197, 64), (12, 64, 32), (6, 128, 64)):
        q = rng.standard_normal((1, heads, t, hd), dtype=np.float32)
        k = rng.standard_normal((1, heads, t, hd), dtype=np.float32)
        p = rng.standard_normal((1, heads, t, t), dtype=np.float32)
        for name, a, b, perm in ((f"QK^T {heads}x{t}x{t}x{hd}", q, k, [0, 1, 3, 2]),
                                 (f"PV {heads}x{t}x{hd}x{t}", p, k, None)):
            bv = b.transpose(perm) if perm else b
            for threads in (1, 2):
                sess = ort_session(attention_model(list(a.shape), list(b.shape), perm), threads)
                feed = {"a": a, "b": b}
                np.testing.assert_allclose(core.matmul(a, bv, threads=threads), sess.run(None, feed)[0],
                                           rtol=1e-4, atol=1e-3)
                ours_ms, ort_ms = best_pair_ms(partial(core.matmul, a, bv, threads=threads),
                                               partial(sess.run, None, feed), budget)
                records.append({"product": name, "threads": threads, "ours_ms": ours_ms, "ort_ms": ort_ms,
                                "speed_vs_ort": ort_ms / ours_ms})
    return records


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the SGEMM comparison and print the table; returns the rows."""
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=None, help="seconds per measurement (default 1.0, quick 0.3)")
    p.add_argument("--attention", action="store_true", help="also the batched attention products")
    args = p.parse_args(argv)
    budget = args.budget or (0.3 if args.quick else 1.0)
    rng = np.random.default_rng(0)
    rows, records = [], []
    peak = peak_gflops_per_core()
    for m, n, k in shapes(args.quick):
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        pb = core.PackedB(b)
        model = matmul_model(b, m)
        out = np.empty((m, n), np.float32)
        for threads in (1, 2):
            sess = ort_session(model, threads)
            feed = {"a": a}
            ref = sess.run(None, feed)[0]
            got = core.gemm(a, pb, out=out, threads=threads)
            np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * np.sqrt(k))
            ours_ms, ort_ms = best_pair_ms(partial(core.gemm, a, pb, out=out, threads=threads),
                                           partial(sess.run, None, feed), budget)
            gflops = 2.0 * m * n * k / (ours_ms * 1e-3) / 1e9
            pct = 100.0 * gflops / (peak * threads)
            speed = ort_ms / ours_ms
            rows.append([f"{m}x{n}x{k}", threads, fmt(ours_ms), fmt(ort_ms), fmt_ratio(speed), fmt(gflops),
                         f"{pct:.0f}%"])
            records.append({"m": m, "n": n, "k": k, "threads": threads, "ours_ms": ours_ms, "ort_ms": ort_ms,
                            "speed_vs_ort": speed, "gflops": gflops, "pct_peak": pct})
    table(f"SGEMM ops_native ({core.isa()}) vs ONNX Runtime {ort.__version__} MatMul",
          ["MxNxK", "threads", "ours ms", "ORT ms", "speed (ORT/ours)", "GFLOP/s", "%peak"], rows,
          caption=f"best run of alternating blocks; %peak vs {peak:.0f} GFLOP/s per core ({core.isa()} FMA loop)")
    result = {"isa": core.isa(), "peak_gflops_per_core": peak, "gemm": records}
    if args.attention:
        att = attention_rows(budget)
        table(f"Batched attention products, ops_native ({core.isa()}) vs ONNX Runtime {ort.__version__} MatMul",
              ["product (heads x M x N x K)", "threads", "ours ms", "ORT ms", "speed (ORT/ours)"],
              [[r["product"], r["threads"], fmt(r["ours_ms"]), fmt(r["ort_ms"]), fmt_ratio(r["speed_vs_ort"])]
               for r in att], caption="best run of alternating blocks")
        result["attention"] = att
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
