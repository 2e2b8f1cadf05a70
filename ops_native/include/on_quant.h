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
void on_dynamic_qparams_f32(const float *x, size_t n, float *scale, int32_t *zp, int nthreads);

/* y = quantize(x) - zp as int16 (the GEMM's operand), per tensor; and plain per-tensor uint8 quantize
 * (DynamicQuantizeLinear's output). zp in 0..255. */
on_status on_quantize_u8_pt(const float *x, uint8_t *y, size_t n, float scale, int32_t zp, int nthreads);
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
/* ---- packed integer GEMM (B in panels of pairs: the operand layout of _mm256_madd_epi16) ------------- */
/* B [kk, n] is packed once into panels of ON_QGEMM_NR columns; inside a panel, pair p (k = 2p, 2p + 1)
 * holds for each column j the two values b[2p][j], b[2p + 1][j] side by side, so one broadcast of A's
 * pair (a[i][2p], a[i][2p + 1]) times one panel row gives NR int32 sums with no horizontal add. Values
 * are 8-bit minus their zero point (int16); k >= kk and j >= n are zero. */
#define ON_QGEMM_NR 16

/* int16 elements of the packed form of a [kk, n] B. */
size_t on_qgemm_packed_size(size_t kk, size_t n);
/* Pack uint8 / int8 B, element (k, j) at b[k * sk + j * sj], minus zp[j * zp_stride] (zp_stride 0: one zero
 * point), into bp (on_qgemm_packed_size(kk, n) int16). sk = ldb, sj = 1: B row-major; sk = 1, sj = ldb: B^T. */
on_status on_qgemm_pack_b_q8(const void *b, on_qtype bt, size_t kk, size_t n, size_t sk, size_t sj, const int32_t *zp,
                             size_t zp_stride, int16_t *bp, int nthreads);
/* The same product and epilogue as on_qgemm_s16 with B packed by on_qgemm_pack_b_q8 (A int16 rows, lda >= kk).
 * bp8 instead of bp (bp NULL): the packed B narrowed to int8 by on_qgemm_narrow_s8, half the bytes to stream
 * where B is read from memory (a GEMV: one LSTM step, a few rows of A against a large weight). */
on_status on_qgemm_s16_packed(size_t m, size_t n, size_t kk, const int16_t *a, size_t lda, const int16_t *bp,
                              const int8_t *bp8, int32_t *c_i32, float *out_f32, size_t ldc, const float *scale,
                              size_t scale_stride, const float *bias, int accumulate, int nthreads);
/* out = bp as int8 (count values) when every value fits int8 (symmetric int8 weights, uint8 weights with zero
 * point 128: the centered values of most quantised weights); ON_ERR_ARG, out unspecified, when one does not. */
on_status on_qgemm_narrow_s8(const int16_t *bp, size_t count, int8_t *out);

/* ---- ConvInteger's packing ------------------------------------------------------------------------ */
/* The im2col of one image's channels x [c, h, w] (uint8 / int8, minus the scalar zero point zp; a padded
 * pixel is 0) as the packed B of the convolution's GEMM: B [c * kh * kw, oh * ow], row (ch, ky, kx), column
 * (oy, ox). geom = {kh, kw, sh, sw, dh, dw, pad_top, pad_left, oh, ow}; cols: scratch of c * kh * kw * oh * ow
 * bytes (the unpacked im2col). */
on_status on_qconv_pack_im2col_q8(const void *x, on_qtype xt, size_t c, size_t h, size_t w, const size_t geom[10],
                                  int32_t zp, uint8_t *cols, int16_t *bp, int nthreads);

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
    /* acc[r * ON_QGEMM_NR + j] = sum_{k < kk} a[r * lda + k] * panel(k, j) for r < mr (mr <= ON_QGEMM_MR),
     * j < ON_QGEMM_NR: one register tile against one packed panel of B (on_qgemm_pack_b_q8). */
    void (*tile_packed)(size_t mr, size_t kk, const int16_t *a, size_t lda, const int16_t *panel, int32_t *acc);
    /* the same on a panel narrowed to int8 (on_qgemm_narrow_s8), widened in registers */
    void (*tile_packed_s8)(size_t mr, size_t kk, const int16_t *a, size_t lda, const int8_t *panel, int32_t *acc);
    /* lo = min(0, x), hi = max(0, x) over n floats (DynamicQuantizeLinear's range). */
    void (*range)(const float *x, size_t n, float *lo, float *hi);
    /* y[i] = saturate_u8(round_half_even(x[i] / scale) + zp) - sub, as uint8 (sub = 0) or int16 (y16). */
    void (*quantize_u8)(const float *x, size_t n, float scale, int32_t zp, uint8_t *y);
    void (*quantize_centered_s16)(const float *x, size_t n, float scale, int32_t zp, int16_t *y);
} on_quant_table;

/* Rows of the register tile (tile_packed): 6 x 16 int32 = 12 ymm accumulators on AVX2. */
#define ON_QGEMM_MR 6

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
