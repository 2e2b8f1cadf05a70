/* rnn_cell_avx2.c - the fused LSTM / GRU / RNN cells on 8 floats (AVX2 + FMA), bodies in rnn_cell_simd.h,
 * exp / sigmoid / tanh shared with the elementwise ops (x86/math_avx2.h). Compiled with -mavx2 -mfma;
 * reached through the AVX2 kernel table (dispatch.c). */
#include <immintrin.h>

#include "on_rnn.h"
#include "x86/math_avx2.h"

typedef __m256 V;
typedef __m256 VM;
#define V_LANES 8
#define v_load _mm256_loadu_ps
#define v_store _mm256_storeu_ps
#define v_set1 _mm256_set1_ps
#define v_add _mm256_add_ps
#define v_sub _mm256_sub_ps
#define v_mul _mm256_mul_ps
#define v_div _mm256_div_ps
#define v_fmadd _mm256_fmadd_ps
#define v_min _mm256_min_ps
#define v_max _mm256_max_ps
#define v_abs(x) _mm256_andnot_ps(_mm256_set1_ps(-0.0f), (x))
#define v_exp exp256_ps
#define v_sigmoid sigmoid256_ps
#define v_tanh tanh256_ps
#define v_gt(a, b) _mm256_cmp_ps((a), (b), _CMP_GT_OQ)
#define v_ge(a, b) _mm256_cmp_ps((a), (b), _CMP_GE_OQ)
#define v_select(m, a, b) _mm256_blendv_ps((b), (a), (m))

#include "rnn_cell_simd.h"

const on_rnn_kernels on_rnn_kernels_avx2 = {
    .name = "avx2-fma",
    .lstm_row = lstm_row_simd,
    .gru_row = gru_row_simd,
    .gru_reset_row = gru_reset_row_simd,
    .rnn_row = rnn_row_simd,
};
