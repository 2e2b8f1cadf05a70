/* rnn_cell_neon.c - the fused LSTM / GRU / RNN cells on 4 floats (NEON), bodies in rnn_cell_simd.h,
 * exp / sigmoid / tanh shared with the elementwise ops (vmath_neon.h). Reached through the NEON kernel
 * table (dispatch.c). */
#include <arm_neon.h>

#include "on_rnn.h"
#include "arm/vmath_neon.h"

typedef float32x4_t V;
typedef uint32x4_t VM;
#define V_LANES 4
#define v_load vld1q_f32
#define v_store vst1q_f32
#define v_set1 vdupq_n_f32
#define v_add vaddq_f32
#define v_sub vsubq_f32
#define v_mul vmulq_f32
#define v_div vdivq_f32
#define v_fmadd(a, b, c) vfmaq_f32((c), (a), (b))
#define v_min vminq_f32
#define v_max vmaxq_f32
#define v_abs vabsq_f32
#define v_exp exp4_f32
#define v_sigmoid sigmoid4_f32
#define v_tanh tanh4_f32
#define v_gt vcgtq_f32
#define v_ge vcgeq_f32
#define v_select(m, a, b) vbslq_f32((m), (a), (b))

#include "rnn_cell_simd.h"

const on_rnn_kernels on_rnn_kernels_neon = {
    .name = "neon",
    .lstm_row = lstm_row_simd,
    .gru_row = gru_row_simd,
    .gru_reset_row = gru_reset_row_simd,
    .rnn_row = rnn_row_simd,
};
