/* vmath_avx2.h - exp, sigmoid and tanh on 8 floats (AVX2 + FMA), shared by the elementwise ops and the
 * recurrent cells (rnn_cell_avx2.c), so both compute one function. Include only from *_avx2.c files. */
#ifndef ON_VMATH_AVX2_H
#define ON_VMATH_AVX2_H

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

#endif
