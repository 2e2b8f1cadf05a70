/* gemm_internal.h - micro-kernel table shared by the GEMM and convolution drivers. */
#ifndef ON_GEMM_INTERNAL_H
#define ON_GEMM_INTERNAL_H

#include "on_gemm.h"

/* on_scratch slots used by this library (see on_common.h) */
#define ON_SLOT_GEMM_PACK_B 0  /* on_gemm: B packed per call */
#define ON_SLOT_GEMM_A 1       /* run_panels: contiguous copy of an A block */
#define ON_SLOT_CONV_COL 2     /* conv: im2col chunk; ConvTranspose: column matrix */
#define ON_SLOT_AUX 3          /* gemm: transposed A; depthwise: padded plane */

/* One register tile: rows [m0, m0+mr) x panel columns [n0, n0+nr) of C, over kc steps of K.
 * a: first row of A at the K offset (row stride lda); b: the 16 columns of B at the K offset, row
 * stride ldb (ON_GEMM_NR for a packed panel; the matrix row stride when B is read in place, which
 * needs nr == 16 columns readable).
 * accumulate: add to what C holds (partial sums of earlier K blocks). ep: NULL for a partial block,
 * else the epilogue applied in the store (m0/n0 index the bias). */
typedef void (*on_gemm_tile_fn)(size_t mr, size_t nr, size_t kc, const float *a, size_t lda, const float *b,
                                size_t ldb, float *c, size_t ldc, int accumulate, const on_gemm_epilogue *ep, size_t m0,
                                size_t n0);

/* Two adjacent panels in one tile: columns [n0, n0 + nr) with 16 < nr <= 32, the second panel at
 * b + bstride (K * NR for packed panels, 16 when B is read in place). Halves the A broadcasts per
 * FMA for kernels with registers to spare. */
typedef void (*on_gemm_tile2_fn)(size_t mr, size_t nr, size_t kc, const float *a, size_t lda, const float *b,
                                 size_t ldb, size_t bstride, float *c, size_t ldc, int accumulate,
                                 const on_gemm_epilogue *ep, size_t m0, size_t n0);

typedef struct {
    const char *name;
    size_t mr;          /* rows per register tile */
    on_gemm_tile_fn tile;
    on_gemm_tile2_fn tile2; /* NULL: the driver runs panels one at a time */
} on_gemm_ukernel;

extern const on_gemm_ukernel on_f32_gemm_4x16__scalar;
#if defined(__x86_64__)
extern const on_gemm_ukernel on_f32_gemm_6x16__avx2_fma;
extern const on_gemm_ukernel on_f32_gemm_12x16__avx512f;
#endif
#if defined(__aarch64__)
extern const on_gemm_ukernel on_f32_gemm_6x16__neon;
#endif

/* iters x 12 independent vector FMAs (the peak probe behind on_fma_peak_gflops); returns a value
 * derived from the results so the loop cannot be elided. */
float on_fma_burst__scalar(size_t iters);
#if defined(__x86_64__)
float on_fma_burst__avx2(size_t iters);
float on_fma_burst__avx512(size_t iters);
#endif
#if defined(__aarch64__)
float on_fma_burst__neon(size_t iters);
#endif

/* Compute rows [m_begin, m_end) x panels [p_begin, p_end) of C (N columns in all) from A and the
 * packed panels (panel p at panels + p * K * NR). Single-threaded; the callers split the work. */
void on_gemm_run_panels(const on_gemm_ukernel *uk, size_t m_begin, size_t m_end, size_t p_begin, size_t p_end,
                        size_t N, size_t K, const float *A, size_t lda, const float *panels, float *C,
                        size_t ldc, const on_gemm_epilogue *ep);

/* Same with B read in place: row-major, row stride ldb, panel p = columns [16p, 16p+16), all of
 * which must exist (callers pack a partial last panel and run it with on_gemm_run_panels). */
void on_gemm_run_rowmajor_b(const on_gemm_ukernel *uk, size_t m_begin, size_t m_end, size_t p_begin,
                            size_t p_end, size_t N, size_t K, const float *A, size_t lda, const float *B,
                            size_t ldb, float *C, size_t ldc, const on_gemm_epilogue *ep);

/* Write a computed tile (tile[r][0..nr), row stride NR) into C with accumulate + epilogue in plain C;
 * used by the portable and NEON kernels, and by AVX2 for the sigmoid epilogue. */
void on_gemm_store_tile_ref(const float *tile, size_t mr, size_t nr, float *c, size_t ldc, int accumulate,
                            const on_gemm_epilogue *ep, size_t m0, size_t n0);

#endif
