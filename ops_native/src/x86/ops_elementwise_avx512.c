/* ops_elementwise_avx512.c - AVX-512F versions of the transcendental unary ops (Gelu, Erf, Exp, Sigmoid,
 * Tanh). Compiled with -mavx512f; the AVX-512 ops table (ops_elementwise_avx2.c) tries these first and
 * takes the AVX2 bodies for every other op.
 *
 * Same algorithms and coefficients as the AVX2 bodies, 16 lanes wide, so both paths meet the same
 * tolerances against the reference. The one change: the 1 / (1 + z / 2) of erfc is rcp14 plus one
 * Newton step (relative error ~2^-28, below float rounding) instead of a divide, which on Zen 5 made
 * Gelu's throughput bound by that divide. Tails use masked loads and stores.
 * Also here: the softmax row, whose short rows (attention: 64 columns) are bound by the latency of
 * the max -> exp-sum -> scale chain; 16 lanes halve its length.
 */
#include <immintrin.h>

#include "on_ops.h"
#include "x86/math_coeffs.h"
#include "x86/vmath_avx512.h"

/* erf for |x| < 1 (series in math_coeffs.h). */
static inline __m512 erf_small512_ps(__m512 x) {
    __m512 x2 = _mm512_mul_ps(x, x);
    __m512 p = _mm512_set1_ps(on_erf_small_c[10]);
    for (int k = 9; k >= 0; k--) p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(on_erf_small_c[k]));
    return _mm512_mul_ps(p, x);
}

/* erfc(z) for z >= 0 (math_coeffs.h), the reciprocal by rcp14 + Newton. */
static inline __m512 erfc_pos512_ps(__m512 z) {
    __m512 t = recip512_ps(_mm512_fmadd_ps(_mm512_set1_ps(0.5f), z, _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(on_erfc_c[9]);
    for (int k = 8; k >= 0; k--) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(on_erfc_c[k]));
    return _mm512_mul_ps(t, exp512_ps(_mm512_fnmadd_ps(z, z, p)));
}

static inline __m512 erf512_ps(__m512 x) {
    __m512 ax = abs512_ps(x);
    __m512 large = copysign512_ps(_mm512_sub_ps(_mm512_set1_ps(1.0f), erfc_pos512_ps(ax)), x);
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(1.0f), _CMP_LT_OQ), large, erf_small512_ps(x));
}

/* 0.5 x (1 + erf(x / sqrt 2)) with 1 + erf(u) = 2 - erfc(|u|) for u >= 0 and erfc(|u|) for u < 0. */
static inline __m512 gelu512_ps(__m512 x) {
    __m512 u = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
    __m512 ec = erfc_pos512_ps(abs512_ps(u));
    /* sign bit of u (movepi32_mask would need AVX512DQ) */
    __mmask16 neg = _mm512_test_epi32_mask(_mm512_castps_si512(u), _mm512_set1_epi32((int)0x80000000u));
    __m512 e = _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(2.0f), ec), ec);
    return _mm512_mul_ps(_mm512_mul_ps(x, _mm512_set1_ps(0.5f)), e);
}

/* Four independent vectors per iteration: the bodies are long dependency chains (Horner polynomials,
 * exp), and four chains let the core interleave them. */
#define UN_BODY4_512(FN)                                                                          \
    do {                                                                                          \
        size_t i = 0;                                                                             \
        for (; i + 64 <= n; i += 64) {                                                            \
            __m512 r0 = FN(_mm512_loadu_ps(x + i)), r1 = FN(_mm512_loadu_ps(x + i + 16));         \
            __m512 r2 = FN(_mm512_loadu_ps(x + i + 32)), r3 = FN(_mm512_loadu_ps(x + i + 48));    \
            _mm512_storeu_ps(y + i, r0);                                                          \
            _mm512_storeu_ps(y + i + 16, r1);                                                     \
            _mm512_storeu_ps(y + i + 32, r2);                                                     \
            _mm512_storeu_ps(y + i + 48, r3);                                                     \
        }                                                                                         \
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, FN(_mm512_loadu_ps(x + i)));         \
        if (i < n) {                                                                              \
            const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);                                \
            _mm512_mask_storeu_ps(y + i, m, FN(_mm512_maskz_loadu_ps(m, x + i)));                 \
        }                                                                                         \
    } while (0)

int on_unary_avx512(on_unary_op op, const float *x, float *y, size_t n, float alpha, float beta) {
    (void)alpha;
    (void)beta;
    switch (op) {
    case ON_UN_GELU: UN_BODY4_512(gelu512_ps); return 1;
    case ON_UN_ERF: UN_BODY4_512(erf512_ps); return 1;
    case ON_UN_EXP: UN_BODY4_512(exp512_ps); return 1;
    case ON_UN_SIGMOID: UN_BODY4_512(sigmoid512_ps); return 1;
    case ON_UN_TANH: UN_BODY4_512(tanh512_ps); return 1;
    default: return 0;
    }
}

/* Softmax of one row (log = 0 only; 0: the caller takes the AVX2 row). */
int on_softmax_row_avx512(const float *x, float *y, size_t cols, int log) {
    if (log) return 0;
    size_t i = 0;
    __m512 vm = _mm512_set1_ps(-__builtin_inff());
    for (; i + 16 <= cols; i += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + i));
    const __mmask16 tail = (__mmask16)((1u << (cols - i)) - 1u);
    if (tail) vm = _mm512_mask_max_ps(vm, tail, vm, _mm512_maskz_loadu_ps(tail, x + i));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vm));
    __m512 vs = _mm512_setzero_ps();
    for (i = 0; i + 16 <= cols; i += 16) {
        __m512 e = exp512_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(y + i, e);
        vs = _mm512_add_ps(vs, e);
    }
    if (tail) {
        __m512 e = _mm512_maskz_mov_ps(tail, exp512_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + i), m)));
        _mm512_mask_storeu_ps(y + i, tail, e);
        vs = _mm512_add_ps(vs, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vs));
    for (i = 0; i + 16 <= cols; i += 16) _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_loadu_ps(y + i), inv));
    if (tail) _mm512_mask_storeu_ps(y + i, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, y + i), inv));
    return 1;
}
