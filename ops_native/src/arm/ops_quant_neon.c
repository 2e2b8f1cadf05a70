/* ops_quant_neon.c - the integer GEMM's 1x4 dot tile on NEON: int16 x int16 widened into int32 lanes by
 * vmlal_s16 (exact: operands are 8-bit values minus their zero points; on_quant.h). */
#include <arm_neon.h>

#include "on_quant.h"

static void dot_1x4__neon(const int16_t *a, const int16_t *bt, size_t ldb, size_t kk, int32_t acc[4]) {
    int32x4_t s[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
    for (size_t k = 0; k < kk; k += 8) {
        int16x8_t va = vld1q_s16(a + k);
        for (int j = 0; j < 4; j++) {
            int16x8_t vb = vld1q_s16(bt + (size_t)j * ldb + k);
            s[j] = vmlal_s16(s[j], vget_low_s16(va), vget_low_s16(vb));
            s[j] = vmlal_s16(s[j], vget_high_s16(va), vget_high_s16(vb));
        }
    }
    for (int j = 0; j < 4; j++) acc[j] = vaddvq_s32(s[j]);
}

const on_quant_table on_quant_table_neon = {"neon", dot_1x4__neon};
