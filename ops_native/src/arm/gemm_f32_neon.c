/* gemm_f32_neon.c - f32 GEMM micro-kernel 6x16 for aarch64 Advanced SIMD.
 *
 * 6 rows x 16 columns = 24 q-register accumulators + 4 for the B row: 28 of the 32 registers. A is
 * broadcast from scalar loads with vfmaq_n_f32. The tile goes through a small stack buffer for
 * accumulate/epilogue (shared plain-C store).
 */
#include <arm_neon.h>

#include "gemm_internal.h"

#define NR ON_GEMM_NR

static inline __attribute__((always_inline)) void tile_body(const int MR, size_t nr, size_t kc, const float *a,
                                                            size_t lda, const float *b, size_t ldb, float *c,
                                                            size_t ldc,
                                                            int accumulate, const on_gemm_epilogue *ep, size_t m0,
                                                            size_t n0) {
    float32x4_t acc[6][4];
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++) acc[r][q] = vdupq_n_f32(0.0f);
    const float *ar[6];
    for (int r = 0; r < MR; r++) ar[r] = a + (size_t)r * lda;
    for (size_t k = 0; k < kc; k++) {
        const float *bk = b + k * ldb;
        float32x4_t b0 = vld1q_f32(bk), b1 = vld1q_f32(bk + 4), b2 = vld1q_f32(bk + 8), b3 = vld1q_f32(bk + 12);
        for (int r = 0; r < MR; r++) {
            float av = ar[r][k];
            acc[r][0] = vfmaq_n_f32(acc[r][0], b0, av);
            acc[r][1] = vfmaq_n_f32(acc[r][1], b1, av);
            acc[r][2] = vfmaq_n_f32(acc[r][2], b2, av);
            acc[r][3] = vfmaq_n_f32(acc[r][3], b3, av);
        }
    }
    if (!ep && nr == NR) {
        for (int r = 0; r < MR; r++) {
            float *cr = c + (size_t)r * ldc;
            for (int q = 0; q < 4; q++) {
                float32x4_t v = acc[r][q];
                if (accumulate) v = vaddq_f32(v, vld1q_f32(cr + 4 * q));
                vst1q_f32(cr + 4 * q, v);
            }
        }
        return;
    }
    float tile[6 * NR];
    for (int r = 0; r < MR; r++)
        for (int q = 0; q < 4; q++) vst1q_f32(tile + r * NR + 4 * q, acc[r][q]);
    on_gemm_store_tile_ref(tile, (size_t)MR, nr, c, ldc, accumulate, ep, m0, n0);
}

static void f32_gemm_6x16__neon(size_t mr, size_t nr, size_t kc, const float *a, size_t lda, const float *b,
                                size_t ldb, float *c, size_t ldc, int accumulate, const on_gemm_epilogue *ep,
                                size_t m0, size_t n0) {
    switch (mr) {
    case 1: tile_body(1, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 2: tile_body(2, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 3: tile_body(3, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 4: tile_body(4, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 5: tile_body(5, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    default: tile_body(6, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    }
}

const on_gemm_ukernel on_f32_gemm_6x16__neon = {"f32_gemm_6x16__neon", 6, f32_gemm_6x16__neon, NULL};

/* Peak probe: 12 independent FMA chains, enough to fill 2 pipes x 4-6 cycles of latency. */
float on_fma_burst__neon(size_t iters) {
    float32x4_t v[12];
    const float32x4_t m = vdupq_n_f32(0.999f), c = vdupq_n_f32(1e-4f);
    for (int i = 0; i < 12; i++) v[i] = vdupq_n_f32((float)i * 1e-3f);
    for (size_t it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) v[i] = vfmaq_f32(c, v[i], m);
    float s = 0.0f;
    for (int i = 0; i < 12; i++) s += vgetq_lane_f32(v[i], 0);
    return s;
}
