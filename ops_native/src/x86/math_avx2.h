/* math_avx2.h - exp, sigmoid, tanh, erf, erfc, GELU and SiLU on 8 floats (AVX2 + FMA): shared by the
 * elementwise ops and the fused activations of the GEMM and conv kernels (act_avx2.h), so a fused
 * epilogue computes exactly what the separate op would. */
#ifndef ON_MATH_AVX2_H
#define ON_MATH_AVX2_H

#include <immintrin.h>

#include "x86/math_coeffs.h"

/* exp(x) for 8 floats: range reduction x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial, 2^n built in
 * the exponent field (constants in math_coeffs.h). Relative error ~2 ulp over [-87, 88]. */
static inline __m256 exp256_ps(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(ON_EXP_LO)), _mm256_set1_ps(ON_EXP_HI));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(ON_LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(ON_LN2_HI), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(ON_LN2_LO), r);
    __m256 p = _mm256_set1_ps(on_exp_poly[0]);
    for (int k = 1; k < 6; k++) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(on_exp_poly[k]));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static inline __m256 sigmoid256_ps(__m256 x) {
    __m256 e = exp256_ps(_mm256_sub_ps(_mm256_setzero_ps(), x));
    return _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

/* tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)); small |x| by its odd Taylor series to keep relative accuracy. */
static inline __m256 tanh256_ps(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 ax = _mm256_andnot_ps(sign, x);
    __m256 e = exp256_ps(_mm256_add_ps(ax, ax));
    __m256 t = _mm256_sub_ps(_mm256_set1_ps(1.0f),
                             _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
    __m256 x2 = _mm256_mul_ps(ax, ax);
    __m256 s = _mm256_fmadd_ps(x2, _mm256_set1_ps(0.1333333333f), _mm256_set1_ps(-0.3333333333f));
    s = _mm256_fmadd_ps(_mm256_mul_ps(s, x2), ax, ax);
    __m256 small = _mm256_cmp_ps(ax, _mm256_set1_ps(0.0625f), _CMP_LT_OQ);
    t = _mm256_blendv_ps(t, s, small);
    return _mm256_or_ps(t, _mm256_and_ps(x, sign));
}

/* erf for |x| < 1 (series in math_coeffs.h; keeps relative accuracy near 0). */
static inline __m256 erf_small256_ps(__m256 x) {
    __m256 x2 = _mm256_mul_ps(x, x);
    __m256 p = _mm256_set1_ps(on_erf_small_c[10]);
    for (int k = 9; k >= 0; k--) p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(on_erf_small_c[k]));
    return _mm256_mul_ps(p, x);
}

/* erfc(z) for z >= 0 (math_coeffs.h): relative error < 1.2e-7, so 1 + erf(x) = erfc(-x) stays accurate
 * where it is tiny (GELU of large negative inputs). */
static inline __m256 erfc_pos256_ps(__m256 z) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.5f), z, one));
    __m256 p = _mm256_set1_ps(on_erfc_c[9]);
    for (int k = 8; k >= 0; k--) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(on_erfc_c[k]));
    return _mm256_mul_ps(t, exp256_ps(_mm256_fnmadd_ps(z, z, p)));
}

static inline __m256 erf256_ps(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
    __m256 ax = _mm256_andnot_ps(sign, x);
    __m256 large = _mm256_sub_ps(one, erfc_pos256_ps(ax));
    large = _mm256_or_ps(large, _mm256_and_ps(x, sign));
    return _mm256_blendv_ps(large, erf_small256_ps(x), _mm256_cmp_ps(ax, one, _CMP_LT_OQ));
}

/* GELU's tanh approximation 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as the equal
 * x sigmoid(2u): no cancellation in 1 + tanh(u) for negative x. */
static inline __m256 gelu_tanh256_ps(__m256 x) {
    __m256 t = _mm256_fmadd_ps(_mm256_mul_ps(x, x), _mm256_set1_ps(0.044715f), _mm256_set1_ps(1.0f));
    __m256 z = _mm256_mul_ps(_mm256_mul_ps(x, t), _mm256_set1_ps(2.0f * 0.7978845608028654f));
    return _mm256_mul_ps(x, sigmoid256_ps(z));
}

/* 0.5 x (1 + erf(x / sqrt 2)) with 1 + erf(u) = 2 - erfc(|u|) for u >= 0 and erfc(|u|) for u < 0: one
 * erfc evaluation (relative error < 1.2e-7, so tiny outputs for large negative x stay accurate). Near
 * u = 0 the absolute error of 1 + erf is ~1e-7 of a value close to 1, so no series branch is needed. */
static inline __m256 gelu256_ps(__m256 x) {
    const __m256 sign = _mm256_set1_ps(-0.0f), two = _mm256_set1_ps(2.0f);
    __m256 u = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678118654752f));
    __m256 ec = erfc_pos256_ps(_mm256_andnot_ps(sign, u));
    __m256 e = _mm256_blendv_ps(_mm256_sub_ps(two, ec), ec, u); /* blend on the sign bit of u */
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), e);
}

/* x * sigmoid(x) */
static inline __m256 silu256_ps(__m256 x) { return _mm256_mul_ps(x, sigmoid256_ps(x)); }

#endif
