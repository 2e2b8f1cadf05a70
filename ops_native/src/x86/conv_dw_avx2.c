/* conv_dw_avx2.c - depthwise convolution vectorised along W (8 output pixels per ymm).
 *
 * Each plane is copied into a zero-padded scratch plane, so the inner loop has no bounds checks.
 * Stride 1 loads 8 neighbours; stride 2 loads 16 and keeps the even lanes.
 * 3x3 is specialised (weights held in registers, up to 4 output vectors of one row per step);
 * other kernel sizes and dilations take 2-4 rows per step so 8 FMA chains are in flight (5x5 on a
 * 20x20 plane: 1.4x faster than one row). Strides above 2 fall back to the portable kernel.
 */
#include <immintrin.h>

#include "conv_internal.h"
#include "x86/act_avx2.h"

/* 8 floats at stride 2: load 16, keep the even lanes. */
static inline __m256 load_s2(const float *p) {
    __m256 lo = _mm256_loadu_ps(p), hi = _mm256_loadu_ps(p + 8);
    __m256 ev = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0)); /* a0 a2 b0 b2 | a4 a6 b4 b6 */
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0)));
}

static inline __m256i tail_mask(size_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* always_inline: left to itself GCC made this a call, a quarter of the 5x5 time */
static inline __attribute__((always_inline)) void store_out(float *y, __m256 acc, size_t n,
                                                            const on_act_t *act) {
    acc = act_avx2(acc, act);
    if (n == 8) _mm256_storeu_ps(y, acc);
    else _mm256_maskstore_ps(y, tail_mask(n), acc);
}

/* NV vectors (8 outputs each) of one output row starting at ow, read from the padded plane. */
static inline __attribute__((always_inline)) void dw_vectors(const int S, const int K3, const int NV,
                                                             const on_dw_args *a, const float *rows,
                                                             size_t rstride, const float *w,
                                                             const __m256 *w9, float b, float *yr, size_t ow) {
    const on_conv_params *p = a->p;
    const size_t KH = K3 ? 3 : p->KH, KW = K3 ? 3 : p->KW;
    const size_t dh = K3 ? 1 : p->dil_h, dw = K3 ? 1 : p->dil_w;
    __m256 acc0 = _mm256_set1_ps(b), acc1 = acc0, acc2 = acc0, acc3 = acc0; /* named: stay in registers */
    for (size_t kh = 0; kh < KH; kh++) {
        for (size_t kw = 0; kw < KW; kw++) {
            const __m256 wv = K3 ? w9[kh * 3 + kw] : _mm256_broadcast_ss(w + kh * KW + kw);
            const float *src = rows + kh * dh * rstride + ow * (size_t)S + kw * dw;
            acc0 = _mm256_fmadd_ps(wv, S == 1 ? _mm256_loadu_ps(src) : load_s2(src), acc0);
            if (NV > 1) acc1 = _mm256_fmadd_ps(wv, S == 1 ? _mm256_loadu_ps(src + 8) : load_s2(src + 16), acc1);
            if (NV > 2) acc2 = _mm256_fmadd_ps(wv, S == 1 ? _mm256_loadu_ps(src + 16) : load_s2(src + 32), acc2);
            if (NV > 3) acc3 = _mm256_fmadd_ps(wv, S == 1 ? _mm256_loadu_ps(src + 24) : load_s2(src + 48), acc3);
        }
    }
    const size_t OW = a->OW;
    store_out(yr + ow, acc0, OW - ow < 8 ? OW - ow : 8, &a->act);
    if (NV > 1) store_out(yr + ow + 8, acc1, OW - ow - 8 < 8 ? OW - ow - 8 : 8, &a->act);
    if (NV > 2) store_out(yr + ow + 16, acc2, OW - ow - 16 < 8 ? OW - ow - 16 : 8, &a->act);
    if (NV > 3) store_out(yr + ow + 24, acc3, OW - ow - 24 < 8 ? OW - ow - 24 : 8, &a->act);
}

/* S: stride (1 or 2); K3: 1 for the 3x3 dilation-1 specialisation (weights kept in registers). */
static inline __attribute__((always_inline)) void dw_plane(const int S, const int K3, const on_dw_args *a,
                                                           const float *pad, const float *w, float b, float *y) {
    __m256 w9[9];
    if (K3)
        for (int i = 0; i < 9; i++) w9[i] = _mm256_broadcast_ss(w + i);
    for (size_t oh = 0; oh < a->OH; oh++) {
        const float *r0 = pad + oh * (size_t)S * a->PW;
        float *yr = y + oh * a->OW;
        size_t ow = 0;
        for (; ow + 32 <= a->OW; ow += 32) dw_vectors(S, K3, 4, a, r0, a->PW, w, w9, b, yr, ow);
        for (; ow + 8 < a->OW; ow += 16) dw_vectors(S, K3, 2, a, r0, a->PW, w, w9, b, yr, ow);
        if (ow < a->OW) dw_vectors(S, K3, 1, a, r0, a->PW, w, w9, b, yr, ow);
    }
}

#define DW_LOAD(off) (S == 1 ? _mm256_loadu_ps(src + (off)) : load_s2(src + 2 * (off)))

/* R output rows x NV vectors (8 outputs each) starting at (oh, ow), read from the padded plane.
 * R * NV <= 8 independent FMA chains hide the FMA latency (Zen 3: 2 pipes x 4 cycles). */
static inline __attribute__((always_inline)) void dw_tile(const int S, const int R, const int NV,
                                                          const on_dw_args *a, const float *pad,
                                                          const float *w, float b, float *y, size_t oh, size_t ow) {
    const on_conv_params *p = a->p;
    const size_t KH = p->KH, KW = p->KW, dh = p->dil_h, dw = p->dil_w, PW = a->PW;
    __m256 c00 = _mm256_set1_ps(b), c01 = c00, c02 = c00, c03 = c00; /* named: stay in registers */
    __m256 c10 = c00, c11 = c00, c12 = c00, c13 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    const float *base = pad + oh * (size_t)S * PW + ow * (size_t)S;
    for (size_t kh = 0; kh < KH; kh++) {
        for (size_t kw = 0; kw < KW; kw++) {
            const __m256 wv = _mm256_broadcast_ss(w + kh * KW + kw);
            const float *src = base + kh * dh * PW + kw * dw;
            c00 = _mm256_fmadd_ps(wv, DW_LOAD(0), c00);
            if (NV > 1) c01 = _mm256_fmadd_ps(wv, DW_LOAD(8), c01);
            if (NV > 2) c02 = _mm256_fmadd_ps(wv, DW_LOAD(16), c02);
            if (NV > 3) c03 = _mm256_fmadd_ps(wv, DW_LOAD(24), c03);
            if (R > 1) {
                src += (size_t)S * PW;
                c10 = _mm256_fmadd_ps(wv, DW_LOAD(0), c10);
                if (NV > 1) c11 = _mm256_fmadd_ps(wv, DW_LOAD(8), c11);
                if (NV > 2) c12 = _mm256_fmadd_ps(wv, DW_LOAD(16), c12);
                if (NV > 3) c13 = _mm256_fmadd_ps(wv, DW_LOAD(24), c13);
            }
            if (R > 2) {
                src += (size_t)S * PW;
                c20 = _mm256_fmadd_ps(wv, DW_LOAD(0), c20);
                if (NV > 1) c21 = _mm256_fmadd_ps(wv, DW_LOAD(8), c21);
            }
            if (R > 3) {
                src += (size_t)S * PW;
                c30 = _mm256_fmadd_ps(wv, DW_LOAD(0), c30);
                if (NV > 1) c31 = _mm256_fmadd_ps(wv, DW_LOAD(8), c31);
            }
        }
    }
    const size_t OW = a->OW, n0 = OW - ow < 8 ? OW - ow : 8;
    const size_t n1 = NV > 1 ? (OW - ow - 8 < 8 ? OW - ow - 8 : 8) : 0;
    const size_t n2 = NV > 2 ? (OW - ow - 16 < 8 ? OW - ow - 16 : 8) : 0;
    const size_t n3 = NV > 3 ? (OW - ow - 24 < 8 ? OW - ow - 24 : 8) : 0;
    float *yr = y + oh * OW + ow;
    store_out(yr, c00, n0, &a->act);
    if (NV > 1) store_out(yr + 8, c01, n1, &a->act);
    if (NV > 2) store_out(yr + 16, c02, n2, &a->act);
    if (NV > 3) store_out(yr + 24, c03, n3, &a->act);
    if (R > 1) {
        yr += OW;
        store_out(yr, c10, n0, &a->act);
        if (NV > 1) store_out(yr + 8, c11, n1, &a->act);
        if (NV > 2) store_out(yr + 16, c12, n2, &a->act);
        if (NV > 3) store_out(yr + 24, c13, n3, &a->act);
    }
    if (R > 2) {
        yr += OW;
        store_out(yr, c20, n0, &a->act);
        if (NV > 1) store_out(yr + 8, c21, n1, &a->act);
    }
    if (R > 3) {
        yr += OW;
        store_out(yr, c30, n0, &a->act);
        if (NV > 1) store_out(yr + 8, c31, n1, &a->act);
    }
}

/* R rows of one plane starting at oh: wide rows in 2x4-vector tiles, narrow ones in 4x2 / 4x1. */
static inline __attribute__((always_inline)) void dw_rows(const int S, const int R,
                                                          const on_dw_args *a, const float *pad, const float *w,
                                                          float b, float *y, size_t oh) {
    size_t ow = 0;
    if (R <= 2)
        for (; ow + 32 <= a->OW; ow += 32) dw_tile(S, R, 4, a, pad, w, b, y, oh, ow);
    for (; ow + 8 < a->OW; ow += 16) dw_tile(S, R, 2, a, pad, w, b, y, oh, ow);
    if (ow < a->OW) dw_tile(S, R, 1, a, pad, w, b, y, oh, ow);
}

/* Other kernel sizes / dilations: several output rows per tile (the taps are read through memory). */
static inline __attribute__((always_inline)) void dw_plane_rows(const int S, const on_dw_args *a, const float *pad,
                                                                const float *w, float b, float *y) {
    size_t oh = 0;
    if (a->OW >= 32) {
        for (; oh + 2 <= a->OH; oh += 2) dw_rows(S, 2, a, pad, w, b, y, oh);
    } else {
        for (; oh + 4 <= a->OH; oh += 4) dw_rows(S, 4, a, pad, w, b, y, oh);
        for (; oh + 2 <= a->OH; oh += 2) dw_rows(S, 2, a, pad, w, b, y, oh);
    }
    for (; oh < a->OH; oh++) dw_rows(S, 1, a, pad, w, b, y, oh);
}

void on_conv_dw_planes__avx2(const on_dw_args *a, size_t begin, size_t end, float *pad) {
    const on_conv_params *p = a->p;
    if (p->stride_h > 2 || p->stride_w != p->stride_h) {
        on_conv_dw_planes__scalar(a, begin, end, pad);
        return;
    }
    const int k3 = p->KH == 3 && p->KW == 3 && p->dil_h == 1 && p->dil_w == 1;
    for (size_t pl = begin; pl < end; pl++) {
        size_t c = pl % a->C;
        on_dw_fill_padded(a, a->x + pl * a->H * a->W, pad);
        const float *w = a->weight + c * p->KH * p->KW;
        float b = a->bias ? a->bias[c] : 0.0f;
        float *y = a->y + pl * a->OH * a->OW;
        if (p->stride_h == 1) {
            if (k3) dw_plane(1, 1, a, pad, w, b, y);
            else dw_plane_rows(1, a, pad, w, b, y);
        } else {
            if (k3) dw_plane(2, 1, a, pad, w, b, y);
            else dw_plane_rows(2, a, pad, w, b, y);
        }
    }
}
