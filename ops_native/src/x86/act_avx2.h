/* act_avx2.h - fused activations on 8 floats (AVX2 + FMA), shared by the GEMM and conv kernels.
 * Sigmoid, SiLU and GELU use the same vector math as the elementwise ops (math_avx2.h). */
#ifndef ON_ACT_AVX2_H
#define ON_ACT_AVX2_H

#include <immintrin.h>

#include "on_common.h"
#include "x86/math_avx2.h"

static inline __m256 act_avx2(__m256 v, const on_act_t *a) {
    switch (a->kind) {
    case ON_ACT_RELU: return _mm256_max_ps(v, _mm256_setzero_ps());
    case ON_ACT_CLIP: return _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(a->alpha)), _mm256_set1_ps(a->beta));
    case ON_ACT_LEAKY_RELU: {
        __m256 neg = _mm256_mul_ps(v, _mm256_set1_ps(a->alpha));
        return _mm256_blendv_ps(neg, v, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GE_OQ));
    }
    case ON_ACT_HARDSWISH: {
        __m256 t = _mm256_fmadd_ps(v, _mm256_set1_ps(1.0f / 6.0f), _mm256_set1_ps(0.5f));
        t = _mm256_min_ps(_mm256_max_ps(t, _mm256_setzero_ps()), _mm256_set1_ps(1.0f));
        return _mm256_mul_ps(v, t);
    }
    case ON_ACT_SIGMOID: return sigmoid256_ps(v);
    case ON_ACT_SILU: return silu256_ps(v);
    case ON_ACT_GELU: return gelu256_ps(v);
    default: return v;
    }
}

#endif
