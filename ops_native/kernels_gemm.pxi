# (Over 500 lines: the argument helpers every other .pxi reuses live here with the GEMM bindings.)
# Bindings of the GEMM core, ISA dispatch, the thread pool and the shared argument helpers (on_common.h,
# on_gemm.h). Included first into ops_native/_core.pyx; kernels_conv.pxi builds on it.
#
# Every call validates its numpy arguments here (messages name the argument, expected vs actual
# shape/dtype), then runs the C kernel without the GIL. C status codes become exceptions in _on_check
# only. Module-level names of this file are public API (isa, gemm, matmul, PackedB, ...);
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
        ON_ACT_SILU
        ON_ACT_GELU
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
            "hardswish": ON_ACT_HARDSWISH, "sigmoid": ON_ACT_SIGMOID, "silu": ON_ACT_SILU,
            "gelu": ON_ACT_GELU}


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
    "hardswish" | "sigmoid" | "silu" | "gelu". out: optional C-contiguous float32 [M, N]. Returns C.
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

