/* ops_chanops_avx2.c - AVX2/FMA row kernels of LRN and PRelu (on_chanops.h), 8 pixels a register. */
#include <immintrin.h>
#include <math.h>

#include "on_chanops.h"

/* The betas with an exact SIMD power: t^0.75 = sqrt(t) * sqrt(sqrt(t)) (AlexNet, GoogLeNet, ZFNet), t^0.5,
 * t^1. Any other beta goes to the portable span (powf). */
static int lrn_beta_mode(float beta) {
    return beta == 0.75f ? 1 : beta == 0.5f ? 2 : beta == 1.0f ? 3 : 0;
}

static inline float lrn_scale_1(int mode, float t) {
    float r = sqrtf(t);
    return mode == 1 ? r * sqrtf(r) : mode == 2 ? r : t;
}

static int lrn_span_avx2(const float *x, float *y, size_t c, size_t plane, size_t len, size_t lo, size_t hi,
                         float a, float bias, float beta, float *sum) {
    const int mode = lrn_beta_mode(beta);
    if (!mode) return 0;
    const __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(bias), zero = _mm256_setzero_ps();
    size_t j;
    for (j = 0; j < len; j++) sum[j] = 0.0f;
    for (size_t k = 0; k <= hi && k < c; k++) {
        const float *xk = x + k * plane;
        for (j = 0; j + 8 <= len; j += 8) {
            __m256 v = _mm256_loadu_ps(xk + j);
            _mm256_storeu_ps(sum + j, _mm256_fmadd_ps(v, v, _mm256_loadu_ps(sum + j)));
        }
        for (; j < len; j++) sum[j] += xk[j] * xk[j];
    }
    for (size_t ch = 0; ch < c; ch++) {
        const float *add = ch > 0 && ch + hi < c ? x + (ch + hi) * plane : NULL;
        const float *rem = ch > lo ? x + (ch - lo - 1) * plane : NULL;
        const float *xc = x + ch * plane;
        float *yc = y + ch * plane;
        for (j = 0; j + 8 <= len; j += 8) {
            __m256 s = _mm256_loadu_ps(sum + j);
            if (add) {
                __m256 v = _mm256_loadu_ps(add + j);
                s = _mm256_fmadd_ps(v, v, s);
            }
            if (rem) {
                __m256 v = _mm256_loadu_ps(rem + j);
                s = _mm256_fnmadd_ps(v, v, s);
            }
            _mm256_storeu_ps(sum + j, s);
            __m256 t = _mm256_fmadd_ps(va, _mm256_max_ps(s, zero), vb);
            __m256 d = t;
            if (mode != 3) {
                __m256 r = _mm256_sqrt_ps(t);
                d = mode == 1 ? _mm256_mul_ps(r, _mm256_sqrt_ps(r)) : r;
            }
            _mm256_storeu_ps(yc + j, _mm256_div_ps(_mm256_loadu_ps(xc + j), d));
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

static int prelu_row_avx2(const float *x, const float *s, int64_t ss, float *y, size_t n) {
    const __m256 zero = _mm256_setzero_ps();
    size_t i = 0;
    if (ss == 0) {
        const __m256 vs = _mm256_set1_ps(s[0]);
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            _mm256_storeu_ps(y + i, _mm256_blendv_ps(_mm256_mul_ps(v, vs), v, _mm256_cmp_ps(v, zero, _CMP_GE_OQ)));
        }
    } else {
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            __m256 neg = _mm256_mul_ps(v, _mm256_loadu_ps(s + i));
            _mm256_storeu_ps(y + i, _mm256_blendv_ps(neg, v, _mm256_cmp_ps(v, zero, _CMP_GE_OQ)));
        }
    }
    for (; i < n; i++) y[i] = x[i] >= 0.0f ? x[i] : s[(int64_t)i * ss] * x[i];
    return 1;
}

const on_chan_table on_chan_table_avx2 = {"avx2-fma", lrn_span_avx2, prelu_row_avx2};
