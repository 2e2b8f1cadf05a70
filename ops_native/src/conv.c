/* conv.c - convolution plans, the reference, the im2col->packed-GEMM path, 1x1 convolutions and the
 * portable depthwise kernels (ConvTranspose: conv_transpose.c; direct NCHWc: conv_nchwc.c).
 *
 * Over 500 lines because one plan (struct on_conv2d) picks among these paths at creation and run time,
 * and they share its layout, the depthwise weight blocking and the per-path job helpers; cut apart they
 * would need that struct in a header and the helpers exported.
 *
 * The im2col path never materialises the full column matrix: the output pixels are cut into
 * chunks (sized to stay in L2) and each chunk is written straight into GEMM panel layout
 * ([panel][K][16]), so the packed micro-kernels read it like packed weights. The weights are the
 * GEMM's A operand (row-major [OC/group, C/group*KH*KW], read in place).
 */
#include <stdatomic.h>
#include <string.h>

#include "conv_internal.h"
#include "gemm_internal.h"
#include "kernels.h"

/* A packed im2col chunk should stay in L2 next to the A block while the GEMM sweeps it. */
#ifndef CONV_CHUNK_BYTES
#define CONV_CHUNK_BYTES (160 * 1024)
#endif
#define CONV_CHUNK_MIN 32
#define CONV_CHUNK_MAX 512
#define NR ON_GEMM_NR
/* 1x1 convs with at least this many output channels pack the input pixels into panels instead of
 * reading them in place: the copy is shared by >= 16 row tiles, and packed panels avoid the L1 set
 * conflicts of rows H*W floats apart (all in one set at 160x160). Measured 3-10% faster at
 * 96..384 channels, slower at <= 48. */
#define CONV_1X1_PACK_MIN_OC 96
/* A 1x1 conv on an image of at most this many pixels (14x14) runs as Y^T = X^T W^T with the weights
 * packed as GEMM panels (see run_1x1_small). Measured on Zen 5: even at 14x14, 1.6-1.9x slower than
 * the direct GEMM at 16x16 and 32x32. */
#ifndef CONV_1X1_SMALL_PIXELS
#define CONV_1X1_SMALL_PIXELS 196
#endif
/* Stride-1 depthwise outputs up to this many pixels take the channel-blocked kernel (see dw_use_c8). */
#ifndef DW_C8_MAX_PIXELS
#define DW_C8_MAX_PIXELS 4096
#endif

struct on_conv2d {
    on_conv_params p;
    on_act_t act;
    on_conv_path path;
    float *weight; /* [OC, C/group * KH * KW] (not kept by the NCHWc path) */
    float *bias;   /* [OC] or NULL */
    on_nchwc_plan *nchwc;
    on_packed_b *wt;   /* 1x1, group 1: W^T [C, OC] packed as GEMM panels (small images) */
    float *dw_c8;      /* depthwise: weights as [ceil(C/8)][KH*KW][8] for the channel-blocked kernel */
    float *dw_bias_c8; /* depthwise: [ceil(C/8) * 8] */
};

on_status on_conv_params_check(const on_conv_params *p) {
    if (!p) return ON_ERR_ARG;
    if (!p->C || !p->OC || !p->KH || !p->KW || !p->stride_h || !p->stride_w || !p->dil_h || !p->dil_w || !p->group)
        return ON_ERR_ARG;
    if (p->C % p->group || p->OC % p->group) return ON_ERR_SHAPE;
    if (p->KH > 65536 || p->KW > 65536 || p->dil_h > 65536 || p->dil_w > 65536) return ON_ERR_ARG;
    return ON_OK;
}

on_status on_conv2d_output_size(const on_conv_params *p, size_t H, size_t W, size_t *OH, size_t *OW) {
    on_status st = on_conv_params_check(p);
    if (st != ON_OK) return st;
    if (!OH || !OW || H == 0 || W == 0) return ON_ERR_ARG;
    size_t eh = p->dil_h * (p->KH - 1) + 1, ew = p->dil_w * (p->KW - 1) + 1;
    size_t ph = H + p->pad_t + p->pad_b, pw = W + p->pad_l + p->pad_r;
    if (ph < eh || pw < ew) return ON_ERR_SHAPE;
    *OH = (ph - eh) / p->stride_h + 1;
    *OW = (pw - ew) / p->stride_w + 1;
    return ON_OK;
}

/* ---- references ------------------------------------------------------------------------------ */

on_status on_conv2d_ref(const on_conv_params *p, const float *weight, const float *bias, on_act_t act, size_t N,
                        size_t H, size_t W, const float *x, float *y) {
    size_t OH, OW;
    on_status st = on_conv2d_output_size(p, H, W, &OH, &OW);
    if (st != ON_OK) return st;
    if (!weight || !x || !y) return ON_ERR_ARG;
    size_t Cg = p->C / p->group, OCg = p->OC / p->group;
    for (size_t n = 0; n < N; n++)
        for (size_t oc = 0; oc < p->OC; oc++) {
            size_t g = oc / OCg;
            for (size_t oh = 0; oh < OH; oh++)
                for (size_t ow = 0; ow < OW; ow++) {
                    double s = bias ? bias[oc] : 0.0;
                    for (size_t ic = 0; ic < Cg; ic++)
                        for (size_t kh = 0; kh < p->KH; kh++) {
                            long ih = (long)(oh * p->stride_h + kh * p->dil_h) - (long)p->pad_t;
                            if (ih < 0 || ih >= (long)H) continue;
                            for (size_t kw = 0; kw < p->KW; kw++) {
                                long iw = (long)(ow * p->stride_w + kw * p->dil_w) - (long)p->pad_l;
                                if (iw < 0 || iw >= (long)W) continue;
                                float xv = x[((n * p->C + g * Cg + ic) * H + (size_t)ih) * W + (size_t)iw];
                                float wv = weight[((oc * Cg + ic) * p->KH + kh) * p->KW + kw];
                                s += (double)xv * wv;
                            }
                        }
                    y[((n * p->OC + oc) * OH + oh) * OW + ow] = on_act_ref(act, (float)s);
                }
        }
    return ON_OK;
}

/* ---- plans ----------------------------------------------------------------------------------- */

static on_conv_path choose_path(const on_conv_params *p, unsigned flags) {
    if (p->group == p->C && p->group == p->OC) return ON_CONV_PATH_DEPTHWISE;
    const int pointwise = p->KH == 1 && p->KW == 1 && p->stride_h == 1 && p->stride_w == 1 && !p->pad_t &&
                          !p->pad_l && !p->pad_b && !p->pad_r;
    const size_t Cg = p->C / p->group, OCg = p->OC / p->group;
    /* A blocked conv runs the direct kernel, any group width (groups inside blocks are packed and stored
     * lane by lane); a blocked 1x1's input is the copy that kernel reads. Except a grouped 1x1 whose groups
     * start inside blocks: there the direct kernel measured 1.4-2.8x the per-group GEMM's time (ShuffleNet's
     * 4 groups of 6 / 34 / 68 channels at 56 / 28 / 14 px), more than the layout conversions around it cost. */
    if ((flags & ON_CONV_BLOCKED) && !(pointwise && p->group > 1 && (Cg % ON_C0 || OCg % ON_C0)))
        return ON_CONV_PATH_NCHWC;
    if (pointwise) return ON_CONV_PATH_1X1;
    return on_nchwc_suits(p) ? ON_CONV_PATH_NCHWC : ON_CONV_PATH_IM2COL;
}

int on_conv2d_plan_layout_ok(const on_conv_params *p, unsigned flags, on_layout xl, on_layout yl) {
    if (!p || on_conv_params_check(p) != ON_OK) return 0;
    if (xl == ON_LAYOUT_NCHW && yl == ON_LAYOUT_NCHW) return 1;
    on_conv_path path = choose_path(p, flags);
    return path == ON_CONV_PATH_DEPTHWISE || path == ON_CONV_PATH_NCHWC;
}

on_status on_conv2d_create(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                           on_conv2d **out) {
    return on_conv2d_create_ex(p, weight, bias, act, 0, out);
}

on_status on_conv2d_create_ex(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                              unsigned flags, on_conv2d **out) {
    if (!out) return ON_ERR_ARG;
    *out = NULL;
    on_status st = on_conv_params_check(p);
    if (st != ON_OK) return st;
    if (!weight || (int)act.kind < 0 || act.kind >= ON_ACT_COUNT) return ON_ERR_ARG;
    size_t wn;
    if (!on_mul_size(p->OC, p->C / p->group, &wn) || !on_mul_size(wn, p->KH * p->KW, &wn)) return ON_ERR_NOMEM;
    on_conv2d *c = (on_conv2d *)on_calloc(1, sizeof(on_conv2d));
    if (!c) return ON_ERR_NOMEM;
    c->p = *p;
    c->act = act;
    c->path = choose_path(p, flags);
    if (c->path == ON_CONV_PATH_NCHWC || (c->path == ON_CONV_PATH_1X1 && on_nchwc_suits_1x1(p, SIZE_MAX, 1))) {
        st = on_nchwc_plan_create(p, weight, bias, act, &c->nchwc);
        if (st != ON_OK) {
            on_conv2d_free(c);
            return st;
        }
    }
    if (c->path != ON_CONV_PATH_NCHWC) {
        c->weight = on_copy_floats(weight, wn);
        c->bias = bias ? on_copy_floats(bias, p->OC) : NULL;
        if (!c->weight || (bias && !c->bias)) {
            on_conv2d_free(c);
            return ON_ERR_NOMEM;
        }
    }
    if (c->path == ON_CONV_PATH_1X1 && p->group == 1) {
        /* W [OC, C] is (W^T)^T: packing it transposed gives panels of W^T, K = C, N = OC */
        st = on_packed_b_create(weight, p->C, 1, p->C, p->OC, &c->wt);
        if (st != ON_OK) {
            on_conv2d_free(c);
            return st;
        }
    }
    if (c->path == ON_CONV_PATH_DEPTHWISE) {
        size_t ncb = (p->C + 7) / 8, KK = p->KH * p->KW;
        c->dw_c8 = (float *)on_calloc(ncb * KK * 8, sizeof(float));
        c->dw_bias_c8 = (float *)on_calloc(ncb * 8, sizeof(float));
        if (!c->dw_c8 || !c->dw_bias_c8) {
            on_conv2d_free(c);
            return ON_ERR_NOMEM;
        }
        for (size_t ch = 0; ch < p->C; ch++) {
            for (size_t k = 0; k < KK; k++) c->dw_c8[((ch / 8) * KK + k) * 8 + ch % 8] = weight[ch * KK + k];
            if (bias) c->dw_bias_c8[ch] = bias[ch];
        }
    }
    *out = c;
    return ON_OK;
}

void on_conv2d_free(on_conv2d *c) {
    if (!c) return;
    on_packed_b_free(c->wt);
    on_free(c->dw_c8);
    on_free(c->dw_bias_c8);
    on_free(c->weight);
    on_free(c->bias);
    on_nchwc_plan_free(c->nchwc);
    on_free(c);
}

on_conv_path on_conv2d_path(const on_conv2d *c) { return c ? c->path : ON_CONV_PATH_IM2COL; }

/* ---- depthwise (portable) -------------------------------------------------------------------- */

void on_conv_dw_planes__scalar(const on_dw_args *a, size_t begin, size_t end, float *pad) {
    const on_conv_params *p = a->p;
    for (size_t pl = begin; pl < end; pl++) {
        size_t c = pl % a->C;
        on_dw_fill_padded(a, a->x + pl * a->H * a->W, pad);
        const float *w = a->weight + c * p->KH * p->KW;
        float b = a->bias ? a->bias[c] : 0.0f;
        float *y = a->y + pl * a->OH * a->OW;
        for (size_t oh = 0; oh < a->OH; oh++)
            for (size_t ow = 0; ow < a->OW; ow++) {
                float s = b;
                for (size_t kh = 0; kh < p->KH; kh++) {
                    const float *row = pad + (oh * p->stride_h + kh * p->dil_h) * a->PW + ow * p->stride_w;
                    for (size_t kw = 0; kw < p->KW; kw++) s += w[kh * p->KW + kw] * row[kw * p->dil_w];
                }
                y[oh * a->OW + ow] = on_act_ref(a->act, s);
            }
    }
}

typedef struct {
    on_dw_args a;
    on_dw_planes_fn fn;  /* plane kernel, or the channel-blocked one (units are then 8-channel blocks) */
    size_t scratch_floats, zero_floats;
    size_t planes, grab; /* units are handed out `grab` at a time from next */
    atomic_size_t next;
    atomic_int failed;
} dw_job;

/* Each thread takes the next `grab` planes until none are left, so a core shared with another
 * process does less of the work instead of holding the others up. */
static void dw_worker(void *vctx, size_t begin, size_t end) {
    dw_job *j = (dw_job *)vctx;
    (void)begin;
    (void)end;
    float *pad = (float *)on_scratch(ON_SLOT_AUX, j->scratch_floats * sizeof(float));
    if (!pad) {
        atomic_store(&j->failed, 1);
        return;
    }
    memset(pad, 0, j->zero_floats * sizeof(float)); /* borders stay zero; kernels rewrite the interior */
    for (;;) {
        size_t b = atomic_fetch_add(&j->next, j->grab);
        if (b >= j->planes) break;
        j->fn(&j->a, b, j->planes - b < j->grab ? j->planes : b + j->grab, pad);
    }
}

/* The channel-blocked kernel wins on small planes (few lanes busy along W, per-plane set-up) and at
 * stride 2 (no lane shuffles); the plane kernel keeps large stride-1 planes, where its rows are long
 * and the transposes would be pure extra traffic. On Zen 3 the two are even at 56x56 and 64x64 (3x3,
 * stride 1) and the channel-blocked one is 1.3x faster at 40x40 (5x5) and 1.5x at 14x14. */
static inline int dw_use_c8(const on_conv_params *p, size_t OH, size_t OW) {
    return p->stride_h > 1 || p->stride_w > 1 || OH * OW <= DW_C8_MAX_PIXELS;
}

/* Portable channel-blocked depthwise kernel: the tile scheme of conv_dw_c8_avx2.c in plain C, for
 * blocked tensors on CPUs without AVX2 (and as the reference the tests hold the vector one to). */
void on_conv_dw_c8__scalar(const on_dw_args *a, size_t begin, size_t end, float *scratch) {
    const on_conv_params *p = a->p;
    const size_t ncb = (a->C + 7) / 8, KK = p->KH * p->KW, HW = a->H * a->W, OHW = a->OH * a->OW;
    float *tile = scratch, *out_tile = scratch + a->PH * a->PW * 8;
    for (size_t b = begin; b < end; b++) {
        size_t n = b / ncb, cb = b % ncb, c0 = cb * 8, nc = a->C - c0 < 8 ? a->C - c0 : 8;
        for (size_t h = 0; h < a->H; h++) {
            float *dst = tile + ((h + p->pad_t) * a->PW + p->pad_l) * 8;
            if (a->x_blocked) {
                memcpy(dst, a->x + (b * HW + h * a->W) * 8, a->W * 8 * sizeof(float));
                continue;
            }
            const float *src = a->x + (n * a->C + c0) * HW + h * a->W;
            for (size_t w = 0; w < a->W; w++)
                for (size_t l = 0; l < 8; l++) dst[w * 8 + l] = l < nc ? src[l * HW + w] : 0.0f;
        }
        float *out = a->y_blocked ? a->y + b * OHW * 8 : out_tile;
        const float *w8 = a->w_c8 + cb * KK * 8, *b8 = a->bias_c8 + cb * 8;
        for (size_t oh = 0; oh < a->OH; oh++)
            for (size_t ow = 0; ow < a->OW; ow++) {
                float acc[8];
                for (size_t l = 0; l < 8; l++) acc[l] = 0.0f;
                for (size_t kh = 0; kh < p->KH; kh++)
                    for (size_t kw = 0; kw < p->KW; kw++) {
                        const float *xs = tile + ((oh * p->stride_h + kh * p->dil_h) * a->PW + ow * p->stride_w +
                                                  kw * p->dil_w) * 8;
                        const float *wk = w8 + (kh * p->KW + kw) * 8;
                        for (size_t l = 0; l < 8; l++) acc[l] += xs[l] * wk[l];
                    }
                float *o = out + (oh * a->OW + ow) * 8;
                for (size_t l = 0; l < 8; l++) o[l] = l < nc ? on_act_ref(a->act, acc[l] + b8[l]) : 0.0f;
            }
        if (!a->y_blocked) {
            float *yb = a->y + (n * a->C + c0) * OHW;
            for (size_t l = 0; l < nc; l++)
                for (size_t i = 0; i < OHW; i++) yb[l * OHW + i] = out_tile[i * 8 + l];
        }
    }
}

static on_status run_depthwise(const on_conv2d *c, size_t N, size_t H, size_t W, size_t OH, size_t OW,
                               const float *x, on_layout xl, float *y, on_layout yl, int nthreads) {
    const on_conv_params *p = &c->p;
    const int blocked = xl == ON_LAYOUT_NCHWC8 || yl == ON_LAYOUT_NCHWC8;
    dw_job j;
    j.a.p = p;
    j.a.x = x;
    j.a.y = y;
    j.a.x_blocked = xl == ON_LAYOUT_NCHWC8;
    j.a.y_blocked = yl == ON_LAYOUT_NCHWC8;
    j.a.weight = c->weight;
    j.a.bias = c->bias;
    j.a.act = c->act;
    j.a.C = p->C;
    j.a.H = H;
    j.a.W = W;
    j.a.OH = OH;
    j.a.OW = OW;
    size_t need_h = (OH - 1) * p->stride_h + (p->KH - 1) * p->dil_h + 1;
    size_t ow8 = (OW + 7) / 8 * 8;
    size_t need_w = ow8 * p->stride_w + (p->KW - 1) * p->dil_w + 16; /* vector over-reads stay inside */
    j.a.PH = H + p->pad_t + p->pad_b > need_h ? H + p->pad_t + p->pad_b : need_h;
    j.a.PW = W + p->pad_l + p->pad_r > need_w ? W + p->pad_l + p->pad_r : need_w;
    const on_kernel_table *k = on_kernels_active();
    j.fn = k->dw_planes;
    j.a.w_c8 = c->dw_c8;
    j.a.bias_c8 = c->dw_bias_c8;
    j.scratch_floats = on_dw_scratch_floats(&j.a);
    j.zero_floats = j.a.PH * j.a.PW;
    atomic_init(&j.failed, 0);
    size_t planes = N * p->C;
    on_dw_planes_fn c8 = k->dw_c8;
    if (blocked || (c8 != on_conv_dw_c8__scalar && dw_use_c8(p, OH, OW))) {
        /* the tile needs no over-read margin: just the padded input the taps reach */
        size_t nh = (OH - 1) * p->stride_h + (p->KH - 1) * p->dil_h + 1;
        size_t nw = (OW - 1) * p->stride_w + (p->KW - 1) * p->dil_w + 1;
        j.a.PH = H + p->pad_t + p->pad_b > nh ? H + p->pad_t + p->pad_b : nh;
        j.a.PW = W + p->pad_l + p->pad_r > nw ? W + p->pad_l + p->pad_r : nw;
        if (j.a.PH < p->pad_t + H) j.a.PH = p->pad_t + H;
        if (j.a.PW < p->pad_l + W) j.a.PW = p->pad_l + W;
        j.fn = c8;
        j.scratch_floats = on_dw_c8_scratch_floats(&j.a);
        /* the tile's zero borders; the AVX2 kernel reading a large blocked input in place has no tile */
        j.zero_floats = c8 != on_conv_dw_c8__scalar && j.a.x_blocked && DW_DIRECT(&j.a) ? 0 : j.a.PH * j.a.PW * 8;
        planes = N * ((p->C + 7) / 8);
    }
    if ((double)N * p->C * OH * OW * p->KH * p->KW < 65536.0 || nthreads < 1) nthreads = 1;
    if ((size_t)nthreads > planes) nthreads = (int)planes;
    j.planes = planes;
    j.grab = planes / ((size_t)nthreads * 8);
    if (j.grab < 1) j.grab = 1;
    atomic_init(&j.next, 0);
    on_parallel_for((size_t)nthreads, dw_worker, &j, nthreads);
    return atomic_load(&j.failed) ? ON_ERR_NOMEM : ON_OK;
}

/* ---- im2col / 1x1 -> packed GEMM ------------------------------------------------------------- */

typedef struct {
    const on_conv2d *c;
    const float *x;
    float *y;
    size_t H, W, OH, OW, Cg, OCg, Kg;
    size_t nchunk, nchunks, msplit, m_unit, units;
    size_t chunk_bytes; /* packed chunk, in the per-thread ON_SLOT_CONV_COL scratch */
    atomic_int failed;
    const on_gemm_ukernel *uk;
} im2col_job;

/* Write columns [j0, j0 + nc) of the im2col matrix of one image/group into panel layout. */
static void im2col_pack(const im2col_job *j, const float *xg, size_t j0, size_t nc, float *dst) {
    const on_conv_params *p = &j->c->p;
    size_t HW = j->H * j->W, npan = (nc + NR - 1) / NR;
    if (j->c->path == ON_CONV_PATH_1X1) {
        for (size_t pn = 0; pn < npan; pn++) {
            size_t c0 = j0 + pn * NR, w = nc - pn * NR < NR ? nc - pn * NR : NR;
            float *d = dst + pn * j->Kg * NR;
            for (size_t k = 0; k < j->Kg; k++, d += NR) {
                memcpy(d, xg + k * HW + c0, w * sizeof(float));
                for (size_t q = w; q < NR; q++) d[q] = 0.0f;
            }
        }
        return;
    }
    /* One im2col row (ic, kh, kw) at a time: the chunk's pixels are runs along output rows, each
     * reading one input row (zeros over the padding, a straight copy for stride 1); the row is built
     * contiguously in `line`, then dealt out to the panels in fixed 16-float copies. */
    const long H = (long)j->H, W = (long)j->W, sw = (long)p->stride_w;
    float line[CONV_CHUNK_MAX + NR];
    size_t k = 0;
    for (size_t ic = 0; ic < j->Cg; ic++) {
        const float *xc = xg + ic * HW;
        for (size_t kh = 0; kh < p->KH; kh++)
            for (size_t kw = 0; kw < p->KW; kw++, k++) {
                for (size_t q = 0; q < nc;) {
                    size_t oh = (j0 + q) / j->OW, ow = (j0 + q) % j->OW;
                    long n = (long)(j->OW - ow < nc - q ? j->OW - ow : nc - q);
                    float *ds = line + q;
                    q += (size_t)n;
                    long ih = (long)(oh * p->stride_h) - (long)p->pad_t + (long)(kh * p->dil_h);
                    if (ih < 0 || ih >= H) {
                        memset(ds, 0, (size_t)n * sizeof(float));
                        continue;
                    }
                    long iw0 = (long)(ow * p->stride_w) - (long)p->pad_l + (long)(kw * p->dil_w);
                    /* valid t: 0 <= iw0 + t * sw < W */
                    long lo = iw0 >= 0 ? 0 : (-iw0 + sw - 1) / sw;
                    long hi = iw0 >= W ? 0 : (W - iw0 + sw - 1) / sw;
                    if (lo > n) lo = n;
                    if (hi > n) hi = n;
                    if (hi < lo) hi = lo;
                    const float *row = xc + ih * W + iw0;
                    for (long t = 0; t < lo; t++) ds[t] = 0.0f;
                    if (sw == 1) memcpy(ds + lo, row + lo, (size_t)(hi - lo) * sizeof(float));
                    else
                        for (long t = lo; t < hi; t++) ds[t] = row[t * sw];
                    for (long t = hi; t < n; t++) ds[t] = 0.0f;
                }
                for (size_t q = nc; q < npan * NR; q++) line[q] = 0.0f;
                float *d = dst + k * NR;
                for (size_t pn = 0; pn < npan; pn++)
                    memcpy(d + pn * j->Kg * NR, line + pn * NR, NR * sizeof(float));
            }
    }
}

static void im2col_range(void *vctx, size_t begin, size_t end) {
    im2col_job *j = (im2col_job *)vctx;
    const on_conv_params *p = &j->c->p;
    float *buf = (float *)on_scratch(ON_SLOT_CONV_COL, j->chunk_bytes);
    if (!buf) {
        atomic_store(&j->failed, 1);
        return;
    }
    size_t OHW = j->OH * j->OW;
    on_gemm_epilogue ep;
    ep.alpha = 1.0f;
    ep.act = j->c->act;
    /* unit = mpart * inner + (image * group + g) * nchunks + chunk: with split channels each thread
     * takes whole channel parts, so its slice of the weights stays in cache */
    const size_t inner = j->units / j->msplit;
    for (size_t u = begin; u < end; u++) {
        size_t mpart = u / inner, rest = u % inner;
        size_t chunk = rest % j->nchunks, ng = rest / j->nchunks;
        size_t n = ng / p->group, g = ng % p->group;
        size_t j0 = chunk * j->nchunk, nc = OHW - j0 < j->nchunk ? OHW - j0 : j->nchunk;
        const float *xg = j->x + (n * p->C + g * j->Cg) * j->H * j->W;
        float *yg = j->y + (n * p->OC + g * j->OCg) * OHW;
        size_t m0 = mpart * j->m_unit, m1 = m0 + j->m_unit > j->OCg ? j->OCg : m0 + j->m_unit;
        if (m0 >= m1) continue;
        const float *A = j->c->weight + g * j->OCg * j->Kg;
        ep.bias_kind = j->c->bias ? ON_BIAS_ROW : ON_BIAS_NONE;
        ep.bias = j->c->bias ? j->c->bias + g * j->OCg : NULL;
        if (j->c->path == ON_CONV_PATH_1X1 && j->OCg < CONV_1X1_PACK_MIN_OC) {
            /* B = the input rows themselves ([C, H*W], row stride H*W): full 16-pixel panels are read
             * in place, only a partial last panel is packed */
            size_t nfull = nc / NR, tail = nc - nfull * NR;
            if (nfull)
                on_gemm_run_rowmajor_b(j->uk, m0, m1, 0, nfull, nfull * NR, j->Kg, A, j->Kg, xg + j0,
                                       j->H * j->W, yg + j0, OHW, &ep);
            if (tail) {
                im2col_pack(j, xg, j0 + nfull * NR, tail, buf);
                on_gemm_run_panels(j->uk, m0, m1, 0, 1, tail, j->Kg, A, j->Kg, buf, yg + j0 + nfull * NR, OHW,
                                   &ep);
            }
            continue;
        }
        im2col_pack(j, xg, j0, nc, buf);
        on_gemm_run_panels(j->uk, m0, m1, 0, (nc + NR - 1) / NR, nc, j->Kg, A, j->Kg, buf, yg + j0, OHW, &ep);
    }
}

static on_status run_im2col(const on_conv2d *c, size_t N, size_t H, size_t W, size_t OH, size_t OW,
                            const float *x, float *y, int nthreads) {
    const on_conv_params *p = &c->p;
    im2col_job j;
    j.c = c;
    j.x = x;
    j.y = y;
    j.H = H;
    j.W = W;
    j.OH = OH;
    j.OW = OW;
    j.Cg = p->C / p->group;
    j.OCg = p->OC / p->group;
    j.Kg = j.Cg * p->KH * p->KW;
    j.uk = on_kernels_active()->gemm;
    size_t OHW = OH * OW;
    size_t nchunk = CONV_CHUNK_BYTES / (j.Kg * sizeof(float)) / NR * NR;
    nchunk = nchunk < CONV_CHUNK_MIN ? CONV_CHUNK_MIN : (nchunk > CONV_CHUNK_MAX ? CONV_CHUNK_MAX : nchunk);
    j.nchunk = nchunk;
    j.nchunks = (OHW + nchunk - 1) / nchunk;
    double flops = 2.0 * N * p->OC * OHW * j.Kg;
    if (flops < 524288.0 || nthreads < 1) nthreads = 1;
    size_t units = N * p->group * j.nchunks;
    j.msplit = 1;
    j.m_unit = j.OCg;
    if (units < 4 * (size_t)nthreads && units % (size_t)nthreads && j.OCg >= 12) {
        /* too few pixel chunks to share out evenly (5 chunks on 2 threads: 3 vs 2): split the channels */
        j.msplit = (size_t)nthreads;
        j.m_unit = ((j.OCg + j.msplit - 1) / j.msplit + 5) / 6 * 6;
        j.msplit = (j.OCg + j.m_unit - 1) / j.m_unit;
    }
    units *= j.msplit;
    j.units = units;
    int slots = nthreads < (int)units ? nthreads : (int)units;
    if (slots < 1) slots = 1;
    size_t chunk_floats = ((nchunk < OHW ? nchunk : OHW) + NR - 1) / NR * NR;
    if (!on_mul_size(chunk_floats, j.Kg, &chunk_floats) ||
        !on_mul_size(chunk_floats, sizeof(float), &j.chunk_bytes))
        return ON_ERR_NOMEM;
    atomic_init(&j.failed, 0);
    on_parallel_for(units, im2col_range, &j, slots);
    return atomic_load(&j.failed) ? ON_ERR_NOMEM : ON_OK;
}

void on_transpose_f32__scalar(const float *src, size_t lds, size_t rows, size_t cols, float *dst, size_t ldd) {
    for (size_t r0 = 0; r0 < rows; r0 += 8) /* 8x8 tiles: both sides touch few cache lines at a time */
        for (size_t c0 = 0; c0 < cols; c0 += 8)
            for (size_t r = r0; r < rows && r < r0 + 8; r++)
                for (size_t c = c0; c < cols && c < c0 + 8; c++) dst[c * ldd + r] = src[r * lds + c];
}

typedef struct {
    on_transpose_fn fn;
    const float *src;
    size_t rows, cols;
    float *dst;
} transpose_job;

/* unit = 64 source columns */
static void transpose_range(void *vctx, size_t begin, size_t end) {
    const transpose_job *j = (const transpose_job *)vctx;
    size_t c0 = begin * 64, c1 = end * 64 < j->cols ? end * 64 : j->cols;
    j->fn(j->src + c0, j->cols, j->rows, c1 - c0, j->dst + c0 * j->rows, j->rows);
}

/* dst [cols][rows] = src [rows][cols], split over threads by column blocks when it is large enough */
static void transpose_par(on_transpose_fn fn, const float *src, size_t rows, size_t cols, float *dst, int nthreads) {
    transpose_job j = {fn, src, rows, cols, dst};
    size_t units = (cols + 63) / 64;
    on_parallel_for(units, transpose_range, &j, rows * cols < 16384 ? 1 : nthreads);
}

/* 1x1 conv on a small image (the 7x7 / 4x4 layers at the end of a MobileNet): as Y = W X the GEMM has
 * a long M (output channels) and a single 16-pixel panel, so every k step broadcasts from 12 weight
 * rows that stream from L2/L3 with no reuse. Transposed, Y^T [HW, OC] = X^T [HW, C] W^T [C, OC],
 * the weights are the packed B panels (one sequential stream, 2 panels per tile on AVX-512) and X^T
 * is a few KiB in L1; the two transposes are 8x8 register transposes. Measured on Zen 5 against the
 * direct GEMM: 224->1344 at 4x4 2.9x faster (0.125 -> 0.043 ms; ORT 0.052), 136->816 at 8x8 1.5x. */
static on_status run_1x1_small(const on_conv2d *c, size_t N, size_t HW, const float *x, float *y, int nthreads) {
    const on_conv_params *p = &c->p;
    const size_t C = p->C, OC = p->OC;
    size_t xt_n, yt_n, bytes;
    if (!on_mul_size(HW, C, &xt_n) || !on_mul_size(HW, OC, &yt_n) || !on_mul_size(xt_n + yt_n, sizeof(float), &bytes))
        return ON_ERR_NOMEM;
    int owned;
    float *xt = (float *)on_temp_alloc(ON_SLOT_CONV_COL, bytes, &owned);
    if (!xt) return ON_ERR_NOMEM;
    float *yt = xt + xt_n;
    on_gemm_epilogue ep;
    ep.alpha = 1.0f;
    ep.act = c->act;
    ep.bias_kind = c->bias ? ON_BIAS_COL : ON_BIAS_NONE;
    ep.bias = c->bias;
    if (2.0 * (double)HW * C * OC < 1e6) nthreads = 1;
    on_transpose_fn tr = on_kernels_active()->transpose;
    on_status st = ON_OK;
    for (size_t n = 0; n < N && st == ON_OK; n++) {
        transpose_par(tr, x + n * C * HW, C, HW, xt, nthreads);
        st = on_gemm_packed(0, HW, OC, C, xt, C, c->wt, &ep, yt, OC, nthreads);
        transpose_par(tr, yt, HW, OC, y + n * OC * HW, nthreads);
    }
    on_temp_free(xt, owned);
    return st;
}

on_status on_conv2d_run(const on_conv2d *c, size_t N, size_t H, size_t W, const float *x, float *y,
                        int nthreads) {
    return on_conv2d_run_fused(c, N, H, W, x, ON_LAYOUT_NCHW, y, ON_LAYOUT_NCHW, NULL, nthreads);
}

int on_conv2d_layout_ok(const on_conv2d *c, on_layout xl, on_layout yl) {
    if (!c || (xl != ON_LAYOUT_NCHW && xl != ON_LAYOUT_NCHWC8) || (yl != ON_LAYOUT_NCHW && yl != ON_LAYOUT_NCHWC8))
        return 0;
    if (xl == ON_LAYOUT_NCHW && yl == ON_LAYOUT_NCHW) return 1;
    if (c->path == ON_CONV_PATH_DEPTHWISE) return 1;
    return c->path == ON_CONV_PATH_NCHWC && on_nchwc_layout_ok(c->nchwc, xl, yl);
}

int on_conv2d_sum_ok(const on_conv2d *c) {
    return c && c->path == ON_CONV_PATH_NCHWC && c->act.kind == ON_ACT_NONE;
}

on_status on_conv2d_run_layout(const on_conv2d *c, size_t N, size_t H, size_t W, const float *x, on_layout xl,
                               float *y, on_layout yl, int nthreads) {
    return on_conv2d_run_fused(c, N, H, W, x, xl, y, yl, NULL, nthreads);
}

on_status on_conv2d_run_fused(const on_conv2d *c, size_t N, size_t H, size_t W, const float *x, on_layout xl,
                              float *y, on_layout yl, const float *sum, int nthreads) {
    if (!on_conv2d_layout_ok(c, xl, yl) || (sum && !on_conv2d_sum_ok(c))) return ON_ERR_ARG;
    size_t OH, OW;
    on_status st = on_conv2d_output_size(&c->p, H, W, &OH, &OW);
    if (st != ON_OK) return st;
    if (N == 0) return ON_OK;
    if (!x || !y) return ON_ERR_ARG;
    if (nthreads > 64) nthreads = 64;
    if (c->path == ON_CONV_PATH_DEPTHWISE) return run_depthwise(c, N, H, W, OH, OW, x, xl, y, yl, nthreads);
    if (xl != ON_LAYOUT_NCHW || yl != ON_LAYOUT_NCHW || sum) /* only the direct path: on_conv2d_layout_ok */
        return on_nchwc_run_layout(c->nchwc, N, H, W, OH, OW, x, xl, y, yl, sum, nthreads);
    if (c->wt && OH * OW <= CONV_1X1_SMALL_PIXELS) return run_1x1_small(c, N, OH * OW, x, y, nthreads);
    if (c->path == ON_CONV_PATH_NCHWC || (c->nchwc && on_nchwc_suits_1x1(&c->p, OH, OW)))
        return on_nchwc_run(c->nchwc, N, H, W, OH, OW, x, y, nthreads);
    return run_im2col(c, N, H, W, OH, OW, x, y, nthreads);
}
