/* ops_chanops_avx512.c - AVX-512F row kernels of LRN and PRelu (on_chanops.h): 16 pixels a register, the
 * tail under a mask, so a span needs no scalar loop. */
#include <immintrin.h>

#include "on_chanops.h"

/* t^0.75 = sqrt(t) * sqrt(sqrt(t)), t^0.5, t^1: exact in SIMD; any other beta takes the portable span. */
static int lrn_beta_mode(float beta) {
    return beta == 0.75f ? 1 : beta == 0.5f ? 2 : beta == 1.0f ? 3 : 0;
}

static inline __mmask16 tail_mask(size_t left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
}

static int lrn_span_avx512(const float *x, float *y, size_t c, size_t plane, size_t len, size_t lo, size_t hi,
                           float a, float bias, float beta, float *sum) {
    const int mode = lrn_beta_mode(beta);
    if (!mode) return 0;
    const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(bias), zero = _mm512_setzero_ps();
    for (size_t j = 0; j < len; j += 16) _mm512_mask_storeu_ps(sum + j, tail_mask(len - j), zero);
    for (size_t k = 0; k <= hi && k < c; k++) {
        const float *xk = x + k * plane;
        for (size_t j = 0; j < len; j += 16) {
            __mmask16 m = tail_mask(len - j);
            __m512 v = _mm512_maskz_loadu_ps(m, xk + j);
            _mm512_mask_storeu_ps(sum + j, m, _mm512_fmadd_ps(v, v, _mm512_maskz_loadu_ps(m, sum + j)));
        }
    }
    for (size_t ch = 0; ch < c; ch++) {
        const float *add = ch > 0 && ch + hi < c ? x + (ch + hi) * plane : NULL;
        const float *rem = ch > lo ? x + (ch - lo - 1) * plane : NULL;
        const float *xc = x + ch * plane;
        float *yc = y + ch * plane;
        for (size_t j = 0; j < len; j += 16) {
            __mmask16 m = tail_mask(len - j);
            __m512 s = _mm512_maskz_loadu_ps(m, sum + j);
            if (add) {
                __m512 v = _mm512_maskz_loadu_ps(m, add + j);
                s = _mm512_fmadd_ps(v, v, s);
            }
            if (rem) {
                __m512 v = _mm512_maskz_loadu_ps(m, rem + j);
                s = _mm512_fnmadd_ps(v, v, s);
            }
            _mm512_mask_storeu_ps(sum + j, m, s);
            __m512 t = _mm512_fmadd_ps(va, _mm512_max_ps(s, zero), vb);
            __m512 d = t;
            if (mode != 3) {
                __m512 r = _mm512_sqrt_ps(t);
                d = mode == 1 ? _mm512_mul_ps(r, _mm512_sqrt_ps(r)) : r;
            }
            /* masked-off lanes compute 0 / t and are never stored */
            _mm512_mask_storeu_ps(yc + j, m, _mm512_div_ps(_mm512_maskz_loadu_ps(m, xc + j), d));
        }
    }
    return 1;
}

static int prelu_row_avx512(const float *x, const float *s, int64_t ss, float *y, size_t n) {
    const __m512 zero = _mm512_setzero_ps();
    const __m512 vs = _mm512_set1_ps(s[0]);
    for (size_t i = 0; i < n; i += 16) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 sl = ss ? _mm512_maskz_loadu_ps(m, s + i) : vs;
        __mmask16 neg = _mm512_cmp_ps_mask(v, zero, _CMP_NGE_UQ);   /* x < 0 or NaN: slope * x, like x >= 0 ? */
        _mm512_mask_storeu_ps(y + i, m, _mm512_mask_mul_ps(v, neg, v, sl));
    }
    return 1;
}

const on_chan_table on_chan_table_avx512 = {"avx512f", lrn_span_avx512, prelu_row_avx512};
