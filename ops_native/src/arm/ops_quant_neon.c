/* ops_quant_neon.c - the integer GEMM's 1x4 dot tile on NEON: int16 x int16 widened into int32 lanes by
 * vmlal_s16 (exact: operands are 8-bit values minus their zero points; on_quant.h). */
#include <arm_neon.h>
#include <math.h>

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

/* MR x 16 tile on the packed panels: a panel row (16 columns x a pair of k) is 4 int16x8 vectors; each times
 * A's pair repeated (a0 a1 a0 a1 ...) widens into int32 products that a pairwise add turns into 4 column sums. */
static inline __attribute__((always_inline)) void tile_neon(size_t mr, int s8, size_t kk, const int16_t *a, size_t lda,
                                                            const void *panel, int32_t *acc) {
    int32x4_t c[ON_QGEMM_MR][4];
    for (size_t r = 0; r < mr; r++)
        for (int q = 0; q < 4; q++) c[r][q] = vdupq_n_s32(0);
    size_t kp = (kk + 1) / 2;
    for (size_t p = 0; p < kp; p++) {
        int16x8_t b[4];
        if (s8) {   /* the int8 panel widened */
            int8x16_t lo = vld1q_s8((const int8_t *)panel + p * 32), hi = vld1q_s8((const int8_t *)panel + p * 32 + 16);
            b[0] = vmovl_s8(vget_low_s8(lo));
            b[1] = vmovl_s8(vget_high_s8(lo));
            b[2] = vmovl_s8(vget_low_s8(hi));
            b[3] = vmovl_s8(vget_high_s8(hi));
        } else {
            for (int q = 0; q < 4; q++) b[q] = vld1q_s16((const int16_t *)panel + p * 32 + q * 8);
        }
        for (size_t r = 0; r < mr; r++) {
            int16_t lo = a[r * lda + 2 * p], hi = 2 * p + 1 < kk ? a[r * lda + 2 * p + 1] : 0;
            int16x4_t va = vreinterpret_s16_s32(vdup_n_s32((int32_t)(((uint32_t)(uint16_t)hi << 16) | (uint16_t)lo)));
            for (int q = 0; q < 4; q++) {
                int32x4_t pl = vmull_s16(vget_low_s16(b[q]), va), ph = vmull_s16(vget_high_s16(b[q]), va);
                c[r][q] = vaddq_s32(c[r][q], vpaddq_s32(pl, ph));
            }
        }
    }
    for (size_t r = 0; r < mr; r++)
        for (int q = 0; q < 4; q++) vst1q_s32(acc + r * 16 + q * 4, c[r][q]);
}

static void tile_packed__neon(size_t mr, size_t kk, const int16_t *a, size_t lda, const int16_t *panel, int32_t *acc) {
    tile_neon(mr, 0, kk, a, lda, panel, acc);
}

static void tile_packed_s8__neon(size_t mr, size_t kk, const int16_t *a, size_t lda, const int8_t *panel,
                                 int32_t *acc) {
    tile_neon(mr, 1, kk, a, lda, panel, acc);
}

static void range__neon(const float *x, size_t n, float *lo_out, float *hi_out) {
    float32x4_t lo = vdupq_n_f32(0.0f), hi = lo;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        float32x4_t v = vld1q_f32(x + i);
        lo = vminq_f32(lo, v);
        hi = vmaxq_f32(hi, v);
    }
    float mn = vminvq_f32(lo), mx = vmaxvq_f32(hi);
    for (; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    *lo_out = mn;
    *hi_out = mx;
}

/* 4 values: saturate(round_half_even(x / scale) + zp) to 0..255; vrndnq rounds half to even like rintf. */
static inline int32x4_t quant4(const float *x, float32x4_t vs, float32x4_t vz) {
    float32x4_t v = vaddq_f32(vrndnq_f32(vdivq_f32(vld1q_f32(x), vs)), vz);
    v = vminq_f32(vmaxq_f32(v, vdupq_n_f32(0.0f)), vdupq_n_f32(255.0f));
    return vcvtq_s32_f32(v);
}

static inline int32_t quant1(float x, float scale, int32_t zp) {
    float v = rintf(x / scale) + (float)zp;
    v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
    return (int32_t)v;
}

static void quantize_u8__neon(const float *x, size_t n, float scale, int32_t zp, uint8_t *y) {
    float32x4_t vs = vdupq_n_f32(scale), vz = vdupq_n_f32((float)zp);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        int16x8_t h = vcombine_s16(vmovn_s32(quant4(x + i, vs, vz)), vmovn_s32(quant4(x + i + 4, vs, vz)));
        vst1_u8(y + i, vqmovun_s16(h));
    }
    for (; i < n; i++) y[i] = (uint8_t)quant1(x[i], scale, zp);
}

static void quantize_centered_s16__neon(const float *x, size_t n, float scale, int32_t zp, int16_t *y) {
    float32x4_t vs = vdupq_n_f32(scale), vz = vdupq_n_f32((float)zp);
    int32x4_t vzi = vdupq_n_s32(zp);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) vst1_s16(y + i, vmovn_s32(vsubq_s32(quant4(x + i, vs, vz), vzi)));
    for (; i < n; i++) y[i] = (int16_t)(quant1(x[i], scale, zp) - zp);
}

const on_quant_table on_quant_table_neon = {"neon",           dot_1x4__neon,     tile_packed__neon,
                                            tile_packed_s8__neon, range__neon,     quantize_u8__neon,
                                            quantize_centered_s16__neon};
