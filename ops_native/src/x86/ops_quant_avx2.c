/* ops_quant_avx2.c - the integer GEMM's 1x4 dot tile on AVX2: int16 x int16 pairs summed into int32 by
 * _mm256_madd_epi16 (operands are 8-bit values minus their zero points, |v| <= 255, so a pair sums to at
 * most 2 * 255 * 255 and never saturates; on_quant.h). */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "on_quant.h"

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static void dot_1x4__avx2(const int16_t *a, const int16_t *bt, size_t ldb, size_t kk, int32_t acc[4]) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    const int16_t *b0 = bt, *b1 = bt + ldb, *b2 = bt + 2 * ldb, *b3 = bt + 3 * ldb;
    for (size_t k = 0; k < kk; k += 16) {
        __m256i va = _mm256_loadu_si256((const __m256i *)(a + k));
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(va, _mm256_loadu_si256((const __m256i *)(b0 + k))));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(va, _mm256_loadu_si256((const __m256i *)(b1 + k))));
        s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(va, _mm256_loadu_si256((const __m256i *)(b2 + k))));
        s3 = _mm256_add_epi32(s3, _mm256_madd_epi16(va, _mm256_loadu_si256((const __m256i *)(b3 + k))));
    }
    acc[0] = hsum_epi32(s0);
    acc[1] = hsum_epi32(s1);
    acc[2] = hsum_epi32(s2);
    acc[3] = hsum_epi32(s3);
}

/* A's pair (a[k], a[k + 1]) as one int32, broadcast to every lane: the other operand of madd against a panel
 * row of 8 columns x 2 values. */
static inline __m256i pair_bcast(const int16_t *a) {
    int32_t v;
    memcpy(&v, a, sizeof v);
    return _mm256_set1_epi32(v);
}

/* MR x 16 tile: 2 * MR ymm accumulators (12 at MR = 6), 2 panel loads and one broadcast per pair of k. Each
 * madd sums two int16 products into int32 (exact, on_quant.h), then one add into the accumulator. Named
 * accumulators, not an array: GCC kept an array of 12 ymm on the stack (a store and a load per madd). */
#define QROW(r)                                                                                              \
    if (mr > r) {                                                                                            \
        __m256i va = pair_bcast(a + r * lda + 2 * p);                                                        \
        c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(va, b0));                                      \
        c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(va, b1));                                      \
    }
#define QROW_ODD(r)                                                                                          \
    if (mr > r) {                                                                                            \
        __m256i va = _mm256_set1_epi32((int32_t)(uint16_t)a[r * lda + kk - 1]);                              \
        c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(va, b0));                                      \
        c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(va, b1));                                      \
    }
#define QSTORE(r)                                                                                            \
    if (mr > r) {                                                                                            \
        _mm256_storeu_si256((__m256i *)(acc + r * 16), c##r##0);                                             \
        _mm256_storeu_si256((__m256i *)(acc + r * 16 + 8), c##r##1);                                         \
    }

/* A panel row (16 columns x a pair of k) as two ymm of int16: loaded, or widened from the int8 panel. */
static inline __attribute__((always_inline)) void panel_row(const void *panel, int s8, size_t p, __m256i *b0,
                                                            __m256i *b1) {
    if (s8) {
        const int8_t *q = (const int8_t *)panel + p * 32;
        *b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)q));
        *b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(q + 16)));
    } else {
        const int16_t *q = (const int16_t *)panel + p * 32;
        *b0 = _mm256_loadu_si256((const __m256i *)q);
        *b1 = _mm256_loadu_si256((const __m256i *)(q + 16));
    }
}

static inline __attribute__((always_inline)) void tile_mr(size_t mr, int s8, size_t kk, const int16_t *a, size_t lda,
                                                          const void *panel, int32_t *acc) {
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    size_t kp = kk / 2;
    /* the last k of an odd K first: its partner in the panel is 0, so pair it with 0 (no read past a row);
     * done before the loop, GCC keeps the accumulators in registers through it (after, it spilled them) */
    if (kk & 1) {
        __m256i b0, b1;
        panel_row(panel, s8, kp, &b0, &b1);
        QROW_ODD(0) QROW_ODD(1) QROW_ODD(2) QROW_ODD(3) QROW_ODD(4) QROW_ODD(5)
    }
    for (size_t p = 0; p < kp; p++) {
        __m256i b0, b1;
        panel_row(panel, s8, p, &b0, &b1);
        QROW(0) QROW(1) QROW(2) QROW(3) QROW(4) QROW(5)
    }
    QSTORE(0) QSTORE(1) QSTORE(2) QSTORE(3) QSTORE(4) QSTORE(5)
}

/* One specialisation per row count, so the accumulators stay in registers (the loops over r unroll). */
static void tile_packed__avx2(size_t mr, size_t kk, const int16_t *a, size_t lda, const int16_t *panel, int32_t *acc) {
    switch (mr) {
    case 6: tile_mr(6, 0, kk, a, lda, panel, acc); break;
    case 5: tile_mr(5, 0, kk, a, lda, panel, acc); break;
    case 4: tile_mr(4, 0, kk, a, lda, panel, acc); break;
    case 3: tile_mr(3, 0, kk, a, lda, panel, acc); break;
    case 2: tile_mr(2, 0, kk, a, lda, panel, acc); break;
    default: tile_mr(1, 0, kk, a, lda, panel, acc); break;
    }
}

static void tile_packed_s8__avx2(size_t mr, size_t kk, const int16_t *a, size_t lda, const int8_t *panel,
                                 int32_t *acc) {
    switch (mr) {
    case 6: tile_mr(6, 1, kk, a, lda, panel, acc); break;
    case 5: tile_mr(5, 1, kk, a, lda, panel, acc); break;
    case 4: tile_mr(4, 1, kk, a, lda, panel, acc); break;
    case 3: tile_mr(3, 1, kk, a, lda, panel, acc); break;
    case 2: tile_mr(2, 1, kk, a, lda, panel, acc); break;
    default: tile_mr(1, 1, kk, a, lda, panel, acc); break;
    }
}

static void range__avx2(const float *x, size_t n, float *lo_out, float *hi_out) {
    __m256 lo = _mm256_setzero_ps(), hi = lo, lo1 = lo, hi1 = lo;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        lo = _mm256_min_ps(lo, v0);
        hi = _mm256_max_ps(hi, v0);
        lo1 = _mm256_min_ps(lo1, v1);
        hi1 = _mm256_max_ps(hi1, v1);
    }
    lo = _mm256_min_ps(lo, lo1);
    hi = _mm256_max_ps(hi, hi1);
    float l[8], h[8];
    _mm256_storeu_ps(l, lo);
    _mm256_storeu_ps(h, hi);
    float mn = 0.0f, mx = 0.0f;
    for (int j = 0; j < 8; j++) {
        mn = l[j] < mn ? l[j] : mn;
        mx = h[j] > mx ? h[j] : mx;
    }
    for (; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    *lo_out = mn;
    *hi_out = mx;
}

/* 8 values: saturate(round_half_even(x / scale) + zp) to 0..255 as int32 lanes. The division, as the scalar
 * reference and ONNX Runtime; _mm256_round_ps(nearest) rounds half to even like rintf. */
static inline __m256i quant8(const float *x, __m256 vs, __m256 vz) {
    __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x), vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    v = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(v, vz), _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
    return _mm256_cvtps_epi32(v);
}

static inline __m256i quant16_s16(const float *x, __m256 vs, __m256 vz) {
    /* packs_epi32 interleaves the two 128-bit halves; the permute puts the 16 values back in order */
    __m256i p = _mm256_packs_epi32(quant8(x, vs, vz), quant8(x + 8, vs, vz));
    return _mm256_permute4x64_epi64(p, 0xd8);
}

static void quantize_u8__avx2(const float *x, size_t n, float scale, int32_t zp, uint8_t *y) {
    __m256 vs = _mm256_set1_ps(scale), vz = _mm256_set1_ps((float)zp);
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i a = quant16_s16(x + i, vs, vz), b = quant16_s16(x + i + 16, vs, vz);
        __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi16(a, b), 0xd8);
        _mm256_storeu_si256((__m256i *)(y + i), p);
    }
    for (; i < n; i++) {
        float v = rintf(x[i] / scale) + (float)zp;
        v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
        y[i] = (uint8_t)v;
    }
}

static void quantize_centered_s16__avx2(const float *x, size_t n, float scale, int32_t zp, int16_t *y) {
    __m256 vs = _mm256_set1_ps(scale), vz = _mm256_set1_ps((float)zp);
    __m256i vzi = _mm256_set1_epi16((int16_t)zp);
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(y + i), _mm256_sub_epi16(quant16_s16(x + i, vs, vz), vzi));
    for (; i < n; i++) {
        float v = rintf(x[i] / scale) + (float)zp;
        v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
        y[i] = (int16_t)((int32_t)v - zp);
    }
}

const on_quant_table on_quant_table_avx2 = {"avx2",           dot_1x4__avx2,     tile_packed__avx2,
                                            tile_packed_s8__avx2, range__avx2,     quantize_u8__avx2,
                                            quantize_centered_s16__avx2};
