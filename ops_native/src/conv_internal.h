/* conv_internal.h - kernel tables shared by the convolution drivers (conv.c, conv_nchwc.c) and the
 * per-ISA files. */
#ifndef ON_CONV_INTERNAL_H
#define ON_CONV_INTERNAL_H

#include <string.h>

#include "on_conv.h"

/* A 64-byte aligned copy of n floats (on_free it), or NULL. */
static inline float *on_copy_floats(const float *src, size_t n) {
    size_t bytes;
    if (!on_mul_size(n, sizeof(float), &bytes)) return NULL;
    float *d = (float *)on_malloc(bytes);
    if (d) memcpy(d, src, bytes);
    return d;
}

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
    const float *w_c8;    /* channel-blocked kernel: [ceil(C/8)][KH*KW][8] weights, zero-padded lanes */
    const float *bias_c8; /* [ceil(C/8) * 8], zeros where there is no bias or channel */
    int x_blocked, y_blocked; /* c8 kernels: x / y in the NCHWc8 layout [N][ceil(C/8)][H][W][8] */
} on_dw_args;

/* Compute planes [begin, end) (plane = n * C + c). scratch: PH * PW floats, zeroed by the caller
 * once; kernels only rewrite the interior, so the borders stay zero across planes. */
typedef void (*on_dw_planes_fn)(const on_dw_args *a, size_t begin, size_t end, float *scratch);

/* Scratch floats a depthwise kernel uses: the padded plane (zeroed by the caller). */
static inline size_t on_dw_scratch_floats(const on_dw_args *a) { return a->PH * a->PW; }
void on_conv_dw_planes__scalar(const on_dw_args *a, size_t begin, size_t end, float *scratch);
#if defined(__x86_64__)
void on_conv_dw_planes__avx2(const on_dw_args *a, size_t begin, size_t end, float *scratch);
#endif
#if defined(__x86_64__)
/* Channel blocks [begin, end) (block = n * ceil(C/8) + c/8) through a zero-padded HWc8 tile.
 * scratch: on_dw_c8_scratch_floats floats, the first PH * PW * 8 zeroed by the caller once. */
void on_conv_dw_c8__avx2(const on_dw_args *a, size_t begin, size_t end, float *scratch);
#endif
/* dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols. */
typedef void (*on_transpose_fn)(const float *src, size_t lds, size_t rows, size_t cols, float *dst, size_t ldd);
void on_transpose_f32__scalar(const float *src, size_t lds, size_t rows, size_t cols, float *dst, size_t ldd);
#if defined(__x86_64__)
void on_transpose_f32__avx2(const float *src, size_t lds, size_t rows, size_t cols, float *dst, size_t ldd);
#endif
static inline size_t on_dw_c8_scratch_floats(const on_dw_args *a) { return (a->PH * a->PW + a->OH * a->OW) * 8; }
/* The AVX2 c8 kernel reads a blocked input in place (no tile) at stride > 1 on outputs of at least 16x16
 * (144 ch 64x64 stride 2: 0.086 -> 0.076 ms); at stride 1 the padded tile measured faster (its rows
 * take the 8-pixel groups whole; 192 ch 32x32: 0.055 vs 0.078 ms), and on small planes most pixels
 * touch the border. */
#define DW_DIRECT(a) ((a)->p->stride_w > 1 && (a)->OH >= 16 && (a)->OW >= 16)
/* Portable channel-blocked kernel (same contract as on_conv_dw_c8__avx2): what a blocked tensor
 * runs on where no vector c8 kernel exists. */
void on_conv_dw_c8__scalar(const on_dw_args *a, size_t begin, size_t end, float *scratch);
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

/* ---- direct NCHWc convolution (conv_nchwc.c) ------------------------------------------------ */

/* At most this many output-channel blocks (ON_C0 channels each) per register tile. */
#define ON_NCHWC_MAX_NB 3

/* One output row of one group of output-channel blocks.
 * Input: the conv group's zero-padded NCHWc copy x[icb][PH][PW][CB] (CB = ON_C0, or C/group when
 * that is smaller: no wasted lanes for an RGB stem). Weights: per output block [icb][KH][KW][CB][ON_C0],
 * block b at w + b * wstride. The kernel writes act(conv + bias) for OW pixels into the NCHW output
 * y[oc * ystride + ow], oc < oc_valid, through rowbuf (nb * ow_pad * ON_C0 floats). */
typedef struct {
    const float *x;
    size_t ncb, CB, PH, PW;
    size_t KH, KW, sh, sw, dh, dw;
    const float *w;
    size_t wstride;
    const float *bias; /* nb * ON_C0 floats (zero padded) */
    on_act_t act;
    size_t OW, ow_pad;  /* ow_pad: OW rounded up to a multiple of ON_C0 */
    size_t nb;          /* 1 .. ON_NCHWC_MAX_NB */
    size_t oc_valid;    /* channels to store: <= nb * ON_C0 */
    float *y;           /* output row oh of the block group's first channel (of its first 8-channel
                         * block, row oh, when y_blocked) */
    size_t ystride;     /* OH * OW floats between channels; OH * OW * 8 between blocks when y_blocked */
    float *rowbuf;
    size_t rb_blk;      /* channels per rowbuf block: ON_C0, or 16 for the AVX-512 kernel */
    int y_blocked;      /* write the NCHWc8 output layout (on_nchwc_store_blocked) */
    const float *sum;   /* NULL, or a residual in y's layout added in the store (same offsets as y; the
                         * plan has no activation then) */
    /* A blocked y whose conv groups do not start at a block (OC / group not a multiple of ON_C0): y's first
     * channel is lane y_lane of its block, and the store writes only the valid lanes (the blocks at a group's
     * ends are shared with the neighbouring groups); y_zero_tail: also zero the lanes after the last valid
     * channel to the block's end (this unit writes the tensor's last channel). 0 / 0 otherwise. */
    size_t y_lane;
    int y_shared, y_zero_tail;
} on_nchwc_row;

/* Compute output row oh (its input rows start at row oh * sh of the padded copy). */
typedef void (*on_nchwc_row_fn)(const on_nchwc_row *r, size_t oh);
void on_conv_nchwc_row__scalar(const on_nchwc_row *r, size_t oh);
#if defined(__x86_64__)
void on_conv_nchwc_row__avx2(const on_nchwc_row *r, size_t oh);
/* AVX-512F: output blocks of 16 channels (weights [ob16][icb][KH][KW][CB][16], block b at
 * w + b * wstride, bias nb * 16 floats, rowbuf nb * ow_pad * 16 floats), nb 1..2. */
void on_conv_nchwc_row16__avx512(const on_nchwc_row *r, size_t oh);
#define ON_NCHWC16_MAX_NB 2
#endif
#if defined(__aarch64__)
void on_conv_nchwc_row__neon(const on_nchwc_row *r, size_t oh);
#endif

/* Output pixels [p0, p1) of the plane (pixel p = oh * OW + ow, p1 - p0 <= ON_NCHWC_SPAN_MAX) of one block
 * group, written straight into the NCHWc8 output: r->y / r->sum point at pixel 0 of the group's first
 * 8-channel block (blocks r->ystride apart), r->OW is the output row width, r->x the group's padded copy
 * as for a row; rowbuf, ow_pad and y_blocked are unused. Partial sums of the input-channel chunks live
 * in y itself; bias, activation and the residual are applied in registers on the last chunk, lanes
 * past oc_valid are stored as zeros. Only 8-channel blocks with an ISA kernel for them (AVX2 today);
 * NULL in a table means the driver runs rows. */
#define ON_NCHWC_SPAN_MAX 128
typedef void (*on_nchwc_span_fn)(const on_nchwc_row *r, size_t p0, size_t p1);
#if defined(__x86_64__)
void on_conv_nchwc_span__avx2(const on_nchwc_row *r, size_t p0, size_t p1);
#endif

/* Transpose rowbuf [nb][ow_pad][ON_C0] into the NCHW row r->y, applying sigmoid if that is the
 * activation (the kernels apply the others in registers). Portable; hands a y_blocked row to
 * on_nchwc_store_blocked. */
void on_nchwc_store_rows_ref(const on_nchwc_row *r, int post_act);
/* rowbuf [nb][ow_pad][rb_blk] -> the NCHWc8 row(s) at r->y (8-channel blocks r->ystride apart),
 * sigmoid applied if it is the activation, lanes past oc_valid zeroed. */
void on_nchwc_store_blocked(const on_nchwc_row *r, int post_act);

/* Gather one input row of `nch` channels (planes plane_stride floats apart, nch <= CB) into the
 * interleaved row dst[iw * CB + ci], iw < W; channels nch..CB-1 become zero. */
typedef void (*on_nchwc_pack_fn)(const float *src, size_t plane_stride, size_t nch, size_t CB, size_t W,
                                 float *dst);
void on_conv_nchwc_pack__scalar(const float *src, size_t plane_stride, size_t nch, size_t CB, size_t W,
                                float *dst);
#if defined(__x86_64__)
void on_conv_nchwc_pack__avx2(const float *src, size_t plane_stride, size_t nch, size_t CB, size_t W,
                              float *dst);
#endif
/* Gather one input row of channels c0 .. c0 + nch - 1 (nch <= CB <= ON_C0) of an NCHWc8 x (x points at
 * the row in block 0, blocks HW * ON_C0 floats apart), whatever lane c0 falls on, into dst[iw * CB + ci],
 * iw < W; channels nch..CB-1 become zero (a conv group that starts inside a block). */
typedef void (*on_nchwc_pack_lanes_fn)(const float *x, size_t HW, size_t c0, size_t nch, size_t CB, size_t W,
                                       float *dst);
void on_conv_nchwc_pack_lanes__scalar(const float *x, size_t HW, size_t c0, size_t nch, size_t CB, size_t W,
                                      float *dst);
#if defined(__x86_64__)
void on_conv_nchwc_pack_lanes__avx2(const float *x, size_t HW, size_t c0, size_t nch, size_t CB, size_t W,
                                    float *dst);
#endif

/* The NCHWc plan part of a convolution (weights packed per output-channel block). */
typedef struct on_nchwc_plan on_nchwc_plan;
/* 1 if the direct NCHWc path is chosen for these parameters (see the rule in conv_nchwc.c). */
int on_nchwc_suits(const on_conv_params *p);
/* 1 if a 1x1 stride-1 conv (GEMM path) should run the direct kernel for this output size; the 1x1
 * plan builds an NCHWc plan too when on_nchwc_suits_1x1(p, SIZE_MAX, 1) holds. */
int on_nchwc_suits_1x1(const on_conv_params *p, size_t OH, size_t OW);
on_status on_nchwc_plan_create(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                               on_nchwc_plan **out);
void on_nchwc_plan_free(on_nchwc_plan *plan);
on_status on_nchwc_run(const on_nchwc_plan *plan, size_t N, size_t H, size_t W, size_t OH, size_t OW,
                       const float *x, float *y, int nthreads);
/* The same with the input / output in either layout (the plan must allow it: on_nchwc_layout_ok). */
on_status on_nchwc_run_layout(const on_nchwc_plan *plan, size_t N, size_t H, size_t W, size_t OH, size_t OW,
                              const float *x, on_layout xl, float *y, on_layout yl, const float *sum, int nthreads);
int on_nchwc_layout_ok(const on_nchwc_plan *plan, on_layout xl, on_layout yl);

/* Path selection for tests: 0 makes plans created afterwards use im2col instead of the direct NCHWc
 * path, 1 (default) lets them pick it. Not thread-safe; tests only. */
void on_conv_set_nchwc_enabled(int enabled);

#endif
