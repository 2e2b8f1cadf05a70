/* ops_data.c - data movement for any element size: strided copy (Transpose, Slice, Expand, Split, Pad),
 * concat and gather. */
#include <string.h>

#include "on_ops.h"

typedef struct {
    size_t esize;
    int ndim; /* after collapsing; the last dim is the row */
    int64_t shape[ON_MAX_DIMS];
    int64_t ss[ON_MAX_DIMS], ds[ON_MAX_DIMS];
    const char *src;
    char *dst;
} copy_ctx;

static void copy_row(size_t es, const char *s, int64_t ss, char *d, int64_t ds, int64_t n) {
    if (ss == 1 && ds == 1) {
        memcpy(d, s, (size_t)n * es);
        return;
    }
    switch (es) {
    case 4: for (int64_t i = 0; i < n; i++) memcpy(d + i * ds * 4, s + i * ss * 4, 4); break;
    case 8: for (int64_t i = 0; i < n; i++) memcpy(d + i * ds * 8, s + i * ss * 8, 8); break;
    case 2: for (int64_t i = 0; i < n; i++) memcpy(d + i * ds * 2, s + i * ss * 2, 2); break;
    default: for (int64_t i = 0; i < n; i++) d[i * ds] = s[i * ss]; break;
    }
}

static void copy_work(void *vctx, size_t begin, size_t end) {
    const copy_ctx *c = vctx;
    int last = c->ndim - 1;
    for (size_t row = begin; row < end; row++) {
        int64_t r = (int64_t)row, so = 0, dof = 0;
        for (int i = last - 1; i >= 0; i--) {
            int64_t idx = r % c->shape[i];
            r /= c->shape[i];
            so += idx * c->ss[i];
            dof += idx * c->ds[i];
        }
        copy_row(c->esize, c->src + so * (int64_t)c->esize, c->ss[last], c->dst + dof * (int64_t)c->esize,
                 c->ds[last], c->shape[last]);
    }
}

on_status on_copy_strided(size_t esize, int ndim, const int64_t *shape, const void *src,
                          const int64_t *src_strides, void *dst, const int64_t *dst_strides, int nthreads) {
    if (!(esize == 1 || esize == 2 || esize == 4 || esize == 8) || ndim < 0 || ndim > ON_MAX_DIMS) return ON_ERR_ARG;
    if (ndim > 0 && (!shape || !src_strides || !dst_strides)) return ON_ERR_ARG;
    int64_t total = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return ON_ERR_ARG;
        total *= shape[i];
    }
    if (total == 0) return ON_OK;
    if (!src || !dst) return ON_ERR_ARG;
    copy_ctx c;
    c.esize = esize;
    c.src = src;
    c.dst = dst;
    /* drop unit dims, then merge dims that are contiguous in both */
    int d = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 1) continue;
        c.shape[d] = shape[i];
        c.ss[d] = src_strides[i];
        c.ds[d] = dst_strides[i];
        d++;
    }
    if (d == 0) {
        c.shape[0] = 1;
        c.ss[0] = c.ds[0] = 1;
        d = 1;
    }
    int m = 0;
    for (int i = 1; i < d; i++) {
        if (c.ss[m] == c.ss[i] * c.shape[i] && c.ds[m] == c.ds[i] * c.shape[i]) {
            c.shape[m] *= c.shape[i];
            c.ss[m] = c.ss[i];
            c.ds[m] = c.ds[i];
        } else {
            m++;
            c.shape[m] = c.shape[i];
            c.ss[m] = c.ss[i];
            c.ds[m] = c.ds[i];
        }
    }
    c.ndim = m + 1;
    int64_t rows = total / c.shape[m];
    if (total * (int64_t)esize < 262144) nthreads = 1;
    on_parallel_for((size_t)rows, copy_work, &c, nthreads);
    return ON_OK;
}

typedef struct {
    size_t esize;
    int n;
    const void *const *srcs;
    const int64_t *lens;
    int64_t inner, out_row;
    char *dst;
} concat_ctx;

static void concat_work(void *vctx, size_t begin, size_t end) {
    const concat_ctx *c = vctx;
    for (size_t o = begin; o < end; o++) {
        char *d = c->dst + (int64_t)o * c->out_row * (int64_t)c->esize;
        for (int k = 0; k < c->n; k++) {
            size_t bytes = (size_t)(c->lens[k] * c->inner) * c->esize;
            memcpy(d, (const char *)c->srcs[k] + o * bytes, bytes);
            d += bytes;
        }
    }
}

on_status on_concat(size_t esize, int n, const void *const *srcs, const int64_t *lens, int64_t outer,
                    int64_t inner, void *dst, int nthreads) {
    if (esize == 0 || n < 1 || !srcs || !lens || outer < 0 || inner < 0) return ON_ERR_ARG;
    int64_t row = 0;
    for (int k = 0; k < n; k++) {
        if (lens[k] < 0 || (lens[k] * inner > 0 && !srcs[k])) return ON_ERR_ARG;
        row += lens[k];
    }
    if (outer * row * inner == 0) return ON_OK;
    if (!dst) return ON_ERR_ARG;
    concat_ctx c = {esize, n, srcs, lens, inner, row * inner, dst};
    if (outer * row * inner * (int64_t)esize < 262144) nthreads = 1;
    on_parallel_for((size_t)outer, concat_work, &c, nthreads);
    return ON_OK;
}

typedef struct {
    size_t esize;
    const char *src;
    int64_t axis_len, inner, n_idx;
    const int64_t *idx;
    char *dst;
} gather_ctx;

static void gather_work(void *vctx, size_t begin, size_t end) {
    const gather_ctx *c = vctx;
    size_t bytes = (size_t)c->inner * c->esize;
    for (size_t it = begin; it < end; it++) {
        int64_t o = (int64_t)it / c->n_idx, j = (int64_t)it % c->n_idx;
        memcpy(c->dst + (size_t)it * bytes, c->src + (size_t)(o * c->axis_len + c->idx[j]) * bytes, bytes);
    }
}

on_status on_gather(size_t esize, const void *src, int64_t outer, int64_t axis_len, int64_t inner,
                    const int64_t *idx, int64_t n_idx, void *dst, int nthreads) {
    if (esize == 0 || outer < 0 || axis_len < 0 || inner < 0 || n_idx < 0) return ON_ERR_ARG;
    if (outer * n_idx * inner == 0) return ON_OK;
    if (!src || !dst || !idx) return ON_ERR_ARG;
    for (int64_t j = 0; j < n_idx; j++)
        if (idx[j] < 0 || idx[j] >= axis_len) return ON_ERR_ARG;
    gather_ctx c = {esize, src, axis_len, inner, n_idx, idx, dst};
    if (outer * n_idx * inner * (int64_t)esize < 262144) nthreads = 1;
    on_parallel_for((size_t)(outer * n_idx), gather_work, &c, nthreads);
    return ON_OK;
}
