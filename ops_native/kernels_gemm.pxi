# Bindings of the GEMM / convolution core, ISA dispatch and the thread pool (on_common.h, on_gemm.h,
# on_conv.h). Included first into ops_native/_core.pyx.
#
# Every call validates its numpy arguments here (messages name the argument, expected vs actual
# shape/dtype), then runs the C kernel without the GIL. C status codes become exceptions in _on_check
# only. Module-level names of this file are public API (isa, gemm, matmul, PackedB, Conv2d, ...);
# private helpers start with _on_ / _gemm_.

cimport numpy as cnp
from libc.stdint cimport int64_t

import os as _on_os
import time as _on_time

import numpy as _on_np

cnp.import_array()

cdef extern from "on_common.h" nogil:
    ctypedef enum on_status:
        ON_OK
        ON_ERR_ARG
        ON_ERR_SHAPE
        ON_ERR_NOMEM
        ON_ERR_UNSUPPORTED
        ON_ERR_INTERNAL
    ctypedef enum on_isa_t:
        ON_ISA_SCALAR
        ON_ISA_AVX2
        ON_ISA_NEON
        ON_ISA_AVX512
        ON_ISA_COUNT
    ctypedef enum on_act_kind:
        ON_ACT_NONE
        ON_ACT_RELU
        ON_ACT_CLIP
        ON_ACT_LEAKY_RELU
        ON_ACT_HARDSWISH
        ON_ACT_SIGMOID
    ctypedef struct on_act_t:
        on_act_kind kind
        float alpha
        float beta
    const char *on_status_str(on_status s)
    on_isa_t on_active_isa()
    const char *on_isa_name(on_isa_t isa)
    int on_isa_from_name(const char *name)
    int on_isa_available(on_isa_t isa)
    int on_set_isa(on_isa_t isa)
    on_status on_isa_env_status()
    int on_num_cpus()
    void on_pool_warm(int nthreads)

cdef extern from "on_gemm.h" nogil:
    ctypedef enum on_bias_kind:
        ON_BIAS_NONE
        ON_BIAS_SCALAR
        ON_BIAS_COL
        ON_BIAS_ROW
    ctypedef struct on_gemm_epilogue:
        float alpha
        on_bias_kind bias_kind
        const float *bias
        on_act_t act
    ctypedef struct on_packed_b:
        size_t K
        size_t N
    on_status on_packed_b_create(const float *b, size_t ldb, int trans_b, size_t K, size_t N, on_packed_b **out)
    void on_packed_b_free(on_packed_b *pb)
    on_status on_gemm_packed(int trans_a, size_t M, size_t N, size_t K, const float *A, size_t lda,
                             const on_packed_b *B, const on_gemm_epilogue *ep, float *C, size_t ldc, int nthreads)
    on_status on_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda,
                      const float *B, size_t ldb, const on_gemm_epilogue *ep, float *C, size_t ldc, int nthreads)
    on_status on_gemm_batch(int trans_a, int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda,
                            size_t stride_a, const float *B, size_t ldb, size_t stride_b,
                            const on_gemm_epilogue *ep, float *C, size_t ldc, size_t stride_c, size_t nbatch,
                            int nthreads)
    double on_fma_peak_gflops(on_isa_t isa, double seconds)


class ArgumentError(ValueError, TypeError):
    """A bad argument (shape, dtype, value). Both a ValueError and a TypeError, so callers catching
    either see it."""


cdef int _on_check(on_status st, str what) except -1:
    """The one place where C status codes become Python exceptions."""
    if st == ON_OK:
        return 0
    msg = f"{what}: {on_status_str(st).decode()}"
    if st == ON_ERR_ARG or st == ON_ERR_SHAPE:
        raise ArgumentError(msg)
    if st == ON_ERR_NOMEM:
        raise MemoryError(msg)
    if st == ON_ERR_UNSUPPORTED:
        raise NotImplementedError(msg)
    raise RuntimeError(msg)


# ---- ISA ------------------------------------------------------------------------------------------

def isa() -> str:
    """Name of the active ISA: "avx512f", "avx2-fma", "neon" or "scalar"."""
    return on_isa_name(on_active_isa()).decode()


def available_isas() -> list:
    """ISAs this CPU and build can run, best last."""
    return [on_isa_name(<on_isa_t>i).decode() for i in range(<int>ON_ISA_COUNT) if on_isa_available(<on_isa_t>i)]


def set_isa(name: str) -> None:
    """Switch every dispatched kernel to ISA `name` ("scalar", "avx2"/"avx2-fma", "avx512"/"avx512f", "neon")."""
    cdef int code = on_isa_from_name(str(name).encode())
    if code < 0:
        raise ValueError(f"set_isa: unknown ISA {name!r}; available: {available_isas()}")
    if on_set_isa(<on_isa_t>code) != 0:
        raise ValueError(f"set_isa: ISA {name!r} is not available on this CPU; available: {available_isas()}")


def fma_peak_gflops(name: str | None = None, double seconds=0.25) -> float:
    """Single-core f32 FMA peak of ISA `name` (default: the active one) in GFLOP/s, measured now by a
    register-only FMA loop: the denominator of the benchmarks' %-of-peak."""
    cdef int code = on_active_isa() if name is None else on_isa_from_name(str(name).encode())
    if code < 0 or not on_isa_available(<on_isa_t>code):
        raise ValueError(f"fma_peak_gflops: ISA {name!r} is not available; available: {available_isas()}")
    cdef double gf
    with nogil:
        gf = on_fma_peak_gflops(<on_isa_t>code, seconds)
    return gf


def pool_warm(int threads) -> None:
    """Start the worker pool spinning ahead of a run with `threads` threads (returns at once)."""
    with nogil:
        on_pool_warm(threads)


def num_cpus() -> int:
    """Hardware threads of this machine."""
    return on_num_cpus()


def _on_check_env_isa():
    cdef on_status st = on_isa_env_status()
    if st != ON_OK:
        env = _on_os.environ.get("OPS_NATIVE_ISA", "")
        why = "unknown ISA name" if st == ON_ERR_ARG else "not available on this CPU"
        raise ImportError(f"OPS_NATIVE_ISA={env!r}: {why}; available: {available_isas()}")


_on_check_env_isa()


# ---- argument helpers -----------------------------------------------------------------------------

_ON_ACTS = {"none": ON_ACT_NONE, "relu": ON_ACT_RELU, "clip": ON_ACT_CLIP, "leaky_relu": ON_ACT_LEAKY_RELU,
            "hardswish": ON_ACT_HARDSWISH, "sigmoid": ON_ACT_SIGMOID}


cdef on_act_t _on_act(str where, object act, double act_alpha, double act_beta) except *:
    cdef on_act_t a
    if act is None:
        act = "none"
    if act not in _ON_ACTS:
        raise ArgumentError(f"{where}: act must be one of {sorted(_ON_ACTS)}, got {act!r}")
    a.kind = _ON_ACTS[act]
    a.alpha = act_alpha
    a.beta = act_beta
    if a.kind == ON_ACT_CLIP and act_alpha > act_beta:
        raise ArgumentError(f"{where}: clip needs act_alpha (min) <= act_beta (max), got {act_alpha} > {act_beta}")
    return a


def _on_f32(x, str name, int ndim=-1, bint contiguous=True):
    """x as a float32 ndarray (C-contiguous copy if needed); errors name the argument."""
    if not isinstance(x, _on_np.ndarray):
        raise ArgumentError(f"{name}: expected a float32 numpy array, got {type(x).__name__}")
    if x.dtype != _on_np.float32:
        raise ArgumentError(f"{name}: expected dtype float32, got {x.dtype} with shape {list(x.shape)}")
    if ndim >= 0 and x.ndim != ndim:
        raise ArgumentError(f"{name}: expected a {ndim}-D array, got {x.ndim}-D with shape {list(x.shape)}")
    if contiguous and not x.flags.c_contiguous:
        x = _on_np.ascontiguousarray(x)
    return x


def _on_out(out, tuple shape, str where, inputs=()):
    """A fresh output array, or the caller's `out` after checking it (it may not overlap an input)."""
    if out is None:
        return _on_np.empty(shape, dtype=_on_np.float32)
    if not isinstance(out, _on_np.ndarray) or out.dtype != _on_np.float32:
        raise ArgumentError(f"{where}: out must be a float32 numpy array, got "
                            f"{getattr(out, 'dtype', type(out).__name__)}")
    if tuple(out.shape) != shape:
        raise ArgumentError(f"{where}: out must have shape {list(shape)}, got {list(out.shape)}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ArgumentError(f"{where}: out must be C-contiguous and writeable")
    for x in inputs:
        if x is not None and _on_np.may_share_memory(out, x):
            raise ArgumentError(f"{where}: out must not overlap an input")
    return out


cdef inline float *_on_fptr(cnp.ndarray a):
    return <float *>cnp.PyArray_DATA(a)


cdef int _on_threads(object threads, str where) except -1:
    try:
        t = int(threads)
    except (TypeError, ValueError):
        raise ArgumentError(f"{where}: threads must be an int, got {threads!r}")
    if t < 1:
        raise ArgumentError(f"{where}: threads must be >= 1, got {t}")
    return min(t, 64)


# ---- GEMM -----------------------------------------------------------------------------------------

cdef class PackedB:
    """A weight matrix packed once into GEMM panels: b [K, N] (or [N, K] with trans_b=True)."""

    cdef on_packed_b *pb

    def __cinit__(self):
        self.pb = NULL

    def __init__(self, b, trans_b: bool = False):
        b = _on_f32(b, "PackedB: b", 2)
        cdef cnp.ndarray arr = b
        cdef size_t K = b.shape[1] if trans_b else b.shape[0]
        cdef size_t N = b.shape[0] if trans_b else b.shape[1]
        if K == 0 or N == 0:
            raise ArgumentError(f"PackedB: b must be non-empty, got shape {list(b.shape)}")
        cdef int tb = 1 if trans_b else 0
        cdef size_t ldb = b.shape[1]
        cdef on_status st
        cdef const float *bp = _on_fptr(arr)
        with nogil:
            st = on_packed_b_create(bp, ldb, tb, K, N, &self.pb)
        _on_check(st, "PackedB")

    def __dealloc__(self):
        if self.pb != NULL:
            on_packed_b_free(self.pb)
            self.pb = NULL

    @property
    def K(self) -> int:
        """Inner dimension."""
        return self.pb.K

    @property
    def N(self) -> int:
        """Output columns."""
        return self.pb.N

    def __repr__(self):
        return f"PackedB(K={self.pb.K}, N={self.pb.N})"


def gemm(a, b, bias=None, *, trans_a=False, trans_b=False, alpha=1.0, act="none", act_alpha=0.0,
         act_beta=0.0, out=None, threads=1):
    """C[M, N] = act(alpha * op(a) @ op(b) + bias).

    a: float32 [M, K] ([K, M] if trans_a). b: PackedB, or float32 [K, N] ([N, K] if trans_b).
    bias: None, float32 [N] / [1, N] (per column), [1] (scalar) or [M, 1] (per row).
    act: "none" | "relu" | "clip" (act_alpha=min, act_beta=max) | "leaky_relu" (act_alpha=slope) |
    "hardswish" | "sigmoid". out: optional C-contiguous float32 [M, N]. Returns C.
    """
    a = _on_f32(a, "gemm: a", 2)
    cdef int ta = 1 if trans_a else 0
    cdef size_t M = a.shape[1] if ta else a.shape[0]
    cdef size_t K = a.shape[0] if ta else a.shape[1]
    cdef size_t N, Kb
    cdef PackedB pb = None
    cdef cnp.ndarray barr = None
    cdef int tb = 0
    if isinstance(b, PackedB):
        if trans_b:
            raise ArgumentError("gemm: trans_b must be False for a PackedB (transposition happens when packing)")
        pb = b
        Kb = pb.pb.K
        N = pb.pb.N
    else:
        b = _on_f32(b, "gemm: b", 2)
        barr = b
        tb = 1 if trans_b else 0
        Kb = b.shape[1] if tb else b.shape[0]
        N = b.shape[0] if tb else b.shape[1]
    if Kb != K:
        raise ArgumentError(f"gemm: inner dimensions differ: op(a) is [{M}, {K}] but op(b) is [{Kb}, {N}]")
    cdef on_gemm_epilogue ep
    ep.alpha = alpha
    ep.act = _on_act("gemm", act, act_alpha, act_beta)
    ep.bias_kind = ON_BIAS_NONE
    ep.bias = NULL
    cdef cnp.ndarray barr_bias = None
    if bias is not None:
        bias = _on_f32(bias, "gemm: bias")
        shp = tuple(bias.shape)
        if bias.size == 1:
            ep.bias_kind = ON_BIAS_SCALAR
        elif shp == (N,) or shp == (1, N):
            ep.bias_kind = ON_BIAS_COL
        elif shp == (M, 1):
            ep.bias_kind = ON_BIAS_ROW
        else:
            raise ArgumentError(f"gemm: bias must have shape [{N}], [1, {N}], [1] or [{M}, 1], got {list(shp)}")
        barr_bias = bias
        ep.bias = _on_fptr(barr_bias)
    cdef cnp.ndarray carr = _on_out(out, (M, N), "gemm", (a, barr, bias))
    cdef int nt = _on_threads(threads, "gemm")
    cdef cnp.ndarray aarr = a
    cdef const float *ap = _on_fptr(aarr)
    cdef size_t lda = a.shape[1]
    cdef const float *bp = NULL
    cdef size_t ldb = 0
    if barr is not None:
        bp = _on_fptr(barr)
        ldb = barr.shape[1]
    cdef float *cp = _on_fptr(carr)
    cdef on_status st
    if M == 0 or N == 0:
        return carr
    with nogil:
        if pb is not None:
            if K == 0:
                st = ON_ERR_SHAPE
            else:
                st = on_gemm_packed(ta, M, N, K, ap, lda, pb.pb, &ep, cp, N, nt)
        else:
            st = on_gemm(ta, tb, M, N, K, ap, lda, bp, ldb, &ep, cp, N, nt)
    _on_check(st, "gemm")
    return carr


cdef bint _mm_operand(cnp.ndarray x, int *trans, size_t *ld):
    """Whether the GEMM can read a float32 operand [..., R, C] in place: every axis longer than 1 steps
    forward by whole floats, and its last two axes are row-major (trans 0, row stride ld) or
    column-major (trans 1: x^T is row-major with row stride ld). False when a copy is needed
    (negative or broadcast (0) strides, misaligned steps, rows that overlap)."""
    cdef int nd = cnp.PyArray_NDIM(x), i
    cdef cnp.npy_intp *sh = cnp.PyArray_DIMS(x)
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(x)
    for i in range(nd):
        if sh[i] > 1 and (st[i] <= 0 or st[i] % 4):
            return False
    cdef size_t rows = <size_t>sh[nd - 2], cols = <size_t>sh[nd - 1]
    cdef size_t rs = <size_t>st[nd - 2] // 4 if rows > 1 else cols, cs = <size_t>st[nd - 1] // 4 if cols > 1 else 1
    if cs == 1 and rs >= cols:
        trans[0] = 0
        ld[0] = rs
    elif rs == 1 and cs >= rows:
        trans[0] = 1
        ld[0] = cs
    else:
        return False
    return True


cdef list _mm_batch_offsets(cnp.ndarray x, tuple batch):
    """Offsets (in floats) of x's matrices for every index of batch[:-1], in row-major order."""
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(x)
    cdef list offs = [0]
    cdef Py_ssize_t axis
    for axis in range(len(batch) - 1):
        step = st[axis] // 4 if batch[axis] > 1 else 0
        offs = [o + i * step for o in offs for i in range(batch[axis])]
    return offs


def matmul(a, b, out=None, threads=1, float alpha=1.0):
    """ONNX MatMul for float32: numpy matmul semantics (1-D promotion, batch broadcasting), times alpha.

    Non-contiguous inputs are copied. A 2-D b under a batched a is one GEMM over all rows.
    """
    a = _on_f32(a, "matmul: a", -1, False)
    b = _on_f32(b, "matmul: b", -1, False)
    if a.ndim == 0 or b.ndim == 0:
        raise ArgumentError(f"matmul: inputs must be at least 1-D, got shapes {list(a.shape)} and {list(b.shape)}")
    a_vec = a.ndim == 1
    b_vec = b.ndim == 1
    a2 = a.reshape(1, -1) if a_vec else a
    b2 = b.reshape(-1, 1) if b_vec else b
    sa = tuple(a2.shape)
    sb = tuple(b2.shape)
    cdef size_t M = sa[len(sa) - 2], K = sa[len(sa) - 1], N = sb[len(sb) - 1]
    if sb[len(sb) - 2] != K:
        raise ArgumentError(f"matmul: inner dimensions differ: a has shape {list(a.shape)}, b has shape "
                            f"{list(b.shape)} ({K} != {sb[len(sb) - 2]})")
    if len(sb) == 2 or sa[:len(sa) - 2] == sb[:len(sb) - 2]:
        batch = sa[:len(sa) - 2]   # the common cases, without numpy's broadcast_shapes (~1 us)
    else:
        try:
            batch = _on_np.broadcast_shapes(sa[:len(sa) - 2], sb[:len(sb) - 2])
        except ValueError:
            raise ArgumentError(f"matmul: batch dimensions do not broadcast: a {list(a.shape)}, b {list(b.shape)}")
    res_shape = tuple(batch) + ((() if a_vec else (M,)) + (() if b_vec else (N,)))
    cdef cnp.ndarray carr = _on_out(out, res_shape, "matmul", (a, b))
    cdef int nt = _on_threads(threads, "matmul")
    cdef on_gemm_epilogue ep
    ep.alpha = alpha
    ep.bias_kind = ON_BIAS_NONE
    ep.bias = NULL
    ep.act.kind = ON_ACT_NONE
    ep.act.alpha = 0.0
    ep.act.beta = 0.0
    nbatch = 1
    for d in batch:
        nbatch *= d
    if nbatch == 0 or M == 0 or N == 0:
        return carr
    cdef cnp.ndarray aarr, barr
    cdef on_status st = ON_OK
    cdef size_t rows
    cdef const float *ap
    cdef const float *bp
    cdef float *cp
    if b2.ndim == 2:
        # every batch shares b: fold the batch into the rows of one GEMM
        aarr = _on_np.ascontiguousarray(_on_np.broadcast_to(a2, tuple(batch) + (M, K)))
        barr = _on_np.ascontiguousarray(b2)
        rows = nbatch * M
        ap = _on_fptr(aarr)
        bp = _on_fptr(barr)
        cp = _on_fptr(carr)
        with nogil:
            st = on_gemm(0, 0, rows, N, K, ap, K, bp, N, &ep, cp, N, nt)
        _on_check(st, "matmul")
        return carr
    cdef size_t i, nbt = nbatch
    cdef int ta = 0, tb = 0
    cdef size_t lda = K, ldb = N, bsa = 0, bsb = 0, inner, o, oa, ob
    cdef Py_ssize_t nbd = len(batch)
    if sa[:len(sa) - 2] == sb[:len(sb) - 2]:
        # same batch shape on both sides (attention's Q.K^T and P.V): batch i pairs with batch i, no
        # broadcasting tables to build (they cost more than these small products). Transposed or
        # head-interleaved views (a Transpose that only feeds MatMuls returns one) are read in place:
        # the innermost batch axis is the GEMM batch stride, outer batch axes are offsets.
        aarr = <cnp.ndarray>a2
        barr = <cnp.ndarray>b2
        if not _mm_operand(aarr, &ta, &lda):
            aarr = _on_np.ascontiguousarray(a2)
            ta, lda = 0, K
        if not _mm_operand(barr, &tb, &ldb):
            barr = _on_np.ascontiguousarray(b2)
            tb, ldb = 0, N
        inner = <size_t>batch[nbd - 1] if nbd else 1
        if inner > 1:
            bsa = <size_t>cnp.PyArray_STRIDES(aarr)[nbd - 1] // 4
            bsb = <size_t>cnp.PyArray_STRIDES(barr)[nbd - 1] // 4
        outer_a = _mm_batch_offsets(aarr, batch)
        outer_b = _mm_batch_offsets(barr, batch)
        ap = _on_fptr(aarr)
        bp = _on_fptr(barr)
        cp = _on_fptr(carr)
        for o in range(len(outer_a)):
            oa = <size_t>outer_a[o]
            ob = <size_t>outer_b[o]
            with nogil:
                st = on_gemm_batch(ta, tb, M, N, K, ap + oa, lda, bsa, bp + ob, ldb, bsb, &ep,
                                   cp + o * inner * M * N, N, M * N, inner, nt)
            _on_check(st, "matmul")
        return carr
    aarr = _on_np.ascontiguousarray(a2)
    barr = _on_np.ascontiguousarray(b2)
    # per-batch offsets (in elements) through numpy broadcasting of batch indices
    na = int(_on_np.prod(sa[:len(sa) - 2], dtype=_on_np.int64)) if a2.ndim > 2 else 1
    nb = int(_on_np.prod(sb[:len(sb) - 2], dtype=_on_np.int64)) if b2.ndim > 2 else 1
    ia = _on_np.arange(na, dtype=_on_np.int64).reshape(sa[:len(sa) - 2])
    ib = _on_np.arange(nb, dtype=_on_np.int64).reshape(sb[:len(sb) - 2])
    cdef cnp.ndarray offa = _on_np.ascontiguousarray(_on_np.broadcast_to(ia, batch).reshape(-1) * <int64_t>(M * K))
    cdef cnp.ndarray offb = _on_np.ascontiguousarray(_on_np.broadcast_to(ib, batch).reshape(-1) * <int64_t>(K * N))
    cdef const int64_t *pa = <const int64_t *>cnp.PyArray_DATA(offa)
    cdef const int64_t *pbo = <const int64_t *>cnp.PyArray_DATA(offb)
    ap = _on_fptr(aarr)
    bp = _on_fptr(barr)
    cp = _on_fptr(carr)
    with nogil:
        for i in range(nbt):
            st = on_gemm(0, 0, M, N, K, ap + pa[i], K, bp + pbo[i], N, &ep, cp + i * M * N, N, nt)
            if st != ON_OK:
                break
    _on_check(st, "matmul")
    return carr


def gemm_gflops_probe(seconds: float = 0.2, threads: int = 1) -> float:
    """Measured GFLOP/s of the active ISA on a 384 x 384 x 384 SGEMM with packed B (device capability)."""
    cdef int nt = _on_threads(threads, "gemm_gflops_probe")
    n = 384
    rng = _on_np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=_on_np.float32)
    pb = PackedB(rng.standard_normal((n, n), dtype=_on_np.float32))
    c = _on_np.empty((n, n), dtype=_on_np.float32)
    gemm(a, pb, out=c, threads=nt)  # warm-up (creates the pool's workers)
    iters = 0
    t0 = _on_time.perf_counter()
    while True:
        gemm(a, pb, out=c, threads=nt)
        iters += 1
        el = _on_time.perf_counter() - t0
        if el >= seconds:
            break
    return 2.0 * n * n * n * iters / el / 1e9


# ---- convolution ----------------------------------------------------------------------------------

cdef extern from "on_conv.h" nogil:
    ctypedef struct on_conv_params:
        size_t C, OC, KH, KW, stride_h, stride_w, dil_h, dil_w, pad_t, pad_l, pad_b, pad_r, group
        size_t out_pad_h, out_pad_w
    ctypedef struct on_conv2d:
        pass
    ctypedef struct on_conv_transpose2d:
        pass
    ctypedef enum on_conv_path:
        ON_CONV_PATH_IM2COL
        ON_CONV_PATH_1X1
        ON_CONV_PATH_DEPTHWISE
        ON_CONV_PATH_NCHWC
    ctypedef enum on_layout:
        ON_LAYOUT_NCHW
        ON_LAYOUT_NCHWC8
    unsigned ON_CONV_BLOCKED
    on_status on_conv2d_create(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                               on_conv2d **out)
    on_status on_conv2d_create_ex(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                                  unsigned flags, on_conv2d **out)
    int on_conv2d_layout_ok(const on_conv2d *conv, on_layout xl, on_layout yl)
    int on_conv2d_plan_layout_ok(const on_conv_params *p, unsigned flags, on_layout xl, on_layout yl)
    on_status on_conv2d_run_layout(const on_conv2d *conv, size_t N, size_t H, size_t W, const float *x,
                                   on_layout xl, float *y, on_layout yl, int nthreads)
    int on_conv2d_sum_ok(const on_conv2d *conv)
    on_status on_conv2d_run_fused(const on_conv2d *conv, size_t N, size_t H, size_t W, const float *x,
                                  on_layout xl, float *y, on_layout yl, const float *sum, int nthreads)
    void on_conv2d_free(on_conv2d *conv)
    on_conv_path on_conv2d_path(const on_conv2d *conv)
    on_status on_conv2d_output_size(const on_conv_params *p, size_t H, size_t W, size_t *OH, size_t *OW)
    on_status on_conv2d_run(const on_conv2d *conv, size_t N, size_t H, size_t W, const float *x, float *y,
                            int nthreads)
    on_status on_conv_transpose2d_create(const on_conv_params *p, const float *weight, const float *bias,
                                         on_conv_transpose2d **out)
    void on_conv_transpose2d_free(on_conv_transpose2d *conv)
    on_status on_conv_transpose2d_output_size(const on_conv_params *p, size_t H, size_t W, size_t *OH,
                                              size_t *OW)
    on_status on_conv_transpose2d_run(const on_conv_transpose2d *conv, size_t N, size_t H, size_t W,
                                      const float *x, float *y, int nthreads)


def _on_ints(v, int n, str name, str where, int minimum):
    """A tuple of n ints >= minimum (a single int is repeated)."""
    if isinstance(v, (int, _on_np.integer)):
        v = (int(v),) * n
    try:
        t = tuple(int(i) for i in v)
    except TypeError:
        raise ArgumentError(f"{where}: {name} must be a sequence of {n} ints, got {v!r}")
    if len(t) != n or any(i < minimum for i in t):
        raise ArgumentError(f"{where}: {name} must be {n} ints >= {minimum}, got {list(t)}")
    return t


cdef class _ConvBase:
    cdef on_conv_params p
    cdef int one_d
    cdef readonly tuple weight_shape

    cdef _set_geometry(self, str where, tuple wshape, strides, pads, dilations, group):
        """Fill the spatial parameters; 3-D weights (1-D conv) become KH = 1."""
        nd = len(wshape) - 2
        if nd not in (1, 2):
            raise ArgumentError(f"{where}: weight must be 3-D or 4-D, got shape {list(wshape)}")
        self.one_d = nd == 1
        st = _on_ints(strides, nd, "strides", where, 1)
        dl = _on_ints(dilations, nd, "dilations", where, 1)
        pd = _on_ints(pads, 2 * nd, "pads", where, 0)
        g = int(group)
        if g < 1:
            raise ArgumentError(f"{where}: group must be >= 1, got {g}")
        if nd == 1:
            st = (1,) + st
            dl = (1,) + dl
            pd = (0, pd[0], 0, pd[1])
        self.p.KH = 1 if nd == 1 else wshape[2]
        self.p.KW = wshape[len(wshape) - 1]
        self.p.stride_h, self.p.stride_w = st
        self.p.dil_h, self.p.dil_w = dl
        self.p.pad_t, self.p.pad_l, self.p.pad_b, self.p.pad_r = pd
        self.p.group = g
        self.p.out_pad_h = 0
        self.p.out_pad_w = 0
        self.weight_shape = wshape

    cdef tuple _xdims(self, str where, tuple xs):
        nd = 3 if self.one_d else 4
        if len(xs) != nd:
            raise ArgumentError(f"{where}: x must be {nd}-D [N, C, {'W' if self.one_d else 'H, W'}], "
                                f"got shape {list(xs)}")
        if xs[1] != self.p.C:
            raise ArgumentError(f"{where}: x has {xs[1]} channels, the weight expects {self.p.C} "
                                f"(x shape {list(xs)}, weight shape {list(self.weight_shape)})")
        if self.one_d:
            return xs[0], 1, xs[2]
        return xs[0], xs[2], xs[3]

    cdef tuple _out_shape(self, size_t n, size_t oh, size_t ow):
        if self.one_d:
            return (n, self.p.OC, ow)
        return (n, self.p.OC, oh, ow)


LAYOUTS = ("nchw", "nchwc8")


cdef on_layout _on_layout(str where, str name) except *:
    if name == "nchw":
        return ON_LAYOUT_NCHW
    if name == "nchwc8":
        return ON_LAYOUT_NCHWC8
    raise ArgumentError(f"{where}: layout must be one of {LAYOUTS}, got {name!r}")


def conv_layout_ok(weight_shape, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                   in_layout="nchw", out_layout="nchw") -> bool:
    """Whether a 2-D Conv2d plan with this geometry can read in_layout and write out_layout."""
    ws = tuple(int(d) for d in weight_shape)
    if len(ws) != 4:
        return in_layout == out_layout == "nchw"
    cdef on_conv_params p
    p.OC, p.C = ws[0], ws[1] * int(group)
    p.KH, p.KW = ws[2], ws[3]
    p.stride_h, p.stride_w = (int(v) for v in strides)
    p.dil_h, p.dil_w = (int(v) for v in dilations)
    p.pad_t, p.pad_l, p.pad_b, p.pad_r = (int(v) for v in pads)
    p.group = int(group)
    p.out_pad_h = p.out_pad_w = 0
    cdef on_layout xl = _on_layout("conv_layout_ok", in_layout), yl = _on_layout("conv_layout_ok", out_layout)
    return on_conv2d_plan_layout_ok(&p, ON_CONV_BLOCKED, xl, yl) != 0


cdef class Conv2d(_ConvBase):
    """A convolution plan (float32): weights copied and laid out once, bias + activation fused.

    weight [OC, C/group, KH, KW] (or [OC, C/group, KW] for 1-D); pads = (top, left, bottom, right)
    (1-D: (left, right)). auto_pad must be resolved into explicit pads by the caller.
    in_layout / out_layout: "nchw" ([N, C, H, W]) or "nchwc8" ([N, ceil(C/8), H, W, 8], channel c in
    block c // 8, lane c % 8; 2-D only, where conv_layout_ok allows it).
    """

    cdef on_conv2d *conv
    cdef readonly str in_layout, out_layout
    cdef on_layout xl, yl

    def __cinit__(self):
        self.conv = NULL

    def __init__(self, weight, bias=None, *, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1,
                 act="none", act_alpha=0.0, act_beta=0.0, in_layout="nchw", out_layout="nchw"):
        self.xl = _on_layout("Conv2d", in_layout)
        self.yl = _on_layout("Conv2d", out_layout)
        self.in_layout, self.out_layout = in_layout, out_layout
        weight = _on_f32(weight, "Conv2d: weight")
        wshape = tuple(weight.shape)
        nd = weight.ndim - 2
        if nd == 1 and strides == (1, 1) and dilations == (1, 1) and pads == (0, 0, 0, 0):
            strides, dilations, pads = (1,), (1,), (0, 0)
        self._set_geometry("Conv2d", wshape, strides, pads, dilations, group)
        self.p.OC = wshape[0]
        self.p.C = wshape[1] * self.p.group
        if self.p.OC % self.p.group:
            raise ArgumentError(f"Conv2d: output channels {self.p.OC} not divisible by group {self.p.group}")
        cdef on_act_t a = _on_act("Conv2d", act, act_alpha, act_beta)
        cdef cnp.ndarray w = weight
        cdef cnp.ndarray b = None
        cdef const float *bp = NULL
        if bias is not None:
            bias = _on_f32(bias, "Conv2d: bias")
            if bias.size != self.p.OC or bias.ndim != 1:
                raise ArgumentError(f"Conv2d: bias must have shape [{self.p.OC}], got {list(bias.shape)}")
            b = bias
            bp = _on_fptr(b)
        cdef const float *wp = _on_fptr(w)
        cdef on_status st
        cdef unsigned flags = ON_CONV_BLOCKED if (self.xl != ON_LAYOUT_NCHW or self.yl != ON_LAYOUT_NCHW) else 0
        if flags and (self.one_d or not on_conv2d_plan_layout_ok(&self.p, flags, self.xl, self.yl)):
            raise ArgumentError(f"Conv2d(weight {list(wshape)}, group {self.p.group}): this convolution cannot "
                                f"read {in_layout} and write {out_layout}")
        with nogil:
            st = on_conv2d_create_ex(&self.p, wp, bp, a, flags, &self.conv)
        _on_check(st, f"Conv2d(weight {list(wshape)}, group {self.p.group})")

    def __dealloc__(self):
        if self.conv != NULL:
            on_conv2d_free(self.conv)
            self.conv = NULL

    @property
    def path(self) -> str:
        """Which kernel runs: "depthwise", "1x1", "nchwc" (direct, channel-blocked) or "im2col"."""
        cdef on_conv_path pth = on_conv2d_path(self.conv)
        return {ON_CONV_PATH_DEPTHWISE: "depthwise", ON_CONV_PATH_1X1: "1x1",
                ON_CONV_PATH_NCHWC: "nchwc"}.get(pth, "im2col")

    cdef tuple _bdims(self, str where, tuple xs):
        """(N, H, W) of an input of shape xs in this plan's input layout."""
        if self.xl == ON_LAYOUT_NCHW:
            return self._xdims(where, xs)
        cb = (self.p.C + 7) // 8
        if len(xs) != 5 or xs[1] != cb or xs[4] != 8:
            raise ArgumentError(f"{where}: x must be NCHWc8 [N, {cb}, H, W, 8] for {self.p.C} channels, "
                                f"got shape {list(xs)}")
        return xs[0], xs[2], xs[3]

    def output_shape(self, x_shape) -> tuple:
        """Output shape for an input of shape x_shape (both in the plan's layouts)."""
        n, h, w = self._bdims("Conv2d", tuple(int(d) for d in x_shape))
        cdef size_t oh = 0, ow = 0
        st = on_conv2d_output_size(&self.p, h, w, &oh, &ow)
        if st == ON_ERR_SHAPE:
            pads = [self.p.pad_t, self.p.pad_l, self.p.pad_b, self.p.pad_r]
            raise ArgumentError(f"Conv2d: input {list(x_shape)} is smaller than the (dilated) kernel "
                                f"{[self.p.KH, self.p.KW]} with pads {pads}")
        _on_check(st, "Conv2d")
        if self.yl == ON_LAYOUT_NCHWC8:
            return (n, (self.p.OC + 7) // 8, oh, ow, 8)
        return self._out_shape(n, oh, ow)

    @property
    def can_sum(self) -> bool:
        """Whether run() takes a residual `sum` (direct NCHWc path, no activation)."""
        return on_conv2d_sum_ok(self.conv) != 0

    def run(self, x, out=None, threads=1, sum=None):
        """y = act(conv(x, weight) + bias) (+ sum) for x [N, C, H, W] (or NCHWc8, per the plan's layouts);
        sum: a residual of the output's shape and layout, added in the same pass (plans with can_sum)."""
        x = _on_f32(x, "Conv2d.run: x")
        oshape = self.output_shape(x.shape)
        n, h, w = self._bdims("Conv2d", tuple(x.shape))
        cdef const float *sp = NULL
        cdef cnp.ndarray sa
        if sum is not None:
            if not self.can_sum:
                raise ArgumentError("Conv2d.run: this plan cannot add a residual (activation, or not on the "
                                    "direct NCHWc path)")
            sum = _on_f32(sum, "Conv2d.run: sum")
            if tuple(sum.shape) != tuple(oshape):
                raise ArgumentError(f"Conv2d.run: sum has shape {list(sum.shape)}, the output {list(oshape)}")
            sa = sum
            sp = _on_fptr(sa)
        cdef cnp.ndarray xa = x
        cdef cnp.ndarray ya = _on_out(out, oshape, "Conv2d.run", (x,))
        cdef int nt = _on_threads(threads, "Conv2d.run")
        cdef size_t N = n, H = h, W = w
        cdef const float *xp = _on_fptr(xa)
        cdef float *yp = _on_fptr(ya)
        cdef on_status st
        with nogil:
            st = on_conv2d_run_fused(self.conv, N, H, W, xp, self.xl, yp, self.yl, sp, nt)
        _on_check(st, "Conv2d.run")
        return ya


cdef class ConvTranspose2d(_ConvBase):
    """A transposed-convolution plan (NCHW float32): GEMM into columns, then col2im.

    weight [C, OC/group, KH, KW] (ONNX layout; 3-D for 1-D); pads = (top, left, bottom, right);
    output_padding = (h, w). Explicit pads only (the caller resolves auto_pad / output_shape).
    """

    cdef on_conv_transpose2d *conv

    def __cinit__(self):
        self.conv = NULL

    def __init__(self, weight, bias=None, *, strides=(1, 1), pads=(0, 0, 0, 0), output_padding=(0, 0),
                 dilations=(1, 1), group=1):
        weight = _on_f32(weight, "ConvTranspose2d: weight")
        wshape = tuple(weight.shape)
        nd = weight.ndim - 2
        if nd == 1 and strides == (1, 1) and dilations == (1, 1) and pads == (0, 0, 0, 0):
            strides, dilations, pads = (1,), (1,), (0, 0)
        if nd == 1 and output_padding == (0, 0):
            output_padding = (0,)
        self._set_geometry("ConvTranspose2d", wshape, strides, pads, dilations, group)
        op = _on_ints(output_padding, nd, "output_padding", "ConvTranspose2d", 0)
        if nd == 1:
            op = (0,) + op
        self.p.out_pad_h, self.p.out_pad_w = op
        self.p.C = wshape[0]
        self.p.OC = wshape[1] * self.p.group
        if self.p.C % self.p.group:
            raise ArgumentError(f"ConvTranspose2d: input channels {self.p.C} not divisible by group "
                                f"{self.p.group}")
        cdef cnp.ndarray w = weight
        cdef cnp.ndarray b = None
        cdef const float *bp = NULL
        if bias is not None:
            bias = _on_f32(bias, "ConvTranspose2d: bias")
            if bias.size != self.p.OC or bias.ndim != 1:
                raise ArgumentError(f"ConvTranspose2d: bias must have shape [{self.p.OC}], got {list(bias.shape)}")
            b = bias
            bp = _on_fptr(b)
        cdef const float *wp = _on_fptr(w)
        cdef on_status st
        with nogil:
            st = on_conv_transpose2d_create(&self.p, wp, bp, &self.conv)
        _on_check(st, f"ConvTranspose2d(weight {list(wshape)}, group {self.p.group})")

    def __dealloc__(self):
        if self.conv != NULL:
            on_conv_transpose2d_free(self.conv)
            self.conv = NULL

    def output_shape(self, x_shape) -> tuple:
        """Output shape for an input of shape x_shape."""
        n, h, w = self._xdims("ConvTranspose2d", tuple(int(d) for d in x_shape))
        cdef size_t oh = 0, ow = 0
        st = on_conv_transpose2d_output_size(&self.p, h, w, &oh, &ow)
        if st != ON_OK:
            raise ArgumentError(f"ConvTranspose2d: no valid output for input {list(x_shape)} (pads "
                                f"{[self.p.pad_t, self.p.pad_l, self.p.pad_b, self.p.pad_r]}, output_padding "
                                f"{[self.p.out_pad_h, self.p.out_pad_w]} must be < stride or dilation)")
        return self._out_shape(n, oh, ow)

    def run(self, x, out=None, threads=1):
        """y = conv_transpose(x, weight) + bias for x [N, C, H, W]."""
        x = _on_f32(x, "ConvTranspose2d.run: x")
        oshape = self.output_shape(x.shape)
        n, h, w = self._xdims("ConvTranspose2d", tuple(x.shape))
        cdef cnp.ndarray xa = x
        cdef cnp.ndarray ya = _on_out(out, oshape, "ConvTranspose2d.run", (x,))
        cdef int nt = _on_threads(threads, "ConvTranspose2d.run")
        cdef size_t N = n, H = h, W = w
        cdef const float *xp = _on_fptr(xa)
        cdef float *yp = _on_fptr(ya)
        cdef on_status st
        with nogil:
            st = on_conv_transpose2d_run(self.conv, N, H, W, xp, yp, nt)
        _on_check(st, "ConvTranspose2d.run")
        return ya
