/* conv_nchwc_avx512.c - direct NCHWc convolution row kernel for AVX-512F.
 *
 * The input is the same padded NCHWc copy as the AVX2 kernel reads (blocks of ON_C0 = 8 input
 * channels); the output channels come in blocks of 16 = one zmm, from weights packed for this kernel
 * at plan time ([ob16][icb][KH][KW][CB][16], see conv_nchwc.c). Register tile: NB zmm blocks x P
 * output pixels, 2 x 12 or 1 x 16 accumulators; per input channel and tap a tile issues NB weight
 * loads and P broadcasts (embedded in the FMAs) for NB * P FMAs. A row's tiles go to a
 * [nb][ow_pad][16] buffer (bias and activation applied in registers), which 8x8 transposes write to
 * the NCHW output rows.
 */
#include <immintrin.h>

#include "conv_internal.h"
#include "x86/act_avx512.h"
#include "x86/transpose_avx2.h"

#define C0 ON_C0
#define OB 16 /* output channels per block */
/* weight rows (64 bytes each, per block) prefetched ahead of the FMAs */
#ifndef NCHWC16_PREFETCH
#define NCHWC16_PREFETCH 32
#endif
/* bytes of weights a row pass keeps hot in L1 while its tiles reuse them */
#ifndef NCHWC16_L1_WEIGHTS
#define NCHWC16_L1_WEIGHTS (24 * 1024)
#endif


/* One tile: NB blocks x P pixels from output column ow0, input-channel blocks [icb0, icb1).
 * CB8: 2 = full 8-channel input blocks at stride 1, 1 = full blocks at a larger stride, 3 = an RGB
 * input (CB = 3, unrolled), 0 = any other r->CB < 8. */
static inline __attribute__((always_inline)) void tile(const int NB, const int P, const int CB8, const int PF,
                                                       const on_nchwc_row *r, const float *xrow, size_t ow0,
                                                       size_t icb0, size_t icb1, int first, int last, int act,
                                                       int direct) {
    const size_t CB = CB8 == 3 ? 3 : (CB8 ? C0 : r->CB);
    const size_t ps = CB8 == 2 ? C0 : r->sw * CB, rs = r->PW * CB, cs = r->PH * rs;
    const size_t KH = r->KH, KW = r->KW, dhs = r->dh * rs, dws = r->dw * CB, wst = r->wstride;
    float *out = r->rowbuf + ow0 * OB;
    const size_t ob = r->ow_pad * OB;
    __m512 acc[2][16];
#pragma GCC unroll 2
    for (int b = 0; b < NB; b++) {
#pragma GCC unroll 16
        for (int q = 0; q < P; q++)
            acc[b][q] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(out + (size_t)b * ob + (size_t)q * OB);
    }
    const float *wp = r->w + icb0 * KH * KW * CB * OB;
    const float *xc = xrow + ow0 * ps + icb0 * cs;
    for (size_t icb = icb0; icb < icb1; icb++, xc += cs) {
        const float *xr = xc;
        for (size_t kh = 0; kh < KH; kh++, xr += dhs) {
            const float *xs = xr;
            for (size_t kw = 0; kw < KW; kw++, xs += dws) {
#pragma GCC unroll 8
                for (size_t ci = 0; ci < CB; ci++, wp += OB) {
                    /* the weights stream from L3 / DRAM in a whole model: fetch ahead (as the GEMM does) */
                    if (PF) {
                        _mm_prefetch((const char *)(wp + NCHWC16_PREFETCH * OB), _MM_HINT_T0);
                        if (NB > 1) _mm_prefetch((const char *)(wp + wst + NCHWC16_PREFETCH * OB), _MM_HINT_T0);
                    }
                    const __m512 w0 = _mm512_loadu_ps(wp);
                    const __m512 w1 = NB > 1 ? _mm512_loadu_ps(wp + wst) : w0;
                    const float *xq = xs + ci;
#pragma GCC unroll 16
                    for (int q = 0; q < P; q++) {
                        const __m512 xv = _mm512_set1_ps(xq[(size_t)q * ps]);
                        acc[0][q] = _mm512_fmadd_ps(xv, w0, acc[0][q]);
                        if (NB > 1) acc[1][q] = _mm512_fmadd_ps(xv, w1, acc[1][q]);
                    }
                }
            }
        }
    }
    const int slow_act = act && on_act_is_transcendental(r->act.kind);
#pragma GCC unroll 2
    for (int b = 0; b < NB; b++) {
        /* the bias joins the finished sum (as in the GEMM epilogue and ONNX Runtime), not the first term */
        const __m512 bv = last ? _mm512_loadu_ps(r->bias + b * OB) : _mm512_setzero_ps();
        if (last) {
#pragma GCC unroll 16
            for (int q = 0; q < P; q++) acc[b][q] = _mm512_add_ps(acc[b][q], bv);
        }
        if (slow_act) { /* exp/erf kinds: once per block, out of line (see act_many_avx512) */
            __m512 t[16];
#pragma GCC unroll 16
            for (int q = 0; q < P; q++) t[q] = acc[b][q];
            act_many_avx512(t, P, &r->act);
#pragma GCC unroll 16
            for (int q = 0; q < P; q++) acc[b][q] = t[q];
        }
#pragma GCC unroll 16
        for (int q = 0; q < P; q++) {
            __m512 v = acc[b][q];
            v = act && !slow_act ? act_cheap_avx512(v, &r->act) : v;
            if (direct) { /* straight into the two NCHWc8 blocks this zmm covers */
                float *yd = r->y + (size_t)(2 * b) * r->ystride + (ow0 + (size_t)q) * C0;
                _mm256_storeu_ps(yd, _mm512_castps512_ps256(v));
                _mm256_storeu_ps(yd + r->ystride, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
            } else {
                _mm512_storeu_ps(out + (size_t)b * ob + (size_t)q * OB, v);
            }
        }
    }
}


/* rowbuf [nb][ow_pad][16] -> y[oc * ystride + ow], oc < oc_valid (the activation is already applied) */
static void store_rows(const on_nchwc_row *r) {
    if (r->y_blocked) {
        if (r->oc_valid % C0 || r->sum) {
            on_nchwc_store_blocked(r, 0);
            return;
        }
        /* each 16-channel pixel is two 8-channel pixels of adjacent NCHWc8 blocks */
        for (size_t h = 0; h < r->oc_valid / C0; h++) {
            const float *src = r->rowbuf + (h / 2) * r->ow_pad * OB + (h % 2) * C0;
            float *dst = r->y + h * r->ystride;
            for (size_t ow = 0; ow < r->OW; ow++) _mm256_storeu_ps(dst + ow * C0, _mm256_loadu_ps(src + ow * OB));
        }
        return;
    }
    const size_t nhalf = (r->oc_valid + C0 - 1) / C0;
    for (size_t h = 0; h < nhalf; h++) { /* 8-channel halves of the 16-channel blocks */
        size_t nv = r->oc_valid - h * C0 < C0 ? r->oc_valid - h * C0 : C0;
        const float *src = r->rowbuf + (h / 2) * r->ow_pad * OB + (h % 2) * C0;
        float *dst = r->y + h * C0 * r->ystride;
        for (size_t ow = 0; ow < r->OW; ow += C0) {
            __m256 v[8];
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(src + (ow + (size_t)i) * OB);
            on_transpose8_avx2(v);
            size_t n = r->OW - ow;
            const float *sm = r->sum ? r->sum + h * C0 * r->ystride : NULL;
            if (n >= C0) {
                if (sm)
                    for (size_t c = 0; c < nv; c++) v[c] = _mm256_add_ps(v[c], _mm256_loadu_ps(sm + c * r->ystride + ow));
                for (size_t c = 0; c < nv; c++) _mm256_storeu_ps(dst + c * r->ystride + ow, v[c]);
            } else {
                __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                if (sm)
                    for (size_t c = 0; c < nv; c++)
                        v[c] = _mm256_add_ps(v[c], _mm256_maskload_ps(sm + c * r->ystride + ow, m));
                for (size_t c = 0; c < nv; c++) _mm256_maskstore_ps(dst + c * r->ystride + ow, m, v[c]);
            }
        }
    }
}

/* The row's pixels in tiles of P, the tail in tiles of 8, 4, 2, 1. Returns 1 when the tiles wrote a
 * blocked output themselves: one input-channel chunk (no partial sums to keep), whole 16-channel blocks
 * and no sigmoid, so rowbuf and its copy are skipped (pointwise convs with few input channels). */
static inline __attribute__((always_inline)) void row_nb(const int NB, const int CB8, const int PF,
                                                         const int DIRECT, const on_nchwc_row *r, size_t oh) {
    const int P = NB == 1 ? 16 : 12;
    const float *xrow = r->x + oh * r->sh * r->PW * r->CB;
    const int has_act = r->act.kind != ON_ACT_NONE;
    size_t per_icb = (size_t)NB * r->KH * r->KW * r->CB * OB * sizeof(float);
    size_t chunk = NCHWC16_L1_WEIGHTS / per_icb;
    if (chunk < 1) chunk = 1;
    const int direct = DIRECT; /* a compile-time constant: the plain tiles keep all registers for the sums */
    for (size_t i0 = 0; i0 < r->ncb; i0 += chunk) {
        size_t i1 = r->ncb - i0 < chunk ? r->ncb : i0 + chunk;
        int first = i0 == 0, last = i1 == r->ncb, act = has_act && last;
        size_t ow = 0;
        /* 14- and 28-wide rows (ResNet @14/@28, stride-2 outputs): 2x14 tiles (28 zmm sums) leave no
         * tail, where 12-pixel tiles left a 2- or 4-pixel one (ResNet 3x3 256 @14: 0.87x -> 0.94x of ORT;
         * 3x3 s2 128->256: 0.80x -> 0.94x). Not for RGB stems (spills) nor 56-wide rows (12s measured
         * 2% faster there). */
        if (NB == 2 && (CB8 == 1 || CB8 == 2) && r->OW % 14 == 0 && r->OW % 12 != 0 && r->OW <= 28)
            for (; ow + 14 <= r->OW; ow += 14) tile(NB, 14, CB8, PF, r, xrow, ow, i0, i1, first, last, act, direct);
        for (; ow + (size_t)P <= r->OW; ow += (size_t)P) tile(NB, P, CB8, PF, r, xrow, ow, i0, i1, first, last, act, direct);
        if (r->OW - ow >= 8) {
            tile(NB, 8, CB8, PF, r, xrow, ow, i0, i1, first, last, act, direct);
            ow += 8;
        }
        if (r->OW - ow >= 4) {
            tile(NB, 4, CB8, PF, r, xrow, ow, i0, i1, first, last, act, direct);
            ow += 4;
        }
        if (r->OW - ow >= 2) {
            tile(NB, 2, CB8, PF, r, xrow, ow, i0, i1, first, last, act, direct);
            ow += 2;
        }
        if (r->OW - ow >= 1) tile(NB, 1, CB8, PF, r, xrow, ow, i0, i1, first, last, act, direct);
    }
}

/* Whether a pointwise row can skip rowbuf (see row_nb). */
static int direct_ok(const on_nchwc_row *r) {
    size_t per_icb = r->nb * r->KH * r->KW * r->CB * OB * sizeof(float);
    size_t chunk = NCHWC16_L1_WEIGHTS / per_icb;
    return r->y_blocked && !r->sum && r->oc_valid == r->nb * OB &&
           (chunk < 1 ? 1 : chunk) >= r->ncb;
}

void on_conv_nchwc_row16__avx512(const on_nchwc_row *r, size_t oh) {
    int cb8 = r->CB == C0 ? (r->sw == 1 ? 2 : 1) : (r->CB == 3 ? 3 : 0);
    /* pointwise weights stream (each is used once per row): prefetch them, and write a blocked output
     * from the registers when one chunk covers the channels. A KxK tile reuses its weights from L1,
     * where the prefetches measured 10-20% slower (ResNet 3x3, RGB stems). */
    if (r->KH * r->KW == 1 && cb8 == 2) {
        if (direct_ok(r)) {
            if (r->nb == 1) row_nb(1, 2, 1, 1, r, oh);
            else row_nb(2, 2, 1, 1, r, oh);
            return;
        }
        if (r->nb == 1) row_nb(1, 2, 1, 0, r, oh);
        else row_nb(2, 2, 1, 0, r, oh);
    } else if (r->nb == 1) {
        if (cb8 == 2) row_nb(1, 2, 0, 0, r, oh);
        else if (cb8 == 1) row_nb(1, 1, 0, 0, r, oh);
        else if (cb8 == 3) {
            /* an RGB stem of one 16-channel block writes its blocked output from the registers
             * (PP-OCR's 3->16 @640: 0.95 -> 0.73 ms); with two blocks the direct variant measured
             * slower (ResNet 7x7 0.94 -> 1.37 ms, MobileNetV2 3x3 no change) */
            if (direct_ok(r)) {
                row_nb(1, 3, 0, 1, r, oh);
                return;
            }
            row_nb(1, 3, 0, 0, r, oh);
        } else row_nb(1, 0, 0, 0, r, oh);
    } else {
        if (cb8 == 2) row_nb(2, 2, 0, 0, r, oh);
        else if (cb8 == 1) row_nb(2, 1, 0, 0, r, oh);
        else if (cb8 == 3) row_nb(2, 3, 0, 0, r, oh);
        else row_nb(2, 0, 0, 0, r, oh);
    }
    store_rows(r);
}
