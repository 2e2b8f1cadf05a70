# Bindings of the 8-bit quantisation kernels (on_quant.h). Included into ops_native/_core.pyx after
# kernels_ops.pxi, whose helpers (_ops_check, _ops_ptr) they share. The callers (ops_native/ops/quant.py)
# hand over arrays of the right dtype and layout; these check it, since a wrong one would be read as bytes.

from libc.stdint cimport int8_t, int16_t, int32_t, uint8_t

cdef extern from "on_quant.h" nogil:
    ctypedef enum on_qtype:
        ON_Q_U8
        ON_Q_S8
        ON_Q_S32
    int on_quantize_f32(const float *x, void *y, on_qtype yt, size_t outer, size_t c, size_t inner,
                        const float *scale, const int32_t *zp, int nthreads)
    int on_dequantize_f32(const void *x, on_qtype xt, float *y, size_t outer, size_t c, size_t inner,
                          const float *scale, const int32_t *zp, int nthreads)
    void on_dynamic_qparams_f32(const float *x, size_t n, float *scale, int32_t *zp, int nthreads)
    int on_quantize_u8_pt(const float *x, uint8_t *y, size_t n, float scale, int32_t zp, int nthreads)
    size_t on_qgemm_packed_size(size_t kk, size_t n)
    int on_qgemm_pack_b_q8(const void *b, on_qtype bt, size_t kk, size_t n, size_t sk, size_t sj, const int32_t *zp,
                           size_t zp_stride, int16_t *bp, int nthreads)
    int on_qgemm_s16_packed(size_t m, size_t n, size_t kk, const int16_t *a, size_t lda, const int16_t *bp,
                            const int8_t *bp8, int32_t *c_i32, float *out_f32, size_t ldc, const float *scale,
                            size_t scale_stride, const float *bias, int accumulate, int nthreads)
    int on_qgemm_narrow_s8(const int16_t *bp, size_t count, int8_t *out)
    int on_qconv_pack_im2col_q8(const void *x, on_qtype xt, size_t c, size_t h, size_t w, const size_t geom[10],
                                int32_t zp, uint8_t *cols, int16_t *bp, int nthreads)
    int on_quantize_centered_s16(const float *x, int16_t *y, size_t n, float scale, int32_t zp, int nthreads)
    int on_q8_to_s16(const void *x, on_qtype xt, size_t rows, size_t cols, size_t ldx, const int32_t *zp,
                     size_t zp_stride, int16_t *y, size_t ldy)
    int on_qgemm_s16(size_t m, size_t n, size_t kk, const int16_t *a, size_t lda, const int16_t *bt, size_t ldb,
                     int32_t *c_i32, float *out_f32, size_t ldc, const float *scale, size_t scale_stride,
                     const float *bias, int accumulate, int nthreads)
    int on_lstm_gates_f32(float *g, const float *bias, const float *peep, float *c, float *h, size_t ldh,
                          size_t batch, size_t hidden, float clip, int input_forget)

QGEMM_MAX_K = 33025

_I16 = _np.dtype(_np.int16)
_I32 = _np.dtype(_np.int32)
_U8 = _np.dtype(_np.uint8)
_S8 = _np.dtype(_np.int8)


cdef on_qtype _qtype(cnp.ndarray a, str what) except *:
    if a.dtype == _U8:
        return ON_Q_U8
    if a.dtype == _S8:
        return ON_Q_S8
    if a.dtype == _I32:
        return ON_Q_S32
    raise ValueError(f"{what}: {a.dtype} is not uint8, int8 or int32")


cdef void _need(cnp.ndarray a, object dtype, str what) except *:
    if a.dtype != dtype or not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{what}: expected a C-contiguous {_np.dtype(dtype).name} array, got {a.dtype}")


cdef size_t _rows_ld(cnp.ndarray a, str what) except? 0:
    """Row stride (elements) of a 2-D array whose rows are contiguous."""
    if a.ndim != 2 or a.strides[1] != a.itemsize or a.strides[0] % a.itemsize or a.strides[0] < 0:
        raise ValueError(f"{what}: expected a 2-D array with contiguous rows")
    return <size_t>(a.strides[0] // a.itemsize)


def quant_quantize(x, cnp.ndarray y, size_t outer, size_t c, size_t inner, scale, zp, int threads=1):
    """y (uint8 / int8, preallocated) = saturate(round(x / scale[ch]) + zp[ch]) over x viewed [outer, c, inner]."""
    cdef cnp.ndarray xa = _ops_c32(x)
    cdef cnp.ndarray sa = _ops_c32(scale)
    cdef cnp.ndarray za = _np.ascontiguousarray(zp, dtype=_np.int32)
    if not cnp.PyArray_IS_C_CONTIGUOUS(y) or xa.size != y.size or xa.size != outer * c * inner or \
            sa.size != c or za.size != c:
        raise ValueError("QuantizeLinear: sizes do not agree")
    cdef on_qtype t = _qtype(y, "QuantizeLinear output")
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef void *py = _ops_ptr(y)
    cdef const float *ps = <const float *>_ops_ptr(sa)
    cdef const int32_t *pz = <const int32_t *>_ops_ptr(za)
    cdef int st
    with nogil:
        st = on_quantize_f32(px, py, t, outer, c, inner, ps, pz, threads)
    _ops_check(st, "QuantizeLinear")
    return y


def quant_dequantize(cnp.ndarray x, cnp.ndarray y, size_t outer, size_t c, size_t inner, scale, zp, int threads=1):
    """y (float32, preallocated) = (x - zp[ch]) * scale[ch] over x (uint8 / int8 / int32) viewed [outer, c, inner]."""
    cdef cnp.ndarray sa = _ops_c32(scale)
    cdef cnp.ndarray za = _np.ascontiguousarray(zp, dtype=_np.int32)
    _need(y, _F32, "DequantizeLinear output")
    if not cnp.PyArray_IS_C_CONTIGUOUS(x) or x.size != y.size or x.size != outer * c * inner or \
            sa.size != c or za.size != c:
        raise ValueError("DequantizeLinear: sizes do not agree")
    cdef on_qtype t = _qtype(x, "DequantizeLinear input")
    cdef const void *px = _ops_ptr(x)
    cdef float *py = <float *>_ops_ptr(y)
    cdef const float *ps = <const float *>_ops_ptr(sa)
    cdef const int32_t *pz = <const int32_t *>_ops_ptr(za)
    cdef int st
    with nogil:
        st = on_dequantize_f32(px, t, py, outer, c, inner, ps, pz, threads)
    _ops_check(st, "DequantizeLinear")
    return y


def quant_dynamic_params(x, int threads=1):
    """(scale, zero_point) of ONNX DynamicQuantizeLinear for float32 x (ONNX Runtime's arithmetic)."""
    cdef cnp.ndarray xa = _ops_c32(x)
    cdef float s = 1.0
    cdef int32_t z = 0
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef size_t n = xa.size
    with nogil:
        on_dynamic_qparams_f32(px, n, &s, &z, threads)
    return s, z


def quant_quantize_u8(x, float scale, int32_t zp, cnp.ndarray y, int threads=1):
    """y (uint8, x's size, preallocated) = saturate(round(x / scale) + zp): per-tensor QuantizeLinear to uint8."""
    cdef cnp.ndarray xa = _ops_c32(x)
    _need(y, _U8, "quantize (uint8)")
    if y.size != xa.size:
        raise ValueError("quantize (uint8): sizes do not agree")
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef uint8_t *py = <uint8_t *>_ops_ptr(y)
    cdef size_t n = xa.size
    cdef int st
    with nogil:
        st = on_quantize_u8_pt(px, py, n, scale, zp, threads)
    _ops_check(st, "quantize (uint8)")
    return y


def quant_packed_size(size_t kk, size_t n):
    """int16 elements of the packed form of a [kk, n] B (on_qgemm_pack_b_q8)."""
    return on_qgemm_packed_size(kk, n)


def quant_pack_b(cnp.ndarray b, zp, bint transposed=False, int threads=1):
    """B (uint8 / int8, 2-D with one unit stride: [K, N], or B^T [N, K] when transposed) minus its zero point
    (one, or one per column of B) packed into the integer GEMM's panels (1-D int16)."""
    if b.ndim != 2:
        raise ValueError("quant_pack_b: B must be 2-D")
    cdef size_t kk = b.shape[1] if transposed else b.shape[0]
    cdef size_t n = b.shape[0] if transposed else b.shape[1]
    cdef size_t ld = _rows_ld(b, "B")
    cdef size_t sk = 1 if transposed else ld, sj = ld if transposed else 1
    cdef cnp.ndarray za = _np.ascontiguousarray(zp, dtype=_np.int32).reshape(-1)
    if za.size != 1 and <size_t>za.size != n:
        raise ValueError(f"quant_pack_b: {za.size} zero points for {n} columns")
    cdef size_t zs = 0 if za.size == 1 else 1
    cdef on_qtype t = _qtype(b, "quant_pack_b")
    if t == ON_Q_S32:
        raise ValueError("quant_pack_b: B must be uint8 / int8")
    cdef cnp.ndarray out = _np.empty(on_qgemm_packed_size(kk, n), _I16)
    cdef const void *pb = _ops_ptr(b)
    cdef const int32_t *pz = <const int32_t *>_ops_ptr(za)
    cdef int16_t *po = <int16_t *>_ops_ptr(out)
    cdef int st
    with nogil:
        st = on_qgemm_pack_b_q8(pb, t, kk, n, sk, sj, pz, zs, po, threads)
    _ops_check(st, "quant_pack_b")
    return out


def quant_conv_pack(cnp.ndarray x, geom, int32_t zp, cnp.ndarray out, cnp.ndarray cols, int threads=1):
    """The im2col of x [c, h, w] (uint8 / int8, C-contiguous) minus zp, packed as the GEMM's B into out (int16 of
    quant_packed_size(c * kh * kw, oh * ow)); geom = (kh, kw, sh, sw, dh, dw, pad_top, pad_left, oh, ow); cols:
    uint8 scratch of c * kh * kw * oh * ow bytes."""
    cdef size_t g[10]
    if x.ndim != 3 or not cnp.PyArray_IS_C_CONTIGUOUS(x) or len(geom) != 10:
        raise ValueError("quant_conv_pack: x must be a C-contiguous [c, h, w] and geom 10 sizes")
    for i in range(10):
        g[i] = geom[i]
    cdef size_t c = x.shape[0], h = x.shape[1], w = x.shape[2]
    _need(out, _I16, "quant_conv_pack output")
    if <size_t>out.size != on_qgemm_packed_size(c * g[0] * g[1], g[8] * g[9]):
        raise ValueError("quant_conv_pack: output size does not agree")
    _need(cols, _U8, "quant_conv_pack scratch")
    if <size_t>cols.size < c * g[0] * g[1] * g[8] * g[9]:
        raise ValueError("quant_conv_pack: scratch too small")
    cdef on_qtype t = _qtype(x, "quant_conv_pack")
    cdef const void *px = _ops_ptr(x)
    cdef int16_t *po = <int16_t *>_ops_ptr(out)
    cdef uint8_t *pc = <uint8_t *>_ops_ptr(cols)
    cdef int st
    with nogil:
        st = on_qconv_pack_im2col_q8(px, t, c, h, w, g, zp, pc, po, threads)
    _ops_check(st, "quant_conv_pack")
    return out


def quant_narrow_s8(cnp.ndarray bp):
    """The packed B (int16, quant_pack_b) as int8 panels, or None when a value does not fit int8."""
    _need(bp, _I16, "quant_narrow_s8")
    cdef cnp.ndarray out = _np.empty(bp.size, _S8)
    cdef const int16_t *pb = <const int16_t *>_ops_ptr(bp)
    cdef int8_t *po = <int8_t *>_ops_ptr(out)
    cdef size_t n = bp.size
    cdef int st
    with nogil:
        st = on_qgemm_narrow_s8(pb, n, po)
    return out if st == 0 else None


def quant_gemm_packed(cnp.ndarray a, cnp.ndarray bp, size_t kk, cnp.ndarray out, scale=None, bias=None,
                      bint accumulate=False, int threads=1):
    """quant_gemm with B packed by quant_pack_b / quant_conv_pack (int16) or narrowed by quant_narrow_s8 (int8);
    n = out's columns."""
    cdef size_t lda = _rows_ld(a, "A"), ldc = _rows_ld(out, "out")
    if a.dtype != _I16 or a.shape[1] < kk:
        raise ValueError("quant_gemm_packed: A must be int16 with at least K columns")
    cdef size_t m = a.shape[0], n = out.shape[1]
    if bp.dtype != _I16 and bp.dtype != _S8 or not cnp.PyArray_IS_C_CONTIGUOUS(bp):
        raise ValueError(f"quant_gemm_packed: packed B must be a contiguous int16 or int8 array, got {bp.dtype}")
    if <size_t>out.shape[0] != m or <size_t>bp.size != on_qgemm_packed_size(kk, n):
        raise ValueError(f"quant_gemm_packed: out {(<object>out).shape} / packed B {bp.size} do not agree with "
                         f"A {(<object>a).shape}, K {kk}")
    cdef cnp.ndarray sa = None, ba = None
    cdef const float *ps = NULL
    cdef const float *pb = NULL
    cdef size_t sstride = 0
    cdef int32_t *pci = NULL
    cdef float *pcf = NULL
    if out.dtype == _I32:
        pci = <int32_t *>_ops_ptr(out)
    elif out.dtype == _F32:
        if scale is None:
            raise ValueError("quant_gemm_packed: a float32 output needs a scale")
        sa = _ops_c32(scale)
        if sa.size != 1 and <size_t>sa.size != n:
            raise ValueError(f"quant_gemm_packed: {sa.size} scales for {n} columns")
        sstride = 0 if sa.size == 1 else 1
        ps = <const float *>_ops_ptr(sa)
        if bias is not None:
            ba = _ops_c32(bias)
            if <size_t>ba.size != n:
                raise ValueError(f"quant_gemm_packed: bias of {ba.size} for {n} columns")
            pb = <const float *>_ops_ptr(ba)
        pcf = <float *>_ops_ptr(out)
    else:
        raise ValueError(f"quant_gemm_packed: output {out.dtype}")
    cdef const int16_t *pa = <const int16_t *>_ops_ptr(a)
    cdef const int16_t *pbp = NULL
    cdef const int8_t *pbp8 = NULL
    if bp.dtype == _I16:
        pbp = <const int16_t *>_ops_ptr(bp)
    else:
        pbp8 = <const int8_t *>_ops_ptr(bp)
    cdef int st
    with nogil:
        st = on_qgemm_s16_packed(m, n, kk, pa, lda, pbp, pbp8, pci, pcf, ldc, ps, sstride, pb, accumulate, threads)
    _ops_check(st, "integer GEMM (packed)")
    return out


def quant_centered_s16(x, float scale, int32_t zp, cnp.ndarray y, int threads=1):
    """y (int16, x's size) = quantize_u8(x; scale, zp) - zp: the integer GEMM's operand."""
    cdef cnp.ndarray xa = _ops_c32(x)
    _need(y, _I16, "quantize (int16)")
    if y.size != xa.size:
        raise ValueError("quantize (int16): sizes do not agree")
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef int16_t *py = <int16_t *>_ops_ptr(y)
    cdef size_t n = xa.size
    cdef int st
    with nogil:
        st = on_quantize_centered_s16(px, py, n, scale, zp, threads)
    _ops_check(st, "quantize (int16)")
    return y


def quant_q8_to_s16(cnp.ndarray x, zp, size_t zp_stride, cnp.ndarray y):
    """y[r, :cols] = x[r] - zp[r * zp_stride] (int16), y[r, cols:] = 0: x 2-D uint8 / int8, y 2-D int16."""
    cdef cnp.ndarray za = _np.ascontiguousarray(zp, dtype=_np.int32)
    cdef size_t ldx = _rows_ld(x, "x"), ldy = _rows_ld(y, "y")
    if y.dtype != _I16 or y.shape[0] != x.shape[0] or y.shape[1] < x.shape[1]:
        raise ValueError("quant_q8_to_s16: y must be int16 [rows, >= cols]")
    if x.shape[0] and (x.shape[0] - 1) * zp_stride >= <size_t>za.size:
        raise ValueError("quant_q8_to_s16: zero points too short")
    cdef on_qtype t = _qtype(x, "quant_q8_to_s16")
    cdef size_t rows = x.shape[0], cols = x.shape[1]
    cdef const void *px = _ops_ptr(x)
    cdef const int32_t *pz = <const int32_t *>_ops_ptr(za)
    cdef int16_t *py = <int16_t *>_ops_ptr(y)
    cdef int st
    with nogil:
        st = on_q8_to_s16(px, t, rows, cols, ldx, pz, zp_stride, py, ldy)
    _ops_check(st, "quant_q8_to_s16")
    return y


def quant_gemm(cnp.ndarray a, cnp.ndarray bt, size_t kk, cnp.ndarray out, scale=None, bias=None,
               bint accumulate=False, int threads=1):
    """Integer GEMM of int16 a [m, >= kk] and bt [n, >= kk] (B transposed), K = kk. out int32 [m, n]: the exact
    sums; out float32 [m, n]: (out if accumulate) + sum * scale[j] (scale of size 1 or n) (+ bias[j])."""
    cdef size_t lda = _rows_ld(a, "A"), ldb = _rows_ld(bt, "B"), ldc = _rows_ld(out, "out")
    if a.dtype != _I16 or bt.dtype != _I16 or a.shape[1] < kk or bt.shape[1] < kk:
        raise ValueError("quant_gemm: A and B must be int16 with at least K columns")
    cdef size_t m = a.shape[0], n = bt.shape[0]
    if <size_t>out.shape[0] != m or <size_t>out.shape[1] != n:
        raise ValueError(f"quant_gemm: out {(<object>out).shape} is not [{m}, {n}]")
    cdef cnp.ndarray sa = None, ba = None
    cdef const float *ps = NULL
    cdef const float *pb = NULL
    cdef size_t sstride = 0
    cdef int32_t *pci = NULL
    cdef float *pcf = NULL
    if out.dtype == _I32:
        pci = <int32_t *>_ops_ptr(out)
    elif out.dtype == _F32:
        if scale is None:
            raise ValueError("quant_gemm: a float32 output needs a scale")
        sa = _ops_c32(scale)
        if sa.size != 1 and <size_t>sa.size != n:
            raise ValueError(f"quant_gemm: {sa.size} scales for {n} columns")
        sstride = 0 if sa.size == 1 else 1
        ps = <const float *>_ops_ptr(sa)
        if bias is not None:
            ba = _ops_c32(bias)
            if <size_t>ba.size != n:
                raise ValueError(f"quant_gemm: bias of {ba.size} for {n} columns")
            pb = <const float *>_ops_ptr(ba)
        pcf = <float *>_ops_ptr(out)
    else:
        raise ValueError(f"quant_gemm: output {out.dtype}")
    cdef const int16_t *pa = <const int16_t *>_ops_ptr(a)
    cdef const int16_t *pbt = <const int16_t *>_ops_ptr(bt)
    cdef int st
    with nogil:
        st = on_qgemm_s16(m, n, kk, pa, lda, pbt, ldb, pci, pcf, ldc, ps, sstride, pb, accumulate, threads)
    _ops_check(st, "integer GEMM")
    return out


def quant_lstm_gates(cnp.ndarray g, bias, peep, cnp.ndarray c, cnp.ndarray h, float clip, bint input_forget):
    """LSTM gates (sigmoid, tanh, tanh) on g [batch, 4H] (i, o, f, c; updated), c [batch, H] in place, h [batch, H]
    (rows may be strided: one direction of Y) written."""
    _need(g, _F32, "LSTM gates")
    _need(c, _F32, "LSTM cell")
    cdef size_t ldh = _rows_ld(h, "LSTM h")
    cdef size_t batch = c.shape[0], hidden = c.shape[1]
    if h.dtype != _F32 or g.size != batch * 4 * hidden or h.shape[0] != batch or h.shape[1] != hidden:
        raise ValueError("LSTM gates: shapes do not agree")
    cdef cnp.ndarray ba = None, pa = None
    cdef const float *pb = NULL
    cdef const float *pp = NULL
    if bias is not None:
        ba = _ops_c32(bias)
        pb = <const float *>_ops_ptr(ba)
    if peep is not None:
        pa = _ops_c32(peep)
        pp = <const float *>_ops_ptr(pa)
    cdef float *pg = <float *>_ops_ptr(g)
    cdef float *pc = <float *>_ops_ptr(c)
    cdef float *ph = <float *>_ops_ptr(h)
    cdef int st
    with nogil:
        st = on_lstm_gates_f32(pg, pb, pp, pc, ph, ldh, batch, hidden, clip, input_forget)
    _ops_check(st, "LSTM gates")
    return h
