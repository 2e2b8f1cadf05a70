/* rnn_cell_avx512.c - the fused LSTM / GRU / RNN cells on 16 floats (AVX-512F), bodies in rnn_cell_simd.h,
 * exp / sigmoid / tanh shared with the elementwise ops (x86/math_avx512.h). Compiled with -mavx512f;
 * reached through the AVX-512 kernel table (dispatch.c). */
#include <immintrin.h>

#include "on_rnn.h"
#include "x86/math_avx512.h"

typedef __m512 V;
typedef __mmask16 VM;
#define V_LANES 16
#define v_load _mm512_loadu_ps
#define v_store _mm512_storeu_ps
#define v_set1 _mm512_set1_ps
#define v_add _mm512_add_ps
#define v_sub _mm512_sub_ps
#define v_mul _mm512_mul_ps
#define v_div _mm512_div_ps
#define v_fmadd _mm512_fmadd_ps
#define v_min _mm512_min_ps
#define v_max _mm512_max_ps
#define v_abs abs512_ps
#define v_exp exp512_ps
#define v_sigmoid sigmoid512_ps
#define v_tanh tanh512_ps
#define v_gt(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GT_OQ)
#define v_ge(a, b) _mm512_cmp_ps_mask((a), (b), _CMP_GE_OQ)
#define v_select(m, a, b) _mm512_mask_blend_ps((m), (b), (a))

#include "rnn_cell_simd.h"

const on_rnn_kernels on_rnn_kernels_avx512 = {
    .name = "avx512f",
    .lstm_row = lstm_row_simd,
    .gru_row = gru_row_simd,
    .gru_reset_row = gru_reset_row_simd,
    .rnn_row = rnn_row_simd,
};
