/* ops_resize.c - nearest and bilinear resize of the last two axes. The caller maps output to input
 * coordinates (every ONNX coordinate_transformation_mode / nearest_mode), so the kernels only gather. */
#include <string.h>

#include "on_ops.h"

typedef struct {
    const float *x;
    float *y;
    int64_t ih, iw, oh, ow;
    const int64_t *iy, *ix, *y0, *y1, *x0, *x1;
    const float *wy, *wx;
} resize_ctx;

static void nearest_work(void *vctx, size_t begin, size_t end) {
    const resize_ctx *c = vctx;
    for (size_t p = begin; p < end; p++) {
        const float *x = c->x + p * (size_t)(c->ih * c->iw);
        float *y = c->y + p * (size_t)(c->oh * c->ow);
        for (int64_t i = 0; i < c->oh; i++) {
            float *yr = y + i * c->ow;
            if (i > 0 && c->iy[i] == c->iy[i - 1]) { /* upsampling repeats rows: copy the previous one */
                memcpy(yr, yr - c->ow, (size_t)c->ow * sizeof(float));
                continue;
            }
            const float *xr = x + c->iy[i] * c->iw;
            for (int64_t j = 0; j < c->ow; j++) yr[j] = xr[c->ix[j]];
        }
    }
}

static void linear_work(void *vctx, size_t begin, size_t end) {
    const resize_ctx *c = vctx;
    for (size_t p = begin; p < end; p++) {
        const float *x = c->x + p * (size_t)(c->ih * c->iw);
        float *y = c->y + p * (size_t)(c->oh * c->ow);
        for (int64_t i = 0; i < c->oh; i++) {
            const float *r0 = x + c->y0[i] * c->iw, *r1 = x + c->y1[i] * c->iw;
            float wy = c->wy[i];
            float *yr = y + i * c->ow;
            for (int64_t j = 0; j < c->ow; j++) {
                float wx = c->wx[j];
                int64_t a = c->x0[j], b = c->x1[j];
                float top = r0[a] + (r0[b] - r0[a]) * wx;
                float bot = r1[a] + (r1[b] - r1[a]) * wx;
                yr[j] = top + (bot - top) * wy;
            }
        }
    }
}

static int idx_ok(const int64_t *idx, int64_t n, int64_t lim) {
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= lim) return 0;
    return 1;
}

on_status on_resize_nearest2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw,
                                  int64_t oh, int64_t ow, const int64_t *iy, const int64_t *ix, int nthreads) {
    if (planes == 0 || oh <= 0 || ow <= 0) return ON_OK;
    if (!x || !y || !iy || !ix || ih <= 0 || iw <= 0) return ON_ERR_ARG;
    if (!idx_ok(iy, oh, ih) || !idx_ok(ix, ow, iw)) return ON_ERR_ARG;
    resize_ctx c = {x, y, ih, iw, oh, ow, iy, ix, NULL, NULL, NULL, NULL, NULL, NULL};
    if (planes * (size_t)(oh * ow) < 32768) nthreads = 1;
    on_parallel_for(planes, nearest_work, &c, nthreads);
    return ON_OK;
}

on_status on_resize_linear2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw,
                                 int64_t oh, int64_t ow, const int64_t *y0, const int64_t *y1, const float *wy,
                                 const int64_t *x0, const int64_t *x1, const float *wx, int nthreads) {
    if (planes == 0 || oh <= 0 || ow <= 0) return ON_OK;
    if (!x || !y || !y0 || !y1 || !wy || !x0 || !x1 || !wx || ih <= 0 || iw <= 0) return ON_ERR_ARG;
    if (!idx_ok(y0, oh, ih) || !idx_ok(y1, oh, ih) || !idx_ok(x0, ow, iw) || !idx_ok(x1, ow, iw))
        return ON_ERR_ARG;
    resize_ctx c = {x, y, ih, iw, oh, ow, NULL, NULL, y0, y1, x0, x1, wy, wx};
    if (planes * (size_t)(oh * ow) < 32768) nthreads = 1;
    on_parallel_for(planes, linear_work, &c, nthreads);
    return ON_OK;
}
