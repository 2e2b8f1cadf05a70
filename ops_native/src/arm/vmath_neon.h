/* vmath_neon.h - exp, sigmoid and tanh on 4 floats (NEON), shared by the elementwise ops and the recurrent cells
 * (rnn_cell_neon.c). */
#ifndef ON_VMATH_NEON_H
#define ON_VMATH_NEON_H

#include <arm_neon.h>

/* exp(x) for 4 floats: x = n ln2 + r, degree-6 polynomial, 2^n in the exponent field (as the AVX2 path). */
static inline float32x4_t exp4_f32(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.3365478515625f)), vdupq_n_f32(88.3762626647949f));
    float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
    float32x4_t p = vdupq_n_f32(1.9875691500e-4f);
    p = vfmaq_f32(vdupq_n_f32(1.3981999507e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.3334519073e-3f), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.1665795894e-2f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.6666665459e-1f), p, r);
    p = vfmaq_f32(vdupq_n_f32(5.0000001201e-1f), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0f)), p, vmulq_f32(r, r));
    int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);
    return vmulq_f32(p, vreinterpretq_f32_s32(e));
}

static inline float32x4_t sigmoid4_f32(float32x4_t x) {
    return vdivq_f32(vdupq_n_f32(1.0f), vaddq_f32(vdupq_n_f32(1.0f), exp4_f32(vnegq_f32(x))));
}

/* tanh(x) = sign(x) (1 - 2 / (exp(2|x|) + 1)); |x| < 1/16 by its odd Taylor series (as the AVX2 path). */
static inline float32x4_t tanh4_f32(float32x4_t x) {
    float32x4_t ax = vabsq_f32(x);
    float32x4_t e = exp4_f32(vaddq_f32(ax, ax));
    float32x4_t t = vsubq_f32(vdupq_n_f32(1.0f), vdivq_f32(vdupq_n_f32(2.0f), vaddq_f32(e, vdupq_n_f32(1.0f))));
    float32x4_t x2 = vmulq_f32(ax, ax);
    float32x4_t s = vfmaq_f32(vdupq_n_f32(-0.3333333333f), x2, vdupq_n_f32(0.1333333333f));
    s = vfmaq_f32(ax, vmulq_f32(s, x2), ax);
    t = vbslq_f32(vcltq_f32(ax, vdupq_n_f32(0.0625f)), s, t);
    return vbslq_f32(vdupq_n_u32(0x80000000u), x, t);
}

#endif
