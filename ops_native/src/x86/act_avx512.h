/* act_avx512.h - fused activations on 16 floats (AVX-512F), shared by the GEMM and conv kernels.
 * Sigmoid, SiLU and GELU use the same vector math as the elementwise ops (math_avx512.h). */
#ifndef ON_ACT_AVX512_H
#define ON_ACT_AVX512_H

#include <immintrin.h>

#include "on_common.h"
#include "x86/math_avx512.h"

static inline __attribute__((always_inline)) __m512 act_avx512(__m512 v, const on_act_t *a) {
    switch (a->kind) {
    case ON_ACT_RELU: return _mm512_max_ps(v, _mm512_setzero_ps());
    case ON_ACT_CLIP: return _mm512_min_ps(_mm512_max_ps(v, _mm512_set1_ps(a->alpha)), _mm512_set1_ps(a->beta));
    case ON_ACT_LEAKY_RELU: {
        __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
        return _mm512_mask_mul_ps(v, neg, v, _mm512_set1_ps(a->alpha));
    }
    case ON_ACT_HARDSWISH: {
        __m512 t = _mm512_fmadd_ps(v, _mm512_set1_ps(1.0f / 6.0f), _mm512_set1_ps(0.5f));
        t = _mm512_min_ps(_mm512_max_ps(t, _mm512_setzero_ps()), _mm512_set1_ps(1.0f));
        return _mm512_mul_ps(v, t);
    }
    case ON_ACT_SIGMOID: return sigmoid512_ps(v);
    case ON_ACT_SILU: return silu512_ps(v);
    case ON_ACT_GELU: return gelu512_ps(v);
    default: return v;
    }
}

#endif
