/* ops_reduce.c - reductions over the middle axis of an [outer, r, inner] view. */
#include <math.h>

#include "kernels.h"
#include "on_ops.h"

#define INNER_CHUNK 4096

typedef struct {
    on_reduce_op op;
    const float *x;
    float *y;
    size_t r, inner, chunks;
} reduce_ctx;

static float reduce_init(on_reduce_op op) {
    switch (op) {
    case ON_RED_MAX: return -INFINITY;
    case ON_RED_MIN: return INFINITY;
    case ON_RED_PROD: return 1.0f;
    default: return 0.0f;
    }
}

static void reduce_work(void *vctx, size_t begin, size_t end) {
    const reduce_ctx *c = vctx;
    for (size_t it = begin; it < end; it++) {
        size_t o = it / c->chunks, ch = it % c->chunks;
        size_t lo = ch * INNER_CHUNK, hi = lo + INNER_CHUNK < c->inner ? lo + INNER_CHUNK : c->inner;
        const float *x = c->x + o * c->r * c->inner;
        float *y = c->y + o * c->inner;
        float init = reduce_init(c->op);
        for (size_t i = lo; i < hi; i++) y[i] = init;
        for (size_t k = 0; k < c->r; k++) {
            const float *xr = x + k * c->inner;
            switch (c->op) {
            case ON_RED_SUM:
            case ON_RED_MEAN: for (size_t i = lo; i < hi; i++) y[i] += xr[i]; break;
            case ON_RED_SUMSQ: for (size_t i = lo; i < hi; i++) y[i] += xr[i] * xr[i]; break;
            case ON_RED_PROD: for (size_t i = lo; i < hi; i++) y[i] *= xr[i]; break;
            case ON_RED_MAX: for (size_t i = lo; i < hi; i++) y[i] = (xr[i] > y[i] || isnan(xr[i])) ? xr[i] : y[i]; break;
            case ON_RED_MIN: for (size_t i = lo; i < hi; i++) y[i] = (xr[i] < y[i] || isnan(xr[i])) ? xr[i] : y[i]; break;
            default: break;
            }
        }
        if (c->op == ON_RED_MEAN && c->r > 0) {
            float inv = 1.0f / (float)c->r;
            for (size_t i = lo; i < hi; i++) y[i] *= inv;
        }
    }
}

typedef struct {
    on_reduce_op op;
    const float *x;
    float *y;
    size_t r;
    const on_ops_table *tab;
} rowred_ctx;

/* inner == 1: each output is the reduction of one contiguous row */
static void rowred_work(void *vctx, size_t begin, size_t end) {
    const rowred_ctx *c = vctx;
    for (size_t o = begin; o < end; o++) {
        const float *x = c->x + o * c->r;
        float v;
        if (c->op == ON_RED_SUM || c->op == ON_RED_MEAN || c->op == ON_RED_MAX) {
            int is_max = c->op == ON_RED_MAX;
            if (!c->tab->row_reduce(is_max, x, c->r, &v)) {
                /* reference: accumulate in double for sums */
                double s = 0.0;
                float m = -INFINITY;
                for (size_t i = 0; i < c->r; i++) {
                    s += x[i];
                    m = (x[i] > m || isnan(x[i])) ? x[i] : m;
                }
                v = is_max ? m : (float)s;
            }
            if (c->op == ON_RED_MEAN) v /= (float)c->r;
        } else {
            v = reduce_init(c->op);
            for (size_t i = 0; i < c->r; i++) {
                float e = x[i];
                if (c->op == ON_RED_SUMSQ) v += e * e;
                else if (c->op == ON_RED_PROD) v *= e;
                else v = (e < v || isnan(e)) ? e : v;
            }
        }
        c->y[o] = v;
    }
}

on_status on_reduce_f32(on_reduce_op op, const float *x, float *y, size_t outer, size_t r, size_t inner,
                        int nthreads) {
    if ((int)op < 0 || op >= ON_RED_COUNT) return ON_ERR_ARG;
    if (outer * inner == 0) return ON_OK;
    if (!y || (r > 0 && !x)) return ON_ERR_ARG;
    if (outer * r * inner < 32768) nthreads = 1;
    if (inner == 1 && r > 0) {
        rowred_ctx c = {op, x, y, r, on_kernels_active()->ops};
        on_parallel_for(outer, rowred_work, &c, nthreads);
        return ON_OK;
    }
    reduce_ctx c = {op, x, y, r, inner, (inner + INNER_CHUNK - 1) / INNER_CHUNK};
    on_parallel_for(outer * c.chunks, reduce_work, &c, nthreads);
    return ON_OK;
}
