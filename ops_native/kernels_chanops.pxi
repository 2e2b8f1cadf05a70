# Bindings of LRN and PRelu (on_chanops.h). Included into ops_native/_core.pyx after kernels_ops.pxi, whose
# helpers (_ops_c32, _ops_out, _ops_check, _ops_fill_view) they share.

cdef extern from "on_chanops.h" nogil:
    int on_lrn_f32(const float *x, float *y, size_t n, size_t c, size_t inner, int64_t size, float alpha,
                   float beta, float bias, int nthreads)
    int on_prelu_f32(int ndim, const int64_t *shape, const float *x, const float *slope,
                     const int64_t *slope_strides, float *y, int nthreads)


def ops_lrn(x, int64_t size, float alpha, float beta, float bias, int threads=1, out=None):
    """ONNX LRN of a float32 [N, C, ...] tensor (window of `size` channels, sliding sum)."""
    cdef cnp.ndarray xa = _ops_c32(x)
    if xa.ndim < 2:
        raise ValueError(f"LRN: expected [N, C, ...], got shape {x.shape}")
    cdef cnp.ndarray ya = _ops_out(out, (<object>xa).shape, _F32)
    cdef size_t n = xa.shape[0], c = xa.shape[1]
    cdef size_t inner = xa.size // (n * c) if n * c else 0
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_lrn_f32(px, py, n, c, inner, size, alpha, beta, bias, threads)
    _ops_check(st, "LRN")
    return ya


def ops_prelu(x, slope, int threads=1, out=None):
    """y = x >= 0 ? x : slope * x (float32), slope broadcast to x's shape (ONNX unidirectional)."""
    cdef cnp.ndarray xa = _ops_c32(x)
    cdef cnp.ndarray sa = _ops_c32(slope)
    cdef int ndim = xa.ndim, snd = sa.ndim, i, j
    if ndim > _OPS_MAX_DIMS or snd > ndim:
        raise ValueError(f"PRelu: slope {slope.shape} does not broadcast to x {x.shape} (rank <= {_OPS_MAX_DIMS})")
    cdef int64_t sh[_OPS_MAX_DIMS]
    cdef int64_t ss[_OPS_MAX_DIMS]
    cdef int64_t step = 1, d
    # the slope's element strides against x's axes (right-aligned; 0 where it broadcasts), without the cost
    # of building a numpy broadcast view on every call
    for i in range(ndim - 1, -1, -1):
        sh[i] = cnp.PyArray_DIMS(xa)[i]
        j = i - (ndim - snd)
        d = cnp.PyArray_DIMS(sa)[j] if j >= 0 else 1
        if d == sh[i] and d != 1:
            ss[i] = step
        elif d == 1:
            ss[i] = 0
        else:
            raise ValueError(f"PRelu: slope {slope.shape} does not broadcast to x {x.shape}")
        step *= d
    cdef cnp.ndarray ya = _ops_out(out, (<object>xa).shape, _F32)
    cdef const float *px = <const float *>_ops_ptr(xa)
    cdef const float *ps = <const float *>_ops_ptr(sa)
    cdef float *py = <float *>_ops_ptr(ya)
    cdef int st
    with nogil:
        st = on_prelu_f32(ndim, sh, px, ps, ss, py, threads)
    _ops_check(st, "PRelu")
    return ya
