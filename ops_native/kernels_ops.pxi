# Bindings of the non-GEMM kernels (on_ops.h). Included into ops_native/_core.pyx.
# (Over 500 lines: one short binding per kernel family, all following the same checked-view pattern.)
#
# Every function takes numpy arrays, derives the C view (pointer, element strides; numpy's zero strides
# describe broadcasting) and calls the kernel without the GIL. Status codes become exceptions in
# _ops_check only. Names here are prefixed (ops_ / _ops_) because the module shares one namespace with
# the GEMM bindings.

cimport numpy as cnp
from libc.stdint cimport int64_t, uint8_t

import numpy as _np

cnp.import_array()

cdef extern from "on_ops.h" nogil:
    const char *_ops_status_str "on_status_str"(int s)
    int on_binary_f32(int op, int ndim, const int64_t *shape, const float *a, const int64_t *a_strides,
                      const float *b, const int64_t *b_strides, float *out, int nthreads)
    int on_compare_f32(int op, int ndim, const int64_t *shape, const float *a, const int64_t *a_strides,
                       const float *b, const int64_t *b_strides, uint8_t *out, int nthreads)
    int on_where_f32(int ndim, const int64_t *shape, const uint8_t *cond, const int64_t *c_strides,
                     const float *x, const int64_t *x_strides, const float *y, const int64_t *y_strides,
                     float *out, int nthreads)
    int on_unary_f32(int op, const float *x, float *y, size_t n, float alpha, float beta, int nthreads)
    int on_softmax_f32(const float *x, float *y, size_t rows, size_t cols, int log, int nthreads)
    int on_layernorm_f32(const float *x, const float *scale, const float *bias, float *y, size_t rows,
                         size_t cols, float eps, int nthreads)
    int on_channel_affine_f32(const float *x, const float *scale, const float *shift, float *y, size_t n,
                              size_t c, size_t inner, int nthreads)
    int on_channel_affine_nchwc8_f32(const float *x, const float *scale, const float *shift, float *y, size_t n,
                                     size_t cblocks, size_t pixels, int nthreads)
    int on_channel_gather_nchwc8_f32(const float *x, size_t cin, const int64_t *src, size_t cout, float *y,
                                     size_t n, size_t pixels, int nthreads)
    ctypedef struct on_pool2d_params:
        int64_t kh, kw, sh, sw, dh, dw, pt, pl
        int count_include_pad
    int on_maxpool2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw, int64_t oh,
                         int64_t ow, const on_pool2d_params *p, int nthreads)
    int on_avgpool2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw, int64_t oh,
                         int64_t ow, int64_t pb, int64_t pr, const on_pool2d_params *p, int nthreads)
    int on_global_pool_f32(const float *x, float *y, size_t rows, size_t cols, int is_max, int nthreads)
    int on_pool2d_nchwc8_f32(int is_max, const float *x, float *y, size_t blocks, int64_t ih, int64_t iw,
                             int64_t oh, int64_t ow, int64_t pb, int64_t pr, const on_pool2d_params *p,
                             int nthreads)
    int on_reduce_f32(int op, const float *x, float *y, size_t outer, size_t r, size_t inner, int nthreads)
    int on_resize_nearest2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw, int64_t oh,
                                int64_t ow, const int64_t *iy, const int64_t *ix, int nthreads)
    int on_resize_linear2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw, int64_t oh,
                               int64_t ow, const int64_t *y0, const int64_t *y1, const float *wy,
                               const int64_t *x0, const int64_t *x1, const float *wx, int nthreads)
    int on_copy_strided(size_t esize, int ndim, const int64_t *shape, const void *src,
                        const int64_t *src_strides, void *dst, const int64_t *dst_strides, int nthreads)
    int on_concat(size_t esize, int n, const void *const *srcs, const int64_t *lens, int64_t outer,
                  int64_t inner, void *dst, int nthreads)
    int on_gather(size_t esize, const void *src, int64_t outer, int64_t axis_len, int64_t inner,
                  const int64_t *idx, int64_t n_idx, void *dst, int nthreads)

cdef enum:
    _OPS_MAX_DIMS = 8

# enum values of on_ops.h, exported for ops_native.ops
OPS_BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Pow": 4, "Min": 5, "Max": 6}
OPS_COMPARE = {"Equal": 0, "Less": 1, "Greater": 2, "LessOrEqual": 3, "GreaterOrEqual": 4}
OPS_UNARY = {
    "Relu": 0, "LeakyRelu": 1, "Clip": 2, "Sigmoid": 3, "HardSigmoid": 4, "HardSwish": 5, "Tanh": 6,
    "Gelu": 7, "GeluTanh": 8, "Exp": 9, "Log": 10, "Sqrt": 11, "Neg": 12, "Abs": 13, "Erf": 14,
    "Reciprocal": 15, "Floor": 16, "Ceil": 17, "Elu": 18, "Softplus": 19, "Affine": 20,
}
OPS_REDUCE = {"ReduceSum": 0, "ReduceMean": 1, "ReduceMax": 2, "ReduceMin": 3, "ReduceProd": 4,
              "ReduceSumSquare": 5}

_F32 = _np.dtype(_np.float32)


cdef inline int _ops_check(int status, str what) except -1:
    if status != 0:
        raise ValueError(f"{what}: {_ops_status_str(status).decode()} (status {status})")
    return 0


cdef inline void *_ops_ptr(cnp.ndarray a):
    return cnp.PyArray_DATA(a)


cdef int _ops_fill_view(cnp.ndarray a, int ndim, int64_t *shape, int64_t *strides) except -1:
    """Shape and element strides of `a` (ndim <= 8, strides multiples of the item size)."""
    cdef int i
    cdef Py_ssize_t es = a.itemsize
    for i in range(ndim):
        if shape != NULL:
            shape[i] = a.shape[i]
        if a.strides[i] % es:
            raise ValueError("unaligned strides")
        strides[i] = a.strides[i] // es
    return 0


cdef int _ops_bcast(list arrays, int64_t *shape, int64_t *strides) except -1:
    """numpy broadcasting of len(arrays) <= 3 arrays: writes the result shape (rank returned) and each array's
    element strides (0 on broadcast axes) into strides[k * _OPS_MAX_DIMS + axis]."""
    cdef int ndim = 0, k, i, j, nd, n = len(arrays)
    cdef cnp.ndarray a
    cdef int64_t d, es
    for k in range(n):
        a = arrays[k]
        if a.ndim > ndim:
            ndim = a.ndim
    if ndim > _OPS_MAX_DIMS:
        raise ValueError(f"rank {ndim} > {_OPS_MAX_DIMS}")
    for i in range(ndim):
        shape[i] = 1
    for k in range(n):
        a = arrays[k]
        nd = a.ndim
        for j in range(nd):
            i = ndim - nd + j
            d = a.shape[j]
            if d != 1:
                if shape[i] != 1 and shape[i] != d:
                    raise ValueError(f"shapes {[x.shape for x in arrays]} do not broadcast")
                shape[i] = d
    for k in range(n):
        a = arrays[k]
        nd = a.ndim
        es = a.itemsize
        for i in range(ndim):
            j = i - (ndim - nd)
            if j < 0 or a.shape[j] == 1:
                strides[k * _OPS_MAX_DIMS + i] = 0
            else:
                if a.strides[j] % es:
                    raise ValueError("unaligned strides")
                strides[k * _OPS_MAX_DIMS + i] = a.strides[j] // es
    return ndim


cdef tuple _ops_shape_tuple(int ndim, int64_t *shape):
    return tuple([shape[i] for i in range(ndim)])


def _ops_out(out, shape, dtype):
    """`out` checked to be a C-contiguous array of shape/dtype, or a new one when out is None."""
    if out is None:
        return _np.empty(shape, dtype=dtype)
    if not isinstance(out, _np.ndarray) or out.dtype != dtype or not out.flags.c_contiguous or \
            tuple(out.shape) != tuple(shape):
        raise ValueError(f"out: expected a C-contiguous {_np.dtype(dtype).name} array of shape {tuple(shape)}")
    return out


cdef inline cnp.ndarray _ops_c32(x):
    """x as a C-contiguous float32 ndarray (no copy when it already is one)."""
    if type(x) is _np.ndarray and (<cnp.ndarray>x).dtype is _F32 and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray>x):
        return <cnp.ndarray>x
    return _np.ascontiguousarray(x, dtype=_np.float32)


def _ops_f32(x, str name):
    if not isinstance(x, _np.ndarray) or x.dtype != _F32:
        x = _np.asarray(x, dtype=_np.float32)
    return x


def ops_binary(int op, a, b, int threads=1, out=None, alloc=None):
    """out = a <op> b with numpy broadcasting (float32); op is a value of OPS_BINARY.

    alloc(shape) -> array, when given and out is None, provides the output buffer (the executor's pool).
    """
    cdef cnp.ndarray aa = a if type(a) is _np.ndarray and (<cnp.ndarray>a).dtype is _F32 else _ops_f32(a, "a")
    cdef cnp.ndarray ba = b if type(b) is _np.ndarray and (<cnp.ndarray>b).dtype is _F32 else _ops_f32(b, "b")
    cdef int64_t sh[_OPS_MAX_DIMS]
    cdef int64_t st[3 * _OPS_MAX_DIMS]
    cdef int ndim = _ops_bcast([aa, ba], sh, st)
    shape = _ops_shape_tuple(ndim, sh)
    if out is None and alloc is not None:
        out = alloc(shape)
    cdef cnp.ndarray res = _ops_out(out, shape, _F32)
    cdef const float *pa = <const float *>_ops_ptr(aa)
    cdef const float *pb = <const float *>_ops_ptr(ba)
    cdef float *po = <float *>_ops_ptr(res)
    cdef int rc
    with nogil:
        rc = on_binary_f32(op, ndim, sh, pa, st, pb, st + _OPS_MAX_DIMS, po, threads)
    _ops_check(rc, "binary op")
    return res


def ops_compare(int op, a, b, int threads=1):
    """out = a <cmp> b (bool) with broadcasting; op is a value of OPS_COMPARE."""
    a = _ops_f32(a, "a")
    b = _ops_f32(b, "b")
    shape = _np.broadcast_shapes(a.shape, b.shape)
    cdef int ndim = len(shape)
    if ndim > _OPS_MAX_DIMS:
        raise ValueError(f"compare op: rank {ndim} > {_OPS_MAX_DIMS}")
    cdef cnp.ndarray av = _np.broadcast_to(a, shape)
    cdef cnp.ndarray bv = _np.broadcast_to(b, shape)
    cdef cnp.ndarray out = _np.empty(shape, dtype=_np.bool_)
    cdef int64_t sh[_OPS_MAX_DIMS]
    cdef int64_t sa[_OPS_MAX_DIMS]
    cdef int64_t sb[_OPS_MAX_DIMS]
    _ops_fill_view(av, ndim, sh, sa)
    _ops_fill_view(bv, ndim, NULL, sb)
    cdef const float *pa = <const float *>_ops_ptr(av)
    cdef const float *pb = <const float *>_ops_ptr(bv)
    cdef uint8_t *po = <uint8_t *>_ops_ptr(out)
    cdef int st
    with nogil:
        st = on_compare_f32(op, ndim, sh, pa, sa, pb, sb, po, threads)
    _ops_check(st, "compare op")
    return out


def ops_where(cond, x, y, int threads=1):
    """out = cond ? x : y (float32 x/y, bool cond) with broadcasting."""
    x = _ops_f32(x, "x")
    y = _ops_f32(y, "y")
    cond = _np.asarray(cond, dtype=_np.bool_)
    shape = _np.broadcast_shapes(cond.shape, x.shape, y.shape)
    cdef int ndim = len(shape)
    if ndim > _OPS_MAX_DIMS:
        raise ValueError(f"where: rank {ndim} > {_OPS_MAX_DIMS}")
    cdef cnp.ndarray cv = _np.broadcast_to(cond, shape)
    cdef cnp.ndarray xv = _np.broadcast_to(x, shape)
    cdef cnp.ndarray yv = _np.broadcast_to(y, shape)
    cdef cnp.ndarray out = _np.empty(shape, dtype=_np.float32)
    cdef int64_t sh[_OPS_MAX_DIMS]
    cdef int64_t sc[_OPS_MAX_DIMS]
    cdef int64_t sx[_OPS_MAX_DIMS]
    cdef int64_t sy[_OPS_MAX_DIMS]
    _ops_fill_view(cv, ndim, sh, sc)
    _ops_fill_view(xv, ndim, NULL, sx)
    _ops_fill_view(yv, ndim, NULL, sy)
    cdef const uint8_t *pc = <const uint8_t *>_ops_ptr(cv)
    cdef const float *px = <const float *>_ops_ptr(xv)
    cdef const float *py = <const float *>_ops_ptr(yv)
    cdef float *po = <float *>_ops_ptr(out)
    cdef int st
    with nogil:
        st = on_where_f32(ndim, sh, pc, sc, px, sx, py, sy, po, threads)
    _ops_check(st, "where")
    return out


def ops_unary(int op, x, float alpha=0.0, float beta=0.0, out=None, int threads=1):
    """y = f(x) elementwise (float32); op is a value of OPS_UNARY; out may be x (in place)."""
    cdef cnp.ndarray xa = _ops_c32(x)
    cdef cnp.ndarray ya
    if out is None:
        ya = _np.empty_like(xa)
    else:
        ya = out
        if ya.dtype != _F32 or not ya.flags.c_contiguous or ya.size != xa.size:
            raise ValueError("unary: out must be a contiguous float32 array of x's size")
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef size_t n = xa.size
    cdef int st
    with nogil:
        st = on_unary_f32(op, px, py, n, alpha, beta, threads)
    _ops_check(st, "unary op")
    return ya


def ops_softmax(x, bint log=False, int threads=1, out=None):
    """Softmax (or LogSoftmax) over the last axis of x (float32)."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    cdef cnp.ndarray ya = _ops_out(out, (<object>xa).shape, _F32)
    cdef size_t cols = xa.shape[xa.ndim - 1] if xa.ndim else 1
    cdef size_t rows = xa.size // cols if cols else 0
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_softmax_f32(px, py, rows, cols, log, threads)
    _ops_check(st, "softmax")
    return ya


def ops_layernorm(x, scale, bias, int cols, float eps, int threads=1, out=None):
    """Layer norm of x viewed as [-1, cols] with scale/bias of length cols (bias may be None)."""
    cdef cnp.ndarray xa = _ops_c32(x)
    cdef cnp.ndarray sa = _ops_c32(scale)
    cdef cnp.ndarray ba = None if bias is None else _ops_c32(bias)
    if sa.size != cols or (ba is not None and ba.size != cols):
        raise ValueError(f"layernorm: scale/bias must have {cols} elements")
    cdef cnp.ndarray ya = _ops_out(out, (<object>xa).shape, _F32)
    cdef size_t rows = xa.size // cols if cols else 0
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef const float *ps = <const float *>_ops_ptr(sa)
    cdef const float *pb = NULL if ba is None else <const float *>_ops_ptr(ba)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_layernorm_f32(px, ps, pb, py, rows, cols, eps, threads)
    _ops_check(st, "layernorm")
    return ya


def ops_channel_affine(x, scale, shift, int threads=1, out=None):
    """y[n, c, ...] = x[n, c, ...] * scale[c] + shift[c] (x at least 2-D)."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    cdef cnp.ndarray sa = _np.ascontiguousarray(scale, dtype=_np.float32)
    cdef cnp.ndarray ha = _np.ascontiguousarray(shift, dtype=_np.float32)
    if xa.ndim < 2 or sa.size != xa.shape[1] or ha.size != xa.shape[1]:
        raise ValueError("channel affine: scale/shift must have C elements")
    cdef cnp.ndarray ya = _ops_out(out, (<object>xa).shape, _F32)
    cdef size_t n = xa.shape[0], c = xa.shape[1]
    cdef size_t inner = xa.size // (n * c) if n * c else 0
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef const float *ps = <const float *>_ops_ptr(sa)
    cdef const float *ph = <const float *>_ops_ptr(ha)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_channel_affine_f32(px, ps, ph, py, n, c, inner, threads)
    _ops_check(st, "channel affine")
    return ya


def ops_channel_affine_nchwc8(x, scale, shift, int threads=1, out=None):
    """ops_channel_affine on the NCHWc8 layout: x [N, C/8, H, W, 8], scale / shift [C/8 * 8] (block order)."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    cdef cnp.ndarray sa = _np.ascontiguousarray(scale, dtype=_np.float32).reshape(-1)
    cdef cnp.ndarray ha = _np.ascontiguousarray(shift, dtype=_np.float32).reshape(-1)
    if xa.ndim != 5 or xa.shape[4] != 8 or sa.size != xa.shape[1] * 8 or ha.size != xa.shape[1] * 8:
        raise ValueError(f"channel affine NCHWc8: x must be [N, CB, H, W, 8] and scale / shift CB * 8 long, got "
                         f"{list(x.shape)}, {sa.size}, {ha.size}")
    cdef cnp.ndarray ya = _ops_out(out, (<object>xa).shape, _F32)
    cdef size_t n = xa.shape[0], cb = xa.shape[1], pixels = xa.shape[2] * xa.shape[3]
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef const float *ps = <const float *>_ops_ptr(sa)
    cdef const float *ph = <const float *>_ops_ptr(ha)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_channel_affine_nchwc8_f32(px, ps, ph, py, n, cb, pixels, threads)
    _ops_check(st, "channel affine NCHWc8")
    return ya


def ops_channel_gather_nchwc8(x, int cin, src, int threads=1, out=None):
    """y channel c = x channel src[c] on the NCHWc8 layout: x [N, ceil(cin/8), H, W, 8] -> y [N, ceil(len(src)/8),
    H, W, 8], y's lanes past len(src) zero."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    cdef cnp.ndarray sa = _np.ascontiguousarray(src, dtype=_np.int64).reshape(-1)
    if xa.ndim != 5 or xa.shape[4] != 8 or xa.shape[1] != (cin + 7) // 8:
        raise ValueError(f"channel gather NCHWc8: x must be [N, ceil({cin}/8), H, W, 8], got {list(x.shape)}")
    cdef size_t cout = sa.size
    cdef cnp.ndarray ya = _ops_out(out, (xa.shape[0], (cout + 7) // 8, xa.shape[2], xa.shape[3], 8), _F32)
    cdef size_t n = xa.shape[0], pixels = xa.shape[2] * xa.shape[3]
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef const int64_t *ps = <const int64_t *>_ops_ptr(sa)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_channel_gather_nchwc8_f32(px, cin, ps, cout, py, n, pixels, threads)
    _ops_check(st, "channel gather NCHWc8")
    return ya


def ops_pool2d(x, bint is_max, kernel, strides, dilations, pads, out_hw, bint count_include_pad=False,
               int threads=1, out=None):
    """2-D pooling of x [N, C, H, W]; pads (top, left, bottom, right); out_hw the output (H, W)."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    if xa.ndim != 4:
        raise ValueError(f"pool2d: expected a 4-D input, got {xa.ndim}-D")
    cdef on_pool2d_params p
    p.kh, p.kw = kernel
    p.sh, p.sw = strides
    p.dh, p.dw = dilations
    p.pt, p.pl = pads[0], pads[1]
    p.count_include_pad = count_include_pad
    cdef int64_t pb = pads[2], pr = pads[3]
    cdef int64_t oh = out_hw[0], ow = out_hw[1]
    cdef size_t planes = xa.shape[0] * xa.shape[1]
    cdef int64_t ih = xa.shape[2], iw = xa.shape[3]
    cdef cnp.ndarray ya = _ops_out(out, (xa.shape[0], xa.shape[1], oh, ow), _F32)
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        if is_max:
            st = on_maxpool2d_f32(px, py, planes, ih, iw, oh, ow, &p, threads)
        else:
            st = on_avgpool2d_f32(px, py, planes, ih, iw, oh, ow, pb, pr, &p, threads)
    _ops_check(st, "pool2d")
    return ya


def ops_pool2d_nchwc8(x, bint is_max, kernel, strides, dilations, pads, out_hw, bint count_include_pad=False,
                      int threads=1, out=None):
    """ops_pool2d on the NCHWc8 layout: x [N, C/8, H, W, 8] -> [N, C/8, oh, ow, 8] (on_pool2d_nchwc8_f32)."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    if xa.ndim != 5 or xa.shape[4] != 8:
        raise ValueError(f"pool2d: expected an NCHWc8 input [N, C/8, H, W, 8], got shape {list((<object>xa).shape)}")
    cdef on_pool2d_params p
    p.kh, p.kw = kernel
    p.sh, p.sw = strides
    p.dh, p.dw = dilations
    p.pt, p.pl = pads[0], pads[1]
    p.count_include_pad = count_include_pad
    cdef int64_t pb = pads[2], pr = pads[3]
    cdef int64_t oh = out_hw[0], ow = out_hw[1]
    cdef size_t blocks = xa.shape[0] * xa.shape[1]
    cdef int64_t ih = xa.shape[2], iw = xa.shape[3]
    cdef cnp.ndarray ya = _ops_out(out, (xa.shape[0], xa.shape[1], oh, ow, 8), _F32)
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_pool2d_nchwc8_f32(is_max, px, py, blocks, ih, iw, oh, ow, pb, pr, &p, threads)
    _ops_check(st, "pool2d")
    return ya


def ops_global_pool(x, bint is_max, int threads=1):
    """GlobalAveragePool / GlobalMaxPool of x [N, C, ...] -> [N, C, 1, ...]."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    if xa.ndim < 2:
        raise ValueError("global pool: expected at least 2-D input")
    cdef size_t rows = xa.shape[0] * xa.shape[1]
    cdef size_t cols = xa.size // rows if rows else 0
    cdef cnp.ndarray ya = _np.empty(tuple((<object>xa).shape[:2]) + (1,) * (xa.ndim - 2), dtype=_np.float32)
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_global_pool_f32(px, py, rows, cols, is_max, threads)
    _ops_check(st, "global pool")
    return ya


def ops_reduce(int op, x, int outer, int r, int inner, int threads=1):
    """Reduce contiguous x viewed as [outer, r, inner] over the middle axis -> flat [outer * inner]."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    if xa.size != outer * r * inner:
        raise ValueError("reduce: view does not match the input size")
    cdef cnp.ndarray ya = _np.empty(outer * inner, dtype=_np.float32)
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_reduce_f32(op, px, py, outer, r, inner, threads)
    _ops_check(st, "reduce")
    return ya


def ops_resize_nearest2d(x, iy, ix, int threads=1, out=None):
    """y[..., i, j] = x[..., iy[i], ix[j]] over the last two axes."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    cdef cnp.ndarray ya_ = _np.ascontiguousarray(iy, dtype=_np.int64)
    cdef cnp.ndarray xa_ = _np.ascontiguousarray(ix, dtype=_np.int64)
    cdef int64_t ih = xa.shape[xa.ndim - 2], iw = xa.shape[xa.ndim - 1]
    cdef int64_t oh = ya_.size, ow = xa_.size
    cdef size_t planes = xa.size // (ih * iw) if ih * iw else 0
    cdef cnp.ndarray res = _ops_out(out, tuple((<object>xa).shape[:-2]) + (oh, ow), _F32)
    cdef int st
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef float *po = <float *>_ops_ptr(res)
    cdef const int64_t *piy = <const int64_t *>_ops_ptr(ya_)
    cdef const int64_t *pix = <const int64_t *>_ops_ptr(xa_)
    with nogil:
        st = on_resize_nearest2d_f32(px, po, planes, ih, iw, oh, ow, piy, pix, threads)
    _ops_check(st, "resize nearest")
    return res


def ops_resize_linear2d(x, y0, y1, wy, x0, x1, wx, int threads=1, out=None):
    """Bilinear resize over the last two axes with precomputed source rows/columns and weights."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x, dtype=_np.float32)
    cdef cnp.ndarray a0 = _np.ascontiguousarray(y0, dtype=_np.int64)
    cdef cnp.ndarray a1 = _np.ascontiguousarray(y1, dtype=_np.int64)
    cdef cnp.ndarray aw = _np.ascontiguousarray(wy, dtype=_np.float32)
    cdef cnp.ndarray b0 = _np.ascontiguousarray(x0, dtype=_np.int64)
    cdef cnp.ndarray b1 = _np.ascontiguousarray(x1, dtype=_np.int64)
    cdef cnp.ndarray bw = _np.ascontiguousarray(wx, dtype=_np.float32)
    cdef int64_t ih = xa.shape[xa.ndim - 2], iw = xa.shape[xa.ndim - 1]
    cdef int64_t oh = a0.size, ow = b0.size
    if a1.size != oh or aw.size != oh or b1.size != ow or bw.size != ow:
        raise ValueError("resize linear: index/weight vectors disagree")
    cdef size_t planes = xa.size // (ih * iw) if ih * iw else 0
    cdef cnp.ndarray res = _ops_out(out, tuple((<object>xa).shape[:-2]) + (oh, ow), _F32)
    cdef int st
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef float *po = <float *>_ops_ptr(res)
    cdef const int64_t *p_y0 = <const int64_t *>_ops_ptr(a0)
    cdef const int64_t *p_y1 = <const int64_t *>_ops_ptr(a1)
    cdef const float *p_wy = <const float *>_ops_ptr(aw)
    cdef const int64_t *p_x0 = <const int64_t *>_ops_ptr(b0)
    cdef const int64_t *p_x1 = <const int64_t *>_ops_ptr(b1)
    cdef const float *p_wx = <const float *>_ops_ptr(bw)
    with nogil:
        st = on_resize_linear2d_f32(px, po, planes, ih, iw, oh, ow, p_y0, p_y1, p_wy, p_x0, p_x1, p_wx, threads)
    _ops_check(st, "resize linear")
    return res


def ops_copy(src, dst, int threads=1):
    """dst[...] = src (same shape and item size; any strides, e.g. transposed / sliced / broadcast views).

    Falls back to numpy for ranks above 8 or item sizes other than 1, 2, 4, 8.
    """
    cdef cnp.ndarray s = src
    cdef cnp.ndarray d = dst
    if (<object>s).shape != (<object>d).shape or s.itemsize != d.itemsize:
        raise ValueError(f"copy: shape/itemsize mismatch {src.shape} vs {dst.shape}")
    cdef int ndim = s.ndim
    if ndim > _OPS_MAX_DIMS or s.itemsize not in (1, 2, 4, 8) or s.dtype != d.dtype:
        d[...] = s
        return dst
    cdef int64_t sh[_OPS_MAX_DIMS]
    cdef int64_t ss[_OPS_MAX_DIMS]
    cdef int64_t ds[_OPS_MAX_DIMS]
    _ops_fill_view(s, ndim, sh, ss)
    _ops_fill_view(d, ndim, NULL, ds)
    cdef size_t es = s.itemsize
    cdef const void *ps = _ops_ptr(s)
    cdef void *pd = _ops_ptr(d)
    cdef int st
    with nogil:
        st = on_copy_strided(es, ndim, sh, ps, ss, pd, ds, threads)
    _ops_check(st, "copy")
    return dst


def ops_contiguous(x, int threads=1):
    """A C-contiguous copy of the array view x made by the strided-copy kernel."""
    cdef cnp.ndarray xa = x
    if xa.flags.c_contiguous:
        return xa
    out = _np.empty(x.shape, dtype=x.dtype)
    ops_copy(xa, out, threads)
    return out


def ops_concat(list arrays, int axis, int threads=1, out=None):
    """Concatenate same-dtype arrays along a (non-negative) axis."""
    cdef int n = len(arrays)
    if n == 0:
        raise ValueError("concat: no inputs")
    first = arrays[0]
    dtype = first.dtype
    out_shape = list(first.shape)
    out_shape[axis] = sum(a.shape[axis] for a in arrays)
    for a in arrays:
        if a.dtype != dtype or a.ndim != first.ndim or \
                any(a.shape[i] != first.shape[i] for i in range(first.ndim) if i != axis):
            raise ValueError(f"concat: input shapes {[x.shape for x in arrays]} disagree off axis {axis}")
    cdef cnp.ndarray res = _ops_out(out, out_shape, dtype)
    conts = [_np.ascontiguousarray(a) for a in arrays]
    cdef int64_t outer = 1, inner = 1
    cdef int i
    for i in range(axis):
        outer *= out_shape[i]
    for i in range(axis + 1, len(out_shape)):
        inner *= out_shape[i]
    cdef cnp.ndarray lens = _np.array([a.shape[axis] for a in conts], dtype=_np.int64)
    cdef cnp.ndarray ptrs = _np.array([a.ctypes.data for a in conts], dtype=_np.uintp)
    cdef int st
    cdef size_t es = res.itemsize
    cdef const void *const *psrc = <const void *const *>_ops_ptr(ptrs)
    cdef const int64_t *plen = <const int64_t *>_ops_ptr(lens)
    cdef void *pout = _ops_ptr(res)
    with nogil:
        st = on_concat(es, n, psrc, plen, outer, inner, pout, threads)
    _ops_check(st, "concat")
    return res


def ops_gather(x, indices, int axis, int threads=1):
    """ONNX Gather: x.take(indices, axis) with negative indices wrapped and bounds checked."""
    cdef cnp.ndarray xa = _np.ascontiguousarray(x)
    idx = _np.asarray(indices, dtype=_np.int64)
    cdef int64_t axis_len = xa.shape[axis]
    flat = idx.reshape(-1)
    flat = _np.where(flat < 0, flat + axis_len, flat)
    if flat.size and (flat.min() < 0 or flat.max() >= axis_len):
        raise ValueError(f"gather: index out of range for axis of length {axis_len}")
    cdef cnp.ndarray fi = _np.ascontiguousarray(flat, dtype=_np.int64)
    cdef int64_t outer = 1, inner = 1
    cdef int i
    for i in range(axis):
        outer *= xa.shape[i]
    for i in range(axis + 1, xa.ndim):
        inner *= xa.shape[i]
    xs = (<object>xa).shape
    out_shape = tuple(xs[:axis]) + idx.shape + tuple(xs[axis + 1:])
    cdef cnp.ndarray out = _np.empty(out_shape, dtype=xa.dtype)
    cdef int64_t n_idx = fi.size
    cdef size_t es = xa.itemsize
    cdef int st
    cdef const void *psrc = _ops_ptr(xa)
    cdef const int64_t *pidx = <const int64_t *>_ops_ptr(fi)
    cdef void *pout = _ops_ptr(out)
    with nogil:
        st = on_gather(es, psrc, outer, axis_len, inner, pidx, n_idx, pout, threads)
    _ops_check(st, "gather")
    return out
