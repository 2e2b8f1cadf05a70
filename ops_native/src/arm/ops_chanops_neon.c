/* ops_chanops_neon.c - NEON row kernels of LRN and PRelu (on_chanops.h), 4 pixels a register. */
#include <arm_neon.h>
#include <math.h>

#include "on_chanops.h"

/* t^0.75 = sqrt(t) * sqrt(sqrt(t)), t^0.5, t^1: exact in SIMD; any other beta takes the portable span. */
static int lrn_beta_mode(float beta) {
    return beta == 0.75f ? 1 : beta == 0.5f ? 2 : beta == 1.0f ? 3 : 0;
}

static inline float lrn_scale_1(int mode, float t) {
    float r = sqrtf(t);
    return mode == 1 ? r * sqrtf(r) : mode == 2 ? r : t;
}

static int lrn_span_neon(const float *x, float *y, size_t c, size_t plane, size_t len, size_t lo, size_t hi,
                         float a, float bias, float beta, float *sum) {
    const int mode = lrn_beta_mode(beta);
    if (!mode) return 0;
    const float32x4_t va = vdupq_n_f32(a), vb = vdupq_n_f32(bias), zero = vdupq_n_f32(0.0f);
    size_t j;
    for (j = 0; j < len; j++) sum[j] = 0.0f;
    for (size_t k = 0; k <= hi && k < c; k++) {
        const float *xk = x + k * plane;
        for (j = 0; j + 4 <= len; j += 4) {
            float32x4_t v = vld1q_f32(xk + j);
            vst1q_f32(sum + j, vfmaq_f32(vld1q_f32(sum + j), v, v));
        }
        for (; j < len; j++) sum[j] += xk[j] * xk[j];
    }
    for (size_t ch = 0; ch < c; ch++) {
        const float *add = ch > 0 && ch + hi < c ? x + (ch + hi) * plane : NULL;
        const float *rem = ch > lo ? x + (ch - lo - 1) * plane : NULL;
        const float *xc = x + ch * plane;
        float *yc = y + ch * plane;
        for (j = 0; j + 4 <= len; j += 4) {
            float32x4_t s = vld1q_f32(sum + j);
            if (add) {
                float32x4_t v = vld1q_f32(add + j);
                s = vfmaq_f32(s, v, v);
            }
            if (rem) {
                float32x4_t v = vld1q_f32(rem + j);
                s = vfmsq_f32(s, v, v);
            }
            vst1q_f32(sum + j, s);
            float32x4_t t = vfmaq_f32(vb, va, vmaxq_f32(s, zero));
            float32x4_t d = t;
            if (mode != 3) {
                float32x4_t r = vsqrtq_f32(t);
                d = mode == 1 ? vmulq_f32(r, vsqrtq_f32(r)) : r;
            }
            vst1q_f32(yc + j, vdivq_f32(vld1q_f32(xc + j), d));
        }
        for (; j < len; j++) {
            float s = sum[j];
            if (add) s += add[j] * add[j];
            if (rem) s -= rem[j] * rem[j];
            sum[j] = s;
            yc[j] = xc[j] / lrn_scale_1(mode, bias + a * (s > 0.0f ? s : 0.0f));
        }
    }
    return 1;
}

static int prelu_row_neon(const float *x, const float *s, int64_t ss, float *y, size_t n) {
    const float32x4_t zero = vdupq_n_f32(0.0f), vs = vdupq_n_f32(s[0]);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        float32x4_t neg = vmulq_f32(v, ss ? vld1q_f32(s + i) : vs);
        vst1q_f32(y + i, vbslq_f32(vcgeq_f32(v, zero), v, neg));
    }
    for (; i < n; i++) y[i] = x[i] >= 0.0f ? x[i] : s[(int64_t)i * ss] * x[i];
    return 1;
}

const on_chan_table on_chan_table_neon = {"neon", lrn_span_neon, prelu_row_neon};
