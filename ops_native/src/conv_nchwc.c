/* conv_nchwc.c - direct convolution in the channel-blocked NCHWc layout (C0 = ON_C0 channels).
 *
 * Plan: the weights are packed once per conv group into output-channel blocks
 * [ob][icb][KH][KW][CB][C0] (CB = C0 input channels per block, or C/group when that is smaller).
 * Run, per image: (1) the input is gathered into a zero-padded NCHWc copy [g][icb][PH][PW][CB], so
 * the kernels never test bounds; (2) every (group, block group, output row) is one work unit: the
 * ISA kernel keeps up to ON_NCHWC_MAX_NB blocks x a few pixels in registers over all input channels
 * and taps, and writes the row back to NCHW through a small transposing buffer, with bias and
 * activation applied in registers.
 *
 * On a CPU with AVX-512F the plan also packs the weights in output blocks of 16 channels (one zmm)
 * for conv_nchwc_avx512.c, which the driver uses while that ISA is active; the input copy is the
 * same.
 *
 * Against im2col + GEMM this saves writing and re-reading KH*KW copies of the input (the im2col
 * matrix), which is what made 3x3 layers with few output channels memory bound. Measured on Zen 3
 * (benchmarks/bench_conv.py) direct wins on every KxK shape tried, including RGB stems; the rule in
 * on_nchwc_suits keeps im2col only for grouped convs with fewer than C0 channels per group (a
 * block would be mostly zero lanes) and leaves 1x1 stride-1 convs to the GEMM.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "conv_internal.h"
#include "gemm_internal.h"
#include "kernels.h"

#define C0 ON_C0
/* A 1x1 stride-1 conv with few input channels (K <= 48) is bound by the GEMM's stores on large
 * images; the direct kernel measured 1.2-1.6x faster there (16->32 @320x320, 32->48 / 48->48 /
 * 12->96 @160x160) and slower below ~160x160 pixels or with more input channels. */
#define NCHWC_1X1_MIN_PIXELS (160 * 160)

/* The weights packed for one output-channel block width: ON_C0 (AVX2 / NEON / scalar kernels) or
 * 16 (AVX-512 kernel). */
typedef struct {
    size_t blk, max_nb;  /* channels per output block, blocks per register tile at most */
    size_t OCgb;         /* output blocks per conv group */
    size_t wstride;      /* floats per output block: ncb * KH * KW * CB * blk */
    float *w;            /* [group][OCgb] blocks of wstride floats */
    float *bias;         /* [group][OCgb * blk], zero padded */
    size_t ngrp;         /* block groups (register tiles) per conv group: first block, block count */
    size_t *grp_first, *grp_nb;
} nchwc_blocking;

struct on_nchwc_plan {
    on_conv_params p;
    on_act_t act;
    size_t Cg, OCg, CB, ncb; /* channels per group, input block width, input blocks */
    nchwc_blocking b8;       /* ON_C0-channel output blocks: every ISA's row kernel */
    nchwc_blocking b16;      /* 16-channel output blocks for AVX-512 (w NULL when the CPU lacks it) */
};

static int nchwc_enabled = 1;
void on_conv_set_nchwc_enabled(int enabled) { nchwc_enabled = enabled != 0; }

int on_nchwc_suits(const on_conv_params *p) {
    if (!nchwc_enabled) return 0;
    if (p->KH == 1 && p->KW == 1 && p->stride_h == 1 && p->stride_w == 1 && !p->pad_t && !p->pad_l && !p->pad_b &&
        !p->pad_r)
        return 0; /* the GEMM reads the NCHW input in place (but see on_nchwc_suits_1x1) */
    return p->group == 1 || p->C / p->group >= C0;
}

int on_nchwc_suits_1x1(const on_conv_params *p, size_t OH, size_t OW) {
    size_t Cg = p->C / p->group, OCg = p->OC / p->group;
    return nchwc_enabled && Cg <= 48 && OCg >= 32 && OCg % C0 == 0 && OH * OW >= NCHWC_1X1_MIN_PIXELS;
}

/* Register tiles over the output blocks: tiles of max_nb blocks, the rest split evenly. 8-channel
 * blocks: 3-block tiles (12 ymm accumulators, 7 loads per 12 FMAs) and 2-block ones, never a lone
 * 1-block tile beside others (4 blocks -> 2 + 2); all-2-block grouping measured 2-8% slower on ResNet
 * 3x3. 16-channel blocks: 2-block tiles (24 zmm accumulators), a lone one for an odd count. */
static size_t split_blocks(size_t nblocks, size_t max_nb, size_t *first, size_t *nb) {
    size_t n = 0, b = 0;
    while (b < nblocks) {
        size_t left = nblocks - b, take = left >= max_nb ? max_nb : left;
        if (max_nb == 3 && left == 4) take = 2;
        first[n] = b;
        nb[n] = take;
        n++;
        b += take;
    }
    return n;
}

static void blocking_free(nchwc_blocking *bl) {
    on_free(bl->w);
    on_free(bl->bias);
    on_free(bl->grp_first);
    on_free(bl->grp_nb);
}

/* Pack the weights [g][ob][icb][taps][CB][blk] (zero padded) and bias [g][ob * blk] for output blocks of
 * blk channels, and group the blocks into register tiles. */
static on_status blocking_create(const on_nchwc_plan *pl, const float *weight, const float *bias, size_t blk,
                                 size_t max_nb, nchwc_blocking *bl) {
    const on_conv_params *p = &pl->p;
    size_t taps = p->KH * p->KW, total;
    bl->blk = blk;
    bl->max_nb = max_nb;
    bl->OCgb = (pl->OCg + blk - 1) / blk;
    if (!on_mul_size(pl->ncb, taps, &bl->wstride) || !on_mul_size(bl->wstride, pl->CB * blk, &bl->wstride) ||
        !on_mul_size(bl->wstride, bl->OCgb * p->group, &total))
        return ON_ERR_NOMEM;
    bl->w = (float *)on_calloc(total, sizeof(float));
    bl->bias = (float *)on_calloc(p->group * bl->OCgb * blk, sizeof(float));
    bl->grp_first = (size_t *)on_malloc(bl->OCgb * sizeof(size_t));
    bl->grp_nb = (size_t *)on_malloc(bl->OCgb * sizeof(size_t));
    if (!bl->w || !bl->bias || !bl->grp_first || !bl->grp_nb) return ON_ERR_NOMEM;
    bl->ngrp = split_blocks(bl->OCgb, max_nb, bl->grp_first, bl->grp_nb);
    for (size_t g = 0; g < p->group; g++)
        for (size_t oc = 0; oc < pl->OCg; oc++) {
            size_t ob = oc / blk, co = oc % blk, goc = g * pl->OCg + oc;
            float *wb = bl->w + (g * bl->OCgb + ob) * bl->wstride;
            for (size_t ic = 0; ic < pl->Cg; ic++) {
                size_t icb = ic / pl->CB, ci = ic % pl->CB;
                for (size_t t = 0; t < taps; t++)
                    wb[((icb * taps + t) * pl->CB + ci) * blk + co] = weight[(goc * pl->Cg + ic) * taps + t];
            }
            if (bias) bl->bias[g * bl->OCgb * blk + oc] = bias[goc];
        }
    return ON_OK;
}

void on_nchwc_plan_free(on_nchwc_plan *pl) {
    if (!pl) return;
    blocking_free(&pl->b8);
    blocking_free(&pl->b16);
    on_free(pl);
}

on_status on_nchwc_plan_create(const on_conv_params *p, const float *weight, const float *bias, on_act_t act,
                               on_nchwc_plan **out) {
    *out = NULL;
    on_nchwc_plan *pl = (on_nchwc_plan *)on_calloc(1, sizeof(on_nchwc_plan));
    if (!pl) return ON_ERR_NOMEM;
    pl->p = *p;
    pl->act = act;
    pl->Cg = p->C / p->group;
    pl->OCg = p->OC / p->group;
    pl->CB = pl->Cg < C0 ? pl->Cg : C0;
    pl->ncb = (pl->Cg + pl->CB - 1) / pl->CB;
    on_status st = blocking_create(pl, weight, bias, C0, ON_NCHWC_MAX_NB, &pl->b8);
#if defined(__x86_64__)
    if (st == ON_OK && on_isa_available(ON_ISA_AVX512))
        st = blocking_create(pl, weight, bias, 16, ON_NCHWC16_MAX_NB, &pl->b16);
#endif
    if (st != ON_OK) {
        on_nchwc_plan_free(pl);
        return st;
    }
    *out = pl;
    return ON_OK;
}

/* ---- portable kernels ------------------------------------------------------------------------- */

/* A group that starts or ends inside a block: channel by channel, only its own lanes (the neighbouring
 * groups' units write the others, possibly at the same time). */
static void store_blocked_shared(const on_nchwc_row *r, int post_act) {
    const size_t blk = r->rb_blk;
    for (size_t oc = 0; oc < r->oc_valid; oc++) {
        size_t q = r->y_lane + oc, off = (q / C0) * r->ystride + q % C0;
        const float *src = r->rowbuf + (oc / blk) * r->ow_pad * blk + oc % blk;
        float *dst = r->y + off;
        const float *sm = r->sum ? r->sum + off : NULL;
        for (size_t ow = 0; ow < r->OW; ow++) {
            float v = post_act ? on_act_ref(r->act, src[ow * blk]) : src[ow * blk];
            dst[ow * C0] = sm ? v + sm[ow * C0] : v;
        }
    }
    if (!r->y_zero_tail) return;
    for (size_t q = r->y_lane + r->oc_valid; q % C0; q++) {
        float *dst = r->y + (q / C0) * r->ystride + q % C0;
        for (size_t ow = 0; ow < r->OW; ow++) dst[ow * C0] = 0.0f;
    }
}

void on_nchwc_store_blocked(const on_nchwc_row *r, int post_act) {
    if (r->y_shared) {
        store_blocked_shared(r, post_act);
        return;
    }
    const int sig = post_act;
    const size_t blk = r->rb_blk, nblocks = (r->oc_valid + C0 - 1) / C0;
    for (size_t j = 0; j < nblocks; j++) {
        size_t oc0 = j * C0, lanes = r->oc_valid - oc0 < C0 ? r->oc_valid - oc0 : C0;
        const float *src = r->rowbuf + (oc0 / blk) * r->ow_pad * blk + oc0 % blk;
        float *dst = r->y + j * r->ystride;
        if (r->sum) {
            const float *sm = r->sum + j * r->ystride;
            for (size_t ow = 0; ow < r->OW; ow++)
                for (size_t l = 0; l < C0; l++) dst[ow * C0 + l] = l >= lanes ? 0.0f : src[ow * blk + l] + sm[ow * C0 + l];
            continue;
        }
        if (blk == C0 && lanes == C0 && !sig) {
            memcpy(dst, src, r->OW * C0 * sizeof(float));
            continue;
        }
        for (size_t ow = 0; ow < r->OW; ow++) {
            const float *s = src + ow * blk;
            float *d = dst + ow * C0;
            for (size_t l = 0; l < C0; l++) d[l] = l >= lanes ? 0.0f : (sig ? on_act_ref(r->act, s[l]) : s[l]);
        }
    }
}

void on_nchwc_store_rows_ref(const on_nchwc_row *r, int post_act) {
    if (r->y_blocked) {
        on_nchwc_store_blocked(r, post_act);
        return;
    }
    int sig = post_act;
    for (size_t oc = 0; oc < r->oc_valid; oc++) {
        const float *src = r->rowbuf + (oc / C0) * r->ow_pad * C0 + oc % C0;
        float *dst = r->y + oc * r->ystride;
        const float *sm = r->sum ? r->sum + oc * r->ystride : NULL;
        for (size_t ow = 0; ow < r->OW; ow++)
            dst[ow] = (sig ? on_act_ref(r->act, src[ow * C0]) : src[ow * C0]) + (sm ? sm[ow] : 0.0f);
    }
}

void on_conv_nchwc_row__scalar(const on_nchwc_row *r, size_t oh) {
    const size_t CB = r->CB, rs = r->PW * CB, cs = r->PH * rs, taps = r->KH * r->KW;
    const float *xrow = r->x + oh * r->sh * rs;
    for (size_t b = 0; b < r->nb; b++) {
        const float *wb = r->w + b * r->wstride;
        for (size_t ow = 0; ow < r->OW; ow++) {
            float acc[C0];
            for (size_t co = 0; co < C0; co++) acc[co] = 0.0f;
            for (size_t icb = 0; icb < r->ncb; icb++)
                for (size_t kh = 0; kh < r->KH; kh++)
                    for (size_t kw = 0; kw < r->KW; kw++) {
                        const float *xs = xrow + icb * cs + kh * r->dh * rs + (ow * r->sw + kw * r->dw) * CB;
                        const float *wt = wb + ((icb * taps + kh * r->KW + kw) * CB) * C0;
                        for (size_t ci = 0; ci < CB; ci++)
                            for (size_t co = 0; co < C0; co++) acc[co] += xs[ci] * wt[ci * C0 + co];
                    }
            float *dst = r->rowbuf + (b * r->ow_pad + ow) * C0;
            for (size_t co = 0; co < C0; co++) { /* bias after the sum, as the GEMM epilogue adds it */
                float v = acc[co] + r->bias[b * C0 + co];
                dst[co] = on_act_is_transcendental(r->act.kind) ? v : on_act_ref(r->act, v);
            }
        }
    }
    on_nchwc_store_rows_ref(r, on_act_is_transcendental(r->act.kind));
}

void on_conv_nchwc_pack__scalar(const float *src, size_t plane_stride, size_t nch, size_t CB, size_t W,
                                float *dst) {
    for (size_t ci = 0; ci < nch; ci++) {
        const float *s = src + ci * plane_stride;
        for (size_t iw = 0; iw < W; iw++) dst[iw * CB + ci] = s[iw];
    }
    for (size_t ci = nch; ci < CB; ci++)
        for (size_t iw = 0; iw < W; iw++) dst[iw * CB + ci] = 0.0f;
}

/* ---- driver ----------------------------------------------------------------------------------- */

typedef struct {
    const on_nchwc_plan *pl;
    const float *x; /* image n, in layout xl */
    float *y;       /* image n, in layout yl */
    float *xp;      /* padded NCHWc copy [group][ncb][PH][PW][CB] (or x itself, see on_nchwc_run_layout) */
    const float *sum; /* image n of the residual (y's layout), or NULL */
    on_layout xl, yl;
    int x_shared, y_shared; /* blocked x / y whose groups do not start at blocks (lane-wise pack / store) */
    /* H x W and OH x OW are the row geometry the kernels see; a flattened 1x1 conv sees its plane as
     * rows of W pixels, the last one last_w (= last_ow) long. in_plane / out_plane: pixels per channel. */
    size_t H, W, OH, OW, PH, PW, ow_pad, last_w, last_ow, in_plane, out_plane;
    on_nchwc_row_fn row;
    on_nchwc_span_fn span; /* non-NULL: units are pixel spans into the blocked y, not rows */
    size_t span_len, nspan; /* pixels per span (the last one shorter), spans per plane */
    on_nchwc_pack_fn pack;
    on_nchwc_pack_lanes_fn pack_lanes;
    const nchwc_blocking *bl; /* the output blocking the row kernel uses */
    size_t row_units, grab; /* rows are handed out `grab` units at a time from next_unit */
    atomic_size_t next_unit;
    atomic_int failed;
} nchwc_job;

void on_conv_nchwc_pack_lanes__scalar(const float *x, size_t HW, size_t c0, size_t nch, size_t CB, size_t W,
                                      float *dst) {
    const float *src[C0];
    for (size_t ci = 0; ci < nch; ci++) src[ci] = x + ((c0 + ci) / C0) * HW * C0 + (c0 + ci) % C0;
    for (size_t iw = 0; iw < W; iw++) {
        float *d = dst + iw * CB;
        for (size_t ci = 0; ci < nch; ci++) d[ci] = src[ci][iw * C0];
        for (size_t ci = nch; ci < CB; ci++) d[ci] = 0.0f;
    }
}

/* unit = (g * ncb + icb) * PH + padded row: one full padded row (zeros included) */
static void pack_range(void *vctx, size_t begin, size_t end) {
    nchwc_job *j = (nchwc_job *)vctx;
    const on_nchwc_plan *pl = j->pl;
    const on_conv_params *p = &pl->p;
    const size_t CB = pl->CB, HW = j->in_plane;
    for (size_t u = begin; u < end; u++) {
        size_t r = u % j->PH, gb = u / j->PH, icb = gb % pl->ncb, g = gb / pl->ncb;
        float *dst = j->xp + u * j->PW * CB;
        if (r < p->pad_t || r >= p->pad_t + j->H) {
            memset(dst, 0, j->PW * CB * sizeof(float));
            continue;
        }
        size_t ih = r - p->pad_t, w = ih + 1 == j->H ? j->last_w : j->W;
        size_t c0 = icb * CB, nch = pl->Cg - c0 < CB ? pl->Cg - c0 : CB;
        memset(dst, 0, p->pad_l * CB * sizeof(float));
        if (j->xl == ON_LAYOUT_NCHWC8 && !j->x_shared) /* CB == C0 and the group starts at a block: a row copy */
            memcpy(dst + p->pad_l * CB, j->x + ((g * pl->ncb + icb) * HW + ih * j->W) * C0, w * C0 * sizeof(float));
        else if (j->xl == ON_LAYOUT_NCHWC8)
            j->pack_lanes(j->x + ih * j->W * C0, HW, g * pl->Cg + c0, nch, CB, w, dst + p->pad_l * CB);
        else
            j->pack(j->x + (g * pl->Cg + c0) * HW + ih * j->W, HW, nch, CB, w, dst + p->pad_l * CB);
        memset(dst + (p->pad_l + w) * CB, 0, (j->PW - p->pad_l - w) * CB * sizeof(float));
    }
}

static void fill_row_geometry(const nchwc_job *j, on_nchwc_row *r) {
    const on_nchwc_plan *pl = j->pl;
    const on_conv_params *p = &pl->p;
    r->ncb = pl->ncb;
    r->CB = pl->CB;
    r->PH = j->PH;
    r->PW = j->PW;
    r->KH = p->KH;
    r->KW = p->KW;
    r->sh = p->stride_h;
    r->sw = p->stride_w;
    r->dh = p->dil_h;
    r->dw = p->dil_w;
    r->wstride = j->bl->wstride;
    r->act = pl->act;
    r->OW = j->OW;
    r->ow_pad = j->ow_pad;
}

/* unit = (g * ngrp + block group) * nspan + span: pixels [span * span_len, ...) into the blocked y */
static void spans_range(nchwc_job *j, size_t begin, size_t end) {
    const on_nchwc_plan *pl = j->pl;
    const nchwc_blocking *bl = j->bl;
    on_nchwc_row r;
    fill_row_geometry(j, &r);
    r.y_blocked = 1;
    r.ystride = j->out_plane * C0;
    r.rowbuf = NULL;
    r.rb_blk = C0;
    r.y_lane = 0; /* spans only for groups that start at blocks */
    r.y_shared = r.y_zero_tail = 0;
    for (size_t u = begin; u < end; u++) {
        size_t s = u % j->nspan, gg = u / j->nspan, k = gg % bl->ngrp, g = gg / bl->ngrp;
        size_t ob = bl->grp_first[k], oc0 = ob * C0;
        r.x = j->xp + g * pl->ncb * j->PH * j->PW * pl->CB;
        r.w = bl->w + (g * bl->OCgb + ob) * bl->wstride;
        r.bias = bl->bias + (g * bl->OCgb + ob) * C0;
        r.nb = bl->grp_nb[k];
        r.oc_valid = pl->OCg - oc0 < r.nb * C0 ? pl->OCg - oc0 : r.nb * C0;
        size_t yo = (g * pl->OCg + oc0) / C0 * r.ystride; /* groups start at a block (on_nchwc_layout_ok) */
        r.y = j->y + yo;
        r.sum = j->sum ? j->sum + yo : NULL;
        size_t p0 = s * j->span_len, p1 = j->out_plane - p0 < j->span_len ? j->out_plane : p0 + j->span_len;
        j->span(&r, p0, p1);
    }
}

/* unit = (g * ngrp + block group) * OH + oh */
static void rows_range(nchwc_job *j, size_t begin, size_t end) {
    if (j->span) {
        spans_range(j, begin, end);
        return;
    }
    const on_nchwc_plan *pl = j->pl;
    const nchwc_blocking *bl = j->bl;
    float *rowbuf = (float *)on_scratch(ON_SLOT_AUX, bl->max_nb * j->ow_pad * bl->blk * sizeof(float));
    if (!rowbuf) {
        atomic_store(&j->failed, 1);
        return;
    }
    const size_t *first = bl->grp_first, *nbs = bl->grp_nb, blk = bl->blk;
    on_nchwc_row r;
    fill_row_geometry(j, &r);
    r.y_blocked = j->yl == ON_LAYOUT_NCHWC8;
    r.ystride = j->out_plane * (r.y_blocked ? C0 : 1);
    r.rowbuf = rowbuf;
    r.rb_blk = blk;
    r.y_shared = j->y_shared;
    r.y_lane = 0;
    r.y_zero_tail = 0;
    size_t u = begin;
    while (u < end) {
        size_t oh = u % j->OH, gg = u / j->OH, k = gg % bl->ngrp, g = gg / bl->ngrp;
        size_t ob = first[k], oc0 = ob * blk;
        r.x = j->xp + g * pl->ncb * j->PH * j->PW * pl->CB;
        r.w = bl->w + (g * bl->OCgb + ob) * bl->wstride;
        r.bias = bl->bias + (g * bl->OCgb + ob) * blk;
        r.nb = nbs[k];
        r.oc_valid = pl->OCg - oc0 < r.nb * blk ? pl->OCg - oc0 : r.nb * blk;
        size_t stop = end - u < j->OH - oh ? end : u + (j->OH - oh); /* rows of this block group */
        for (; u < stop; u++, oh++) {
            r.OW = oh + 1 == j->OH ? j->last_ow : j->OW;
            /* groups start at a block, so do 16-channel blocks, or y_shared (8-channel blocks only) */
            size_t yo = r.y_blocked ? (g * pl->OCg + oc0) / C0 * r.ystride + oh * j->OW * C0
                                    : (g * pl->OCg + oc0) * r.ystride + oh * j->OW;
            if (r.y_shared) {
                r.y_lane = (g * pl->OCg + oc0) % C0;
                r.y_zero_tail = g * pl->OCg + oc0 + r.oc_valid == pl->p.OC;
            }
            r.y = j->y + yo;
            r.sum = j->sum ? j->sum + yo : NULL;
            j->row(&r, oh);
        }
    }
}

/* Each thread takes the next `grab` rows until none are left: a core shared with another process
 * then does less of the work instead of holding everyone up (a static split made 2 threads slower
 * than 1 on a loaded machine). */
static void rows_worker(void *vctx, size_t begin, size_t end) {
    nchwc_job *j = (nchwc_job *)vctx;
    (void)begin;
    (void)end;
    for (;;) {
        size_t u = atomic_fetch_add(&j->next_unit, j->grab);
        if (u >= j->row_units) break;
        rows_range(j, u, j->row_units - u < j->grab ? j->row_units : u + j->grab);
    }
}

/* Every plan takes either layout: groups that start inside a block are packed and stored lane by lane. */
int on_nchwc_layout_ok(const on_nchwc_plan *pl, on_layout xl, on_layout yl) {
    (void)xl;
    (void)yl;
    return pl != NULL;
}

/* Row length of a flattened 1x1 conv: a multiple of every kernel's pixel tile (4, 6, 8 / 12, 16) that
 * keeps rowbuf in L1 and gives the threads enough rows. */
#define NCHWC_FLAT_ROW 96
/* Pixels per span of the span kernels: a whole plane up to ON_NCHWC_SPAN_MAX (7x7, 8x8, 11x11), else
 * about this many, a multiple of every 8-channel pixel tile (4, 6, 8), so only the plane's last span
 * has a partial tile; input rows + output tiles of a span stay in L1 next to the weight chunk. */
#define NCHWC_SPAN 96
/* Spans only for output rows shorter than this: a 7- or 14-pixel row leaves a 3- or 2-pixel tile per
 * row and pulls each weight chunk into L1 for a few tiles (3x3 512 @7 and 256 @14 measured 8-16% faster
 * as spans); rows of 28 and more already fill their tiles, and there (and on flattened 1x1 planes) the
 * row kernel's rowbuf measured equal or up to ~10% faster than accumulating in the strided y blocks. */
#define NCHWC_SPAN_MAX_OW 24

on_status on_nchwc_run(const on_nchwc_plan *pl, size_t N, size_t H, size_t W, size_t OH, size_t OW,
                       const float *x, float *y, int nthreads) {
    return on_nchwc_run_layout(pl, N, H, W, OH, OW, x, ON_LAYOUT_NCHW, y, ON_LAYOUT_NCHW, NULL, nthreads);
}

on_status on_nchwc_run_layout(const on_nchwc_plan *pl, size_t N, size_t H, size_t W, size_t OH, size_t OW,
                              const float *x, on_layout xl, float *y, on_layout yl, const float *sum,
                              int nthreads) {
    const on_conv_params *p = &pl->p;
    if (!on_nchwc_layout_ok(pl, xl, yl)) return ON_ERR_ARG;
    nchwc_job j;
    j.pl = pl;
    j.xl = xl;
    j.yl = yl;
    /* a blocked x is copied row by row when its groups start at blocks and fill them (CB == C0) */
    j.x_shared = xl == ON_LAYOUT_NCHWC8 && (pl->CB != C0 || (p->group > 1 && pl->Cg % C0));
    j.y_shared = yl == ON_LAYOUT_NCHWC8 && p->group > 1 && pl->OCg % C0;
    j.in_plane = H * W;
    j.out_plane = OH * OW;
    j.last_w = W;
    j.last_ow = OW;
    const int pointwise = p->KH == 1 && p->KW == 1 && p->stride_h == 1 && p->stride_w == 1 && !p->pad_t &&
                          !p->pad_l && !p->pad_b && !p->pad_r;
    if (pointwise && (xl == ON_LAYOUT_NCHWC8 || yl == ON_LAYOUT_NCHWC8)) {
        /* pixels are independent: run the plane as rows of NCHWC_FLAT_ROW, so a 4x4 or 8x8 image
         * fills whole register tiles instead of 4- or 8-pixel rows */
        size_t P = H * W, L = P <= NCHWC_FLAT_ROW * 4 / 3 ? P : NCHWC_FLAT_ROW;
        for (size_t d = 0; L != P && d <= NCHWC_FLAT_ROW / 2; d++) { /* prefer rows that tile P exactly */
            if (P % (NCHWC_FLAT_ROW - d) == 0) { L = NCHWC_FLAT_ROW - d; break; }
            if (P % (NCHWC_FLAT_ROW + d) == 0) { L = NCHWC_FLAT_ROW + d; break; }
        }
        W = OW = L;
        H = OH = (P + L - 1) / L;
        j.last_w = j.last_ow = P - (H - 1) * L;
    }
    j.H = H;
    j.W = W;
    j.OH = OH;
    j.OW = OW;
    j.ow_pad = (OW + C0 - 1) / C0 * C0;
    /* rows / columns the kernels read: the padded input, at least the (dilated) window of every output */
    size_t need_h = (OH - 1) * p->stride_h + (p->KH - 1) * p->dil_h + 1;
    size_t need_w = (OW - 1) * p->stride_w + (p->KW - 1) * p->dil_w + 1;
    j.PH = H + p->pad_t + p->pad_b > need_h ? H + p->pad_t + p->pad_b : need_h;
    j.PW = W + p->pad_l + p->pad_r > need_w ? W + p->pad_l + p->pad_r : need_w;
    if (j.PW < p->pad_l + W) j.PW = p->pad_l + W;
    if (j.PH < p->pad_t + H) j.PH = p->pad_t + H;
    const on_kernel_table *k = on_kernels_active();
    j.row = k->nchwc_row;
    j.pack = k->nchwc_pack;
    j.pack_lanes = k->nchwc_pack_lanes;
    j.bl = &pl->b8;
    if (k->nchwc_row16 && pl->b16.w && !j.y_shared) {
        j.row = k->nchwc_row16;
        j.bl = &pl->b16;
    }
    const size_t y_image = yl == ON_LAYOUT_NCHWC8 ? (p->OC + C0 - 1) / C0 * C0 * j.out_plane : p->OC * j.out_plane;
    /* spans keep partial sums in y, so a residual must not share y's memory */
    const uintptr_t ya = (uintptr_t)y, sa = (uintptr_t)sum, ybytes = N * y_image * sizeof(float);
    const int sum_overlaps = sum && sa < ya + ybytes && ya < sa + ybytes;
    j.span = NULL;
    j.span_len = j.nspan = 1;
    if (k->nchwc_span && j.bl == &pl->b8 && yl == ON_LAYOUT_NCHWC8 && !j.y_shared && !sum_overlaps && !pointwise &&
        OW < NCHWC_SPAN_MAX_OW) {
        j.span = k->nchwc_span;
        const size_t P = j.out_plane, tile = 24; /* lcm of the tile widths 4, 6, 8 */
        if (P <= ON_NCHWC_SPAN_MAX) {
            j.span_len = P;
        } else {
            size_t n = (P + NCHWC_SPAN - 1) / NCHWC_SPAN, len = (P + n - 1) / n;
            j.span_len = (len + tile - 1) / tile * tile;
        }
        j.nspan = (P + j.span_len - 1) / j.span_len;
    }
    /* a blocked input of a pointwise group-1 conv already is the copy the kernels read */
    const int in_place = pointwise && xl == ON_LAYOUT_NCHWC8 && !j.x_shared && p->group == 1 &&
                         j.PH * j.PW == j.in_plane;
    size_t bytes = 0;
    if (!on_mul_size(p->group * pl->ncb * j.PH, j.PW * pl->CB, &bytes) || !on_mul_size(bytes, sizeof(float), &bytes))
        return ON_ERR_NOMEM;
    int owned = 0;
    j.xp = in_place ? NULL : (float *)on_temp_alloc(ON_SLOT_CONV_COL, bytes, &owned);
    if (!in_place && !j.xp) return ON_ERR_NOMEM;
    atomic_init(&j.failed, 0);
    atomic_init(&j.next_unit, 0);
    double flops = 2.0 * (double)p->OC * OH * OW * pl->Cg * p->KH * p->KW;
    int nt = flops < 524288.0 || nthreads < 1 ? 1 : nthreads;
    size_t pack_units = p->group * pl->ncb * j.PH;
    j.row_units = p->group * j.bl->ngrp * (j.span ? j.nspan : OH);
    j.grab = j.row_units / ((size_t)nt * 8);
    if (j.grab < 1) j.grab = 1;
    const size_t x_image = xl == ON_LAYOUT_NCHWC8 ? (p->C + C0 - 1) / C0 * C0 * j.in_plane : p->C * j.in_plane;
    for (size_t n = 0; n < N && !atomic_load(&j.failed); n++) {
        j.x = x + n * x_image;
        j.y = y + n * y_image;
        j.sum = sum ? sum + n * y_image : NULL;
        if (in_place)
            j.xp = (float *)j.x;
        else
            on_parallel_for(pack_units, pack_range, &j, (double)pack_units * j.PW * pl->CB < 32768.0 ? 1 : nt);
        atomic_store(&j.next_unit, 0);
        if (nt == 1) rows_range(&j, 0, j.row_units);
        else on_parallel_for((size_t)nt, rows_worker, &j, nt);
    }
    if (!in_place) on_temp_free(j.xp, owned);
    return atomic_load(&j.failed) ? ON_ERR_NOMEM : ON_OK;
}
