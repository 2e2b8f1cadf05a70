/* on_quant.h - 8-bit quantisation: (de)quantize, ONNX Runtime's dynamic parameters, the integer GEMM
 * behind MatMulInteger / ConvInteger / DynamicQuantizeMatMul / DynamicQuantizeLSTM, and the LSTM gates
 * the quantised LSTM applies after its two products.
 *
 * The GEMM works on int16 operands with the zero points already taken off (a - a_zp, b - b_zp): every
 * product of two 8-bit values minus their zero points fits int16 x int16 -> int32 exactly, and two of them
 * summed (the pair _mm256_madd_epi16 / vmlal sums) stay below 2^17, so no SIMD path can saturate (the trap
 * of _mm256_maddubs_epi16 on uint8 x int8, whose int16 pair sum overflows). Exact while K * 255 * 255 < 2^31,
 * i.e. K <= 33025; the drivers refuse a longer K.
 *
 * Same conventions as on_ops.h: validated arguments, an on_status, nthreads <= 1 runs on the caller.
 */
#ifndef ON_QUANT_H
#define ON_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "on_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { ON_Q_U8 = 0, ON_Q_S8 = 1, ON_Q_S32 = 2 } on_qtype;

/* Longest reduction the int32 accumulators hold exactly (see above). */
#define ON_QGEMM_MAX_K 33025

/* ---- (de)quantize ------------------------------------------------------------------------------- */
/* x viewed as [outer, c, inner]; channel ch uses scale[ch], zp[ch] (c = 1: per tensor).
 * quantize: y = saturate(round_half_even(x / scale) + zp) into uint8 / int8 (ONNX QuantizeLinear).
 * dequantize: y = (x - zp) * scale from uint8 / int8 / int32 (ONNX DequantizeLinear). */
on_status on_quantize_f32(const float *x, void *y, on_qtype yt, size_t outer, size_t c, size_t inner,
                          const float *scale, const int32_t *zp, int nthreads);
on_status on_dequantize_f32(const void *x, on_qtype xt, float *y, size_t outer, size_t c, size_t inner,
                            const float *scale, const int32_t *zp, int nthreads);

/* ONNX DynamicQuantizeLinear's parameters (ONNX Runtime's float arithmetic): the range [min(x, 0),
 * max(x, 0)] over 0..255, scale = (max - min) / 255 (1 when the range is empty), zp = round(-min / scale). */
void on_dynamic_qparams_f32(const float *x, size_t n, float *scale, int32_t *zp);

/* y = quantize(x) - zp as int16 (the GEMM's operand), per tensor. */
on_status on_quantize_centered_s16(const float *x, int16_t *y, size_t n, float scale, int32_t zp, int nthreads);
/* y[r * ldy + k] = x[r * ldx + k] - zp[r * zp_stride] for k < cols, 0 for cols <= k < ldy (K padding). */
on_status on_q8_to_s16(const void *x, on_qtype xt, size_t rows, size_t cols, size_t ldx, const int32_t *zp,
                       size_t zp_stride, int16_t *y, size_t ldy);

/* ---- integer GEMM -------------------------------------------------------------------------------- */
/* acc[i][j] = sum_k a[i * lda + k] * bt[j * ldb + k] (int32, exact), for i < m, j < n, k < kk; then
 *   out_f32 == NULL: c_i32[i * ldc + j] = acc
 *   else:            out_f32[i * ldc + j] = (accumulate ? out_f32[..] : 0) + (float)acc * scale[j * scale_stride]
 *                    (+ bias[j] when bias != NULL)
 * B is given transposed ([n][k] rows): a column of B is contiguous, as a row of A is. */
on_status on_qgemm_s16(size_t m, size_t n, size_t kk, const int16_t *a, size_t lda, const int16_t *bt, size_t ldb,
                       int32_t *c_i32, float *out_f32, size_t ldc, const float *scale, size_t scale_stride,
                       const float *bias, int accumulate, int nthreads);
/* The definition, one dot product at a time: what the tests compare with. */
on_status on_qgemm_s16_ref(size_t m, size_t n, size_t kk, const int16_t *a, size_t lda, const int16_t *bt,
                           size_t ldb, int32_t *c);

/* ---- LSTM gates (default activations: sigmoid, tanh, tanh) ------------------------------------------ */
/* g: [batch, 4H] pre-activations in ONNX gate order i, o, f, c (x W + h R, without bias); bias [4H];
 * peep [3H] (i, o, f) or NULL; c [batch, H] updated in place; h [batch, H] written, row stride ldh.
 * clip > 0 clips the pre-activations; input_forget couples f = 1 - i. */
on_status on_lstm_gates_f32(float *g, const float *bias, const float *peep, float *c, float *h, size_t ldh,
                            size_t batch, size_t hidden, float clip, int input_forget);

/* ---- fast-path table (one per ISA, in the ISA's kernel table: kernels.h) ----------------------------- */
typedef struct {
    const char *name;
    /* acc[r][j] = sum_{k < kk} a[r * lda + k] * bt[j * ldb + k] for r < 1, j < 4 (a 1x4 tile), kk a
     * multiple of 16; the driver does the tail. */
    void (*dot_1x4)(const int16_t *a, const int16_t *bt, size_t ldb, size_t kk, int32_t acc[4]);
} on_quant_table;

extern const on_quant_table on_quant_table_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const on_quant_table on_quant_table_avx2;
#endif
#if defined(__aarch64__)
extern const on_quant_table on_quant_table_neon;
#endif

#ifdef __cplusplus
}
#endif
#endif /* ON_QUANT_H */
