/* gemm_f32_avx512.c - f32 GEMM micro-kernel 12x16 for AVX-512F.
 *
 * The packed-B format is the AVX2 one (panels of 16 columns), so weights packed at load serve either
 * ISA: one zmm holds a whole panel row. Each k step is one B load and 12 FMAs whose A operand is an
 * embedded broadcast from memory ({1to16}), so 12 accumulators + 1 B register use 13 of the 32 zmm
 * and the 12 independent chains cover the FMA latency (2 pipes x 4 cycles on Zen 4/5 and Intel).
 * Tiles of fewer rows split K over several accumulator sets to keep 8+ chains in flight. Bias,
 * alpha and the activation are applied in registers; a partial panel uses a masked load/store.
 */
#include <immintrin.h>

#include "gemm_internal.h"
#include "x86/act_avx512.h"

#define NR ON_GEMM_NR
#define MR_MAX 12
/* B rows prefetched this many k steps ahead in the two-panel tile: weights that stream from DRAM
 * (the late 1x1 layers of a MobileNet, classifier GEMVs) arrive ~15% sooner than with the hardware
 * prefetchers alone (measured in-graph on Zen 5); a prefetch past the panel end is harmless. */
#ifndef GEMM_PREFETCH
#define GEMM_PREFETCH 32
#endif
/* Tiles of at most 4 rows (GEMV-like products) are bound by the weight stream alone: prefetching 128
 * steps (8 KiB per panel) ahead measured 20-30 % faster on MobileNetV2's 1280 x 1000 classifier in the
 * graph, where its 5 MB of weights come from L3 or DRAM. */
#ifndef GEMM_PREFETCH_FEW_ROWS
#define GEMM_PREFETCH_FEW_ROWS 128
#endif


/* Accumulate (K blocks after the first), epilogue, (masked) store of one tile row. */
static inline __attribute__((always_inline)) void store_row(__m512 v, float *cr, __mmask16 kmask, int full,
                                                            int accumulate, const on_gemm_epilogue *ep, __m512 bcol,
                                                            size_t m) {
    if (accumulate) v = _mm512_add_ps(v, full ? _mm512_loadu_ps(cr) : _mm512_maskz_loadu_ps(kmask, cr));
    if (ep) {
        __m512 b = ep->bias_kind == ON_BIAS_ROW ? _mm512_set1_ps(ep->bias[m]) : bcol;
        v = ep->alpha != 1.0f ? _mm512_fmadd_ps(v, _mm512_set1_ps(ep->alpha), b) : _mm512_add_ps(v, b);
        v = act_avx512(v, &ep->act);
    }
    if (full) _mm512_storeu_ps(cr, v);
    else _mm512_mask_storeu_ps(cr, kmask, v);
}

/* MR rows (1..12) with K split over KS accumulator sets (MR * KS <= 24 registers). MR and KS are
 * constants after inlining, so the accumulator array lives in registers. */
static inline __attribute__((always_inline)) void tile_rows(const int MR, const int KS, size_t nr, size_t kc,
                                                            const float *a, size_t lda, const float *b, size_t ldb,
                                                            float *c, size_t ldc, int accumulate,
                                                            const on_gemm_epilogue *ep, size_t m0, size_t n0) {
    __m512 acc[4][MR_MAX];
#pragma GCC unroll 4
    for (int s = 0; s < KS; s++)
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) acc[s][r] = _mm512_setzero_ps();
    size_t k = 0;
    if (KS > 1)
        for (; k + (size_t)KS <= kc; k += (size_t)KS) {
#pragma GCC unroll 4
            for (int s = 0; s < KS; s++) {
                const __m512 bv = _mm512_loadu_ps(b + (k + (size_t)s) * ldb);
#pragma GCC unroll 12
                for (int r = 0; r < MR; r++)
                    acc[s][r] = _mm512_fmadd_ps(_mm512_set1_ps(a[(size_t)r * lda + k + (size_t)s]), bv, acc[s][r]);
            }
        }
    for (; k < kc; k++) {
        const __m512 bv = _mm512_loadu_ps(b + k * ldb);
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) acc[0][r] = _mm512_fmadd_ps(_mm512_set1_ps(a[(size_t)r * lda + k]), bv, acc[0][r]);
    }
#pragma GCC unroll 4
    for (int s = 1; s < KS; s++)
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) acc[0][r] = _mm512_add_ps(acc[0][r], acc[s][r]);

    const int full = nr == NR;
    const __mmask16 kmask = full ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1u);
    __m512 bcol = _mm512_setzero_ps();
    if (ep && ep->bias_kind == ON_BIAS_COL) bcol = _mm512_maskz_loadu_ps(kmask, ep->bias + n0);
    else if (ep && ep->bias_kind == ON_BIAS_SCALAR) bcol = _mm512_set1_ps(ep->bias[0]);
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++) store_row(acc[0][r], c + (size_t)r * ldc, kmask, full, accumulate, ep, bcol, m0 + (size_t)r);
}

/* Two panels (32 columns): MR rows x 2 zmm, K split over KS sets (2 * MR * KS <= 24 registers). One A
 * broadcast now feeds two FMAs, so a k step of 12 rows is 2 B loads + 12 broadcasts for 24 FMAs. */
static inline __attribute__((always_inline)) void tile_rows2(const int MR, const int KS, size_t nr, size_t kc,
                                                             const float *a, size_t lda, const float *b, size_t ldb,
                                                             size_t bstride, float *c, size_t ldc, int accumulate,
                                                             const on_gemm_epilogue *ep, size_t m0, size_t n0) {
    __m512 acc[4][MR_MAX][2];
    const float *b1 = b + bstride;
    const size_t pf = MR <= 4 ? GEMM_PREFETCH_FEW_ROWS : GEMM_PREFETCH;
#pragma GCC unroll 4
    for (int s = 0; s < KS; s++)
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) acc[s][r][0] = acc[s][r][1] = _mm512_setzero_ps();
    size_t k = 0;
    if (KS > 1)
        for (; k + (size_t)KS <= kc; k += (size_t)KS) {
#pragma GCC unroll 4
            for (int s = 0; s < KS; s++) {
                _mm_prefetch((const char *)(b + (k + (size_t)s + pf) * ldb), _MM_HINT_T0);
                _mm_prefetch((const char *)(b1 + (k + (size_t)s + pf) * ldb), _MM_HINT_T0);
                const __m512 bv0 = _mm512_loadu_ps(b + (k + (size_t)s) * ldb);
                const __m512 bv1 = _mm512_loadu_ps(b1 + (k + (size_t)s) * ldb);
#pragma GCC unroll 12
                for (int r = 0; r < MR; r++) {
                    const __m512 av = _mm512_set1_ps(a[(size_t)r * lda + k + (size_t)s]);
                    acc[s][r][0] = _mm512_fmadd_ps(av, bv0, acc[s][r][0]);
                    acc[s][r][1] = _mm512_fmadd_ps(av, bv1, acc[s][r][1]);
                }
            }
        }
    for (; k < kc; k++) {
        _mm_prefetch((const char *)(b + (k + pf) * ldb), _MM_HINT_T0);
        _mm_prefetch((const char *)(b1 + (k + pf) * ldb), _MM_HINT_T0);
        const __m512 bv0 = _mm512_loadu_ps(b + k * ldb), bv1 = _mm512_loadu_ps(b1 + k * ldb);
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) {
            const __m512 av = _mm512_set1_ps(a[(size_t)r * lda + k]);
            acc[0][r][0] = _mm512_fmadd_ps(av, bv0, acc[0][r][0]);
            acc[0][r][1] = _mm512_fmadd_ps(av, bv1, acc[0][r][1]);
        }
    }
#pragma GCC unroll 4
    for (int s = 1; s < KS; s++)
#pragma GCC unroll 12
        for (int r = 0; r < MR; r++) {
            acc[0][r][0] = _mm512_add_ps(acc[0][r][0], acc[s][r][0]);
            acc[0][r][1] = _mm512_add_ps(acc[0][r][1], acc[s][r][1]);
        }

    const int full1 = nr == 2 * NR;
    const __mmask16 k1 = full1 ? (__mmask16)0xFFFF : (__mmask16)((1u << (nr - NR)) - 1u);
    __m512 bcol0 = _mm512_setzero_ps(), bcol1 = bcol0;
    if (ep && ep->bias_kind == ON_BIAS_COL) {
        bcol0 = _mm512_loadu_ps(ep->bias + n0);
        bcol1 = _mm512_maskz_loadu_ps(k1, ep->bias + n0 + NR);
    } else if (ep && ep->bias_kind == ON_BIAS_SCALAR) {
        bcol0 = bcol1 = _mm512_set1_ps(ep->bias[0]);
    }
#pragma GCC unroll 12
    for (int r = 0; r < MR; r++) {
        float *cr = c + (size_t)r * ldc;
        store_row(acc[0][r][0], cr, (__mmask16)0xFFFF, 1, accumulate, ep, bcol0, m0 + (size_t)r);
        store_row(acc[0][r][1], cr + NR, k1, full1, accumulate, ep, bcol1, m0 + (size_t)r);
    }
}

static void f32_gemm2_12x32__avx512f(size_t mr, size_t nr, size_t kc, const float *a, size_t lda, const float *b,
                                     size_t ldb, size_t bstride, float *c, size_t ldc, int accumulate,
                                     const on_gemm_epilogue *ep, size_t m0, size_t n0) {
    switch (mr) {
    case 1: tile_rows2(1, 4, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 2: tile_rows2(2, 2, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 3: tile_rows2(3, 2, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 4: tile_rows2(4, 1, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 5: tile_rows2(5, 1, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 6: tile_rows2(6, 1, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 7: tile_rows2(7, 1, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 8: tile_rows2(8, 1, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 9: tile_rows2(9, 1, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 10: tile_rows2(10, 1, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    case 11: tile_rows2(11, 1, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    default: tile_rows2(12, 1, nr, kc, a, lda, b, ldb, bstride, c, ldc, accumulate, ep, m0, n0); break;
    }
}

static void f32_gemm_12x16__avx512f(size_t mr, size_t nr, size_t kc, const float *a, size_t lda, const float *b,
                                    size_t ldb, float *c, size_t ldc, int accumulate, const on_gemm_epilogue *ep,
                                    size_t m0, size_t n0) {
    switch (mr) {
    case 1: tile_rows(1, 4, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 2: tile_rows(2, 4, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 3: tile_rows(3, 3, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 4: tile_rows(4, 2, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 5: tile_rows(5, 2, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 6: tile_rows(6, 2, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 7: tile_rows(7, 2, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 8: tile_rows(8, 1, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 9: tile_rows(9, 1, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 10: tile_rows(10, 1, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    case 11: tile_rows(11, 1, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    default: tile_rows(12, 1, nr, kc, a, lda, b, ldb, c, ldc, accumulate, ep, m0, n0); break;
    }
}

const on_gemm_ukernel on_f32_gemm_12x16__avx512f = {"f32_gemm_12x16__avx512f", MR_MAX, f32_gemm_12x16__avx512f,
                                                    f32_gemm2_12x32__avx512f};

/* Peak probe: 12 independent FMA chains, enough to fill 2 pipes x 4-6 cycles of latency. */
float on_fma_burst__avx512(size_t iters) {
    __m512 v[12];
    const __m512 m = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-4f);
    for (int i = 0; i < 12; i++) v[i] = _mm512_set1_ps((float)i * 1e-3f);
    for (size_t it = 0; it < iters; it++)
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) v[i] = _mm512_fmadd_ps(v[i], m, c);
    float s = 0.0f;
    for (int i = 0; i < 12; i++) s += _mm512_cvtss_f32(v[i]);
    return s;
}
