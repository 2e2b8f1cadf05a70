/* ops_pool.c - reference 2-D max / average pooling (NCHW planes) and global pooling. */
#include <math.h>

#include "kernels.h"
#include "on_ops.h"
#include "ops_pool_internal.h"

float on_pool2d_one_ref(int is_max, const float *x, int64_t ih, int64_t iw, int64_t pb, int64_t pr, int64_t oy,
                        int64_t ox, const on_pool2d_params *p) {
    int64_t y0 = oy * p->sh - p->pt, x0 = ox * p->sw - p->pl;
    float acc = is_max ? -INFINITY : 0.0f;
    int64_t valid = 0, padded = 0;
    for (int64_t ky = 0; ky < p->kh; ky++) {
        int64_t iy = y0 + ky * p->dh;
        int in_pad_y = iy >= -p->pt && iy < ih + pb;
        for (int64_t kx = 0; kx < p->kw; kx++) {
            int64_t ix = x0 + kx * p->dw;
            if (in_pad_y && ix >= -p->pl && ix < iw + pr) padded++;
            if (iy < 0 || iy >= ih || ix < 0 || ix >= iw) continue;
            float v = x[iy * iw + ix];
            if (is_max) acc = (v > acc || isnan(v)) ? v : acc;
            else acc += v;
            valid++;
        }
    }
    if (!is_max) {
        int64_t cnt = p->count_include_pad ? padded : valid;
        acc = cnt > 0 ? acc / (float)cnt : 0.0f;
    }
    return acc;
}

int on_pool2d_plane_ref(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oh, int64_t ow,
                        int64_t pb, int64_t pr, const on_pool2d_params *p) {
    for (int64_t oy = 0; oy < oh; oy++)
        for (int64_t ox = 0; ox < ow; ox++) y[oy * ow + ox] = on_pool2d_one_ref(is_max, x, ih, iw, pb, pr, oy, ox, p);
    return 1;
}

/* NCHWc8: the taps of a window are clipped to the input once per pixel (on_pool_tap_range) and each tap is
 * 8 channels; NaN propagates as in the plane reference. */
int on_pool2d_c8_row_ref(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oy, int64_t ow,
                         int64_t pb, int64_t pr, const on_pool2d_params *p) {
    const int64_t y0 = oy * p->sh - p->pt;
    int64_t ky0, ky1, py0, py1;
    on_pool_tap_range(y0, p->dh, p->kh, 0, ih, &ky0, &ky1);
    on_pool_tap_range(y0, p->dh, p->kh, -p->pt, ih + pb, &py0, &py1);
    for (int64_t ox = 0; ox < ow; ox++) {
        const int64_t x0 = ox * p->sw - p->pl;
        int64_t kx0, kx1, px0, px1;
        on_pool_tap_range(x0, p->dw, p->kw, 0, iw, &kx0, &kx1);
        on_pool_tap_range(x0, p->dw, p->kw, -p->pl, iw + pr, &px0, &px1);
        float acc[ON_C0];
        for (int l = 0; l < ON_C0; l++) acc[l] = is_max ? -INFINITY : 0.0f;
        for (int64_t ky = ky0; ky < ky1; ky++)
            for (int64_t kx = kx0; kx < kx1; kx++) {
                const float *v = x + ((y0 + ky * p->dh) * iw + x0 + kx * p->dw) * ON_C0;
                for (int l = 0; l < ON_C0; l++) {
                    if (is_max) acc[l] = (v[l] > acc[l] || isnan(v[l])) ? v[l] : acc[l];
                    else acc[l] += v[l];
                }
            }
        if (!is_max) {
            int64_t valid = (ky1 > ky0 ? ky1 - ky0 : 0) * (kx1 > kx0 ? kx1 - kx0 : 0);
            int64_t padded = (py1 > py0 ? py1 - py0 : 0) * (px1 > px0 ? px1 - px0 : 0);
            int64_t cnt = p->count_include_pad ? padded : valid;
            for (int l = 0; l < ON_C0; l++) acc[l] = cnt > 0 ? acc[l] / (float)cnt : 0.0f;
        }
        for (int l = 0; l < ON_C0; l++) y[ox * ON_C0 + l] = acc[l];
    }
    return 1;
}

int on_row_reduce_ref(int is_max, const float *x, size_t n, float *out) {
    if (is_max) {
        float m = -INFINITY;
        for (size_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
        *out = m;
    } else {
        double s = 0.0;
        for (size_t i = 0; i < n; i++) s += x[i];
        *out = (float)s;
    }
    return 1;
}

typedef struct {
    int is_max;
    const float *x;
    float *y;
    int64_t ih, iw, oh, ow, pb, pr;
    const on_pool2d_params *p;
    const on_ops_table *tab;
} pool_ctx;

static void pool_work(void *vctx, size_t begin, size_t end) {
    const pool_ctx *c = vctx;
    for (size_t pl = begin; pl < end; pl++) {
        const float *x = c->x + pl * (size_t)(c->ih * c->iw);
        float *y = c->y + pl * (size_t)(c->oh * c->ow);
        if (!c->tab->pool2d_plane(c->is_max, x, y, c->ih, c->iw, c->oh, c->ow, c->pb, c->pr, c->p))
            on_pool2d_plane_ref(c->is_max, x, y, c->ih, c->iw, c->oh, c->ow, c->pb, c->pr, c->p);
    }
}

static int pool_params_ok(const on_pool2d_params *p) {
    return p && p->kh > 0 && p->kw > 0 && p->sh > 0 && p->sw > 0 && p->dh > 0 && p->dw > 0 && p->pt >= 0 &&
           p->pl >= 0;
}

static on_status pool_run(int is_max, const float *x, float *y, size_t planes, int64_t ih, int64_t iw, int64_t oh,
                          int64_t ow, int64_t pb, int64_t pr, const on_pool2d_params *p, int nthreads) {
    if (!pool_params_ok(p) || ih < 0 || iw < 0 || oh < 0 || ow < 0 || pb < 0 || pr < 0) return ON_ERR_ARG;
    if (planes == 0 || oh == 0 || ow == 0) return ON_OK;
    if (!x || !y) return ON_ERR_ARG;
    if (!is_max && oh == 1 && ow == 1 && p->kh == ih && p->kw == iw && p->dh == 1 && p->dw == 1 && !p->pt &&
        !p->pl && !pb && !pr && ih > 0 && iw > 0)
        /* one window over the whole plane (ShuffleNet's 7x7 average on 7x7): a global average (max keeps the
         * plane path, which propagates NaN) */
        return on_global_pool_f32(x, y, planes, (size_t)(ih * iw), is_max, nthreads);
    pool_ctx c = {is_max, x, y, ih, iw, oh, ow, pb, pr, p, on_kernels_active()->ops};
    if ((size_t)(oh * ow * p->kh * p->kw) * planes < 32768) nthreads = 1;
    on_parallel_for(planes, pool_work, &c, nthreads);
    return ON_OK;
}

on_status on_maxpool2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw, int64_t oh,
                           int64_t ow, const on_pool2d_params *p, int nthreads) {
    return pool_run(1, x, y, planes, ih, iw, oh, ow, 0, 0, p, nthreads);
}

on_status on_avgpool2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw, int64_t oh,
                           int64_t ow, int64_t pb, int64_t pr, const on_pool2d_params *p, int nthreads) {
    return pool_run(0, x, y, planes, ih, iw, oh, ow, pb, pr, p, nthreads);
}

static void pool_c8_work(void *vctx, size_t begin, size_t end) {
    const pool_ctx *c = vctx;
    const size_t oh = (size_t)c->oh;
    for (size_t r = begin; r < end; r++) { /* r = block * oh + oy */
        const size_t b = r / oh;
        const int64_t oy = (int64_t)(r % oh);
        const float *x = c->x + b * (size_t)(c->ih * c->iw) * ON_C0;
        float *y = c->y + r * (size_t)c->ow * ON_C0;
        if (!c->tab->pool2d_c8_row(c->is_max, x, y, c->ih, c->iw, oy, c->ow, c->pb, c->pr, c->p))
            on_pool2d_c8_row_ref(c->is_max, x, y, c->ih, c->iw, oy, c->ow, c->pb, c->pr, c->p);
    }
}

on_status on_pool2d_nchwc8_f32(int is_max, const float *x, float *y, size_t blocks, int64_t ih, int64_t iw,
                               int64_t oh, int64_t ow, int64_t pb, int64_t pr, const on_pool2d_params *p,
                               int nthreads) {
    if (!pool_params_ok(p) || ih < 0 || iw < 0 || oh < 0 || ow < 0 || pb < 0 || pr < 0) return ON_ERR_ARG;
    if (blocks == 0 || oh == 0 || ow == 0) return ON_OK;
    if (!x || !y) return ON_ERR_ARG;
    pool_ctx c = {is_max, x, y, ih, iw, oh, ow, pb, pr, p, on_kernels_active()->ops};
    if ((size_t)(oh * ow * p->kh * p->kw) * blocks * ON_C0 < 32768) nthreads = 1;
    on_parallel_for(blocks * (size_t)oh, pool_c8_work, &c, nthreads);
    return ON_OK;
}

typedef struct {
    const float *x;
    float *y;
    size_t cols;
    int is_max;
    const on_ops_table *tab;
} gpool_ctx;

static void gpool_work(void *vctx, size_t begin, size_t end) {
    const gpool_ctx *c = vctx;
    for (size_t r = begin; r < end; r++) {
        const float *x = c->x + r * c->cols;
        float v;
        if (!c->tab->row_reduce(c->is_max, x, c->cols, &v)) on_row_reduce_ref(c->is_max, x, c->cols, &v);
        c->y[r] = c->is_max ? v : v / (float)c->cols;
    }
}

on_status on_global_pool_f32(const float *x, float *y, size_t rows, size_t cols, int is_max, int nthreads) {
    if (rows == 0) return ON_OK;
    if (!x || !y || cols == 0) return ON_ERR_ARG;
    gpool_ctx c = {x, y, cols, is_max, on_kernels_active()->ops};
    if (rows * cols < 32768) nthreads = 1;
    on_parallel_for(rows, gpool_work, &c, nthreads);
    return ON_OK;
}
