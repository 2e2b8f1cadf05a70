/* ops_elementwise_avx2.c - AVX2/FMA fast paths of the elementwise ops, softmax and layer norm, and the
 * AVX2 entry of the ops table. Compiled with -mavx2 -mfma; reached through the AVX2 and AVX-512 kernel
 * tables (dispatch.c).
 */
#include <immintrin.h>
#include <math.h>

#include "on_ops.h"
#include "x86/math_avx2.h"

/* ---- binary ---------------------------------------------------------------------------------------- */
#define BIN_BODY(VEXPR, SEXPR)                                                                   \
    do {                                                                                         \
        size_t i = 0;                                                                            \
        if (sa && sb) {                                                                          \
            for (; i + 8 <= n; i += 8) {                                                         \
                __m256 x = _mm256_loadu_ps(a + i), y = _mm256_loadu_ps(b + i);                   \
                _mm256_storeu_ps(out + i, VEXPR);                                                \
            }                                                                                    \
        } else if (sa) {                                                                         \
            const __m256 y = _mm256_set1_ps(b[0]);                                               \
            for (; i + 8 <= n; i += 8) {                                                         \
                __m256 x = _mm256_loadu_ps(a + i);                                               \
                _mm256_storeu_ps(out + i, VEXPR);                                                \
            }                                                                                    \
        } else if (sb) {                                                                         \
            const __m256 x = _mm256_set1_ps(a[0]);                                               \
            for (; i + 8 <= n; i += 8) {                                                         \
                __m256 y = _mm256_loadu_ps(b + i);                                               \
                _mm256_storeu_ps(out + i, VEXPR);                                                \
            }                                                                                    \
        }                                                                                        \
        for (; i < n; i++) {                                                                     \
            const float xs = a[(int64_t)i * sa], ys = b[(int64_t)i * sb];                        \
            out[i] = (SEXPR);                                                                    \
        }                                                                                        \
    } while (0)

static int binary_row_avx2(on_binary_op op, const float *a, int64_t sa, const float *b, int64_t sb, float *out,
                           size_t n) {
    if (!sa && !sb) return 0;
    switch (op) {
    case ON_BIN_ADD: BIN_BODY(_mm256_add_ps(x, y), xs + ys); return 1;
    case ON_BIN_SUB: BIN_BODY(_mm256_sub_ps(x, y), xs - ys); return 1;
    case ON_BIN_MUL: BIN_BODY(_mm256_mul_ps(x, y), xs * ys); return 1;
    case ON_BIN_DIV: BIN_BODY(_mm256_div_ps(x, y), xs / ys); return 1;
    default: return 0; /* pow, min, max (NaN rules): reference */
    }
}

/* ---- unary ----------------------------------------------------------------------------------------- */
#define UN_BODY(VEXPR, SEXPR)                                                                    \
    do {                                                                                         \
        size_t i = 0;                                                                            \
        for (; i + 8 <= n; i += 8) {                                                             \
            __m256 v = _mm256_loadu_ps(x + i);                                                   \
            _mm256_storeu_ps(y + i, VEXPR);                                                      \
        }                                                                                        \
        if (i < n) { /* tail through a padded register so results match the vector body */      \
            float buf[8] = {0};                                                                  \
            for (size_t k = 0; k < n - i; k++) buf[k] = x[i + k];                                \
            __m256 v = _mm256_loadu_ps(buf);                                                     \
            _mm256_storeu_ps(buf, VEXPR);                                                        \
            for (size_t k = 0; k < n - i; k++) y[i + k] = buf[k];                                \
        }                                                                                        \
        (void)0;                                                                                 \
    } while (0)

/* The transcendental bodies are long dependency chains (Horner polynomials, a divide, exp): four
 * independent vectors per iteration give the core four chains to interleave. Measured on Zen 3:
 * the tail matches UN_BODY exactly. */
#define UN_BODY4(FN)                                                                             \
    do {                                                                                         \
        size_t i = 0;                                                                            \
        for (; i + 32 <= n; i += 32) {                                                           \
            __m256 r0 = FN(_mm256_loadu_ps(x + i)), r1 = FN(_mm256_loadu_ps(x + i + 8));         \
            __m256 r2 = FN(_mm256_loadu_ps(x + i + 16)), r3 = FN(_mm256_loadu_ps(x + i + 24));   \
            _mm256_storeu_ps(y + i, r0);                                                         \
            _mm256_storeu_ps(y + i + 8, r1);                                                     \
            _mm256_storeu_ps(y + i + 16, r2);                                                    \
            _mm256_storeu_ps(y + i + 24, r3);                                                    \
        }                                                                                        \
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, FN(_mm256_loadu_ps(x + i)));         \
        if (i < n) {                                                                             \
            float buf[8] = {0};                                                                  \
            for (size_t k = 0; k < n - i; k++) buf[k] = x[i + k];                                \
            _mm256_storeu_ps(buf, FN(_mm256_loadu_ps(buf)));                                     \
            for (size_t k = 0; k < n - i; k++) y[i + k] = buf[k];                                \
        }                                                                                        \
    } while (0)

static int unary_avx2(on_unary_op op, const float *x, float *y, size_t n, float alpha, float beta) {
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    switch (op) {
    case ON_UN_RELU: UN_BODY(_mm256_max_ps(v, zero), 0); return 1;
    case ON_UN_LEAKY_RELU:
        UN_BODY(_mm256_blendv_ps(_mm256_mul_ps(v, va), v, _mm256_cmp_ps(v, zero, _CMP_GE_OQ)), 0);
        return 1;
    case ON_UN_CLIP: UN_BODY(_mm256_min_ps(_mm256_max_ps(v, va), vb), 0); return 1;
    case ON_UN_SIGMOID: UN_BODY4(sigmoid256_ps); return 1;
    case ON_UN_HARD_SIGMOID: UN_BODY(_mm256_max_ps(zero, _mm256_min_ps(one, _mm256_fmadd_ps(va, v, vb))), 0); return 1;
    case ON_UN_HARD_SWISH: {
        const __m256 k = _mm256_set1_ps(1.0f / 6.0f), h = _mm256_set1_ps(0.5f);
        UN_BODY(_mm256_mul_ps(v, _mm256_max_ps(zero, _mm256_min_ps(one, _mm256_fmadd_ps(v, k, h)))), 0);
        return 1;
    }
    case ON_UN_TANH: UN_BODY4(tanh256_ps); return 1;
    case ON_UN_ERF: UN_BODY4(erf256_ps); return 1;
    case ON_UN_GELU: UN_BODY4(gelu256_ps); return 1;
    case ON_UN_GELU_TANH: UN_BODY4(gelu_tanh256_ps); return 1;
    case ON_UN_EXP: UN_BODY4(exp256_ps); return 1;
    case ON_UN_NEG: UN_BODY(_mm256_sub_ps(zero, v), 0); return 1;
    case ON_UN_ABS: UN_BODY(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), v), 0); return 1;
    case ON_UN_SQRT: UN_BODY(_mm256_sqrt_ps(v), 0); return 1;
    case ON_UN_AFFINE: UN_BODY(_mm256_fmadd_ps(v, va, vb), 0); return 1;
    default: return 0;
    }
}

/* ---- softmax / layer norm --------------------------------------------------------------------------- */
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* lanes [0, rem) of a vector: the row's last partial vector, read and written with masked moves
 * (masked-off lanes are never touched), so no column falls back to scalar expf */
static inline __m256i tail_mask256(size_t rem) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Softmax and log-softmax of one row. Two accumulators per pass: an attention row (a few hundred
 * columns) is otherwise bound by the latency of one max / add chain. */
static int softmax_row_avx2(const float *x, float *y, size_t cols, int log) {
    size_t i = 0;
    const size_t full = cols & ~(size_t)7, rem = cols - full;
    const __m256i mask = tail_mask256(rem);
    const __m256 fmask = _mm256_castsi256_ps(mask), ninf = _mm256_set1_ps(-INFINITY);
    __m256 vm0 = ninf, vm1 = ninf;
    for (; i + 16 <= full; i += 16) {
        vm0 = _mm256_max_ps(vm0, _mm256_loadu_ps(x + i));
        vm1 = _mm256_max_ps(vm1, _mm256_loadu_ps(x + i + 8));
    }
    if (i < full) vm0 = _mm256_max_ps(vm0, _mm256_loadu_ps(x + i));
    if (rem) vm1 = _mm256_max_ps(vm1, _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + full, mask), fmask));
    const float mx = hmax256(_mm256_max_ps(vm0, vm1));
    const __m256 m = _mm256_set1_ps(mx);
    __m256 vs0 = _mm256_setzero_ps(), vs1 = _mm256_setzero_ps();
    for (i = 0; i + 16 <= full; i += 16) {
        __m256 e0 = exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        __m256 e1 = exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), m));
        if (!log) {
            _mm256_storeu_ps(y + i, e0);
            _mm256_storeu_ps(y + i + 8, e1);
        }
        vs0 = _mm256_add_ps(vs0, e0);
        vs1 = _mm256_add_ps(vs1, e1);
    }
    if (i < full) {
        __m256 e = exp256_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        if (!log) _mm256_storeu_ps(y + i, e);
        vs0 = _mm256_add_ps(vs0, e);
    }
    if (rem) {
        __m256 e = _mm256_and_ps(exp256_ps(_mm256_sub_ps(_mm256_maskload_ps(x + full, mask), m)), fmask);
        if (!log) _mm256_maskstore_ps(y + full, mask, e);
        vs1 = _mm256_add_ps(vs1, e);
    }
    const float sum = hsum256(_mm256_add_ps(vs0, vs1));
    if (log) {
        const __m256 lse = _mm256_set1_ps(logf(sum));
        for (i = 0; i < full; i += 8)
            _mm256_storeu_ps(y + i, _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m), lse));
        if (rem)
            _mm256_maskstore_ps(y + full, mask, _mm256_sub_ps(_mm256_sub_ps(_mm256_maskload_ps(x + full, mask), m), lse));
        return 1;
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    for (i = 0; i < full; i += 8) _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_loadu_ps(y + i), inv));
    if (rem) _mm256_maskstore_ps(y + full, mask, _mm256_mul_ps(_mm256_maskload_ps(y + full, mask), inv));
    return 1;
}

static int layernorm_row_avx2(const float *x, const float *scale, const float *bias, float *y, size_t cols,
                              float eps) {
    size_t i = 0;
    __m256 vs = _mm256_setzero_ps();
    for (; i + 8 <= cols; i += 8) vs = _mm256_add_ps(vs, _mm256_loadu_ps(x + i));
    float sum = hsum256(vs);
    for (; i < cols; i++) sum += x[i];
    const float mean = sum / (float)cols;
    const __m256 vmean = _mm256_set1_ps(mean);
    __m256 vq = _mm256_setzero_ps();
    for (i = 0; i + 8 <= cols; i += 8) {
        __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + i), vmean);
        vq = _mm256_fmadd_ps(d, d, vq);
    }
    float q = hsum256(vq);
    for (; i < cols; i++) q += (x[i] - mean) * (x[i] - mean);
    const float inv = 1.0f / sqrtf(q / (float)cols + eps);
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= cols; i += 8) {
        __m256 n = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmean), vinv);
        __m256 b = bias ? _mm256_loadu_ps(bias + i) : _mm256_setzero_ps();
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(n, _mm256_loadu_ps(scale + i), b));
    }
    for (; i < cols; i++) y[i] = (x[i] - mean) * inv * scale[i] + (bias ? bias[i] : 0.0f);
    return 1;
}

/* defined in ops_pool_avx2.c */
int on_pool2d_plane_avx2(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oh, int64_t ow,
                         int64_t pb, int64_t pr, const on_pool2d_params *p);
int on_row_reduce_avx2(int is_max, const float *x, size_t n, float *out);
int on_pool2d_c8_row_avx2(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oy, int64_t ow,
                          int64_t pb, int64_t pr, const on_pool2d_params *p);

/* one ymm = the 8 lanes of a block: a and b stay in registers, two pixels per iteration */
static int affine_c8_rows_avx2(const float *x, float *y, size_t pixels, const float *a, const float *b) {
    const __m256 va = _mm256_loadu_ps(a), vb = _mm256_loadu_ps(b);
    size_t i = 0;
    for (; i + 2 <= pixels; i += 2) {
        _mm256_storeu_ps(y + i * 8, _mm256_fmadd_ps(_mm256_loadu_ps(x + i * 8), va, vb));
        _mm256_storeu_ps(y + i * 8 + 8, _mm256_fmadd_ps(_mm256_loadu_ps(x + i * 8 + 8), va, vb));
    }
    if (i < pixels) _mm256_storeu_ps(y + i * 8, _mm256_fmadd_ps(_mm256_loadu_ps(x + i * 8), va, vb));
    return 1;
}

const on_ops_table on_ops_table_avx2 = {
    "avx2-fma", binary_row_avx2, unary_avx2, softmax_row_avx2, layernorm_row_avx2, on_pool2d_plane_avx2,
    on_row_reduce_avx2, on_pool2d_c8_row_avx2, affine_c8_rows_avx2,
};

/* defined in ops_elementwise_avx512.c: the transcendental unary ops, 16 lanes wide */
int on_unary_avx512(on_unary_op op, const float *x, float *y, size_t n, float alpha, float beta);
int on_softmax_row_avx512(const float *x, float *y, size_t cols, int log);

static int unary_avx512_then_avx2(on_unary_op op, const float *x, float *y, size_t n, float alpha, float beta) {
    return on_unary_avx512(op, x, y, n, alpha, beta) || unary_avx2(op, x, y, n, alpha, beta);
}

static int softmax_row_avx512_then_avx2(const float *x, float *y, size_t cols, int log) {
    return on_softmax_row_avx512(x, y, cols, log) || softmax_row_avx2(x, y, cols, log);
}

/* AVX-512: the AVX2 table with the 16-lane transcendental ops and softmax. */
const on_ops_table on_ops_table_avx512 = {
    "avx512f", binary_row_avx2, unary_avx512_then_avx2, softmax_row_avx512_then_avx2, layernorm_row_avx2,
    on_pool2d_plane_avx2, on_row_reduce_avx2, on_pool2d_c8_row_avx2, affine_c8_rows_avx2,
};
