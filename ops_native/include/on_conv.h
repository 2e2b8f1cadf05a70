/* on_conv.h - 2-D convolution and transposed convolution, NCHW float32.
 *
 * Pads are explicit (top, left, bottom, right): ONNX auto_pad (SAME_UPPER / SAME_LOWER / VALID) is
 * resolved by the caller (the executor) before it builds a plan. 1-D convolution is the 2-D case
 * with H = KH = 1. A plan (on_conv2d / on_conv_transpose2d) copies and re-lays-out the weights once;
 * it is immutable afterwards, so one plan may run on several threads at once.
 *
 * Paths chosen at plan time:
 *   depthwise (group == C == OC): its own direct kernel (AVX2 / NEON vectorised along W);
 *   1x1 stride 1 pad 0:           GEMM W[OC,C] x X[C,H*W] on the NCHW input (reported as "1x1"; at
 *                                 run time <= 48 input channels on >= 160x160 pixels take the direct
 *                                 NCHWc kernel below instead, which is not bound by the GEMM's stores);
 *   other KxK, group 1 or >= ON_C0 channels per group: direct convolution in the NCHWc layout
 *                                 (input re-laid-out per run, weights packed per 8-channel block);
 *   everything else:              im2col packed straight into GEMM panels + the packed GEMM.
 * Bias and activation are fused into the store of every path.
 *
 * Blocked layout (on_conv2d_run_layout): NCHWc8 = [N][ceil(C/8)][H][W][8], channel c at block c/8,
 * lane c%8. Lanes past the last channel hold finite values that no kernel lets reach a valid output;
 * the writers here store zeros there. A graph keeps the tensors between convolutions in it, so the
 * convolutions neither gather their input into blocks nor transpose their output back (conversions
 * happen only where a tensor leaves the chain of convolutions).
 */
#ifndef ON_CONV_H
#define ON_CONV_H

#include "on_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    size_t C, OC;            /* input / output channels (all groups) */
    size_t KH, KW;
    size_t stride_h, stride_w;
    size_t dil_h, dil_w;
    size_t pad_t, pad_l, pad_b, pad_r;
    size_t group;
    size_t out_pad_h, out_pad_w; /* ConvTranspose only (ignored by Conv) */
} on_conv_params;

typedef enum { ON_CONV_PATH_IM2COL = 0, ON_CONV_PATH_1X1, ON_CONV_PATH_DEPTHWISE, ON_CONV_PATH_NCHWC } on_conv_path;

typedef enum { ON_LAYOUT_NCHW = 0, ON_LAYOUT_NCHWC8 = 1 } on_layout;

/* on_conv2d_create_ex flags. ON_CONV_BLOCKED: the plan will run with blocked tensors, so a
 * non-depthwise conv (1x1, grouped) builds the direct NCHWc plan (which reads and writes every layout)
 * instead of the GEMM / im2col one (see on_conv2d_layout_ok for the one exception). */
#define ON_CONV_BLOCKED 1u

typedef struct on_conv2d on_conv2d;
typedef struct on_conv_transpose2d on_conv_transpose2d;

/* Checks the parameters (non-zero sizes, C and OC divisible by group). */
on_status on_conv_params_check(const on_conv_params *p);

/* Conv: weight [OC, C/group, KH, KW], bias NULL or [OC]. */
on_status on_conv2d_create(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                           on_conv2d **out);
on_status on_conv2d_create_ex(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                              unsigned flags, on_conv2d **out);
void on_conv2d_free(on_conv2d *conv);
on_conv_path on_conv2d_path(const on_conv2d *conv);
/* Output spatial size; ON_ERR_SHAPE if the (dilated) kernel does not fit the padded input. */
on_status on_conv2d_output_size(const on_conv_params *p, size_t H, size_t W, size_t *OH, size_t *OW);
/* x [N, C, H, W] -> y [N, OC, OH, OW] */
on_status on_conv2d_run(const on_conv2d *conv, size_t N, size_t H, size_t W, const float *x, float *y,
                        int nthreads);
/* 1 if the plan can read its input in layout xl and write its output in layout yl: NCHW -> NCHW
 * always; a blocked side needs a depthwise plan or a direct NCHWc plan (every plan created with
 * ON_CONV_BLOCKED, any group width - groups that start inside a block are packed and stored lane by
 * lane - except a grouped 1x1 whose groups start inside blocks, which stays on the per-group GEMM). */
int on_conv2d_layout_ok(const on_conv2d *conv, on_layout xl, on_layout yl);
/* The same question before a plan exists: would a plan of these parameters and create flags allow it? */
int on_conv2d_plan_layout_ok(const on_conv_params *p, unsigned flags, on_layout xl, on_layout yl);
/* x in layout xl, y in layout yl (see above); ON_ERR_ARG when on_conv2d_layout_ok says no. */
on_status on_conv2d_run_layout(const on_conv2d *conv, size_t N, size_t H, size_t W, const float *x, on_layout xl,
                               float *y, on_layout yl, int nthreads);
/* y = conv(x) + sum, the residual `sum` in y's layout and shape (a Conv -> Add pair in one pass): for
 * plans on the direct NCHWc path without an activation (on_conv2d_sum_ok); sum == NULL is
 * on_conv2d_run_layout. */
int on_conv2d_sum_ok(const on_conv2d *conv);
on_status on_conv2d_run_fused(const on_conv2d *conv, size_t N, size_t H, size_t W, const float *x, on_layout xl,
                              float *y, on_layout yl, const float *sum, int nthreads);
/* Direct 7-loop reference. */
on_status on_conv2d_ref(const on_conv_params *p, const float *weight, const float *bias, on_act_t act, size_t N,
                        size_t H, size_t W, const float *x, float *y);

/* ConvTranspose: weight [C, OC/group, KH, KW] (ONNX layout), bias NULL or [OC].
 * OH = stride_h * (H - 1) + out_pad_h + dil_h * (KH - 1) + 1 - pad_t - pad_b. */
on_status on_conv_transpose2d_create(const on_conv_params *p, const float *weight, const float *bias,
                                     on_conv_transpose2d **out);
void on_conv_transpose2d_free(on_conv_transpose2d *conv);
on_status on_conv_transpose2d_output_size(const on_conv_params *p, size_t H, size_t W, size_t *OH, size_t *OW);
on_status on_conv_transpose2d_run(const on_conv_transpose2d *conv, size_t N, size_t H, size_t W, const float *x,
                                  float *y, int nthreads);
on_status on_conv_transpose2d_ref(const on_conv_params *p, const float *weight, const float *bias, size_t N,
                                  size_t H, size_t W, const float *x, float *y);

#ifdef __cplusplus
}
#endif
#endif /* ON_CONV_H */
