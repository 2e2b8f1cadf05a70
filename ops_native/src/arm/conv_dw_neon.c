/* conv_dw_neon.c - depthwise convolution vectorised along W (4 output pixels per q register).
 *
 * Same zero-padded scratch plane as the other ISAs. Stride 1 loads 4 neighbours; stride 2 uses
 * vld2q_f32, whose first result holds the even lanes. Strides above 2 use the portable kernel.
 */
#include <arm_neon.h>

#include "conv_internal.h"

static inline float32x4_t act_neon(float32x4_t v, const on_act_t *a) {
    switch (a->kind) {
    case ON_ACT_RELU: return vmaxq_f32(v, vdupq_n_f32(0.0f));
    case ON_ACT_CLIP: return vminq_f32(vmaxq_f32(v, vdupq_n_f32(a->alpha)), vdupq_n_f32(a->beta));
    case ON_ACT_LEAKY_RELU: {
        uint32x4_t pos = vcgeq_f32(v, vdupq_n_f32(0.0f));
        return vbslq_f32(pos, v, vmulq_n_f32(v, a->alpha));
    }
    case ON_ACT_HARDSWISH: {
        float32x4_t t = vfmaq_n_f32(vdupq_n_f32(0.5f), v, 1.0f / 6.0f);
        t = vminq_f32(vmaxq_f32(t, vdupq_n_f32(0.0f)), vdupq_n_f32(1.0f));
        return vmulq_f32(v, t);
    }
    default: return v;
    }
}

void on_conv_dw_planes__neon(const on_dw_args *a, size_t begin, size_t end, float *pad) {
    const on_conv_params *p = a->p;
    if (p->stride_h > 2 || p->stride_w != p->stride_h) {
        on_conv_dw_planes__scalar(a, begin, end, pad);
        return;
    }
    const size_t S = p->stride_h, PW = a->PW;
    for (size_t pl = begin; pl < end; pl++) {
        size_t c = pl % a->C;
        on_dw_fill_padded(a, a->x + pl * a->H * a->W, pad);
        const float *w = a->weight + c * p->KH * p->KW;
        float b = a->bias ? a->bias[c] : 0.0f;
        float *y = a->y + pl * a->OH * a->OW;
        for (size_t oh = 0; oh < a->OH; oh++) {
            const float *row0 = pad + oh * S * PW;
            float *yr = y + oh * a->OW;
            for (size_t ow = 0; ow < a->OW; ow += 4) {
                float32x4_t acc = vdupq_n_f32(b);
                for (size_t kh = 0; kh < p->KH; kh++) {
                    const float *r = row0 + ow * S + kh * p->dil_h * PW;
                    for (size_t kw = 0; kw < p->KW; kw++) {
                        const float *src = r + kw * p->dil_w;
                        float32x4_t xv = S == 1 ? vld1q_f32(src) : vld2q_f32(src).val[0];
                        acc = vfmaq_n_f32(acc, xv, w[kh * p->KW + kw]);
                    }
                }
                size_t n = a->OW - ow < 4 ? a->OW - ow : 4;
                float t[4];
                if (on_act_is_transcendental(a->act.kind)) {
                    vst1q_f32(t, acc);
                    for (size_t i = 0; i < n; i++) yr[ow + i] = on_act_ref(a->act, t[i]);
                } else if (n == 4) {
                    vst1q_f32(yr + ow, act_neon(acc, &a->act));
                } else {
                    vst1q_f32(t, act_neon(acc, &a->act));
                    for (size_t i = 0; i < n; i++) yr[ow + i] = t[i];
                }
            }
        }
    }
}
