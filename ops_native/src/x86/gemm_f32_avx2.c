/* gemm_f32_avx2.c - f32 GEMM micro-kernel 6x16 for AVX2 + FMA.
 *
 * 6 rows x 16 columns = 12 ymm accumulators + 2 for the B row + 1 broadcast of A: 15 of the 16
 * registers. A 1-row tile splits K over 4 accumulator pairs so 8 independent FMA chains are in
 * flight (Zen 3: 2 FMA pipes x 4-cycle latency); the driver avoids 1-2 row tiles elsewhere. Bias
 * and activation are applied in registers before the (masked) store. B rows are read with a stride
 * (ldb): 16 for packed panels, the matrix row stride when B is read in place.
 */
#include <immintrin.h>

#include "gemm_internal.h"
#include "x86/act_avx2.h"

#define NR ON_GEMM_NR

static inline __m256i col_mask(size_t nr, int half) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nr - 8 * half), idx);
}

/* Per-tile epilogue state: column masks and column bias, loaded once per tile. */
typedef struct {
    int full;
    __m256i k0, k1;
    __m256 bcol0, bcol1;
} tile_ctx;

static inline __attribute__((always_inline)) tile_ctx tile_ctx_make(size_t nr, const on_gemm_epilogue *ep,
                                                                    size_t n0) {
    tile_ctx t;
    t.full = nr == NR;
    t.k0 = t.full ? _mm256_set1_epi32(-1) : col_mask(nr, 0);
    t.k1 = t.full ? _mm256_set1_epi32(-1) : col_mask(nr, 1);
    t.bcol0 = t.bcol1 = _mm256_setzero_ps();
    if (ep && ep->bias_kind == ON_BIAS_COL) {
        t.bcol0 = _mm256_maskload_ps(ep->bias + n0, t.k0);
        t.bcol1 = _mm256_maskload_ps(ep->bias + n0 + 8, t.k1);
    } else if (ep && ep->bias_kind == ON_BIAS_SCALAR) {
        t.bcol0 = t.bcol1 = _mm256_set1_ps(ep->bias[0]);
    }
    return t;
}

/* One row of the tile: accumulate, epilogue, (masked) store. */
static inline __attribute__((always_inline)) void store_row(const tile_ctx *t, __m256 v0, __m256 v1, float *cr,
                                                            int accumulate, const on_gemm_epilogue *ep, size_t m) {
    if (accumulate) {
        v0 = _mm256_add_ps(v0, t->full ? _mm256_loadu_ps(cr) : _mm256_maskload_ps(cr, t->k0));
        v1 = _mm256_add_ps(v1, t->full ? _mm256_loadu_ps(cr + 8) : _mm256_maskload_ps(cr + 8, t->k1));
    }
    if (ep) {
        __m256 b0 = t->bcol0, b1 = t->bcol1;
        if (ep->bias_kind == ON_BIAS_ROW) b0 = b1 = _mm256_set1_ps(ep->bias[m]);
        if (ep->alpha != 1.0f) {
            __m256 al = _mm256_set1_ps(ep->alpha);
            v0 = _mm256_fmadd_ps(v0, al, b0);
            v1 = _mm256_fmadd_ps(v1, al, b1);
        } else {
            v0 = _mm256_add_ps(v0, b0);
            v1 = _mm256_add_ps(v1, b1);
        }
        v0 = act_avx2(v0, &ep->act);
        v1 = act_avx2(v1, &ep->act);
    }
    if (t->full) {
        _mm256_storeu_ps(cr, v0);
        _mm256_storeu_ps(cr + 8, v1);
    } else {
        _mm256_maskstore_ps(cr, t->k0, v0);
        _mm256_maskstore_ps(cr + 8, t->k1, v1);
    }
}

/* Sigmoid (rare) goes through the plain-C epilogue. */
/* MR (1..6) rows: named accumulators so they stay in registers; rows >= MR are compiled away. */
static inline __attribute__((always_inline)) void tile_rows(const int MR, size_t nr, size_t kc, const float *a,
                                                            size_t lda, const float *b, size_t ldb, float *c,
                                                            size_t ldc,
                                                            int accumulate, const on_gemm_epilogue *ep, size_t m0,
                                                            size_t n0) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    const float *a0 = a, *a1 = a + lda, *a2 = a + 2 * lda, *a3 = a + 3 * lda, *a4 = a + 4 * lda, *a5 = a + 5 * lda;
    for (size_t k = 0; k < kc; k++) {
        const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        b += ldb;
        __m256 av;
        av = _mm256_broadcast_ss(a0 + k);
        c00 = _mm256_fmadd_ps(av, b0, c00);
        c01 = _mm256_fmadd_ps(av, b1, c01);
        if (MR > 1) {
            av = _mm256_broadcast_ss(a1 + k);
            c10 = _mm256_fmadd_ps(av, b0, c10);
            c11 = _mm256_fmadd_ps(av, b1, c11);
        }
        if (MR > 2) {
            av = _mm256_broadcast_ss(a2 + k);
            c20 = _mm256_fmadd_ps(av, b0, c20);
            c21 = _mm256_fmadd_ps(av, b1, c21);
        }
        if (MR > 3) {
            av = _mm256_broadcast_ss(a3 + k);
            c30 = _mm256_fmadd_ps(av, b0, c30);
            c31 = _mm256_fmadd_ps(av, b1, c31);
        }
        if (MR > 4) {
            av = _mm256_broadcast_ss(a4 + k);
            c40 = _mm256_fmadd_ps(av, b0, c40);
            c41 = _mm256_fmadd_ps(av, b1, c41);
        }
        if (MR > 5) {
            av = _mm256_broadcast_ss(a5 + k);
            c50 = _mm256_fmadd_ps(av, b0, c50);
            c51 = _mm256_fmadd_ps(av, b1, c51);
        }
    }
    tile_ctx t = tile_ctx_make(nr, ep, n0);
    store_row(&t, c00, c01, c, accumulate, ep, m0);
    if (MR > 1) store_row(&t, c10, c11, c + ldc, accumulate, ep, m0 + 1);
    if (MR > 2) store_row(&t, c20, c21, c + 2 * ldc, accumulate, ep, m0 + 2);
    if (MR > 3) store_row(&t, c30, c31, c + 3 * ldc, accumulate, ep, m0 + 3);
    if (MR > 4) store_row(&t, c40, c41, c + 4 * ldc, accumulate, ep, m0 + 4);
    if (MR > 5) store_row(&t, c50, c51, c + 5 * ldc, accumulate, ep, m0 + 5);
}

/* One row (GEMV-like): K split over 4 accumulator pairs so 8 FMA chains are in flight. */
static void tile_1row(size_t nr, size_t kc, const float *a, const float *b, size_t ldb, float *c, size_t ldc,
                      int accumulate, const on_gemm_epilogue *ep, size_t m0, size_t n0) {
    __m256 x0 = _mm256_setzero_ps(), x1 = x0, y0 = x0, y1 = x0, z0 = x0, z1 = x0, w0 = x0, w1 = x0;
    size_t k = 0;
    for (; k + 4 <= kc; k += 4, b += 4 * ldb) {
        const float *b1 = b + ldb, *b2 = b + 2 * ldb, *b3 = b + 3 * ldb;
        x0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k), _mm256_loadu_ps(b), x0);
        x1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k), _mm256_loadu_ps(b + 8), x1);
        y0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 1), _mm256_loadu_ps(b1), y0);
        y1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 1), _mm256_loadu_ps(b1 + 8), y1);
        z0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 2), _mm256_loadu_ps(b2), z0);
        z1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 2), _mm256_loadu_ps(b2 + 8), z1);
        w0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 3), _mm256_loadu_ps(b3), w0);
        w1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k + 3), _mm256_loadu_ps(b3 + 8), w1);
    }
    for (; k < kc; k++, b += ldb) {
        x0 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k), _mm256_loadu_ps(b), x0);
        x1 = _mm256_fmadd_ps(_mm256_broadcast_ss(a + k), _mm256_loadu_ps(b + 8), x1);
    }
    x0 = _mm256_add_ps(_mm256_add_ps(x0, y0), _mm256_add_ps(z0, w0));
    x1 = _mm256_add_ps(_mm256_add_ps(x1, y1), _mm256_add_ps(z1, w1));
    tile_ctx t = tile_ctx_make(nr, ep, n0);
    store_row(&t, x0, x1, c, accumulate, ep, m0);
}

static void f32_gemm_6x16__avx2_fma(size_t mr, size_t nr, size_t kc, const float *a, size_t lda, const float *b,
                                    size_t ldb, float *c, size_t ldc, int accumulate, const on_gemm_epilogue *ep,
                                    size_t m0, size_t n0) {
    switch (mr) {
    case 1: tile_1row(nr, kc, a, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 2: tile_rows(2, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 3: tile_rows(3, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 4: tile_rows(4, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 5: tile_rows(5, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    default: tile_rows(6, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    }
}

const on_gemm_ukernel on_f32_gemm_6x16__avx2_fma = {"f32_gemm_6x16__avx2_fma", 6, f32_gemm_6x16__avx2_fma, NULL};

/* Peak probe: 12 independent FMA chains, enough to fill 2 pipes x 4-6 cycles of latency. */
float on_fma_burst__avx2(size_t iters) {
    __m256 v[12];
    const __m256 m = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-4f);
    for (int i = 0; i < 12; i++) v[i] = _mm256_set1_ps((float)i * 1e-3f);
    for (size_t it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) v[i] = _mm256_fmadd_ps(v[i], m, c);
    float s = 0.0f;
    for (int i = 0; i < 12; i++) s += _mm256_cvtss_f32(v[i]);
    return s;
}
