/* conv_internal.h - depthwise kernel table shared by conv.c and the per-ISA files. */
#ifndef ON_CONV_INTERNAL_H
#define ON_CONV_INTERNAL_H

#include "on_conv.h"

/* One depthwise problem: planes (n, c) of x [N, C, H, W] -> y [N, C, OH, OW]. */
typedef struct {
    const on_conv_params *p;
    const float *x;
    float *y;
    const float *weight; /* [C, KH, KW] */
    const float *bias;   /* [C] or NULL */
    on_act_t act;
    size_t C, H, W, OH, OW;
    size_t PH, PW;       /* zero-padded plane in scratch: PH x PW floats */
} on_dw_args;

/* Compute planes [begin, end) (plane = n * C + c). scratch: PH * PW floats, zeroed by the caller
 * once; kernels only rewrite the interior, so the borders stay zero across planes. */
typedef void (*on_dw_planes_fn)(const on_dw_args *a, size_t begin, size_t end, float *scratch);

on_dw_planes_fn on_conv_dw_for(on_isa_t isa);

/* Scratch floats a depthwise kernel uses: the padded plane (zeroed by the caller). */
static inline size_t on_dw_scratch_floats(const on_dw_args *a) { return a->PH * a->PW; }
void on_conv_dw_planes__scalar(const on_dw_args *a, size_t begin, size_t end, float *scratch);
#if defined(__x86_64__)
void on_conv_dw_planes__avx2(const on_dw_args *a, size_t begin, size_t end, float *scratch);
#endif
#if defined(__aarch64__)
void on_conv_dw_planes__neon(const on_dw_args *a, size_t begin, size_t end, float *scratch);
#endif

/* Copy plane x (H x W) into the interior of the padded scratch plane. */
static inline void on_dw_fill_padded(const on_dw_args *a, const float *x, float *pad) {
    for (size_t i = 0; i < a->H; i++) {
        float *dst = pad + (i + a->p->pad_t) * a->PW + a->p->pad_l;
        const float *src = x + i * a->W;
        for (size_t j = 0; j < a->W; j++) dst[j] = src[j];
    }
}

#endif
