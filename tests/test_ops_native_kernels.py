"""ops_native GEMM / MatMul / Conv / ConvTranspose kernels against numpy and ONNX Runtime, per ISA."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from ops_native import _core as core

ISAS = core.available_isas()
RTOL = ATOL = 1e-4


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test once per ISA this CPU has, restoring the previous ISA afterwards."""
    before = core.isa()
    core.set_isa(request.param)
    yield request.param
    core.set_isa(before)


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def close(got: np.ndarray, want: np.ndarray, k: int = 1) -> None:
    """Float32 comparison with a tolerance that grows with the reduction length k."""
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL * max(1.0, np.sqrt(k)))


def ort_run(nodes, inputs: dict, outputs: list, initializers=(), feeds=None) -> list:
    """Run a tiny ONNX graph in ONNX Runtime (one thread)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in inputs.items()],
        [helper.make_empty_tensor_value_info(n) for n in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(outputs, feeds or inputs)


def np_act(y: np.ndarray, act: str, a: float = 0.0, b: float = 0.0) -> np.ndarray:
    if act == "relu":
        return np.maximum(y, 0)
    if act == "clip":
        return np.clip(y, a, b)
    if act == "leaky_relu":
        return np.where(y >= 0, y, a * y)
    if act == "hardswish":
        return y * np.clip(y / 6 + 0.5, 0, 1)
    if act == "sigmoid":
        return 1 / (1 + np.exp(-y))
    return y


# ---- ISA ------------------------------------------------------------------------------------------

def test_isa_reports_an_available_isa_and_unknown_names_are_rejected():
    assert core.isa() in ISAS
    assert "scalar" in ISAS
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        core.set_isa("sse9")
    missing = [n for n in ("avx2-fma", "avx512f", "neon") if n not in ISAS]
    for name in missing:
        with pytest.raises(ValueError, match="not available"):
            core.set_isa(name)


def test_fma_peak_is_measured_for_each_available_isa():
    peaks = {name: core.fma_peak_gflops(name, seconds=0.05) for name in ISAS}
    assert all(p > 0 for p in peaks.values()), peaks
    assert core.fma_peak_gflops(seconds=0.05) > 0  # the active ISA
    with pytest.raises(ValueError, match="not available|unknown"):
        core.fma_peak_gflops("sse9")


@pytest.mark.parametrize("value,ok", [("scalar", True), ("bogus", False)])
def test_ops_native_isa_env_var_is_honoured_at_import(value, ok):
    env = dict(os.environ, OPS_NATIVE_ISA=value)
    proc = subprocess.run([sys.executable, "-c", "from ops_native import _core; print(_core.isa())"],
                          env=env, capture_output=True, text=True, timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == value
    else:
        assert proc.returncode != 0
        assert "OPS_NATIVE_ISA='bogus'" in proc.stderr


def test_env_var_naming_an_isa_this_cpu_lacks_fails_import_with_clear_text():
    missing = [n for n in ("avx2", "avx512", "neon") if not any(i.startswith(n) for i in ISAS)]
    if not missing:
        pytest.skip("every ISA is available here")
    env = dict(os.environ, OPS_NATIVE_ISA=missing[0])
    proc = subprocess.run([sys.executable, "-c", "import ops_native._core"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "not available on this CPU" in proc.stderr


# ---- GEMM -----------------------------------------------------------------------------------------

EDGE_SHAPES = [(1, 1, 1), (1, 67, 300), (2, 3, 5), (5, 17, 16), (6, 16, 16), (7, 33, 67), (8, 15, 257),
               (13, 64, 520), (31, 1, 7), (67, 67, 67)]


@pytest.mark.parametrize("m,n,k", EDGE_SHAPES)
def test_gemm_packed_and_unpacked_match_numpy_on_edge_tiles(isa, m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    a, b, bias = rand(rng, m, k), rand(rng, k, n), rand(rng, n)
    want = a.astype(np.float64) @ b + bias
    close(core.gemm(a, b, bias), want, k)
    close(core.gemm(a, core.PackedB(b), bias), want, k)
    close(core.gemm(np.ascontiguousarray(a.T), np.ascontiguousarray(b.T), bias, trans_a=True, trans_b=True),
          want, k)
    close(core.gemm(a, core.PackedB(np.ascontiguousarray(b.T), trans_b=True), bias, threads=2), want, k)


@pytest.mark.parametrize("act,aa,ab", [("relu", 0, 0), ("clip", 0.0, 6.0), ("clip", -0.3, 0.2),
                                       ("leaky_relu", 0.1, 0), ("hardswish", 0, 0), ("sigmoid", 0, 0)])
def test_gemm_fuses_bias_alpha_and_activation(isa, act, aa, ab):
    rng = np.random.default_rng(1)
    a, b, bias = rand(rng, 19, 40), rand(rng, 40, 35), rand(rng, 35)
    got = core.gemm(a, core.PackedB(b), bias, alpha=0.5, act=act, act_alpha=aa, act_beta=ab)
    close(got, np_act(0.5 * (a.astype(np.float64) @ b) + bias, act, aa, ab), 40)


def test_gemm_bias_kinds_scalar_column_and_row(isa):
    rng = np.random.default_rng(2)
    a, b = rand(rng, 9, 12), rand(rng, 12, 20)
    base = a.astype(np.float64) @ b
    close(core.gemm(a, b, np.array([1.5], np.float32)), base + 1.5, 12)
    col = rand(rng, 1, 20)
    close(core.gemm(a, b, col), base + col, 12)
    row = rand(rng, 9, 1)
    close(core.gemm(a, b, row), base + row, 12)


def test_gemm_writes_into_out_and_two_threads_equal_one(isa):
    rng = np.random.default_rng(3)
    a, b = rand(rng, 130, 300), rand(rng, 300, 270)
    pb = core.PackedB(b)
    out = np.empty((130, 270), np.float32)
    res = core.gemm(a, pb, out=out, threads=1)
    assert res is out
    np.testing.assert_array_equal(core.gemm(a, pb, threads=2), out)
    close(out, a.astype(np.float64) @ b, 300)


@pytest.mark.parametrize("trans_a,trans_b,alpha", [(0, 0, 1.0), (1, 0, 0.25), (0, 1, 2.0), (1, 1, 1.0)])
def test_gemm_matches_onnxruntime_gemm_node(isa, trans_a, trans_b, alpha):
    rng = np.random.default_rng(4)
    m, n, k = 23, 37, 45
    a = rand(rng, *((k, m) if trans_a else (m, k)))
    b = rand(rng, *((n, k) if trans_b else (k, n)))
    c = rand(rng, n)
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a, transB=trans_b, alpha=alpha)
    (want,) = ort_run([node], {"a": a, "b": b, "c": c}, ["y"])
    close(core.gemm(a, b, c, trans_a=bool(trans_a), trans_b=bool(trans_b), alpha=alpha), want, k)
    packed = core.PackedB(b, trans_b=bool(trans_b))
    assert (packed.K, packed.N) == (k, n)
    close(core.gemm(a, packed, c, trans_a=bool(trans_a), alpha=alpha), want, k)


# ---- MatMul ---------------------------------------------------------------------------------------

MATMUL_SHAPES = [((4,), (4,)), ((4,), (4, 5)), ((3, 4), (4,)), ((3, 4), (4, 5)), ((2, 3, 4), (4, 5)),
                 ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((1, 7, 64), (3, 64, 9)), ((4,), (2, 4, 3)),
                 ((2, 3, 4), (4,)), ((1, 1, 66), (66, 130))]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_matches_onnxruntime_with_broadcasting(isa, sa, sb):
    rng = np.random.default_rng(len(sa) * 10 + len(sb))
    a, b = rand(rng, *sa), rand(rng, *sb)
    (want,) = ort_run([helper.make_node("MatMul", ["a", "b"], ["y"])], {"a": a, "b": b}, ["y"])
    got = core.matmul(a, b)
    assert got.shape == want.shape == np.matmul(a, b).shape
    close(got, want, sa[-1])


def test_matmul_accepts_non_contiguous_inputs_and_out(isa):
    rng = np.random.default_rng(5)
    a = rand(rng, 6, 8, 10)[:, ::2, :]
    b = rand(rng, 10, 12).T.copy().T
    out = np.empty((6, 4, 12), np.float32)
    assert core.matmul(a, b, out=out, threads=2) is out
    close(out, np.matmul(a.astype(np.float64), b), 10)


def _strided_matmul_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(11)
    heads = rand(rng, 2, 9, 3, 8)                 # [batch, tokens, heads, dim]
    q = heads.transpose(0, 2, 1, 3)                # head split: rows 24 floats apart
    kt = heads.transpose(0, 2, 3, 1)               # K^T: column-major last two axes
    p = rand(rng, 2, 3, 9, 9)
    return {
        "head_split_times_k_transposed": (q, kt),
        "transposed_a": (kt.transpose(0, 1, 3, 2), q.transpose(0, 1, 3, 2)),
        "every_other_row": (p[:, :, ::2, :], q),
        "reversed_rows_copied": (p[:, :, ::-1, :], q),
        "broadcast_batch_copied": (np.broadcast_to(p[:, :1], (2, 3, 9, 9)), q),
        "non_uniform_batch_copied": (p.transpose(1, 0, 2, 3), q.transpose(1, 0, 2, 3)),
        "single_row_and_column": (p[:, :, :1, :], q[:, :, :, :1]),
    }


@pytest.mark.parametrize("name", sorted(_strided_matmul_cases()))
def test_batched_matmul_reads_strided_views_in_place_or_copies_them(isa, name):
    """Transposed and head-interleaved operands (what a view-returning Transpose hands over) give
    numpy's result; layouts the GEMM cannot address (negative, broadcast or uneven strides) are copied."""
    a, b = _strided_matmul_cases()[name]
    for threads in (1, 2):
        close(core.matmul(a, b, threads=threads, alpha=0.5), 0.5 * np.matmul(a.astype(np.float64), b), a.shape[-1])


def test_matmul_with_zero_inner_dimension_gives_zeros():
    got = core.matmul(np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32))
    np.testing.assert_array_equal(got, np.zeros((3, 4), np.float32))


# ---- Conv -----------------------------------------------------------------------------------------

# (x shape, weight shape, strides, pads (t, l, b, r), dilations, group)
CONV_CASES = {
    "1x1": ((2, 8, 10, 7), (16, 8, 1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1),
    "1x1_stride2": ((1, 8, 9, 9), (12, 8, 1, 1), (2, 2), (0, 0, 0, 0), (1, 1), 1),
    "3x3_s1": ((1, 3, 17, 15), (8, 3, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
    "3x3_s2": ((1, 16, 14, 13), (24, 16, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1),
    "asym_pads": ((1, 5, 8, 9), (7, 5, 3, 3), (1, 1), (0, 2, 1, 0), (1, 1), 1),
    "dilated": ((1, 6, 17, 15), (9, 6, 5, 3), (2, 1), (3, 1, 2, 0), (2, 3), 1),
    "groups": ((1, 8, 12, 13), (12, 2, 3, 3), (1, 2), (2, 1, 0, 1), (2, 1), 4),
    "depthwise_s1": ((2, 16, 12, 13), (16, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 16),
    "depthwise_s2": ((1, 16, 12, 13), (16, 1, 3, 3), (2, 2), (1, 0, 1, 2), (1, 1), 16),
    "depthwise_5x5_dil": ((1, 8, 11, 10), (8, 1, 5, 5), (1, 1), (4, 4, 4, 4), (2, 2), 8),
    "depthwise_multiplier2": ((1, 4, 9, 9), (8, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4),
    "deep_7x7": ((1, 64, 7, 7), (70, 64, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1),
}


@pytest.mark.parametrize("name", sorted(CONV_CASES))
def test_conv2d_matches_onnxruntime(isa, name):
    xs, ws, strides, pads, dil, group = CONV_CASES[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    x, w, b = rand(rng, *xs), rand(rng, *ws), rand(rng, ws[0])
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=list(strides),
                            pads=[pads[0], pads[1], pads[2], pads[3]], dilations=list(dil), group=group)
    (want,) = ort_run([node], {"x": x, "w": w, "b": b}, ["y"])
    conv = core.Conv2d(w, b, strides=strides, pads=pads, dilations=dil, group=group)
    assert conv.output_shape(x.shape) == want.shape
    k = ws[1] * ws[2] * ws[3]
    close(conv.run(x), want, k)
    out = np.empty(want.shape, np.float32)
    assert conv.run(x, out=out, threads=2) is out
    close(out, want, k)


@pytest.mark.parametrize("act,onnx_op,attrs", [("relu", "Relu", {}), ("leaky_relu", "LeakyRelu", {"alpha": 0.1}),
                                               ("hardswish", "HardSwish", {}), ("sigmoid", "Sigmoid", {})])
def test_conv2d_fused_activation_matches_onnxruntime_conv_plus_activation(isa, act, onnx_op, attrs):
    rng = np.random.default_rng(6)
    for ws, group in (((12, 6, 3, 3), 1), ((6, 1, 3, 3), 6)):
        x, w, b = rand(rng, 1, 6, 11, 10), rand(rng, *ws), rand(rng, ws[0])
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t"], pads=[1, 1, 1, 1], group=group),
                 helper.make_node(onnx_op, ["t"], ["y"], **attrs)]
        (want,) = ort_run(nodes, {"x": x, "w": w, "b": b}, ["y"])
        conv = core.Conv2d(w, b, pads=(1, 1, 1, 1), group=group, act=act, act_alpha=attrs.get("alpha", 0.0))
        close(conv.run(x), want, ws[1] * 9)


def test_conv2d_relu6_clip_matches_numpy_and_paths_are_reported():
    rng = np.random.default_rng(7)
    x, w = rand(rng, 1, 4, 6, 6) * 8, rand(rng, 4, 1, 3, 3)
    conv = core.Conv2d(w, None, pads=(1, 1, 1, 1), group=4, act="clip", act_alpha=0.0, act_beta=6.0)
    plain = core.Conv2d(w, None, pads=(1, 1, 1, 1), group=4)
    np.testing.assert_allclose(conv.run(x), np.clip(plain.run(x), 0, 6), rtol=1e-6, atol=1e-6)
    assert conv.path == "depthwise"
    assert core.Conv2d(rand(rng, 8, 4, 1, 1)).path == "1x1"
    assert core.Conv2d(rand(rng, 8, 4, 3, 3)).path == "nchwc"
    assert core.Conv2d(rand(rng, 8, 2, 3, 3), group=2).path == "im2col"  # < 8 channels per group


def test_conv1d_weight_is_treated_as_height_one(isa):
    rng = np.random.default_rng(8)
    x, w, b = rand(rng, 2, 6, 31), rand(rng, 10, 6, 5), rand(rng, 10)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2], pads=[2, 2])
    (want,) = ort_run([node], {"x": x, "w": w, "b": b}, ["y"])
    conv = core.Conv2d(w, b, strides=(2,), pads=(2, 2), dilations=(1,))
    close(conv.run(x), want, 30)


# ---- ConvTranspose --------------------------------------------------------------------------------

# (x shape, weight shape [C, OC/g, KH, KW], strides, pads, output_padding, dilations, group)
CONVT_CASES = {
    "2x2_s2": ((1, 4, 5, 6), (4, 3, 2, 2), (2, 2), (0, 0, 0, 0), (0, 0), (1, 1), 1),
    "3x3_s2_p1_op1": ((2, 3, 4, 5), (3, 5, 3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (1, 1), 1),
    "groups_asym": ((1, 4, 5, 4), (4, 3, 3, 2), (2, 3), (0, 1, 1, 0), (1, 2), (1, 1), 2),
    "dilated": ((1, 2, 4, 4), (2, 2, 3, 3), (1, 1), (1, 0, 0, 1), (0, 0), (2, 2), 1),
    "decoder_4x4": ((1, 16, 8, 8), (16, 8, 4, 4), (2, 2), (1, 1, 1, 1), (0, 0), (1, 1), 1),
}


@pytest.mark.parametrize("name", sorted(CONVT_CASES))
def test_conv_transpose2d_matches_onnxruntime(isa, name):
    xs, ws, strides, pads, opad, dil, group = CONVT_CASES[name]
    rng = np.random.default_rng(len(name))
    x, w, b = rand(rng, *xs), rand(rng, *ws), rand(rng, ws[1] * group)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], strides=list(strides), pads=list(pads),
                            output_padding=list(opad), dilations=list(dil), group=group)
    (want,) = ort_run([node], {"x": x, "w": w, "b": b}, ["y"])
    conv = core.ConvTranspose2d(w, b, strides=strides, pads=pads, output_padding=opad, dilations=dil,
                                group=group)
    assert conv.output_shape(x.shape) == want.shape
    close(conv.run(x), want, xs[1])
    close(conv.run(x, threads=2), want, xs[1])


# ---- argument errors ------------------------------------------------------------------------------

def test_bad_shapes_and_dtypes_raise_value_error_naming_the_argument():
    a32, b32 = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"inner dimensions differ: op\(a\) is \[3, 4\] but op\(b\) is \[5, 4\]"):
        core.gemm(a32, b32.T.copy())
    with pytest.raises(ValueError, match="gemm: a: expected dtype float32, got float64"):
        core.gemm(a32.astype(np.float64), b32)
    with pytest.raises(ValueError, match=r"gemm: b: expected a 2-D array, got 1-D"):
        core.gemm(a32, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"gemm: bias must have shape \[5\]"):
        core.gemm(a32, b32, np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"gemm: out must have shape \[3, 5\], got \[5, 3\]"):
        core.gemm(a32, b32, out=np.empty((5, 3), np.float32))
    with pytest.raises(ValueError, match="act must be one of"):
        core.gemm(a32, b32, act="mish")
    with pytest.raises(ValueError, match="trans_b must be False for a PackedB"):
        core.gemm(a32, core.PackedB(b32), trans_b=True)
    with pytest.raises(ValueError, match="matmul: inner dimensions differ"):
        core.matmul(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))
    with pytest.raises(ValueError, match="batch dimensions do not broadcast"):
        core.matmul(np.ones((2, 3, 4), np.float32), np.ones((3, 4, 2), np.float32))
    with pytest.raises(TypeError, match="expected a float32 numpy array, got list"):
        core.matmul([[1.0]], np.ones((1, 1), np.float32))
    conv = core.Conv2d(np.ones((8, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"x has 4 channels, the weight expects 3"):
        conv.run(np.ones((1, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        conv.run(np.ones((4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="smaller than the \\(dilated\\) kernel"):
        conv.run(np.ones((1, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="output channels 6 not divisible by group 4"):
        core.Conv2d(np.ones((6, 1, 3, 3), np.float32), group=4)
    with pytest.raises(ValueError, match=r"Conv2d: bias must have shape \[8\]"):
        core.Conv2d(np.ones((8, 3, 3, 3), np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="strides must be 2 ints >= 1"):
        core.Conv2d(np.ones((8, 3, 3, 3), np.float32), strides=(0, 1))
    with pytest.raises(ValueError, match="threads must be >= 1"):
        core.matmul(a32, b32, threads=0)
    sq = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="out must not overlap an input"):
        core.gemm(sq, sq, out=sq)


def test_gflops_probe_measures_positive_throughput():
    assert core.gemm_gflops_probe(0.05) > 0.1
