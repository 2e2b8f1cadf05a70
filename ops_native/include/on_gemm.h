/* on_gemm.h - single-precision GEMM: C[M,N] = act(alpha * op(A) @ op(B) + bias).
 *
 * B (the weights) is packed once into column panels of ON_GEMM_NR floats ([panel][K][NR], zero
 * padded), the layout every micro-kernel (AVX2 6x16, NEON 6x16, portable 4x16) reads. A is read in
 * place (row-major, row stride lda). Bias and activation are applied in the store of the last K
 * block. Matrices are row-major; lda/ldb/ldc are row strides in elements.
 */
#ifndef ON_GEMM_H
#define ON_GEMM_H

#include "on_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ON_GEMM_NR 16  /* columns per packed-B panel: two AVX2 registers, four NEON registers */

typedef enum {
    ON_BIAS_NONE = 0,
    ON_BIAS_SCALAR, /* bias[0] added everywhere */
    ON_BIAS_COL,    /* bias[n], length N (Gemm / MatMul + Add) */
    ON_BIAS_ROW     /* bias[m], length M (convolution: one bias per output channel) */
} on_bias_kind;

typedef struct {
    float alpha;
    on_bias_kind bias_kind;
    const float *bias;
    on_act_t act;
} on_gemm_epilogue;

/* Weights packed into panels. Immutable after creation; safe to share between threads. */
typedef struct {
    size_t K, N;
    size_t npanels;  /* ceil(N / ON_GEMM_NR) */
    float *data;     /* npanels * K * ON_GEMM_NR floats */
} on_packed_b;

/* Floats needed to pack a K x N matrix (0 on overflow). */
size_t on_packed_b_floats(size_t K, size_t N);
/* Pack b (K x N with row stride ldb; or N x K if trans_b) into dst (on_packed_b_floats floats). */
void on_pack_b(const float *b, size_t ldb, int trans_b, size_t K, size_t N, float *dst, int nthreads);
on_status on_packed_b_create(const float *b, size_t ldb, int trans_b, size_t K, size_t N, on_packed_b **out);
void on_packed_b_free(on_packed_b *pb);

/* C = act(alpha * op(A) @ B + bias) with B packed. op(A) is M x K: A is M x K (lda >= K), or
 * K x M (lda >= M) if trans_a. */
on_status on_gemm_packed(int trans_a, size_t M, size_t N, size_t K, const float *A, size_t lda,
                         const on_packed_b *B, const on_gemm_epilogue *ep, float *C, size_t ldc, int nthreads);

/* Same with B unpacked (e.g. MatMul of two activations): packs B into a scratch buffer per call. */
on_status on_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda,
                  const float *B, size_t ldb, const on_gemm_epilogue *ep, float *C, size_t ldc, int nthreads);
/* nbatch independent products C_i = op(A_i) op(B_i) (+ epilogue), A_i = A + i * stride_a, likewise B and
 * C. Products too small to split (attention heads at short sequences) are spread over the threads
 * whole; larger ones are cut into 16-column panels, all products' panels shared out as one list. */
on_status on_gemm_batch(int trans_a, int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda,
                        size_t stride_a, const float *B, size_t ldb, size_t stride_b, const on_gemm_epilogue *ep,
                        float *C, size_t ldc, size_t stride_c, size_t nbatch, int nthreads);

/* Plain triple-loop reference (double accumulation), same contract as on_gemm. */
on_status on_gemm_ref(int trans_a, int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda,
                      const float *B, size_t ldb, const on_gemm_epilogue *ep, float *C, size_t ldc);

/* Epilogue with alpha 1, no bias, no activation. */
on_gemm_epilogue on_gemm_epilogue_default(void);

/* Single-core f32 FMA throughput of an ISA in GFLOP/s, measured by a register-only FMA loop for about
 * `seconds` (best of 5 slices): the peak that the %-of-peak figures of the benchmarks divide by.
 * 0 when the ISA is not available. */
double on_fma_peak_gflops(on_isa_t isa, double seconds);

#ifdef __cplusplus
}
#endif
#endif /* ON_GEMM_H */
