/* vmath_avx512.h - exp, sigmoid and tanh on 16 floats (AVX-512F), shared by the elementwise ops and the
 * recurrent cells (rnn_cell_avx512.c). Include only from *_avx512.c files. */
#ifndef ON_VMATH_AVX512_H
#define ON_VMATH_AVX512_H

#include <immintrin.h>

#include "x86/math_coeffs.h"

/* exp(x): x = n ln2 + r, |r| <= ln2 / 2, degree-6 polynomial (math_coeffs.h), 2^n built in the exponent
 * field. Relative error ~2 ulp over [-87, 88]. */
static inline __m512 exp512_ps(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(ON_EXP_LO)), _mm512_set1_ps(ON_EXP_HI));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(ON_LOG2E)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(ON_LN2_HI), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(ON_LN2_LO), r);
    __m512 p = _mm512_set1_ps(on_exp_poly[0]);
    for (int k = 1; k < 6; k++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(on_exp_poly[k]));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* 1 / d for d >= 1: rcp14 refined by one Newton step. */
static inline __m512 recip512_ps(__m512 d) {
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

static inline __m512 sigmoid512_ps(__m512 x) {
    __m512 e = exp512_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
    return _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

static inline __m512 abs512_ps(__m512 x) {
    return _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)));
}

static inline __m512 copysign512_ps(__m512 mag, __m512 sign_of) {
    const __m512i s = _mm512_set1_epi32((int)0x80000000u);
    return _mm512_castsi512_ps(
        _mm512_or_si512(_mm512_castps_si512(mag), _mm512_and_si512(_mm512_castps_si512(sign_of), s)));
}

/* tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)); |x| < 1/16 by its odd Taylor series. */
static inline __m512 tanh512_ps(__m512 x) {
    __m512 ax = abs512_ps(x);
    __m512 e = exp512_ps(_mm512_add_ps(ax, ax));
    __m512 t = _mm512_sub_ps(_mm512_set1_ps(1.0f),
                             _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
    __m512 x2 = _mm512_mul_ps(ax, ax);
    __m512 s = _mm512_fmadd_ps(x2, _mm512_set1_ps(0.1333333333f), _mm512_set1_ps(-0.3333333333f));
    s = _mm512_fmadd_ps(_mm512_mul_ps(s, x2), ax, ax);
    t = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(ax, _mm512_set1_ps(0.0625f), _CMP_LT_OQ), t, s);
    return copysign512_ps(t, x);
}

#endif
