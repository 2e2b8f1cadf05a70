/* conv_transpose.c - ConvTranspose: its reference, and the plan that runs it as col = W^T x X (the packed
 * GEMM) followed by a col2im scatter-add (a plain interleave when kernel == stride, the 2x upsampling case).
 */

#include "conv_internal.h"
#include "gemm_internal.h"

struct on_conv_transpose2d {
    on_conv_params p;
    float *wt;   /* per group: [OC/group * KH * KW, C/group] (A of the col GEMM) */
    float *bias; /* [OC] or NULL */
};

on_status on_conv_transpose2d_output_size(const on_conv_params *p, size_t H, size_t W, size_t *OH, size_t *OW) {
    on_status st = on_conv_params_check(p);
    if (st != ON_OK) return st;
    if (!OH || !OW || H == 0 || W == 0) return ON_ERR_ARG;
    if (p->out_pad_h >= p->stride_h && p->out_pad_h >= p->dil_h) return ON_ERR_ARG;
    if (p->out_pad_w >= p->stride_w && p->out_pad_w >= p->dil_w) return ON_ERR_ARG;
    size_t fh = p->stride_h * (H - 1) + p->out_pad_h + p->dil_h * (p->KH - 1) + 1;
    size_t fw = p->stride_w * (W - 1) + p->out_pad_w + p->dil_w * (p->KW - 1) + 1;
    if (fh <= p->pad_t + p->pad_b || fw <= p->pad_l + p->pad_r) return ON_ERR_SHAPE;
    *OH = fh - p->pad_t - p->pad_b;
    *OW = fw - p->pad_l - p->pad_r;
    return ON_OK;
}

on_status on_conv_transpose2d_ref(const on_conv_params *p, const float *weight, const float *bias, size_t N,
                                  size_t H, size_t W, const float *x, float *y) {
    size_t OH, OW;
    on_status st = on_conv_transpose2d_output_size(p, H, W, &OH, &OW);
    if (st != ON_OK) return st;
    if (!weight || !x || !y) return ON_ERR_ARG;
    size_t Cg = p->C / p->group, OCg = p->OC / p->group;
    for (size_t n = 0; n < N; n++)
        for (size_t oc = 0; oc < p->OC; oc++)
            for (size_t i = 0; i < OH * OW; i++) y[(n * p->OC + oc) * OH * OW + i] = bias ? bias[oc] : 0.0f;
    for (size_t n = 0; n < N; n++)
        for (size_t c = 0; c < p->C; c++) {
            size_t g = c / Cg;
            for (size_t ih = 0; ih < H; ih++)
                for (size_t iw = 0; iw < W; iw++) {
                    float xv = x[((n * p->C + c) * H + ih) * W + iw];
                    for (size_t o = 0; o < OCg; o++)
                        for (size_t kh = 0; kh < p->KH; kh++) {
                            long oh = (long)(ih * p->stride_h + kh * p->dil_h) - (long)p->pad_t;
                            if (oh < 0 || oh >= (long)OH) continue;
                            for (size_t kw = 0; kw < p->KW; kw++) {
                                long ow = (long)(iw * p->stride_w + kw * p->dil_w) - (long)p->pad_l;
                                if (ow < 0 || ow >= (long)OW) continue;
                                float wv = weight[((c * OCg + o) * p->KH + kh) * p->KW + kw];
                                y[((n * p->OC + g * OCg + o) * OH + (size_t)oh) * OW + (size_t)ow] += xv * wv;
                            }
                        }
                }
        }
    return ON_OK;
}

/* ---- plan ------------------------------------------------------------------------------------- */

on_status on_conv_transpose2d_create(const on_conv_params *p, const float *weight, const float *bias,
                                     on_conv_transpose2d **out) {
    if (!out) return ON_ERR_ARG;
    *out = NULL;
    on_status st = on_conv_params_check(p);
    if (st != ON_OK) return st;
    if (!weight) return ON_ERR_ARG;
    size_t Cg = p->C / p->group, OCg = p->OC / p->group, KK = p->KH * p->KW, wn;
    if (!on_mul_size(p->C, OCg * KK, &wn)) return ON_ERR_NOMEM;
    on_conv_transpose2d *c = (on_conv_transpose2d *)on_calloc(1, sizeof(on_conv_transpose2d));
    if (!c) return ON_ERR_NOMEM;
    c->p = *p;
    c->wt = (float *)on_calloc(wn, sizeof(float));
    c->bias = bias ? on_copy_floats(bias, p->OC) : NULL;
    if (!c->wt || (bias && !c->bias)) {
        on_conv_transpose2d_free(c);
        return ON_ERR_NOMEM;
    }
    /* weight [C, OCg, KH, KW] -> per group g: wt_g[(o * KK + k), ic] */
    for (size_t g = 0; g < p->group; g++)
        for (size_t ic = 0; ic < Cg; ic++)
            for (size_t r = 0; r < OCg * KK; r++)
                c->wt[g * OCg * KK * Cg + r * Cg + ic] = weight[(g * Cg + ic) * OCg * KK + r];
    *out = c;
    return ON_OK;
}

void on_conv_transpose2d_free(on_conv_transpose2d *c) {
    if (!c) return;
    on_free(c->wt);
    on_free(c->bias);
    on_free(c);
}

typedef struct {
    const on_conv_params *p;
    const float *col;  /* [OCg * KH * KW, H * W] */
    const float *bias; /* group's bias or NULL */
    float *y;          /* group's output [OCg, OH, OW] */
    size_t H, W, OH, OW;
} col2im_job;

/* kernel == stride, no pads / dilation / output padding (the usual 2x upsampling): every output
 * pixel takes exactly one column entry, so the scatter is a plain interleave with no init pass. */
static int col2im_is_tiling(const on_conv_params *p) {
    return p->KH == p->stride_h && p->KW == p->stride_w && p->dil_h == 1 && p->dil_w == 1 && !p->pad_t &&
           !p->pad_l && !p->pad_b && !p->pad_r && !p->out_pad_h && !p->out_pad_w;
}

static void col2im_tiling_range(const col2im_job *j, size_t begin, size_t end) {
    const on_conv_params *p = j->p;
    const size_t HW = j->H * j->W, W = j->W, KH = p->KH, KW = p->KW;
    for (size_t o = begin; o < end; o++) {
        float b = j->bias ? j->bias[o] : 0.0f;
        for (size_t oh = 0; oh < j->OH; oh++) {
            size_t ih = oh / KH, kh = oh % KH;
            float *yr = j->y + (o * j->OH + oh) * j->OW;
            const float *c0 = j->col + (o * KH + kh) * KW * HW + ih * W;
            if (KW == 2) {
                const float *c1 = c0 + HW;
                for (size_t iw = 0; iw < W; iw++) {
                    yr[2 * iw] = c0[iw] + b;
                    yr[2 * iw + 1] = c1[iw] + b;
                }
            } else {
                for (size_t kw = 0; kw < KW; kw++)
                    for (size_t iw = 0; iw < W; iw++) yr[iw * KW + kw] = c0[kw * HW + iw] + b;
            }
        }
    }
}

static void col2im_range(void *vctx, size_t begin, size_t end) {
    const col2im_job *j = (const col2im_job *)vctx;
    const on_conv_params *p = j->p;
    if (col2im_is_tiling(p)) {
        col2im_tiling_range(j, begin, end);
        return;
    }
    size_t HW = j->H * j->W;
    for (size_t o = begin; o < end; o++) {
        float *yo = j->y + o * j->OH * j->OW;
        float b = j->bias ? j->bias[o] : 0.0f;
        for (size_t i = 0; i < j->OH * j->OW; i++) yo[i] = b;
        for (size_t kh = 0; kh < p->KH; kh++)
            for (size_t kw = 0; kw < p->KW; kw++) {
                const float *cr = j->col + ((o * p->KH + kh) * p->KW + kw) * HW;
                for (size_t ih = 0; ih < j->H; ih++) {
                    long oh = (long)(ih * p->stride_h + kh * p->dil_h) - (long)p->pad_t;
                    if (oh < 0 || oh >= (long)j->OH) continue;
                    float *yr = yo + (size_t)oh * j->OW;
                    const float *crow = cr + ih * j->W;
                    for (size_t iw = 0; iw < j->W; iw++) {
                        long ow = (long)(iw * p->stride_w + kw * p->dil_w) - (long)p->pad_l;
                        if (ow >= 0 && ow < (long)j->OW) yr[ow] += crow[iw];
                    }
                }
            }
    }
}

on_status on_conv_transpose2d_run(const on_conv_transpose2d *c, size_t N, size_t H, size_t W, const float *x,
                                  float *y, int nthreads) {
    if (!c) return ON_ERR_ARG;
    size_t OH, OW;
    const on_conv_params *p = &c->p;
    on_status st = on_conv_transpose2d_output_size(p, H, W, &OH, &OW);
    if (st != ON_OK) return st;
    if (N == 0) return ON_OK;
    if (!x || !y) return ON_ERR_ARG;
    size_t Cg = p->C / p->group, OCg = p->OC / p->group, KK = p->KH * p->KW, HW = H * W, rows = OCg * KK, bytes;
    if (!on_mul_size(rows, HW, &bytes) || !on_mul_size(bytes, sizeof(float), &bytes)) return ON_ERR_NOMEM;
    int owned;
    float *col = (float *)on_temp_alloc(ON_SLOT_CONV_COL, bytes, &owned);
    if (!col) return ON_ERR_NOMEM;
    on_gemm_epilogue ep = on_gemm_epilogue_default();
    for (size_t n = 0; n < N && st == ON_OK; n++)
        for (size_t g = 0; g < p->group && st == ON_OK; g++) {
            const float *xg = x + (n * p->C + g * Cg) * HW;
            st = on_gemm(0, 0, rows, HW, Cg, c->wt + g * rows * Cg, Cg, xg, HW, &ep, col, HW, nthreads);
            if (st != ON_OK) break;
            col2im_job j = {p, col, c->bias ? c->bias + g * OCg : NULL, y + (n * p->OC + g * OCg) * OH * OW,
                            H, W, OH, OW};
            on_parallel_for(OCg, col2im_range, &j, (double)rows * HW < 65536.0 ? 1 : nthreads);
        }
    on_temp_free(col, owned);
    return st;
}
