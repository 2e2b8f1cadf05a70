/* conv_dw_c8_avx2.c - depthwise convolution on blocks of 8 channels (one ymm = one pixel of 8 planes).
 *
 * The plane kernel (conv_dw_avx2.c) vectorises along W: on small planes (14x14, 7x7: the late layers of
 * MobileNet-style networks) most lanes of a row's last vector idle and the per-plane set-up dominates,
 * and stride 2 needs a lane shuffle per load. Here 8 planes are transposed into a zero-padded HWc8 tile
 * (the NCHWc idea inside one kernel call, so the graph stays NCHW), every output pixel is KH*KW 8-wide
 * FMAs with no shuffles at any stride, and the result is transposed back. For 3- and 5-wide kernels at
 * stride 1 and 2 an input row is loaded once per group of 4 outputs and reused across the taps.
 */
#include <immintrin.h>
#include <string.h>

#include "conv_internal.h"
#include "x86/act_avx2.h"
#include "x86/transpose_avx2.h"


/* Planes c0..c0+nc-1 of one image (x: plane stride H*W) -> interior of the padded tile (PW * 8 floats
 * per padded row). Lanes >= nc are written as zeros, so a partial block computes zeros there. */
static void pack_block(const on_dw_args *a, const float *x, size_t nc, float *tile) {
    const size_t H = a->H, W = a->W, HW = H * W;
    for (size_t h = 0; h < H; h++) {
        float *dst = tile + ((h + a->p->pad_t) * a->PW + a->p->pad_l) * 8;
        const float *src = x + h * W;
        size_t w = 0;
        if (nc == 8 && W >= 8) {
            /* 8 columns at a time; a tail is done as the last 8 columns, overlapping (same values) */
            for (size_t w0 = 0; w0 < W; w0 += 8) {
                size_t c0 = w0 + 8 <= W ? w0 : W - 8;
                __m256 r[8];
                for (int c = 0; c < 8; c++) r[c] = _mm256_loadu_ps(src + c * HW + c0);
                on_transpose8_avx2(r);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (c0 + i) * 8, r[i]);
            }
            w = W;
        }
        for (; w < W; w++)
            for (size_t c = 0; c < 8; c++) dst[w * 8 + c] = c < nc ? src[c * HW + w] : 0.0f;
    }
}

/* A block of a blocked input into the padded tile: its rows are already HWc8, so a row copy. */
static void copy_block(const on_dw_args *a, const float *xb, float *tile) {
    for (size_t h = 0; h < a->H; h++)
        memcpy(tile + ((h + a->p->pad_t) * a->PW + a->p->pad_l) * 8, xb + h * a->W * 8, a->W * 8 * sizeof(float));
}

/* Lanes nc..7 of a blocked output block are stored as zeros. */
static void zero_lanes(float *yb, size_t pixels, size_t nc) {
    for (size_t i = 0; i < pixels; i++)
        for (size_t c = nc; c < 8; c++) yb[i * 8 + c] = 0.0f;
}

/* HWc8 output tile (OH * OW pixels) -> planes c0..c0+nc-1 of y (plane stride OH*OW). */
static void unpack_block(const on_dw_args *a, const float *tile, size_t nc, float *y) {
    const size_t OHW = a->OH * a->OW;
    size_t i = 0;
    if (nc == 8 && OHW >= 8) {
        for (size_t i0 = 0; i0 < OHW; i0 += 8) {
            size_t p0 = i0 + 8 <= OHW ? i0 : OHW - 8; /* overlapping tail, as in pack_block */
            __m256 r[8];
            for (int k = 0; k < 8; k++) r[k] = _mm256_loadu_ps(tile + (p0 + k) * 8);
            on_transpose8_avx2(r);
            for (int c = 0; c < 8; c++) _mm256_storeu_ps(y + c * OHW + p0, r[c]);
        }
        i = OHW;
    }
    for (; i < OHW; i++)
        for (size_t c = 0; c < nc; c++) y[c * OHW + i] = tile[i * 8 + c];
}

/* acc is the finished sum of the taps plus the bias (added last, as the GEMM epilogue does) */
static inline __attribute__((always_inline)) __m256 finish(__m256 acc, const on_act_t *act) {
    return act_avx2(acc, act);
}

/* OW pixels of one output row, 4 at a time (4 independent FMA chains). base: the input pixel under
 * the first tap of the first output pixel; input rows PW pixels apart; out: the first output pixel. */
static inline __attribute__((always_inline)) void row_c8(const on_dw_args *a, const float *base, size_t PW,
                                                         const float *w8, __m256 bias, float *out, size_t OW) {
    const on_conv_params *p = a->p;
    const size_t KH = p->KH, KW = p->KW, sw = p->stride_w, dh = p->dil_h, dw = p->dil_w;
    size_t ow = 0;
    for (; ow + 4 <= OW; ow += 4) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (size_t kh = 0; kh < KH; kh++) {
            const float *r = base + (kh * dh * PW + ow * sw) * 8;
            for (size_t kw = 0; kw < KW; kw++) {
                const __m256 wv = _mm256_loadu_ps(w8 + (kh * KW + kw) * 8);
                const float *q = r + kw * dw * 8;
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q), wv, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + sw * 8), wv, a1);
                a2 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 2 * sw * 8), wv, a2);
                a3 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 3 * sw * 8), wv, a3);
            }
        }
        float *o = out + ow * 8;
        _mm256_storeu_ps(o, finish(_mm256_add_ps(a0, bias), &a->act));
        _mm256_storeu_ps(o + 8, finish(_mm256_add_ps(a1, bias), &a->act));
        _mm256_storeu_ps(o + 16, finish(_mm256_add_ps(a2, bias), &a->act));
        _mm256_storeu_ps(o + 24, finish(_mm256_add_ps(a3, bias), &a->act));
    }
    for (; ow < OW; ow++) {
        __m256 acc = _mm256_setzero_ps();
        for (size_t kh = 0; kh < KH; kh++) {
            const float *r = base + (kh * dh * PW + ow * sw) * 8;
            for (size_t kw = 0; kw < KW; kw++)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r + kw * dw * 8), _mm256_loadu_ps(w8 + (kh * KW + kw) * 8), acc);
        }
        _mm256_storeu_ps(out + ow * 8, finish(_mm256_add_ps(acc, bias), &a->act));
    }
}

/* KW (3 or 5), dil_w == 1, stride SW (1 or 2): compile-time constants after inlining. The KW - 1 + 4*SW
 * input pixels the 4 outputs of a group read in one kernel row are loaded once, not 4*KW times. */
static inline __attribute__((always_inline)) void rowk_c8(const on_dw_args *a, const float *base, size_t PW,
                                                          const float *w8, __m256 bias, float *out, size_t OW,
                                                          const size_t KW, const size_t SW) {
    const on_conv_params *p = a->p;
    const size_t KH = p->KH, dh = p->dil_h;
    size_t ow = 0;
    /* 8 outputs: 8 independent FMA chains cover the FMA latency; inputs straight from L1 (3 loads/cycle) */
    for (; ow + 8 <= OW; ow += 8) {
        __m256 acc[8];
#pragma GCC unroll 8
        for (size_t j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
        for (size_t kh = 0; kh < KH; kh++) {
            const float *r = base + (kh * dh * PW + ow * SW) * 8;
            const float *wk = w8 + kh * KW * 8;
#pragma GCC unroll 5
            for (size_t kw = 0; kw < KW; kw++) {
                const __m256 wv = _mm256_loadu_ps(wk + kw * 8);
#pragma GCC unroll 8
                for (size_t j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(r + (j * SW + kw) * 8), wv, acc[j]);
            }
        }
        float *o = out + ow * 8;
#pragma GCC unroll 8
        for (size_t j = 0; j < 8; j++) _mm256_storeu_ps(o + j * 8, finish(_mm256_add_ps(acc[j], bias), &a->act));
    }
    for (; ow + 4 <= OW; ow += 4) {
        __m256 acc[4];
#pragma GCC unroll 4
        for (size_t j = 0; j < 4; j++) acc[j] = _mm256_setzero_ps();
        for (size_t kh = 0; kh < KH; kh++) {
            const float *r = base + (kh * dh * PW + ow * SW) * 8;
            const float *wk = w8 + kh * KW * 8;
            __m256 in[12];
#pragma GCC unroll 12
            for (size_t i = 0; i < KW - 1 + 4 * SW; i++) in[i] = _mm256_loadu_ps(r + i * 8);
#pragma GCC unroll 5
            for (size_t kw = 0; kw < KW; kw++) {
                const __m256 wv = _mm256_loadu_ps(wk + kw * 8);
#pragma GCC unroll 4
                for (size_t j = 0; j < 4; j++) acc[j] = _mm256_fmadd_ps(in[j * SW + kw], wv, acc[j]);
            }
        }
        float *o = out + ow * 8;
#pragma GCC unroll 4
        for (size_t j = 0; j < 4; j++) _mm256_storeu_ps(o + j * 8, finish(_mm256_add_ps(acc[j], bias), &a->act));
    }
    for (; ow < OW; ow++) {
        __m256 acc = _mm256_setzero_ps();
        for (size_t kh = 0; kh < KH; kh++) {
            const float *r = base + (kh * dh * PW + ow * SW) * 8;
            for (size_t kw = 0; kw < KW; kw++)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(r + kw * 8), _mm256_loadu_ps(w8 + (kh * KW + kw) * 8), acc);
        }
        _mm256_storeu_ps(out + ow * 8, finish(_mm256_add_ps(acc, bias), &a->act));
    }
}

/* n output pixels of a row through the kernel that fits the geometry. */
static void span(const on_dw_args *a, const float *base, size_t pitch, const float *w8, __m256 bias, float *out,
                 size_t n) {
    const on_conv_params *p = a->p;
    const size_t kw = p->dil_w == 1 ? p->KW : 0, sw = p->stride_w;
    if (kw == 3 && sw == 1) rowk_c8(a, base, pitch, w8, bias, out, n, 3, 1);
    else if (kw == 3 && sw == 2) rowk_c8(a, base, pitch, w8, bias, out, n, 3, 2);
    else if (kw == 5 && sw == 1) rowk_c8(a, base, pitch, w8, bias, out, n, 5, 1);
    else if (kw == 5 && sw == 2) rowk_c8(a, base, pitch, w8, bias, out, n, 5, 2);
    else row_c8(a, base, pitch, w8, bias, out, n);
}

/* One output pixel whose window crosses the border of a blocked input xb (H x W pixels of 8 lanes):
 * taps outside it are skipped (they would read padding zeros). */
static void edge_pixel(const on_dw_args *a, const float *xb, const float *w8, __m256 bias, float *o, size_t oh,
                       size_t ow) {
    const on_conv_params *p = a->p;
    __m256 acc = _mm256_setzero_ps();
    for (size_t kh = 0; kh < p->KH; kh++) {
        size_t ih = oh * p->stride_h + kh * p->dil_h; /* padded coordinates */
        if (ih < p->pad_t || ih - p->pad_t >= a->H) continue;
        for (size_t kw = 0; kw < p->KW; kw++) {
            size_t iw = ow * p->stride_w + kw * p->dil_w;
            if (iw < p->pad_l || iw - p->pad_l >= a->W) continue;
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(xb + ((ih - p->pad_t) * a->W + iw - p->pad_l) * 8),
                                  _mm256_loadu_ps(w8 + (kh * p->KW + kw) * 8), acc);
        }
    }
    _mm256_storeu_ps(o, finish(_mm256_add_ps(acc, bias), &a->act));
}

/* Outputs [lo, hi) along one axis whose whole window lies inside the input: in padded coordinates
 * o * s + k * d must stay within [pad, pad + n) for every tap k < K. */
static void interior(size_t pad, size_t n, size_t K, size_t s, size_t d, size_t out, size_t *lo, size_t *hi) {
    size_t span_k = (K - 1) * d;
    *lo = (pad + s - 1) / s;
    *hi = pad + n >= span_k + 1 ? (pad + n - span_k - 1) / s + 1 : 0;
    if (*hi > out) *hi = out;
    if (*lo > *hi) *lo = *hi;
}

#ifndef DW_PREFETCH_ROWS
#define DW_PREFETCH_ROWS 2
#endif

/* A blocked input read in place, without the tile: interior pixels straight from it, the border ones
 * skipping the taps that fall outside (used where DW_DIRECT says it pays). */
static void block_direct(const on_dw_args *a, const float *xb, const float *w8, __m256 bias, float *out) {
    const on_conv_params *p = a->p;
    size_t r0, r1, c0, c1;
    interior(p->pad_t, a->H, p->KH, p->stride_h, p->dil_h, a->OH, &r0, &r1);
    interior(p->pad_l, a->W, p->KW, p->stride_w, p->dil_w, a->OW, &c0, &c1);
    const size_t row_floats = a->W * 8, ahead = DW_PREFETCH_ROWS * p->stride_h;
    for (size_t oh = 0; oh < a->OH; oh++) {
        float *orow = out + oh * a->OW * 8;
        /* the input comes from L3 / DRAM in a whole network: fetch the rows a few output rows ahead */
        size_t pf = oh * p->stride_h + (p->KH - 1) * p->dil_h + ahead;
        if (pf >= p->pad_t && pf - p->pad_t < a->H)
            for (size_t i = 0; i < row_floats; i += 16)
                _mm_prefetch((const char *)(xb + (pf - p->pad_t) * row_floats + i), _MM_HINT_T0);
        if (oh < r0 || oh >= r1 || c0 == c1) {
            for (size_t ow = 0; ow < a->OW; ow++) edge_pixel(a, xb, w8, bias, orow + ow * 8, oh, ow);
            continue;
        }
        for (size_t ow = 0; ow < c0; ow++) edge_pixel(a, xb, w8, bias, orow + ow * 8, oh, ow);
        const float *base = xb + ((oh * p->stride_h - p->pad_t) * a->W + c0 * p->stride_w - p->pad_l) * 8;
        span(a, base, a->W, w8, bias, orow + c0 * 8, c1 - c0);
        for (size_t ow = c1; ow < a->OW; ow++) edge_pixel(a, xb, w8, bias, orow + ow * 8, oh, ow);
    }
}

void on_conv_dw_c8__avx2(const on_dw_args *a, size_t begin, size_t end, float *scratch) {
    const size_t ncb = (a->C + 7) / 8, KK = a->p->KH * a->p->KW;
    const on_conv_params *p = a->p;
    float *tile = scratch, *out_tile = scratch + a->PH * a->PW * 8;
    for (size_t b = begin; b < end; b++) {
        size_t n = b / ncb, cb = b % ncb, c0 = cb * 8, nc = a->C - c0 < 8 ? a->C - c0 : 8;
        float *out = a->y_blocked ? a->y + b * a->OH * a->OW * 8 : out_tile; /* blocked: written in place */
        const float *w8 = a->w_c8 + cb * KK * 8;
        const __m256 bias = _mm256_loadu_ps(a->bias_c8 + cb * 8);
        if (a->x_blocked && DW_DIRECT(a)) {
            block_direct(a, a->x + b * a->H * a->W * 8, w8, bias, out);
        } else {
            if (a->x_blocked)
                copy_block(a, a->x + b * a->H * a->W * 8, tile);
            else
                pack_block(a, a->x + (n * a->C + c0) * a->H * a->W, nc, tile);
            for (size_t oh = 0; oh < a->OH; oh++)
                span(a, tile + oh * p->stride_h * a->PW * 8, a->PW, w8, bias, out + oh * a->OW * 8, a->OW);
        }
        if (!a->y_blocked)
            unpack_block(a, out, nc, a->y + (n * a->C + c0) * a->OH * a->OW);
        else if (nc < 8)
            zero_lanes(out, a->OH * a->OW, nc);
    }
}

/* dst[c * ldd + r] = src[r * lds + c]: 8x8 register transposes, scalar edges. */
void on_transpose_f32__avx2(const float *src, size_t lds, size_t rows, size_t cols, float *dst, size_t ldd) {
    size_t r = 0;
    for (; r + 8 <= rows; r += 8) {
        size_t c = 0;
        for (; c + 8 <= cols; c += 8) {
            __m256 v[8];
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(src + (r + (size_t)i) * lds + c);
            on_transpose8_avx2(v);
            for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (c + (size_t)i) * ldd + r, v[i]);
        }
        for (; c < cols; c++)
            for (size_t i = 0; i < 8; i++) dst[c * ldd + r + i] = src[(r + i) * lds + c];
    }
    for (; r < rows; r++)
        for (size_t c = 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
}
