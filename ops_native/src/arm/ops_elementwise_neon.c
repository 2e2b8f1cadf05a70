/* ops_elementwise_neon.c - NEON fast paths of the elementwise ops, softmax, layer norm and row reductions
 * (aarch64: Advanced SIMD is always present). Pooling uses the reference. */
#include <arm_neon.h>
#include <math.h>

#include "on_ops.h"
#include "arm/vmath_neon.h"

#define BIN_BODY(VEXPR, SEXPR)                                                                   \
    do {                                                                                         \
        size_t i = 0;                                                                            \
        if (sa && sb) {                                                                          \
            for (; i + 4 <= n; i += 4) {                                                         \
                float32x4_t x = vld1q_f32(a + i), y = vld1q_f32(b + i);                          \
                vst1q_f32(out + i, VEXPR);                                                       \
            }                                                                                    \
        } else if (sa) {                                                                         \
            const float32x4_t y = vdupq_n_f32(b[0]);                                             \
            for (; i + 4 <= n; i += 4) {                                                         \
                float32x4_t x = vld1q_f32(a + i);                                                \
                vst1q_f32(out + i, VEXPR);                                                       \
            }                                                                                    \
        } else {                                                                                 \
            const float32x4_t x = vdupq_n_f32(a[0]);                                             \
            for (; i + 4 <= n; i += 4) {                                                         \
                float32x4_t y = vld1q_f32(b + i);                                                \
                vst1q_f32(out + i, VEXPR);                                                       \
            }                                                                                    \
        }                                                                                        \
        for (; i < n; i++) {                                                                     \
            const float xs = a[(int64_t)i * sa], ys = b[(int64_t)i * sb];                        \
            out[i] = (SEXPR);                                                                    \
        }                                                                                        \
    } while (0)

static int binary_row_neon(on_binary_op op, const float *a, int64_t sa, const float *b, int64_t sb, float *out,
                           size_t n) {
    if (!sa && !sb) return 0;
    switch (op) {
    case ON_BIN_ADD: BIN_BODY(vaddq_f32(x, y), xs + ys); return 1;
    case ON_BIN_SUB: BIN_BODY(vsubq_f32(x, y), xs - ys); return 1;
    case ON_BIN_MUL: BIN_BODY(vmulq_f32(x, y), xs * ys); return 1;
    case ON_BIN_DIV: BIN_BODY(vdivq_f32(x, y), xs / ys); return 1;
    default: return 0;
    }
}

#define UN_BODY(VEXPR)                                                                           \
    do {                                                                                         \
        size_t i = 0;                                                                            \
        for (; i + 4 <= n; i += 4) {                                                             \
            float32x4_t v = vld1q_f32(x + i);                                                    \
            vst1q_f32(y + i, VEXPR);                                                             \
        }                                                                                        \
        if (i < n) {                                                                             \
            float buf[4] = {0};                                                                  \
            for (size_t k = 0; k < n - i; k++) buf[k] = x[i + k];                                \
            float32x4_t v = vld1q_f32(buf);                                                      \
            vst1q_f32(buf, VEXPR);                                                               \
            for (size_t k = 0; k < n - i; k++) y[i + k] = buf[k];                                \
        }                                                                                        \
    } while (0)

static int unary_neon(on_unary_op op, const float *x, float *y, size_t n, float alpha, float beta) {
    const float32x4_t zero = vdupq_n_f32(0.0f), one = vdupq_n_f32(1.0f);
    const float32x4_t va = vdupq_n_f32(alpha), vb = vdupq_n_f32(beta);
    switch (op) {
    case ON_UN_RELU: UN_BODY(vmaxq_f32(v, zero)); return 1;
    case ON_UN_LEAKY_RELU: UN_BODY(vbslq_f32(vcgeq_f32(v, zero), v, vmulq_f32(v, va))); return 1;
    case ON_UN_CLIP: UN_BODY(vminq_f32(vmaxq_f32(v, va), vb)); return 1;
    case ON_UN_SIGMOID:
        UN_BODY(vdivq_f32(one, vaddq_f32(one, exp4_f32(vnegq_f32(v)))));
        return 1;
    case ON_UN_HARD_SIGMOID: UN_BODY(vmaxq_f32(zero, vminq_f32(one, vfmaq_f32(vb, va, v)))); return 1;
    case ON_UN_HARD_SWISH: {
        const float32x4_t h = vdupq_n_f32(0.5f), k = vdupq_n_f32(1.0f / 6.0f);
        UN_BODY(vmulq_f32(v, vmaxq_f32(zero, vminq_f32(one, vfmaq_f32(h, v, k)))));
        return 1;
    }
    case ON_UN_EXP: UN_BODY(exp4_f32(v)); return 1;
    case ON_UN_NEG: UN_BODY(vnegq_f32(v)); return 1;
    case ON_UN_ABS: UN_BODY(vabsq_f32(v)); return 1;
    case ON_UN_SQRT: UN_BODY(vsqrtq_f32(v)); return 1;
    case ON_UN_AFFINE: UN_BODY(vfmaq_f32(vb, v, va)); return 1;
    default: return 0;
    }
}

static int softmax_row_neon(const float *x, float *y, size_t cols, int log) {
    if (log) return 0;
    size_t i = 0;
    float32x4_t vm = vdupq_n_f32(-INFINITY);
    for (; i + 4 <= cols; i += 4) vm = vmaxq_f32(vm, vld1q_f32(x + i));
    float mx = vmaxvq_f32(vm);
    for (; i < cols; i++) mx = x[i] > mx ? x[i] : mx;
    const float32x4_t m = vdupq_n_f32(mx);
    float32x4_t vs = vdupq_n_f32(0.0f);
    for (i = 0; i + 4 <= cols; i += 4) {
        float32x4_t e = exp4_f32(vsubq_f32(vld1q_f32(x + i), m));
        vst1q_f32(y + i, e);
        vs = vaddq_f32(vs, e);
    }
    float sum = vaddvq_f32(vs);
    for (; i < cols; i++) {
        y[i] = expf(x[i] - mx);
        sum += y[i];
    }
    const float inv = 1.0f / sum;
    for (i = 0; i + 4 <= cols; i += 4) vst1q_f32(y + i, vmulq_n_f32(vld1q_f32(y + i), inv));
    for (; i < cols; i++) y[i] *= inv;
    return 1;
}

static int layernorm_row_neon(const float *x, const float *scale, const float *bias, float *y, size_t cols,
                              float eps) {
    size_t i = 0;
    float32x4_t vs = vdupq_n_f32(0.0f);
    for (; i + 4 <= cols; i += 4) vs = vaddq_f32(vs, vld1q_f32(x + i));
    float sum = vaddvq_f32(vs);
    for (; i < cols; i++) sum += x[i];
    const float mean = sum / (float)cols;
    const float32x4_t vmean = vdupq_n_f32(mean);
    float32x4_t vq = vdupq_n_f32(0.0f);
    for (i = 0; i + 4 <= cols; i += 4) {
        float32x4_t d = vsubq_f32(vld1q_f32(x + i), vmean);
        vq = vfmaq_f32(vq, d, d);
    }
    float q = vaddvq_f32(vq);
    for (; i < cols; i++) q += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.0f / sqrtf(q / (float)cols + eps);
    for (i = 0; i + 4 <= cols; i += 4) {
        float32x4_t nrm = vmulq_n_f32(vsubq_f32(vld1q_f32(x + i), vmean), inv);
        float32x4_t b = bias ? vld1q_f32(bias + i) : vdupq_n_f32(0.0f);
        vst1q_f32(y + i, vfmaq_f32(b, nrm, vld1q_f32(scale + i)));
    }
    for (; i < cols; i++) y[i] = (x[i] - mean) * inv * scale[i] + (bias ? bias[i] : 0.0f);
    return 1;
}

static int pool2d_plane_neon(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oh, int64_t ow,
                             int64_t pb, int64_t pr, const on_pool2d_params *p) {
    return 0; /* reference */
}

static int row_reduce_neon(int is_max, const float *x, size_t n, float *out) {
    size_t i = 0;
    if (is_max) {
        float32x4_t m = vdupq_n_f32(-INFINITY);
        for (; i + 4 <= n; i += 4) m = vmaxq_f32(m, vld1q_f32(x + i));
        float r = vmaxvq_f32(m);
        for (; i < n; i++) r = x[i] > r ? x[i] : r;
        *out = r;
    } else {
        float32x4_t s = vdupq_n_f32(0.0f);
        for (; i + 4 <= n; i += 4) s = vaddq_f32(s, vld1q_f32(x + i));
        float r = vaddvq_f32(s);
        for (; i < n; i++) r += x[i];
        *out = r;
    }
    return 1;
}

int on_pool2d_c8_row_ref(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oy, int64_t ow,
                         int64_t pb, int64_t pr, const on_pool2d_params *p);
int on_affine_c8_rows_ref(const float *x, float *y, size_t pixels, const float *a, const float *b);

const on_ops_table on_ops_table_neon = {
    "neon", binary_row_neon, unary_neon, softmax_row_neon, layernorm_row_neon, pool2d_plane_neon,
    row_reduce_neon, on_pool2d_c8_row_ref, /* blocked tensors are an x86 choice (passes/layout.py) */
    on_affine_c8_rows_ref,
};
