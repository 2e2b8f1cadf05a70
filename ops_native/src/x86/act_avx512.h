/* act_avx512.h - fused activations on 16 floats (AVX-512F), shared by the GEMM and conv kernels.
 * Sigmoid, SiLU and GELU use the same vector math as the elementwise ops (math_avx512.h). */
#ifndef ON_ACT_AVX512_H
#define ON_ACT_AVX512_H

#include <immintrin.h>

#include "on_common.h"
#include "x86/math_avx512.h"

/* The min/max kinds, inline at every accumulator. */
static inline __attribute__((always_inline)) __m512 act_cheap_avx512(__m512 v, const on_act_t *a) {
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
    default: return v;
    }
}

/* The exp/erf kinds over n registers' worth of values, out of line: inlined at each of a register
 * tile's 32 accumulators, three polynomial blocks per accumulator made one kernel file take ~50 s to
 * compile; these kinds cost tens of instructions per vector, so the trip through memory is noise. */
static __attribute__((noinline, unused)) void act_many_avx512(__m512 *v, int n, const on_act_t *a) {
    switch (a->kind) {
    case ON_ACT_SIGMOID: for (int i = 0; i < n; i++) v[i] = sigmoid512_ps(v[i]); break;
    case ON_ACT_SILU: for (int i = 0; i < n; i++) v[i] = silu512_ps(v[i]); break;
    case ON_ACT_GELU: for (int i = 0; i < n; i++) v[i] = gelu512_ps(v[i]); break;
    default: for (int i = 0; i < n; i++) v[i] = act_cheap_avx512(v[i], a); break;
    }
}

/* One register: cheap kinds inline, the others through act_many_avx512. */
static inline __attribute__((always_inline)) __m512 act_avx512(__m512 v, const on_act_t *a) {
    if (!on_act_is_transcendental(a->kind)) return act_cheap_avx512(v, a);
    __m512 t[1] = {v};
    act_many_avx512(t, 1, a);
    return t[0];
}

#endif
