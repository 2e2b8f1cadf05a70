/* conv_nchwc_neon.c - direct NCHWc convolution row kernel for NEON.
 *
 * Same tiling as the AVX2 kernel with a block of ON_C0 = 8 channels held as two q registers:
 * NB blocks x P pixels, P = 8 / 6 / 4 for 1 / 2 / 3 blocks (at most 24 accumulators of the 32
 * q registers). Bias and activation are applied before the row buffer is transposed into NCHW.
 */
#include <arm_neon.h>

#include "conv_internal.h"

#define C0 ON_C0

static inline float32x4_t act_neon(float32x4_t v, const on_act_t *a) {
    switch (a->kind) {
    case ON_ACT_RELU: return vmaxq_f32(v, vdupq_n_f32(0.0f));
    case ON_ACT_CLIP: return vminq_f32(vmaxq_f32(v, vdupq_n_f32(a->alpha)), vdupq_n_f32(a->beta));
    case ON_ACT_LEAKY_RELU: return vbslq_f32(vcgeq_f32(v, vdupq_n_f32(0.0f)), v, vmulq_n_f32(v, a->alpha));
    case ON_ACT_HARDSWISH: {
        float32x4_t t = vfmaq_n_f32(vdupq_n_f32(0.5f), v, 1.0f / 6.0f);
        return vmulq_f32(v, vminq_f32(vmaxq_f32(t, vdupq_n_f32(0.0f)), vdupq_n_f32(1.0f)));
    }
    default: return v;
    }
}

static inline __attribute__((always_inline)) void tile(const int NB, const int P, const on_nchwc_row *r,
                                                       const float *xrow, size_t ow0) {
    const size_t CB = r->CB, ps = r->sw * CB, rs = r->PW * CB, cs = r->PH * rs;
    float32x4_t acc[ON_NCHWC_MAX_NB][8][2];
    for (int b = 0; b < NB; b++)
        for (int q = 0; q < P; q++) {
            acc[b][q][0] = vld1q_f32(r->bias + b * C0);
            acc[b][q][1] = vld1q_f32(r->bias + b * C0 + 4);
        }
    const float *wp = r->w;
    for (size_t icb = 0; icb < r->ncb; icb++)
        for (size_t kh = 0; kh < r->KH; kh++)
            for (size_t kw = 0; kw < r->KW; kw++) {
                const float *xs = xrow + icb * cs + kh * r->dh * rs + (ow0 * r->sw + kw * r->dw) * CB;
                for (size_t ci = 0; ci < CB; ci++, wp += C0) {
                    float32x4_t w[ON_NCHWC_MAX_NB][2];
                    for (int b = 0; b < NB; b++) {
                        w[b][0] = vld1q_f32(wp + b * r->wstride);
                        w[b][1] = vld1q_f32(wp + b * r->wstride + 4);
                    }
                    for (int q = 0; q < P; q++) {
                        float xv = xs[q * ps + ci];
                        for (int b = 0; b < NB; b++) {
                            acc[b][q][0] = vfmaq_n_f32(acc[b][q][0], w[b][0], xv);
                            acc[b][q][1] = vfmaq_n_f32(acc[b][q][1], w[b][1], xv);
                        }
                    }
                }
            }
    int act = !on_act_is_transcendental(r->act.kind);
    for (int b = 0; b < NB; b++)
        for (int q = 0; q < P; q++) {
            float *out = r->rowbuf + (b * r->ow_pad + ow0 + (size_t)q) * C0;
            vst1q_f32(out, act ? act_neon(acc[b][q][0], &r->act) : acc[b][q][0]);
            vst1q_f32(out + 4, act ? act_neon(acc[b][q][1], &r->act) : acc[b][q][1]);
        }
}

static inline __attribute__((always_inline)) void row_nb(const int NB, const on_nchwc_row *r, size_t oh) {
    const int P = NB == 1 ? 8 : (NB == 2 ? 6 : 4);
    const float *xrow = r->x + oh * r->sh * r->PW * r->CB;
    size_t ow = 0;
    for (; ow + (size_t)P <= r->OW; ow += (size_t)P) tile(NB, P, r, xrow, ow);
    for (; ow < r->OW; ow++) tile(NB, 1, r, xrow, ow);
}

void on_conv_nchwc_row__neon(const on_nchwc_row *r, size_t oh) {
    switch (r->nb) {
    case 1: row_nb(1, r, oh); break;
    case 2: row_nb(2, r, oh); break;
    default: row_nb(3, r, oh); break;
    }
    on_nchwc_store_rows_ref(r, on_act_is_transcendental(r->act.kind));
}
