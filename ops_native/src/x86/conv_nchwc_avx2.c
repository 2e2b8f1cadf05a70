/* conv_nchwc_avx2.c - direct NCHWc convolution row kernel and NCHW -> NCHWc gather, AVX2 + FMA.
 *
 * Register tile: NB output-channel blocks (one ymm = ON_C0 = 8 channels each) x P output pixels:
 * 3x4 or 2x6 (12 accumulators + NB weight vectors + 1 input broadcast <= 16 ymm), 1x8 for a single
 * block. Per input channel and tap a tile issues NB weight loads + P broadcasts for NB*P FMAs, so
 * the 3x4 / 2x6 tiles are FMA bound (7-8 loads per 12 FMAs). A row's tiles go to a [nb][OW][8]
 * buffer (bias + activation applied in registers), which 8x8 transposes write to the NCHW rows.
 */
#include <immintrin.h>

#include "conv_internal.h"
#include "x86/act_avx2.h"
#include "x86/transpose_avx2.h"

#define C0 ON_C0
/* bytes of weights a row pass keeps hot in L1 (32 KiB on Zen 3, shared with the input rows) */
#ifndef NCHWC_L1_WEIGHTS
#define NCHWC_L1_WEIGHTS (16 * 1024)
#endif

/* a[b][p]: named so every accumulator stays in a register; the ones past NB / P compile away. */
#define ACC_ROW(b) __m256 a##b##0 = bv##b, a##b##1 = bv##b, a##b##2 = bv##b, a##b##3 = bv##b, \
                          a##b##4 = bv##b, a##b##5 = bv##b, a##b##6 = bv##b, a##b##7 = bv##b

#define FMA_PIX(q)                                                                                  \
    if (P > q) {                                                                                    \
        const __m256 xv = _mm256_broadcast_ss(xq + (q) * ps);                                       \
        a0##q = _mm256_fmadd_ps(xv, w0, a0##q);                                                     \
        if (NB > 1) a1##q = _mm256_fmadd_ps(xv, w1, a1##q);                                         \
        if (NB > 2) a2##q = _mm256_fmadd_ps(xv, w2, a2##q);                                         \
    }

/* the bias joins the finished sum (last input-channel chunk), as in the GEMM epilogue and ONNX Runtime */
#define FIN(v, bb) (act ? act_avx2(last ? _mm256_add_ps(v, bb) : v, &r->act) : (last ? _mm256_add_ps(v, bb) : v))
#define STORE_PIX(q)                                                                                \
    if (P > q) {                                                                                    \
        _mm256_storeu_ps(out + (q) * C0, FIN(a0##q, bb0));                                          \
        if (NB > 1) _mm256_storeu_ps(out + ob + (q) * C0, FIN(a1##q, bb1));                         \
        if (NB > 2) _mm256_storeu_ps(out + 2 * ob + (q) * C0, FIN(a2##q, bb2));                     \
    }

/* One tile: NB blocks x P pixels starting at output column ow0. CB8: the input block is a full 8
 * channels (inner loop unrolled; 2: stride 1, 3: stride 2, 1: any stride), else r->CB < 8 channels (RGB
 * stems). A compile-time pixel step makes each pixel's broadcast an address displacement; with the
 * step in a register gcc keeps one offset register per pixel and spills them in the inner loop. */
static inline __attribute__((always_inline)) void tile(const int NB, const int P, const int CB8,
                                                       const on_nchwc_row *r, const float *xrow, size_t ow0,
                                                       size_t icb0, size_t icb1, __m256 bv0, __m256 bv1,
                                                       __m256 bv2, int first, int last, int act) {
    const __m256 bb0 = bv0, bb1 = bv1, bb2 = bv2;
    bv0 = bv1 = bv2 = _mm256_setzero_ps();
    const size_t CB = CB8 ? C0 : r->CB;
    const size_t ps = CB8 == 2 ? C0 : (CB8 == 3 ? 2 * C0 : r->sw * CB), rs = r->PW * CB, cs = r->PH * rs;
    const size_t KH = r->KH, KW = r->KW, dhs = r->dh * rs, dws = r->dw * CB, wst = r->wstride;
    float *out = r->rowbuf + ow0 * C0;
    const size_t ob = r->ow_pad * C0;
    if (!first) { /* partial sums of the earlier input-channel chunks */
        bv0 = _mm256_loadu_ps(out);
        if (NB > 1) bv1 = _mm256_loadu_ps(out + ob);
        if (NB > 2) bv2 = _mm256_loadu_ps(out + 2 * ob);
    }
    ACC_ROW(0);
    ACC_ROW(1);
    ACC_ROW(2);
    if (!first) {
#define RELOAD(q) if (P > q) { a0##q = _mm256_loadu_ps(out + (q) * C0); \
        if (NB > 1) a1##q = _mm256_loadu_ps(out + ob + (q) * C0);          \
        if (NB > 2) a2##q = _mm256_loadu_ps(out + 2 * ob + (q) * C0); }
        RELOAD(1) RELOAD(2) RELOAD(3) RELOAD(4) RELOAD(5) RELOAD(6) RELOAD(7)
#undef RELOAD
    }
    const float *wp = r->w + icb0 * KH * KW * CB * C0;
    const float *xc = xrow + ow0 * ps + icb0 * cs;
    for (size_t icb = icb0; icb < icb1; icb++, xc += cs) {
        const float *xr = xc;
        for (size_t kh = 0; kh < KH; kh++, xr += dhs) {
            const float *xs = xr;
            for (size_t kw = 0; kw < KW; kw++, xs += dws) {
                if (CB8) {
#pragma GCC unroll 8
                    for (size_t ci = 0; ci < C0; ci++, wp += C0) {
                        const __m256 w0 = _mm256_loadu_ps(wp);
                        const __m256 w1 = NB > 1 ? _mm256_loadu_ps(wp + wst) : w0;
                        const __m256 w2 = NB > 2 ? _mm256_loadu_ps(wp + 2 * wst) : w0;
                        const float *xq = xs + ci;
                        FMA_PIX(0) FMA_PIX(1) FMA_PIX(2) FMA_PIX(3) FMA_PIX(4) FMA_PIX(5) FMA_PIX(6) FMA_PIX(7)
                    }
                } else {
                    for (size_t ci = 0; ci < CB; ci++, wp += C0) {
                        const __m256 w0 = _mm256_loadu_ps(wp);
                        const __m256 w1 = NB > 1 ? _mm256_loadu_ps(wp + wst) : w0;
                        const __m256 w2 = NB > 2 ? _mm256_loadu_ps(wp + 2 * wst) : w0;
                        const float *xq = xs + ci;
                        FMA_PIX(0) FMA_PIX(1) FMA_PIX(2) FMA_PIX(3) FMA_PIX(4) FMA_PIX(5) FMA_PIX(6) FMA_PIX(7)
                    }
                }
            }
        }
    }
    STORE_PIX(0) STORE_PIX(1) STORE_PIX(2) STORE_PIX(3) STORE_PIX(4) STORE_PIX(5) STORE_PIX(6) STORE_PIX(7)
}


static inline __m256i tail_mask(size_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* A group starting at lane s of a shared block (r->y_shared): output lane l of block j is channel
 * 8j + l - s, lane (l - s) mod 8 of rowbuf block j (l >= s) or j - 1 (l < s): two permutes and a blend, then
 * a masked store of the group's own lanes only (the neighbouring groups write the others). */
static void store_blocked_shared(const on_nchwc_row *r) {
    const size_t s = r->y_lane, qend = s + r->oc_valid, nblk = (qend + C0 - 1) / C0;
    const size_t lim = r->y_zero_tail ? nblk * C0 : qend; /* lanes past qend get zeros only at the tensor's end */
    const size_t nrb = (r->oc_valid + C0 - 1) / C0;        /* rowbuf blocks holding the group's channels */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i idx = _mm256_and_si256(_mm256_sub_epi32(lane, _mm256_set1_epi32((int)s)), _mm256_set1_epi32(7));
    const __m256 from_prev = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)s), lane));
    for (size_t jb = 0; jb < nblk; jb++) {
        const __m256i q = _mm256_add_epi32(lane, _mm256_set1_epi32((int)(jb * C0)));
        const __m256i m = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)s), q),
                                              _mm256_cmpgt_epi32(_mm256_set1_epi32((int)lim), q));
        const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)qend), q));
        /* lanes taken from a block outside 0 .. nrb - 1 are masked or zeroed: clamp it to a readable one */
        const float *cur = r->rowbuf + (jb < nrb ? jb : nrb - 1) * r->ow_pad * C0;
        const float *prev = r->rowbuf + (jb ? jb - 1 : 0) * r->ow_pad * C0;
        float *dst = r->y + jb * r->ystride;
        const float *sm = r->sum ? r->sum + jb * r->ystride : NULL;
        for (size_t ow = 0; ow < r->OW; ow++) {
            __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(cur + ow * C0), idx),
                                        _mm256_permutevar8x32_ps(_mm256_loadu_ps(prev + ow * C0), idx), from_prev);
            if (sm) v = _mm256_add_ps(v, _mm256_maskload_ps(sm + ow * C0, m));
            _mm256_maskstore_ps(dst + ow * C0, m, _mm256_and_ps(v, valid));
        }
    }
}

/* rowbuf [nb][ow_pad][8] -> y[oc * ystride + ow] */
static void store_rows(const on_nchwc_row *r) {
    if (r->y_shared) {
        store_blocked_shared(r);
        return;
    }
    if (r->y_blocked) {
        on_nchwc_store_blocked(r, 0);
        return;
    }
    for (size_t b = 0; b < r->nb; b++) {
        size_t nv = r->oc_valid - b * C0 < C0 ? r->oc_valid - b * C0 : C0;
        const float *src = r->rowbuf + b * r->ow_pad * C0;
        float *dst = r->y + b * C0 * r->ystride;
        for (size_t ow = 0; ow < r->OW; ow += C0) {
            __m256 v[8];
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(src + (ow + (size_t)i) * C0);
            on_transpose8_avx2(v);
            size_t n = r->OW - ow;
            const float *sm = r->sum ? r->sum + b * C0 * r->ystride : NULL;
            if (n >= C0) {
                if (sm)
                    for (size_t c = 0; c < nv; c++) v[c] = _mm256_add_ps(v[c], _mm256_loadu_ps(sm + c * r->ystride + ow));
                for (size_t c = 0; c < nv; c++) _mm256_storeu_ps(dst + c * r->ystride + ow, v[c]);
            } else {
                __m256i m = tail_mask(n);
                if (sm)
                    for (size_t c = 0; c < nv; c++)
                        v[c] = _mm256_add_ps(v[c], _mm256_maskload_ps(sm + c * r->ystride + ow, m));
                for (size_t c = 0; c < nv; c++) _mm256_maskstore_ps(dst + c * r->ystride + ow, m, v[c]);
            }
        }
    }
}

#define TAIL_CASES(NB, CB8, PMAX)                                                                  \
    switch (r->OW - ow) {                                                                          \
    case 1: tile(NB, 1, CB8, r, xrow, ow, i0, i1, b0, b1, b2, first, last, act); break;                                 \
    case 2: tile(NB, 2, CB8, r, xrow, ow, i0, i1, b0, b1, b2, first, last, act); break;                                 \
    case 3: if (PMAX > 3) tile(NB, 3, CB8, r, xrow, ow, i0, i1, b0, b1, b2, first, last, act); break;                   \
    case 4: if (PMAX > 4) tile(NB, 4, CB8, r, xrow, ow, i0, i1, b0, b1, b2, first, last, act); break;                   \
    case 5: if (PMAX > 5) tile(NB, 5, CB8, r, xrow, ow, i0, i1, b0, b1, b2, first, last, act); break;                   \
    case 6: if (PMAX > 6) tile(NB, 6, CB8, r, xrow, ow, i0, i1, b0, b1, b2, first, last, act); break;                   \
    case 7: if (PMAX > 7) tile(NB, 7, CB8, r, xrow, ow, i0, i1, b0, b1, b2, first, last, act); break;                   \
    default: break;                                                                                \
    }

static inline __attribute__((always_inline)) void row_nb(const int NB, const int CB8, const on_nchwc_row *r,
                                                         size_t oh) {
    const int P = NB == 1 ? 8 : (NB == 2 ? 6 : 4);
    const float *xrow = r->x + oh * r->sh * r->PW * r->CB;
    const __m256 b0 = _mm256_loadu_ps(r->bias);
    const __m256 b1 = NB > 1 ? _mm256_loadu_ps(r->bias + C0) : b0;
    const __m256 b2 = NB > 2 ? _mm256_loadu_ps(r->bias + 2 * C0) : b0;
    const int has_act = r->act.kind != ON_ACT_NONE;
    /* input-channel chunks whose weights (NB blocks) stay in L1 while the row's tiles reuse them */
    size_t per_icb = (size_t)NB * r->KH * r->KW * r->CB * C0 * sizeof(float);
    size_t chunk = NCHWC_L1_WEIGHTS / per_icb;
    if (chunk < 1) chunk = 1;
    for (size_t i0 = 0; i0 < r->ncb; i0 += chunk) {
        size_t i1 = r->ncb - i0 < chunk ? r->ncb : i0 + chunk;
        int first = i0 == 0, last = i1 == r->ncb, act = has_act && last;
        size_t ow = 0;
        for (; ow + (size_t)P <= r->OW; ow += (size_t)P)
            tile(NB, P, CB8, r, xrow, ow, i0, i1, b0, b1, b2, first, last, act);
        if (ow < r->OW) TAIL_CASES(NB, CB8, P)
    }
}

void on_conv_nchwc_row__avx2(const on_nchwc_row *r, size_t oh) {
    int cb8 = r->CB == C0 ? (r->sw == 1 ? 2 : (r->sw == 2 ? 3 : 1)) : 0;
    switch (r->nb) {
    case 1:
        if (cb8 == 2) row_nb(1, 2, r, oh);
        else if (cb8 == 3) row_nb(1, 3, r, oh);
        else if (cb8) row_nb(1, 1, r, oh);
        else row_nb(1, 0, r, oh);
        break;
    case 2:
        if (cb8 == 2) row_nb(2, 2, r, oh);
        else if (cb8 == 3) row_nb(2, 3, r, oh);
        else if (cb8) row_nb(2, 1, r, oh);
        else row_nb(2, 0, r, oh);
        break;
    default:
        if (cb8 == 2) row_nb(3, 2, r, oh);
        else if (cb8 == 3) row_nb(3, 3, r, oh);
        else if (cb8) row_nb(3, 1, r, oh);
        else row_nb(3, 0, r, oh);
        break;
    }
    store_rows(r);
}

/* RGB input (CB = 3): 8 pixels of 3 planes -> 24 interleaved floats, 3 permutes + 2 blends per vector */
static void pack_rgb(const float *src, size_t plane_stride, size_t W, float *dst) {
    const __m256i ia0 = _mm256_setr_epi32(0, 0, 0, 1, 0, 0, 2, 0), ib0 = _mm256_setr_epi32(0, 0, 0, 0, 1, 0, 0, 2);
    const __m256i ic0 = _mm256_setr_epi32(0, 0, 0, 0, 0, 1, 0, 0);
    const __m256i ia1 = _mm256_setr_epi32(0, 3, 0, 0, 4, 0, 0, 5), ib1 = _mm256_setr_epi32(0, 0, 3, 0, 0, 4, 0, 0);
    const __m256i ic1 = _mm256_setr_epi32(2, 0, 0, 3, 0, 0, 4, 0);
    const __m256i ia2 = _mm256_setr_epi32(0, 0, 6, 0, 0, 7, 0, 0), ib2 = _mm256_setr_epi32(5, 0, 0, 6, 0, 0, 7, 0);
    const __m256i ic2 = _mm256_setr_epi32(0, 5, 0, 0, 6, 0, 0, 7);
    const float *s0 = src, *s1 = src + plane_stride, *s2 = src + 2 * plane_stride;
    size_t iw = 0;
    for (; iw + 8 <= W; iw += 8) {
        const __m256 a = _mm256_loadu_ps(s0 + iw), b = _mm256_loadu_ps(s1 + iw), c = _mm256_loadu_ps(s2 + iw);
        /* blend masks: bit i set takes lane i from the second operand */
        __m256 o0 = _mm256_blend_ps(_mm256_permutevar8x32_ps(a, ia0), _mm256_permutevar8x32_ps(b, ib0), 0x92);
        o0 = _mm256_blend_ps(o0, _mm256_permutevar8x32_ps(c, ic0), 0x24);
        __m256 o1 = _mm256_blend_ps(_mm256_permutevar8x32_ps(a, ia1), _mm256_permutevar8x32_ps(b, ib1), 0x24);
        o1 = _mm256_blend_ps(o1, _mm256_permutevar8x32_ps(c, ic1), 0x49);
        __m256 o2 = _mm256_blend_ps(_mm256_permutevar8x32_ps(a, ia2), _mm256_permutevar8x32_ps(b, ib2), 0x49);
        o2 = _mm256_blend_ps(o2, _mm256_permutevar8x32_ps(c, ic2), 0x92);
        _mm256_storeu_ps(dst + iw * 3, o0);
        _mm256_storeu_ps(dst + iw * 3 + 8, o1);
        _mm256_storeu_ps(dst + iw * 3 + 16, o2);
    }
    for (; iw < W; iw++) {
        dst[iw * 3] = s0[iw];
        dst[iw * 3 + 1] = s1[iw];
        dst[iw * 3 + 2] = s2[iw];
    }
}

void on_conv_nchwc_pack__avx2(const float *src, size_t plane_stride, size_t nch, size_t CB, size_t W,
                              float *dst) {
    if (CB == 3 && nch == 3) {
        pack_rgb(src, plane_stride, W, dst);
        return;
    }
    if (CB != C0 || nch != C0) {
        on_conv_nchwc_pack__scalar(src, plane_stride, nch, CB, W, dst);
        return;
    }
    size_t iw = 0;
    for (; iw + C0 <= W; iw += C0) {
        __m256 v[8];
        for (size_t c = 0; c < C0; c++) v[c] = _mm256_loadu_ps(src + c * plane_stride + iw);
        on_transpose8_avx2(v);
        for (size_t i = 0; i < C0; i++) _mm256_storeu_ps(dst + (iw + i) * C0, v[i]);
    }
    for (; iw < W; iw++)
        for (size_t c = 0; c < C0; c++) dst[iw * C0 + c] = src[c * plane_stride + iw];
}

/* ---- pixel spans into a blocked output (on_nchwc_span_fn) -------------------------------------- */

/* One tile of NB blocks x P pixels whose windows start at x + xo[0..P-1] (any rows: a span runs across
 * row ends, so a 7x7 or 14x14 map fills whole tiles and each weight chunk pulled into L1 serves the
 * whole span instead of one short row). y / sm: pixel 0 of the tile in block 0. */
#define FMA_PX(q)                                                                                   \
    if (P > q) {                                                                                    \
        const __m256 xv = _mm256_broadcast_ss(t##q + ci);                                           \
        a0##q = _mm256_fmadd_ps(xv, w0, a0##q);                                                     \
        if (NB > 1) a1##q = _mm256_fmadd_ps(xv, w1, a1##q);                                         \
        if (NB > 2) a2##q = _mm256_fmadd_ps(xv, w2, a2##q);                                         \
    }
#define ACC_INIT(q)                                                                                 \
    __m256 a0##q = z, a1##q = z, a2##q = z;                                                         \
    if (P > q && !first) {                                                                          \
        a0##q = _mm256_loadu_ps(y + (q) * C0);                                                      \
        if (NB > 1) a1##q = _mm256_loadu_ps(y + ys + (q) * C0);                                     \
        if (NB > 2) a2##q = _mm256_loadu_ps(y + 2 * ys + (q) * C0);                                 \
    }
#define PX_PTR(q) const float *x##q = P > q ? x + xo[q] : x;
#define TAP_PTR(q) const float *t##q = x##q + o;
#define OUT_ONE(b, q, bb)                                                                           \
    {                                                                                               \
        __m256 v = a##b##q;                                                                         \
        if (last) {                                                                                 \
            v = _mm256_add_ps(v, bb);                                                               \
            if (act) v = act_avx2(v, &r->act);                                                      \
            if (sm) v = _mm256_add_ps(v, _mm256_loadu_ps(sm + (b) * ys + (q) * C0));                \
            if ((b) == NB - 1) v = _mm256_and_ps(v, lanes);                                         \
        }                                                                                           \
        _mm256_storeu_ps(y + (b) * ys + (q) * C0, v);                                               \
    }
#define OUT_PX(q)                                                                                   \
    if (P > q) {                                                                                    \
        OUT_ONE(0, q, bb0)                                                                          \
        if (NB > 1) OUT_ONE(1, q, bb1)                                                              \
        if (NB > 2) OUT_ONE(2, q, bb2)                                                              \
    }

static inline __attribute__((always_inline)) void tile_px(const int NB, const int P, const int CB8,
                                                          const on_nchwc_row *r, const size_t *xo, float *y,
                                                          const float *sm, size_t icb0, size_t icb1, __m256 bb0,
                                                          __m256 bb1, __m256 bb2, __m256 lanes, int first,
                                                          int last, int act) {
    const __m256 z = _mm256_setzero_ps();
    const size_t CB = CB8 ? C0 : r->CB, rs = r->PW * CB, cs = r->PH * rs;
    const size_t KH = r->KH, KW = r->KW, dhs = r->dh * rs, dws = r->dw * CB, wst = r->wstride;
    const size_t ys = r->ystride;
    const float *x = r->x;
    ACC_INIT(0) ACC_INIT(1) ACC_INIT(2) ACC_INIT(3) ACC_INIT(4) ACC_INIT(5) ACC_INIT(6) ACC_INIT(7)
    PX_PTR(0) PX_PTR(1) PX_PTR(2) PX_PTR(3) PX_PTR(4) PX_PTR(5) PX_PTR(6) PX_PTR(7)
    const float *wp = r->w + icb0 * KH * KW * CB * C0;
    for (size_t icb = icb0; icb < icb1; icb++)
        for (size_t kh = 0; kh < KH; kh++)
            for (size_t kw = 0; kw < KW; kw++) {
                const size_t o = icb * cs + kh * dhs + kw * dws;
                TAP_PTR(0) TAP_PTR(1) TAP_PTR(2) TAP_PTR(3) TAP_PTR(4) TAP_PTR(5) TAP_PTR(6) TAP_PTR(7)
                if (CB8) {
#pragma GCC unroll 8
                    for (size_t ci = 0; ci < C0; ci++, wp += C0) {
                        const __m256 w0 = _mm256_loadu_ps(wp);
                        const __m256 w1 = NB > 1 ? _mm256_loadu_ps(wp + wst) : w0;
                        const __m256 w2 = NB > 2 ? _mm256_loadu_ps(wp + 2 * wst) : w0;
                        FMA_PX(0) FMA_PX(1) FMA_PX(2) FMA_PX(3) FMA_PX(4) FMA_PX(5) FMA_PX(6) FMA_PX(7)
                    }
                } else {
                    for (size_t ci = 0; ci < CB; ci++, wp += C0) {
                        const __m256 w0 = _mm256_loadu_ps(wp);
                        const __m256 w1 = NB > 1 ? _mm256_loadu_ps(wp + wst) : w0;
                        const __m256 w2 = NB > 2 ? _mm256_loadu_ps(wp + 2 * wst) : w0;
                        FMA_PX(0) FMA_PX(1) FMA_PX(2) FMA_PX(3) FMA_PX(4) FMA_PX(5) FMA_PX(6) FMA_PX(7)
                    }
                }
            }
    OUT_PX(0) OUT_PX(1) OUT_PX(2) OUT_PX(3) OUT_PX(4) OUT_PX(5) OUT_PX(6) OUT_PX(7)
}

#define SPAN_TAIL(NB, CB8, PMAX)                                                                    \
    switch (n) {                                                                                    \
    case 1: tile_px(NB, 1, CB8, r, xo + (p - p0), y, sm, i0, i1, b0, b1, b2, lanes, first, last, act); break; \
    case 2: tile_px(NB, 2, CB8, r, xo + (p - p0), y, sm, i0, i1, b0, b1, b2, lanes, first, last, act); break; \
    case 3: if (PMAX > 3) tile_px(NB, 3, CB8, r, xo + (p - p0), y, sm, i0, i1, b0, b1, b2, lanes, first, last, act); break; \
    case 4: if (PMAX > 4) tile_px(NB, 4, CB8, r, xo + (p - p0), y, sm, i0, i1, b0, b1, b2, lanes, first, last, act); break; \
    case 5: if (PMAX > 5) tile_px(NB, 5, CB8, r, xo + (p - p0), y, sm, i0, i1, b0, b1, b2, lanes, first, last, act); break; \
    case 6: if (PMAX > 6) tile_px(NB, 6, CB8, r, xo + (p - p0), y, sm, i0, i1, b0, b1, b2, lanes, first, last, act); break; \
    case 7: if (PMAX > 7) tile_px(NB, 7, CB8, r, xo + (p - p0), y, sm, i0, i1, b0, b1, b2, lanes, first, last, act); break; \
    default: break;                                                                                 \
    }

static inline __attribute__((always_inline)) void span_nb(const int NB, const int CB8, const on_nchwc_row *r,
                                                          size_t p0, size_t p1) {
    const int P = NB == 1 ? 8 : (NB == 2 ? 6 : 4);
    /* each pixel's window origin in the padded copy, computed once for all chunks */
    size_t xo[ON_NCHWC_SPAN_MAX];
    const size_t rs = r->PW * r->CB;
    for (size_t p = p0, oh = p0 / r->OW, ow = p0 % r->OW; p < p1; p++) {
        xo[p - p0] = oh * r->sh * rs + ow * r->sw * r->CB;
        if (++ow == r->OW) ow = 0, oh++;
    }
    const __m256 b0 = _mm256_loadu_ps(r->bias);
    const __m256 b1 = NB > 1 ? _mm256_loadu_ps(r->bias + C0) : b0;
    const __m256 b2 = NB > 2 ? _mm256_loadu_ps(r->bias + 2 * C0) : b0;
    const __m256 lanes = _mm256_castsi256_ps(tail_mask(r->oc_valid - (size_t)(NB - 1) * C0));
    const int has_act = r->act.kind != ON_ACT_NONE;
    size_t per_icb = (size_t)NB * r->KH * r->KW * r->CB * C0 * sizeof(float);
    size_t chunk = NCHWC_L1_WEIGHTS / per_icb;
    if (chunk < 1) chunk = 1;
    for (size_t i0 = 0; i0 < r->ncb; i0 += chunk) {
        size_t i1 = r->ncb - i0 < chunk ? r->ncb : i0 + chunk;
        int first = i0 == 0, last = i1 == r->ncb, act = has_act && last;
        for (size_t p = p0, n; p < p1; p += n) {
            /* full tiles; a remainder of up to P/2 pixels joins the last full tile and the two are
             * split evenly (4 + 1 -> 3 + 2 pixels): a 1- or 2-pixel tile has too few accumulators to
             * hide the FMA latency */
            const size_t left = p1 - p;
            n = left < (size_t)P ? left : (size_t)P;
            if (left > (size_t)P && left - (size_t)P <= (size_t)P / 2) n = (left + 1) / 2;
            float *y = r->y + p * C0;
            const float *sm = r->sum ? r->sum + p * C0 : NULL;
            if (n == (size_t)P) tile_px(NB, P, CB8, r, xo + (p - p0), y, sm, i0, i1, b0, b1, b2, lanes, first, last, act);
            else SPAN_TAIL(NB, CB8, P)
        }
    }
}

void on_conv_nchwc_span__avx2(const on_nchwc_row *r, size_t p0, size_t p1) {
    const int cb8 = r->CB == C0;
    switch (r->nb) {
    case 1:
        if (cb8) span_nb(1, 1, r, p0, p1);
        else span_nb(1, 0, r, p0, p1);
        break;
    case 2:
        if (cb8) span_nb(2, 1, r, p0, p1);
        else span_nb(2, 0, r, p0, p1);
        break;
    default:
        if (cb8) span_nb(3, 1, r, p0, p1);
        else span_nb(3, 0, r, p0, p1);
        break;
    }
}

/* Channels c0 .. c0 + nch - 1 of a blocked row: lane ci is lane (s + ci) mod 8 of block c0 / 8 (s + ci < 8) or
 * of the next block, s = c0 mod 8: two permutes and a blend per pixel, lanes from nch on zeroed. */
void on_conv_nchwc_pack_lanes__avx2(const float *x, size_t HW, size_t c0, size_t nch, size_t CB, size_t W,
                                    float *dst) {
    if (CB != C0) {
        on_conv_nchwc_pack_lanes__scalar(x, HW, c0, nch, CB, W, dst);
        return;
    }
    const size_t s = c0 % C0;
    const float *b0 = x + (c0 / C0) * HW * C0;
    const float *b1 = s + nch > C0 ? b0 + HW * C0 : b0; /* the next block only when the channels reach it */
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i idx = _mm256_and_si256(_mm256_add_epi32(lane, _mm256_set1_epi32((int)s)), _mm256_set1_epi32(7));
    const __m256 from_next = _mm256_castsi256_ps(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32((int)(C0 - 1 - s))));
    const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32((int)nch), lane));
    for (size_t iw = 0; iw < W; iw++) {
        __m256 v = _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(b0 + iw * C0), idx),
                                    _mm256_permutevar8x32_ps(_mm256_loadu_ps(b1 + iw * C0), idx), from_next);
        _mm256_storeu_ps(dst + iw * C0, _mm256_and_ps(v, valid));
    }
}
