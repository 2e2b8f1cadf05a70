/* test_quant.c - 8-bit quantisation (on_quant.h): every ISA's integer dot tile and the threaded GEMM driver
 * against the one-dot-at-a-time definition (exact: int32), quantize's round-half-even and saturation,
 * dequantize, the dynamic parameters, and the LSTM gates against a double-precision cell. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "on_quant.h"
#include "on_test.h"

static uint32_t rng = 12345u;
static uint32_t next_u32(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* values of 8-bit data minus a zero point, the extremes included (|v| <= 255) */
static int16_t *rnd_s16(size_t n) {
    int16_t *p = malloc((n ? n : 1) * sizeof(int16_t));
    for (size_t i = 0; i < n; i++) {
        uint32_t r = next_u32();
        p[i] = (int16_t)(r % 7 == 0 ? ((r >> 3) & 1 ? 255 : -255) : (int32_t)(r % 511) - 255);
    }
    return p;
}

static void test_qgemm_matches_definition_every_isa(void) {
    const size_t shapes[][3] = {{1, 1, 1}, {1, 4, 16}, {3, 5, 17}, {2, 7, 33}, {5, 9, 100}, {1, 2048, 512},
                                {40, 37, 1024}, {7, 64, 9}, {1, 3, 33025}};
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_kernels_for_isa((on_isa_t)isa)) continue;
        on_set_isa((on_isa_t)isa);
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], lda = k + 3, ldb = k + 1;
            int16_t *a = rnd_s16(m * lda), *b = rnd_s16(n * ldb);
            int32_t *want = malloc(m * n * sizeof(int32_t)), *got = malloc(m * n * sizeof(int32_t));
            float *f = malloc(m * n * sizeof(float)), *scale = malloc(n * sizeof(float)), *bias = malloc(n * sizeof(float));
            for (size_t j = 0; j < n; j++) {
                scale[j] = 0.001f * (float)(j + 1);
                bias[j] = (float)j - 3.0f;
            }
            CHECK(on_qgemm_s16_ref(m, n, k, a, lda, b, ldb, want) == ON_OK);
            for (int threads = 1; threads <= 2; threads++) {
                memset(got, 0, m * n * sizeof(int32_t));
                CHECK(on_qgemm_s16(m, n, k, a, lda, b, ldb, got, NULL, n, NULL, 0, NULL, 0, threads) == ON_OK);
                CHECK_MSG(memcmp(got, want, m * n * sizeof(int32_t)) == 0, "qgemm %s m%zu n%zu k%zu t%d",
                          on_isa_name((on_isa_t)isa), m, n, k, threads);
                /* float epilogue: per-column scale and bias, then accumulate a second time */
                CHECK(on_qgemm_s16(m, n, k, a, lda, b, ldb, NULL, f, n, scale, 1, bias, 0, threads) == ON_OK);
                CHECK(on_qgemm_s16(m, n, k, a, lda, b, ldb, NULL, f, n, scale, 1, NULL, 1, threads) == ON_OK);
                int bad = 0;
                for (size_t i = 0; i < m * n; i++) {
                    float v = (float)want[i] * scale[i % n] + bias[i % n];
                    v = v + (float)want[i] * scale[i % n];
                    bad += f[i] != v;
                }
                CHECK_MSG(bad == 0, "qgemm f32 epilogue %s m%zu n%zu k%zu: %d differ", on_isa_name((on_isa_t)isa), m,
                          n, k, bad);
            }
            free(a), free(b), free(want), free(got), free(f), free(scale), free(bias);
        }
    }
    on_set_isa(on_kernels_for_isa(ON_ISA_AVX2) ? ON_ISA_AVX2 : on_kernels_for_isa(ON_ISA_NEON) ? ON_ISA_NEON
                                                                                                : ON_ISA_SCALAR);
}

static void test_qgemm_refuses_k_beyond_exact_range(void) {
    int16_t a[1] = {0}, b[1] = {0};
    int32_t c[1];
    CHECK(on_qgemm_s16(1, 1, ON_QGEMM_MAX_K + 1, a, ON_QGEMM_MAX_K + 1, b, ON_QGEMM_MAX_K + 1, c, NULL, 1, NULL, 0,
                       NULL, 0, 1) == ON_ERR_ARG);
}

static void test_quantize_rounds_half_to_even_and_saturates(void) {
    const float x[] = {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, 1000.0f, -1000.0f, 0.49f, 3.0f};
    const uint8_t want_u8[] = {10, 12, 12, 10, 8, 255, 0, 10, 13};   /* zp 10, scale 1 */
    const int8_t want_s8[] = {0, 2, 2, 0, -2, 127, -128, 0, 3};      /* zp 0 */
    float one = 1.0f;
    int32_t zp = 10, z0 = 0;
    uint8_t yu[9];
    int8_t ys[9];
    CHECK(on_quantize_f32(x, yu, ON_Q_U8, 9, 1, 1, &one, &zp, 1) == ON_OK);
    CHECK(memcmp(yu, want_u8, 9) == 0);
    CHECK(on_quantize_f32(x, ys, ON_Q_S8, 9, 1, 1, &one, &z0, 1) == ON_OK);
    CHECK(memcmp(ys, want_s8, 9) == 0);
    CHECK(on_quantize_f32(x, yu, ON_Q_U8, 9, 1, 1, &one, &(int32_t){300}, 1) == ON_ERR_ARG);
}

static void test_quantize_per_axis_and_dequantize_roundtrip(void) {
    size_t outer = 3, c = 4, inner = 50, n = outer * c * inner;
    float *x = malloc(n * sizeof(float)), *y = malloc(n * sizeof(float));
    int8_t *q = malloc(n);
    float scale[4] = {0.01f, 0.02f, 0.05f, 0.1f};
    int32_t zp[4] = {0, 3, -5, 10};
    for (size_t i = 0; i < n; i++) x[i] = on_test_randf() * 2.0f;
    for (int threads = 1; threads <= 2; threads++) {
        CHECK(on_quantize_f32(x, q, ON_Q_S8, outer, c, inner, scale, zp, threads) == ON_OK);
        CHECK(on_dequantize_f32(q, ON_Q_S8, y, outer, c, inner, scale, zp, threads) == ON_OK);
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            size_t ch = (i / inner) % c;
            float lo = (-128 - zp[ch]) * scale[ch], hi = (127 - zp[ch]) * scale[ch];
            float want = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
            bad += fabsf(y[i] - want) > scale[ch] * 0.5001f;   /* half a step, or saturated */
        }
        CHECK_MSG(bad == 0, "per-axis roundtrip: %d values off", bad);
    }
    free(x), free(y), free(q);
}

/* the per-tensor path splits the flat tensor into chunks: full chunks on the threads, then the tail */
static void test_quantize_per_tensor_chunks_and_tail(void) {
    size_t n = 3 * 4096 + 77;
    float *x = malloc(n * sizeof(float));
    uint8_t *y = malloc(n);
    float s = 0.05f;
    int32_t z = 100;
    for (size_t i = 0; i < n; i++) x[i] = on_test_randf() * 8.0f;
    for (int threads = 1; threads <= 2; threads++) {
        memset(y, 0, n);
        CHECK(on_quantize_f32(x, y, ON_Q_U8, 1, 1, n, &s, &z, threads) == ON_OK);
        int bad = 0;
        for (size_t i = 0; i < n; i++) {
            float v = rintf(x[i] / s) + 100.0f;
            v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
            bad += y[i] != (uint8_t)v;
        }
        CHECK_MSG(bad == 0, "per-tensor quantize, %d threads: %d values differ", threads, bad);
    }
    free(x), free(y);
}

static void test_dynamic_qparams_cover_zero(void) {
    const float pos[] = {1.0f, 2.0f, 3.0f}, neg[] = {-2.0f, -1.0f}, mixed[] = {-1.0f, 3.0f}, zeros[] = {0.0f, 0.0f};
    float s;
    int32_t z;
    on_dynamic_qparams_f32(pos, 3, &s, &z, 1);
    CHECK(z == 0 && s == 3.0f / 255.0f);
    on_dynamic_qparams_f32(neg, 2, &s, &z, 1);
    CHECK(z == 255 && s == 2.0f / 255.0f);
    on_dynamic_qparams_f32(mixed, 2, &s, &z, 1);
    CHECK(z == 64 && s == 4.0f / 255.0f);   /* 1 / (4 / 255) = 63.75 -> 64 */
    on_dynamic_qparams_f32(zeros, 2, &s, &z, 1);
    CHECK(z == 0 && s == 1.0f);
}

/* random 8-bit data (uint8 or int8 bytes) */
static uint8_t *rnd_u8(size_t n) {
    uint8_t *p = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        uint32_t r = next_u32();
        p[i] = (uint8_t)(r % 5 == 0 ? ((r >> 3) & 1 ? 255 : 0) : r >> 8);
    }
    return p;
}

static int32_t q8_at(const uint8_t *b, on_qtype t, size_t at) {
    return t == ON_Q_U8 ? (int32_t)b[at] : (int32_t)(int8_t)b[at];
}

/* The packed GEMM against the definition: B packed row-major and transposed, one and per-column zero points,
 * every ISA's tile (M not a multiple of the tile rows, N not of the panel width, odd K), 1 and 2 threads. */
static void test_qgemm_packed_matches_definition_every_isa(void) {
    const size_t shapes[][3] = {{1, 1, 1}, {1, 16, 2}, {6, 16, 16}, {7, 17, 3}, {5, 9, 101}, {13, 33, 64},
                                {97, 40, 75}, {2, 1024, 256}, {200, 20, 9}, {1, 3, 33025}};
    int narrowed = 0;
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_kernels_for_isa((on_isa_t)isa)) continue;
        on_set_isa((on_isa_t)isa);
        for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
            size_t m = shapes[s][0], n = shapes[s][1], k = shapes[s][2], lda = k + 3, ldb = n + 2;
            on_qtype t = s & 1 ? ON_Q_S8 : ON_Q_U8;
            int16_t *a = rnd_s16(m * lda);
            uint8_t *b = rnd_u8(k * ldb);
            int32_t *zp = malloc(n * sizeof(int32_t));
            int per_col = (int)(s % 3 != 0);
            for (size_t j = 0; j < n; j++) zp[j] = (int32_t)(next_u32() % 256) - (t == ON_Q_S8 ? 128 : 0);
            if (s % 4 == 1)   /* int8 data, zero point 0: fits the int8 panels */
                for (size_t j = 0; j < n; j++) zp[j] = 0;
            /* the definition: B^T centered, dot by dot */
            int16_t *bt = malloc(n * k * sizeof(int16_t));
            for (size_t j = 0; j < n; j++)
                for (size_t kk = 0; kk < k; kk++)
                    bt[j * k + kk] = (int16_t)(q8_at(b, t, kk * ldb + j) - zp[per_col ? j : 0]);
            int32_t *want = malloc(m * n * sizeof(int32_t)), *got = malloc(m * n * sizeof(int32_t));
            CHECK(on_qgemm_s16_ref(m, n, k, a, lda, bt, k, want) == ON_OK);
            size_t psz = on_qgemm_packed_size(k, n);
            int16_t *bp = malloc(psz * sizeof(int16_t)), *bp2 = malloc(psz * sizeof(int16_t));
            float *f = malloc(m * n * sizeof(float)), *scale = malloc(n * sizeof(float)), *bias = malloc(n * sizeof(float));
            for (size_t j = 0; j < n; j++) {
                scale[j] = 0.001f * (float)(j + 1);
                bias[j] = (float)j - 3.0f;
            }
            /* the same B given transposed: a copy [n][k] */
            uint8_t *btq = malloc(n * k > 0 ? n * k : 1);
            for (size_t j = 0; j < n; j++)
                for (size_t kk = 0; kk < k; kk++) btq[j * k + kk] = b[kk * ldb + j];
            for (int threads = 1; threads <= 2; threads++) {
                CHECK(on_qgemm_pack_b_q8(b, t, k, n, ldb, 1, zp, per_col, bp, threads) == ON_OK);
                CHECK(on_qgemm_pack_b_q8(btq, t, k, n, 1, k, zp, per_col, bp2, threads) == ON_OK);
                CHECK_MSG(memcmp(bp, bp2, psz * sizeof(int16_t)) == 0, "pack row-major = pack transposed s%zu", s);
                memset(got, 0, m * n * sizeof(int32_t));
                CHECK(on_qgemm_s16_packed(m, n, k, a, lda, bp, NULL, got, NULL, n, NULL, 0, NULL, 0, threads) == ON_OK);
                CHECK_MSG(memcmp(got, want, m * n * sizeof(int32_t)) == 0, "qgemm packed %s m%zu n%zu k%zu t%d",
                          on_isa_name((on_isa_t)isa), m, n, k, threads);
                CHECK(on_qgemm_s16_packed(m, n, k, a, lda, bp, NULL, NULL, f, n, scale, 1, bias, 0, threads) == ON_OK);
                CHECK(on_qgemm_s16_packed(m, n, k, a, lda, bp, NULL, NULL, f, n, scale, 1, NULL, 1, threads) == ON_OK);
                int bad = 0;
                for (size_t i = 0; i < m * n; i++) {
                    float v = (float)want[i] * scale[i % n] + bias[i % n];
                    v = v + (float)want[i] * scale[i % n];
                    bad += f[i] != v;
                }
                CHECK_MSG(bad == 0, "qgemm packed float epilogue %s s%zu t%d", on_isa_name((on_isa_t)isa), s, threads);
                /* the int8 panels where B fits them (int8 data with zero point 0: always), else refused */
                int8_t *bp8 = malloc(psz ? psz : 1);
                int fits = 1;
                for (size_t i = 0; i < psz; i++) fits &= bp[i] >= -128 && bp[i] <= 127;
                on_status st = on_qgemm_narrow_s8(bp, psz, bp8);
                CHECK(st == (fits ? ON_OK : ON_ERR_ARG));
                if (fits) {
                    memset(got, 0, m * n * sizeof(int32_t));
                    CHECK(on_qgemm_s16_packed(m, n, k, a, lda, NULL, bp8, got, NULL, n, NULL, 0, NULL, 0, threads) ==
                          ON_OK);
                    CHECK_MSG(memcmp(got, want, m * n * sizeof(int32_t)) == 0, "qgemm int8 panels %s s%zu t%d",
                              on_isa_name((on_isa_t)isa), s, threads);
                    narrowed++;
                }
                free(bp8);
            }
            free(a), free(b), free(zp), free(bt), free(want), free(got), free(bp), free(bp2), free(f), free(scale),
                free(bias), free(btq);
        }
    }
    CHECK(narrowed > 0);
    on_set_isa(on_kernels_for_isa(ON_ISA_AVX2) ? ON_ISA_AVX2 : on_kernels_for_isa(ON_ISA_NEON) ? ON_ISA_NEON
                                                                                                : ON_ISA_SCALAR);
}

/* The packed im2col against a direct convolution by the definition (padding reads the zero point), strides,
 * dilations, odd sizes; then its GEMM against the direct sums. */
static void test_qconv_im2col_pack_matches_direct_convolution(void) {
    /* c, h, w, kh, kw, sh, sw, dh, dw, pt, pl, pb, pr, m */
    const size_t cases[][14] = {{3, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 5}, {2, 10, 6, 3, 2, 2, 1, 1, 2, 0, 1, 2, 0, 7},
                                {5, 5, 5, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 3}, {1, 1, 40, 1, 5, 1, 3, 1, 1, 0, 2, 0, 2, 2},
                                {4, 17, 19, 5, 5, 2, 2, 1, 1, 2, 2, 2, 2, 9}};
    for (size_t cs = 0; cs < sizeof(cases) / sizeof(cases[0]); cs++) {
        const size_t *q = cases[cs];
        size_t c = q[0], h = q[1], w = q[2], kh = q[3], kw = q[4], sh = q[5], sw = q[6], dh = q[7], dw = q[8];
        size_t pt = q[9], pl = q[10], pb = q[11], pr = q[12], m = q[13];
        size_t oh = (h + pt + pb - (kh - 1) * dh - 1) / sh + 1, ow = (w + pl + pr - (kw - 1) * dw - 1) / sw + 1;
        size_t k = c * kh * kw, np_ = oh * ow;
        on_qtype t = cs & 1 ? ON_Q_S8 : ON_Q_U8;
        int32_t zp = t == ON_Q_U8 ? 131 : -7;
        uint8_t *x = rnd_u8(c * h * w);
        int16_t *wt = rnd_s16(m * k);
        size_t geom[10] = {kh, kw, sh, sw, dh, dw, pt, pl, oh, ow};
        int16_t *bp = malloc(on_qgemm_packed_size(k, np_) * sizeof(int16_t));
        uint8_t *cols = malloc(k * np_);
        int32_t *got = malloc(m * np_ * sizeof(int32_t));
        for (int threads = 1; threads <= 2; threads++) {
            CHECK(on_qconv_pack_im2col_q8(x, t, c, h, w, geom, zp, cols, bp, threads) == ON_OK);
            CHECK(on_qgemm_s16_packed(m, np_, k, wt, k, bp, NULL, got, NULL, np_, NULL, 0, NULL, 0, threads) == ON_OK);
            int bad = 0;
            for (size_t o = 0; o < m; o++)
                for (size_t oy = 0; oy < oh; oy++)
                    for (size_t ox = 0; ox < ow; ox++) {
                        int32_t sum = 0;
                        size_t kidx = 0;
                        for (size_t ch = 0; ch < c; ch++)
                            for (size_t ky = 0; ky < kh; ky++)
                                for (size_t kx = 0; kx < kw; kx++, kidx++) {
                                    ptrdiff_t iy = (ptrdiff_t)(oy * sh + ky * dh) - (ptrdiff_t)pt;
                                    ptrdiff_t ix = (ptrdiff_t)(ox * sw + kx * dw) - (ptrdiff_t)pl;
                                    int32_t v = zp;   /* padding is the zero point */
                                    if (iy >= 0 && ix >= 0 && (size_t)iy < h && (size_t)ix < w)
                                        v = q8_at(x, t, ch * h * w + (size_t)iy * w + (size_t)ix);
                                    sum += (v - zp) * wt[o * k + kidx];
                                }
                        bad += got[o * np_ + oy * ow + ox] != sum;
                    }
            CHECK_MSG(bad == 0, "qconv case %zu threads %d: %d wrong", cs, threads, bad);
        }
        free(x), free(wt), free(bp), free(cols), free(got);
    }
}

/* DynamicQuantizeLinear's range and quantise on every ISA against the scalar table: bit-equal (min / max are
 * exact, the quantise divides and rounds half to even on every path), values on rounding boundaries included. */
static void test_dynamic_quantize_paths_equal_scalar(void) {
    const size_t sizes[] = {1, 7, 16, 31, 32, 33, 1000, 70001};
    for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        size_t n = sizes[si];
        float *x = malloc(n * sizeof(float));
        for (size_t i = 0; i < n; i++) x[i] = on_test_randf() * 6.0f - (i % 3 == 0 ? 1.0f : 0.0f);
        float scale = 0.25f;
        for (size_t i = 0; i < n; i += 5) x[i] = ((float)(i % 40) - 20.0f + 0.5f) * scale;   /* exact halves */
        uint8_t *u_ref = malloc(n), *u = malloc(n);
        int16_t *c_ref = malloc(n * sizeof(int16_t)), *c16 = malloc(n * sizeof(int16_t));
        float lo_ref, hi_ref;
        on_quant_table_scalar.range(x, n, &lo_ref, &hi_ref);
        on_quant_table_scalar.quantize_u8(x, n, scale, 3, u_ref);
        on_quant_table_scalar.quantize_centered_s16(x, n, scale, 3, c_ref);
        for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
            const on_kernel_table *kt = on_kernels_for_isa((on_isa_t)isa);
            if (!kt) continue;
            float lo, hi;
            kt->quant->range(x, n, &lo, &hi);
            CHECK_MSG(lo == lo_ref && hi == hi_ref, "range %s n%zu", kt->quant->name, n);
            kt->quant->quantize_u8(x, n, scale, 3, u);
            kt->quant->quantize_centered_s16(x, n, scale, 3, c16);
            CHECK_MSG(memcmp(u, u_ref, n) == 0, "quantize_u8 %s n%zu", kt->quant->name, n);
            CHECK_MSG(memcmp(c16, c_ref, n * sizeof(int16_t)) == 0, "quantize_centered %s n%zu", kt->quant->name, n);
        }
        for (size_t i = 0; i < n; i++) CHECK(c_ref[i] == (int16_t)u_ref[i] - 3);
        /* the threaded parameters equal the serial ones */
        float s1, s2;
        int32_t z1, z2;
        on_dynamic_qparams_f32(x, n, &s1, &z1, 1);
        on_dynamic_qparams_f32(x, n, &s2, &z2, 2);
        CHECK(s1 == s2 && z1 == z2);
        free(x), free(u_ref), free(u), free(c_ref), free(c16);
    }
}

static double sig(double x) { return 1.0 / (1.0 + exp(-x)); }

static void test_lstm_gates_match_double_cell(void) {
    size_t batch = 2, H = 13;
    float g[2 * 52], g0[2 * 52], bias[52], peep[39], c[26], c0[26], h[26];
    for (size_t i = 0; i < 104; i++) g0[i] = on_test_randf() * 3.0f;
    for (size_t i = 0; i < 52; i++) bias[i] = on_test_randf();
    for (size_t i = 0; i < 39; i++) peep[i] = on_test_randf();
    for (size_t i = 0; i < 26; i++) c0[i] = on_test_randf();
    memcpy(g, g0, sizeof g);
    memcpy(c, c0, sizeof c);
    CHECK(on_lstm_gates_f32(g, bias, peep, c, h, H, batch, H, 0.0f, 0) == ON_OK);
    for (size_t b = 0; b < batch; b++)
        for (size_t j = 0; j < H; j++) {
            const float *gb = g0 + b * 4 * H;
            double cp = c0[b * H + j];
            double i = sig(gb[j] + bias[j] + peep[j] * cp), f = sig(gb[2 * H + j] + bias[2 * H + j] + peep[2 * H + j] * cp);
            double cn = f * cp + i * tanh(gb[3 * H + j] + bias[3 * H + j]);
            double o = sig(gb[H + j] + bias[H + j] + peep[H + j] * cn);
            CHECK_NEAR(c[b * H + j], (float)cn, 1e-5f, 1e-6f);
            CHECK_NEAR(h[b * H + j], (float)(o * tanh(cn)), 1e-5f, 1e-6f);
        }
}

int main(void) {
    RUN(test_qgemm_matches_definition_every_isa);
    RUN(test_qgemm_refuses_k_beyond_exact_range);
    RUN(test_quantize_rounds_half_to_even_and_saturates);
    RUN(test_quantize_per_axis_and_dequantize_roundtrip);
    RUN(test_quantize_per_tensor_chunks_and_tail);
    RUN(test_dynamic_qparams_cover_zero);
    RUN(test_lstm_gates_match_double_cell);
    RUN(test_qgemm_packed_matches_definition_every_isa);
    RUN(test_qconv_im2col_pack_matches_direct_convolution);
    RUN(test_dynamic_quantize_paths_equal_scalar);
    return on_test_summary();
}
