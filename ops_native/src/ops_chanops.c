/* ops_chanops.c - LRN and PRelu: the definitions, the portable row kernels (the scalar table) and the
 * drivers that split the work over threads and pick the active ISA's row kernels (kernels.h). */
#include <math.h>

#include "kernels.h"
#include "on_chanops.h"

/* ---- LRN ----------------------------------------------------------------------------------------- */

/* Pixels an LRN task covers: its running sum (1 KiB) stays in L1 while the channels stream past. */
#define ON_LRN_SPAN 256

static void lrn_window(int64_t size, size_t *lo, size_t *hi) {
    *lo = (size_t)((size - 1) / 2);
    *hi = (size_t)(size - 1) - *lo;   /* ceil((size - 1) / 2) */
}

on_status on_lrn_f32_ref(const float *x, float *y, size_t n, size_t c, size_t inner, int64_t size, float alpha,
                         float beta, float bias) {
    if (size < 1 || (n * c * inner > 0 && (!x || !y))) return ON_ERR_ARG;
    size_t lo, hi;
    lrn_window(size, &lo, &hi);
    for (size_t b = 0; b < n; b++)
        for (size_t ch = 0; ch < c; ch++)
            for (size_t i = 0; i < inner; i++) {
                size_t first = ch >= lo ? ch - lo : 0, last = ch + hi < c ? ch + hi : c - 1;
                double s = 0.0;
                for (size_t k = first; k <= last; k++) {
                    double v = x[(b * c + k) * inner + i];
                    s += v * v;
                }
                size_t at = (b * c + ch) * inner + i;
                y[at] = (float)(x[at] / pow((double)bias + (double)alpha / (double)size * s, (double)beta));
            }
    return ON_OK;
}

/* The portable sliding-sum span (every table falls back to it for a beta its fast path lacks). */
static int lrn_span_scalar(const float *x, float *y, size_t c, size_t plane, size_t len, size_t lo, size_t hi,
                           float a, float bias, float beta, float *sum) {
    for (size_t j = 0; j < len; j++) sum[j] = 0.0f;
    for (size_t k = 0; k <= hi && k < c; k++)
        for (size_t j = 0; j < len; j++) sum[j] += x[k * plane + j] * x[k * plane + j];
    for (size_t ch = 0; ch < c; ch++) {
        const float *add = ch > 0 && ch + hi < c ? x + (ch + hi) * plane : NULL;
        const float *rem = ch > lo ? x + (ch - lo - 1) * plane : NULL;
        const float *xc = x + ch * plane;
        float *yc = y + ch * plane;
        for (size_t j = 0; j < len; j++) {
            float s = sum[j];
            if (add) s += add[j] * add[j];
            if (rem) s -= rem[j] * rem[j];
            sum[j] = s;
            s = s > 0.0f ? s : 0.0f;  /* the slide's rounding must not take a sum of squares below 0 */
            yc[j] = xc[j] * powf(bias + a * s, -beta);
        }
    }
    return 1;
}

typedef struct {
    const float *x;
    float *y;
    size_t c, inner, spans, lo, hi;
    float a, bias, beta;
    const on_chan_table *tab;
    on_status err;
} lrn_ctx;

static void lrn_work(void *vctx, size_t begin, size_t end) {
    lrn_ctx *t = vctx;
    float *sum = on_scratch(4, ON_LRN_SPAN * sizeof(float));
    if (!sum) {
        t->err = ON_ERR_NOMEM;
        return;
    }
    for (size_t task = begin; task < end; task++) {
        size_t b = task / t->spans, j0 = (task % t->spans) * ON_LRN_SPAN;
        size_t len = t->inner - j0 < ON_LRN_SPAN ? t->inner - j0 : ON_LRN_SPAN;
        const float *x = t->x + b * t->c * t->inner + j0;
        float *y = t->y + b * t->c * t->inner + j0;
        if (!t->tab->lrn_span(x, y, t->c, t->inner, len, t->lo, t->hi, t->a, t->bias, t->beta, sum))
            lrn_span_scalar(x, y, t->c, t->inner, len, t->lo, t->hi, t->a, t->bias, t->beta, sum);
    }
}

on_status on_lrn_f32(const float *x, float *y, size_t n, size_t c, size_t inner, int64_t size, float alpha,
                     float beta, float bias, int nthreads) {
    if (size < 1 || (n * c * inner > 0 && (!x || !y)) || (x == y && x)) return ON_ERR_ARG;
    if (n * c * inner == 0) return ON_OK;
    lrn_ctx t = {x, y, c, inner, (inner + ON_LRN_SPAN - 1) / ON_LRN_SPAN, 0, 0, alpha / (float)size, bias,
                 beta, on_kernels_active()->chan, ON_OK};
    lrn_window(size, &t.lo, &t.hi);
    if (n * c * inner < 32768) nthreads = 1;
    on_parallel_for(n * t.spans, lrn_work, &t, nthreads);
    return t.err;
}

/* ---- PRelu --------------------------------------------------------------------------------------- */

static int prelu_row_scalar(const float *x, const float *s, int64_t ss, float *y, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] >= 0.0f ? x[i] : s[(int64_t)i * ss] * x[i];
    return 1;
}

typedef struct {
    int ndim;                     /* outer dims (the row is the last collapsed dim) */
    int64_t dims[ON_MAX_DIMS], sstr[ON_MAX_DIMS];
    const float *x, *slope;
    float *y;
    size_t len;
    int64_t ss;
    const on_chan_table *tab;
} prelu_ctx;

static void prelu_work(void *vctx, size_t begin, size_t end) {
    const prelu_ctx *t = vctx;
    for (size_t r = begin; r < end; r++) {
        int64_t off = 0;
        size_t rest = r;
        for (int d = t->ndim - 1; d >= 0; d--) {
            off += (int64_t)(rest % (size_t)t->dims[d]) * t->sstr[d];
            rest /= (size_t)t->dims[d];
        }
        const float *x = t->x + r * t->len;
        float *y = t->y + r * t->len;
        if (!t->tab->prelu_row(x, t->slope + off, t->ss, y, t->len))
            prelu_row_scalar(x, t->slope + off, t->ss, y, t->len);
    }
}

on_status on_prelu_f32(int ndim, const int64_t *shape, const float *x, const float *slope,
                       const int64_t *slope_strides, float *y, int nthreads) {
    if (ndim < 0 || ndim > ON_MAX_DIMS || (ndim && (!shape || !slope_strides)) || !x || !slope || !y)
        return ON_ERR_ARG;
    /* collapse adjacent dims the slope walks alike (both broadcast, or both contiguous), so a [N, C, H, W]
     * x with a [C, 1, 1] slope runs N * C rows of H * W with one slope value each */
    int64_t dims[ON_MAX_DIMS + 1], sstr[ON_MAX_DIMS + 1];
    int nd = 0;
    size_t total = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) return ON_ERR_ARG;
        total *= (size_t)shape[d];
        if (shape[d] == 1) continue;
        int64_t st = slope_strides[d];
        if (nd > 0 && sstr[nd - 1] == st * shape[d]) {
            dims[nd - 1] *= shape[d];
            sstr[nd - 1] = st;
        } else {
            dims[nd] = shape[d];
            sstr[nd] = st;
            nd++;
        }
    }
    if (total == 0) return ON_OK;
    if (nd == 0 || (sstr[nd - 1] != 0 && sstr[nd - 1] != 1)) {  /* a scalar, or a strided slope: rows of 1 */
        dims[nd] = 1;
        sstr[nd] = 0;
        nd++;
    }
    prelu_ctx t = {nd - 1, {0}, {0}, x, slope, y, (size_t)dims[nd - 1], sstr[nd - 1], on_kernels_active()->chan};
    for (int d = 0; d < nd - 1; d++) {
        t.dims[d] = dims[d];
        t.sstr[d] = sstr[d];
    }
    if (total < 32768) nthreads = 1;
    on_parallel_for(total / t.len, prelu_work, &t, nthreads);
    return ON_OK;
}

const on_chan_table on_chan_table_scalar = {"scalar", lrn_span_scalar, prelu_row_scalar};
