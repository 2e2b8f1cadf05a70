/* ops_norm.c - softmax, layer normalisation and the per-channel affine map of inference BatchNorm. */
#include <math.h>

#include "kernels.h"
#include "on_ops.h"

int on_softmax_row_ref(const float *x, float *y, size_t cols, int log) {
    float mx = -INFINITY;
    for (size_t i = 0; i < cols; i++) mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    if (log) {
        for (size_t i = 0; i < cols; i++) sum += expf(x[i] - mx);
        float lse = (float)logf((float)sum);
        for (size_t i = 0; i < cols; i++) y[i] = x[i] - mx - lse;
    } else {
        for (size_t i = 0; i < cols; i++) {
            y[i] = expf(x[i] - mx);
            sum += y[i];
        }
        float inv = (float)(1.0 / sum);
        for (size_t i = 0; i < cols; i++) y[i] *= inv;
    }
    return 1;
}

int on_layernorm_row_ref(const float *x, const float *scale, const float *bias, float *y, size_t cols, float eps) {
    double mean = 0.0, var = 0.0;
    for (size_t i = 0; i < cols; i++) mean += x[i];
    mean /= (double)cols;
    for (size_t i = 0; i < cols; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= (double)cols;
    float inv = (float)(1.0 / sqrt(var + eps)), m = (float)mean;
    for (size_t i = 0; i < cols; i++) y[i] = (x[i] - m) * inv * scale[i] + (bias ? bias[i] : 0.0f);
    return 1;
}

typedef struct {
    const float *x, *scale, *bias;
    float *y;
    size_t cols;
    float eps;
    int log;
    const on_ops_table *tab;
} rows_ctx;

static void softmax_work(void *vctx, size_t begin, size_t end) {
    const rows_ctx *c = vctx;
    for (size_t r = begin; r < end; r++) {
        const float *x = c->x + r * c->cols;
        float *y = c->y + r * c->cols;
        if (!c->tab->softmax_row(x, y, c->cols, c->log)) on_softmax_row_ref(x, y, c->cols, c->log);
    }
}

on_status on_softmax_f32(const float *x, float *y, size_t rows, size_t cols, int log, int nthreads) {
    if (rows * cols > 0 && (!x || !y)) return ON_ERR_ARG;
    if (cols == 0 || rows == 0) return ON_OK;
    rows_ctx c = {x, NULL, NULL, y, cols, 0.0f, log, on_kernels_active()->ops};
    if (rows * cols < 16384) nthreads = 1;
    on_parallel_for(rows, softmax_work, &c, nthreads);
    return ON_OK;
}

static void layernorm_work(void *vctx, size_t begin, size_t end) {
    const rows_ctx *c = vctx;
    for (size_t r = begin; r < end; r++) {
        const float *x = c->x + r * c->cols;
        float *y = c->y + r * c->cols;
        if (!c->tab->layernorm_row(x, c->scale, c->bias, y, c->cols, c->eps))
            on_layernorm_row_ref(x, c->scale, c->bias, y, c->cols, c->eps);
    }
}

on_status on_layernorm_f32(const float *x, const float *scale, const float *bias, float *y, size_t rows,
                           size_t cols, float eps, int nthreads) {
    if (rows * cols > 0 && (!x || !y || !scale)) return ON_ERR_ARG;
    if (cols == 0 || rows == 0) return ON_OK;
    rows_ctx c = {x, scale, bias, y, cols, eps, 0, on_kernels_active()->ops};
    if (rows * cols < 16384) nthreads = 1;
    on_parallel_for(rows, layernorm_work, &c, nthreads);
    return ON_OK;
}

typedef struct {
    const float *x, *scale, *shift;
    float *y;
    size_t c, inner;
    const on_ops_table *tab;
} affine_ctx;

static void affine_work(void *vctx, size_t begin, size_t end) {
    const affine_ctx *c = vctx;
    for (size_t p = begin; p < end; p++) {
        size_t ch = p % c->c;
        const float *x = c->x + p * c->inner;
        float *y = c->y + p * c->inner;
        if (!c->tab->unary(ON_UN_AFFINE, x, y, c->inner, c->scale[ch], c->shift[ch]))
            for (size_t i = 0; i < c->inner; i++) y[i] = x[i] * c->scale[ch] + c->shift[ch];
    }
}

on_status on_channel_affine_f32(const float *x, const float *scale, const float *shift, float *y, size_t n,
                                size_t c, size_t inner, int nthreads) {
    if (n * c * inner > 0 && (!x || !y || !scale || !shift)) return ON_ERR_ARG;
    affine_ctx ctx = {x, scale, shift, y, c, inner, on_kernels_active()->ops};
    if (n * c * inner < 32768) nthreads = 1;
    on_parallel_for(n * c, affine_work, &ctx, nthreads);
    return ON_OK;
}

typedef struct {
    const float *x, *scale, *shift;
    float *y;
    size_t cblocks, pixels;
    const on_ops_table *tab;
} affine_blocked_ctx;

static void affine_blocked_work(void *vctx, size_t begin, size_t end) {
    const affine_blocked_ctx *c = vctx;
    for (size_t p = begin; p < end; p++) {
        const float *a = c->scale + (p % c->cblocks) * ON_C0, *b = c->shift + (p % c->cblocks) * ON_C0;
        const float *x = c->x + p * c->pixels * ON_C0;
        float *y = c->y + p * c->pixels * ON_C0;
        c->tab->affine_c8_rows(x, y, c->pixels, a, b);
    }
}

on_status on_channel_affine_nchwc8_f32(const float *x, const float *scale, const float *shift, float *y, size_t n,
                                       size_t cblocks, size_t pixels, int nthreads) {
    if (n * cblocks * pixels > 0 && (!x || !y || !scale || !shift)) return ON_ERR_ARG;
    affine_blocked_ctx ctx = {x, scale, shift, y, cblocks, pixels, on_kernels_active()->ops};
    if (n * cblocks * pixels * ON_C0 < 32768) nthreads = 1;
    on_parallel_for(n * cblocks, affine_blocked_work, &ctx, nthreads);
    return ON_OK;
}

/* ---- channel gather on the NCHWc8 layout ------------------------------------------------------ */

typedef struct {
    const float *x;
    const int64_t *src;
    float *y;
    size_t xblocks, yblocks, cout, pixels;
} gather_blocked_ctx;

/* unit = n * yblocks + output block: each output pixel's 8 lanes come from up to 8 input blocks, read as
 * 8 sequential streams (one per lane) while the output is written in order. */
static void gather_blocked_work(void *vctx, size_t begin, size_t end) {
    const gather_blocked_ctx *c = vctx;
    for (size_t u = begin; u < end; u++) {
        size_t n = u / c->yblocks, ob = u % c->yblocks;
        const float *xs[ON_C0];
        size_t lanes = c->cout - ob * ON_C0 < ON_C0 ? c->cout - ob * ON_C0 : ON_C0;
        for (size_t l = 0; l < lanes; l++) {
            size_t ch = (size_t)c->src[ob * ON_C0 + l];
            xs[l] = c->x + ((n * c->xblocks + ch / ON_C0) * c->pixels) * ON_C0 + ch % ON_C0;
        }
        float *y = c->y + u * c->pixels * ON_C0;
        for (size_t p = 0; p < c->pixels; p++) {
            float *d = y + p * ON_C0;
            for (size_t l = 0; l < lanes; l++) d[l] = xs[l][p * ON_C0];
            for (size_t l = lanes; l < ON_C0; l++) d[l] = 0.0f; /* lanes past the last channel stay zero */
        }
    }
}

on_status on_channel_gather_nchwc8_f32(const float *x, size_t cin, const int64_t *src, size_t cout, float *y,
                                       size_t n, size_t pixels, int nthreads) {
    if (n * cout * pixels > 0 && (!x || !y || !src)) return ON_ERR_ARG;
    for (size_t c = 0; c < cout; c++)
        if (src[c] < 0 || (size_t)src[c] >= cin) return ON_ERR_ARG;
    gather_blocked_ctx ctx = {x, src, y, (cin + ON_C0 - 1) / ON_C0, (cout + ON_C0 - 1) / ON_C0, cout, pixels};
    if (n * cout * pixels < 32768) nthreads = 1;
    on_parallel_for(n * ctx.yblocks, gather_blocked_work, &ctx, nthreads);
    return ON_OK;
}
