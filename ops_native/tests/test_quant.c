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
    on_dynamic_qparams_f32(pos, 3, &s, &z);
    CHECK(z == 0 && s == 3.0f / 255.0f);
    on_dynamic_qparams_f32(neg, 2, &s, &z);
    CHECK(z == 255 && s == 2.0f / 255.0f);
    on_dynamic_qparams_f32(mixed, 2, &s, &z);
    CHECK(z == 64 && s == 4.0f / 255.0f);   /* 1 / (4 / 255) = 63.75 -> 64 */
    on_dynamic_qparams_f32(zeros, 2, &s, &z);
    CHECK(z == 0 && s == 1.0f);
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
    return on_test_summary();
}
