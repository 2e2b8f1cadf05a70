/* test_ops.c - the non-GEMM kernels: every fast path of the active ISA against the scalar reference,
 * broadcasting / pooling / data-movement entry points against naive loops, threads 1 and 2. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "on_ops.h"
#include "on_test.h"

int on_pool2d_plane_ref(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oh, int64_t ow,
                        int64_t pb, int64_t pr, const on_pool2d_params *p);
int on_pool2d_c8_row_ref(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oy, int64_t ow,
                         int64_t pb, int64_t pr, const on_pool2d_params *p);

static float *rnd(size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = on_test_randf() * scale;
    return p;
}

static const on_ops_table *fast_table(void) { return on_kernels_active()->ops; }

/* ---- row kernels: fast vs reference -------------------------------------------------------------- */
static void test_binary_rows_match_reference(void) {
    const on_ops_table *ref = &on_ops_table_scalar, *fast = fast_table();
    for (int op = 0; op < ON_BIN_COUNT; op++) {
        for (size_t n = 1; n <= 67; n += 3) {
            float *a = rnd(n, 3.0f), *b = rnd(n, 3.0f), *o1 = rnd(n, 1), *o2 = rnd(n, 1);
            for (size_t i = 0; i < n; i++) {
                if (op == ON_BIN_POW) a[i] = fabsf(a[i]) + 0.1f;
                if (op == ON_BIN_DIV && fabsf(b[i]) < 0.1f) b[i] = 0.5f;
            }
            static const int64_t modes[3][2] = {{1, 1}, {1, 0}, {0, 1}};
            for (int m = 0; m < 3; m++) {
                ref->binary_row((on_binary_op)op, a, modes[m][0], b, modes[m][1], o1, n);
                if (!fast->binary_row((on_binary_op)op, a, modes[m][0], b, modes[m][1], o2, n))
                    memcpy(o2, o1, n * sizeof(float)); /* no fast path for this op: nothing to compare */
                CHECK_ALLCLOSE(o2, o1, n, 1e-6f, 1e-6f, "binary row");
            }
            free(a), free(b), free(o1), free(o2);
        }
    }
}

static void test_unary_fast_paths_match_reference(void) {
    const on_ops_table *ref = &on_ops_table_scalar, *fast = fast_table();
    for (int op = 0; op < ON_UN_COUNT; op++) {
        size_t n = 203;
        float *x = rnd(n, 6.0f), *y1 = rnd(n, 1), *y2 = rnd(n, 1);
        if (op == ON_UN_LOG || op == ON_UN_SQRT)
            for (size_t i = 0; i < n; i++) x[i] = fabsf(x[i]) + 1e-3f;
        ref->unary((on_unary_op)op, x, y1, n, 0.2f, 0.5f);
        if (!fast->unary((on_unary_op)op, x, y2, n, 0.2f, 0.5f)) memcpy(y2, y1, n * sizeof(float));
        char what[48];
        snprintf(what, sizeof what, "unary op %d", op);
        CHECK_ALLCLOSE(y2, y1, n, 2e-6f, 2e-7f, what);
        free(x), free(y1), free(y2);
    }
    /* exp / sigmoid / tanh at the range ends */
    float x[8] = {-100.f, -87.f, -20.f, -1e-4f, 1e-4f, 20.f, 88.f, 100.f}, y1[8], y2[8];
    int ops[3] = {ON_UN_EXP, ON_UN_SIGMOID, ON_UN_TANH};
    for (int k = 0; k < 3; k++) {
        ref->unary((on_unary_op)ops[k], x, y1, 8, 0, 0);
        if (!fast->unary((on_unary_op)ops[k], x, y2, 8, 0, 0)) memcpy(y2, y1, sizeof y1);
        for (int i = 0; i < 8; i++)
            if (ops[k] == ON_UN_EXP && (x[i] < -87.f || x[i] > 88.f)) y2[i] = y1[i]; /* clamped range */
        CHECK_ALLCLOSE(y2, y1, 8, 3e-6f, 1e-30f, "unary extremes");
    }
}

static void test_softmax_and_layernorm_rows_match_reference(void) {
    const on_ops_table *ref = &on_ops_table_scalar, *fast = fast_table();
    for (size_t cols = 1; cols <= 100; cols += 9) {
        float *x = rnd(cols, 5.0f), *s = rnd(cols, 1.0f), *b = rnd(cols, 1.0f);
        float *y1 = rnd(cols, 1), *y2 = rnd(cols, 1);
        ref->softmax_row(x, y1, cols, 0);
        if (!fast->softmax_row(x, y2, cols, 0)) memcpy(y2, y1, cols * sizeof(float));
        CHECK_ALLCLOSE(y2, y1, cols, 1e-5f, 1e-7f, "softmax row");
        float sum = 0;
        for (size_t i = 0; i < cols; i++) sum += y2[i];
        CHECK_NEAR(sum, 1.0f, 1e-5f, 1e-5f);
        ref->softmax_row(x, y1, cols, 1);
        if (!fast->softmax_row(x, y2, cols, 1)) memcpy(y2, y1, cols * sizeof(float));
        CHECK_ALLCLOSE(y2, y1, cols, 1e-5f, 1e-5f, "log-softmax row");
        ref->layernorm_row(x, s, b, y1, cols, 1e-5f);
        if (!fast->layernorm_row(x, s, b, y2, cols, 1e-5f)) memcpy(y2, y1, cols * sizeof(float));
        CHECK_ALLCLOSE(y2, y1, cols, 1e-4f, 1e-5f, "layernorm row");
        free(x), free(s), free(b), free(y1), free(y2);
    }
    /* attention-length rows with a partial last vector: the masked tail must not write past the row */
    const size_t lens[] = {197, 203, 256, 13};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        size_t cols = lens[k];
        float *x = rnd(cols, 8.0f), *y1 = rnd(cols + 8, 1), *y2 = rnd(cols + 8, 1);
        for (int log = 0; log < 2; log++) {
            for (size_t i = cols; i < cols + 8; i++) y2[i] = 12345.0f;
            ref->softmax_row(x, y1, cols, log);
            if (!fast->softmax_row(x, y2, cols, log)) memcpy(y2, y1, cols * sizeof(float));
            CHECK_ALLCLOSE(y2, y1, cols, 1e-5f, 1e-6f, log ? "log-softmax long row" : "softmax long row");
            for (size_t i = cols; i < cols + 8; i++) CHECK(y2[i] == 12345.0f);
        }
        free(x), free(y1), free(y2);
    }
}

static void test_pool_planes_match_reference(void) {
    const on_ops_table *ref = &on_ops_table_scalar, *fast = fast_table();
    const int64_t cfg[][8] = {
        /* kh kw sh sw pt pl pb pr */
        {3, 3, 1, 1, 1, 1, 1, 1}, {3, 3, 2, 2, 1, 1, 1, 1}, {2, 2, 2, 2, 0, 0, 0, 0}, {5, 5, 1, 1, 2, 2, 2, 2},
        {3, 3, 2, 2, 0, 0, 1, 1}, {1, 1, 1, 1, 0, 0, 0, 0}, {3, 2, 1, 2, 1, 0, 0, 1},
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        for (int64_t ih = 5; ih <= 37; ih += 8) {
            for (int cip = 0; cip < 2; cip++) {
                int64_t iw = ih + 3;
                on_pool2d_params p = {cfg[c][0], cfg[c][1], cfg[c][2], cfg[c][3], 1, 1, cfg[c][4], cfg[c][5], cip};
                int64_t pb = cfg[c][6], pr = cfg[c][7];
                int64_t oh = (ih + p.pt + pb - p.kh) / p.sh + 1, ow = (iw + p.pl + pr - p.kw) / p.sw + 1;
                float *x = rnd((size_t)(ih * iw), 4.0f), *y1 = rnd((size_t)(oh * ow), 1), *y2 = rnd((size_t)(oh * ow), 1);
                for (int is_max = 0; is_max < 2; is_max++) {
                    ref->pool2d_plane(is_max, x, y1, ih, iw, oh, ow, pb, pr, &p);
                    if (!fast->pool2d_plane(is_max, x, y2, ih, iw, oh, ow, pb, pr, &p))
                        memcpy(y2, y1, (size_t)(oh * ow) * sizeof(float));
                    CHECK_ALLCLOSE(y2, y1, (size_t)(oh * ow), 1e-5f, 1e-6f, "pool plane");
                }
                free(x), free(y1), free(y2);
            }
        }
    }
}

/* The driver: dilated windows with padding (the padded-copy fast path), and an average whose window is the
 * whole plane (taken as a global average), both against the plane reference, threads 1 and 2. */
static void test_pool_driver_dilated_and_whole_plane(void) {
    const int64_t ih = 13, iw = 21;
    const size_t planes = 5;
    float *x = rnd(planes * (size_t)(ih * iw), 4.0f);
    for (int whole = 0; whole < 2; whole++) {
        on_pool2d_params p = whole ? (on_pool2d_params){ih, iw, 1, 1, 1, 1, 0, 0, 0}
                                   : (on_pool2d_params){3, 3, 1, 2, 2, 2, 2, 2, 1};
        const int64_t pb = whole ? 0 : 2, pr = whole ? 0 : 3;
        const int64_t oh = (ih + p.pt + pb - (p.kh - 1) * p.dh - 1) / p.sh + 1;
        const int64_t ow = (iw + p.pl + pr - (p.kw - 1) * p.dw - 1) / p.sw + 1;
        const size_t on = (size_t)(oh * ow);
        float *ref = rnd(planes * on, 1), *got = rnd(planes * on, 1);
        for (int is_max = 0; is_max < 2; is_max++) {
            if (is_max && !whole) continue; /* max takes no end padding: covered by the plane test */
            for (size_t c = 0; c < planes; c++)
                on_pool2d_plane_ref(is_max, x + c * (size_t)(ih * iw), ref + c * on, ih, iw, oh, ow, pb, pr, &p);
            for (int threads = 1; threads <= 2; threads++) {
                on_status st = is_max ? on_maxpool2d_f32(x, got, planes, ih, iw, oh, ow, &p, threads)
                                      : on_avgpool2d_f32(x, got, planes, ih, iw, oh, ow, pb, pr, &p, threads);
                CHECK(st == ON_OK);
                CHECK_ALLCLOSE(got, ref, planes * on, 1e-5f, 1e-6f, whole ? "whole-plane average" : "dilated pool");
            }
        }
        free(ref), free(got);
    }
    free(x);
}

/* NCHWc8 pooling: the active ISA's block rows and the threaded driver against the plane reference run on
 * each channel (8 channels = one block; two images), with padding, ceil-mode overhang, dilation, NaN. */
static void test_pool_nchwc8_matches_plane_reference(void) {
    const int64_t cfg[][10] = {
        /* kh kw sh sw dh dw pt pl pb pr */
        {3, 3, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 3, 2, 2, 1, 1, 0, 0, 1, 1}, {2, 2, 2, 2, 1, 1, 0, 0, 0, 0},
        {5, 5, 1, 1, 1, 1, 2, 2, 2, 2}, {3, 2, 1, 2, 2, 1, 1, 0, 0, 1}, {1, 1, 1, 1, 1, 1, 0, 0, 0, 0},
        {3, 3, 2, 2, 2, 2, 2, 1, 0, 2},
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        for (int64_t ih = 1; ih <= 15; ih += 7) {
            for (int cip = 0; cip < 2; cip++) {
                const int64_t iw = ih + 2, blocks = 2;
                on_pool2d_params p = {cfg[c][0], cfg[c][1], cfg[c][2], cfg[c][3], cfg[c][4],
                                      cfg[c][5], cfg[c][6], cfg[c][7], cip};
                const int64_t pb = cfg[c][8], pr = cfg[c][9];
                const int64_t eh = (p.kh - 1) * p.dh + 1, ew = (p.kw - 1) * p.dw + 1;
                if (ih + p.pt + pb < eh || iw + p.pl + pr < ew) continue;
                /* ceil mode: one more output where the window still starts inside the padded input */
                int64_t oh = (ih + p.pt + pb - eh) / p.sh + 1, ow = (iw + p.pl + pr - ew) / p.sw + 1;
                if ((oh * p.sh) < ih + p.pt) oh++;
                if ((ow * p.sw) < iw + p.pl) ow++;
                const size_t in = (size_t)(ih * iw), on = (size_t)(oh * ow);
                float *planes = rnd(blocks * 8 * in, 4.0f), *xb = rnd(blocks * 8 * in, 1);
                float *ref = rnd(blocks * 8 * on, 1), *yb = rnd(blocks * 8 * on, 1), *yd = rnd(blocks * 8 * on, 1);
                planes[3 * in + 1] = NAN; /* channel 3 of image 0 */
                for (size_t ch = 0; ch < (size_t)blocks * 8; ch++)
                    for (size_t i = 0; i < in; i++) xb[(ch / 8) * in * 8 + i * 8 + ch % 8] = planes[ch * in + i];
                for (int is_max = 0; is_max < 2; is_max++) {
                    for (size_t ch = 0; ch < (size_t)blocks * 8; ch++)
                        on_pool2d_plane_ref(is_max, planes + ch * in, ref + ch * on, ih, iw, oh, ow, pb, pr, &p);
                    for (int64_t b = 0; b < blocks; b++)
                        for (int64_t oy = 0; oy < oh; oy++)
                            if (!fast_table()->pool2d_c8_row(is_max, xb + b * in * 8, yb + (b * oh + oy) * ow * 8, ih,
                                                             iw, oy, ow, pb, pr, &p))
                                on_pool2d_c8_row_ref(is_max, xb + b * in * 8, yb + (b * oh + oy) * ow * 8, ih, iw, oy,
                                                     ow, pb, pr, &p);
                    CHECK(on_pool2d_nchwc8_f32(is_max, xb, yd, (size_t)blocks, ih, iw, oh, ow, pb, pr, &p, 2) == ON_OK);
                    for (size_t ch = 0; ch < (size_t)blocks * 8; ch++)
                        for (size_t i = 0; i < on; i++) {
                            const float want = ref[ch * on + i], got = yb[(ch / 8) * on * 8 + i * 8 + ch % 8];
                            const float viad = yd[(ch / 8) * on * 8 + i * 8 + ch % 8];
                            if (isnan(want)) {
                                CHECK(isnan(got) && isnan(viad));
                            } else {
                                CHECK_NEAR(got, want, 1e-5f, 1e-5f);
                                CHECK(viad == got);
                            }
                        }
                }
                free(planes), free(xb), free(ref), free(yb), free(yd);
            }
        }
    }
    on_pool2d_params bad = {0, 3, 1, 1, 1, 1, 0, 0, 0};
    float x[8] = {0}, y[8];
    CHECK(on_pool2d_nchwc8_f32(1, x, y, 1, 1, 1, 1, 1, 0, 0, &bad, 1) == ON_ERR_ARG);
}

static void test_row_reduce_matches_reference(void) {
    const on_ops_table *ref = &on_ops_table_scalar, *fast = fast_table();
    for (size_t n = 1; n < 300; n += 17) {
        float *x = rnd(n, 2.0f), r1, r2;
        for (int is_max = 0; is_max < 2; is_max++) {
            ref->row_reduce(is_max, x, n, &r1);
            if (!fast->row_reduce(is_max, x, n, &r2)) r2 = r1;
            CHECK_NEAR(r2, r1, 1e-5f, 1e-5f);
        }
        free(x);
    }
}

/* ---- entry points against naive loops ----------------------------------------------------------------- */
static void test_binary_broadcast_channel_scale_matches_naive(void) {
    /* x [2, 5, 7, 9] * s [1, 5, 1, 1] and + b [9] */
    int64_t shape[4] = {2, 5, 7, 9}, xs[4] = {315, 63, 9, 1}, ss[4] = {0, 1, 0, 0}, bs[4] = {0, 0, 0, 1};
    size_t n = 2 * 5 * 7 * 9;
    float *x = rnd(n, 1), *s = rnd(5, 1), *b = rnd(9, 1), *y = rnd(n, 1), *want = rnd(n, 1);
    for (int threads = 1; threads <= 2; threads++) {
        CHECK(on_binary_f32(ON_BIN_MUL, 4, shape, x, xs, s, ss, y, threads) == ON_OK);
        for (size_t i = 0; i < n; i++) want[i] = x[i] * s[(i / 63) % 5];
        CHECK_ALLCLOSE(y, want, n, 0, 0, "channel scale");
        CHECK(on_binary_f32(ON_BIN_ADD, 4, shape, x, xs, b, bs, y, threads) == ON_OK);
        for (size_t i = 0; i < n; i++) want[i] = x[i] + b[i % 9];
        CHECK_ALLCLOSE(y, want, n, 0, 0, "last-dim bias");
    }
    CHECK(on_binary_f32(ON_BIN_COUNT, 4, shape, x, xs, s, ss, y, 1) == ON_ERR_ARG);
    CHECK(on_binary_f32(ON_BIN_ADD, 9, shape, x, xs, s, ss, y, 1) == ON_ERR_ARG);
    free(x), free(s), free(b), free(y), free(want);
}

/* BatchNormalization / per-channel constants on the NCHWc8 layout: x * scale[c] + shift[c] with c = block * 8
 * + lane, for 1 and 2 images, 1 and 2 threads, planes small (one thread) and large (split). */
static void test_channel_affine_nchwc8_matches_naive(void) {
    static const size_t dims[][3] = {{1, 1, 1}, {2, 3, 7}, {1, 5, 1000}, {2, 2, 4099}};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        size_t n = dims[d][0], cb = dims[d][1], px = dims[d][2], total = n * cb * px * ON_C0;
        float *x = rnd(total, 4.0f), *sc = rnd(cb * ON_C0, 2.0f), *sh = rnd(cb * ON_C0, 2.0f);
        float *want = rnd(total, 1), *got = rnd(total, 1);
        for (size_t i = 0; i < total; i++) {
            size_t c = (i / (px * ON_C0)) % cb * ON_C0 + i % ON_C0;
            want[i] = x[i] * sc[c] + sh[c];
        }
        for (int th = 1; th <= 2; th++) {
            CHECK_EQ_INT(on_channel_affine_nchwc8_f32(x, sc, sh, got, n, cb, px, th), ON_OK);
            CHECK_ALLCLOSE(got, want, total, 1e-6f, 1e-6f, "channel affine nchwc8");
        }
        free(x), free(sc), free(sh), free(want), free(got);
    }
    CHECK_EQ_INT(on_channel_affine_nchwc8_f32(NULL, NULL, NULL, NULL, 1, 1, 1, 1), ON_ERR_ARG);
    /* the row kernels themselves: the reference and the active ISA's, odd pixel counts (vector tails) */
    const on_ops_table *tabs[2] = {&on_ops_table_scalar, fast_table()};
    for (size_t px = 1; px <= 9; px++) {
        float *x = rnd(px * ON_C0, 3.0f), *a = rnd(ON_C0, 2.0f), *b = rnd(ON_C0, 2.0f), *got = rnd(px * ON_C0, 1);
        float want[9 * ON_C0];
        for (size_t i = 0; i < px * ON_C0; i++) want[i] = x[i] * a[i % ON_C0] + b[i % ON_C0];
        for (int t = 0; t < 2; t++) {
            CHECK_EQ_INT(tabs[t]->affine_c8_rows(x, got, px, a, b), 1);
            CHECK_ALLCLOSE(got, want, px * ON_C0, 1e-6f, 1e-6f, tabs[t]->name);
        }
        free(x), free(a), free(b), free(got);
    }
}

static void test_large_elementwise_is_split_across_threads_identically(void) {
    size_t n = 300001;
    float *x = rnd(n, 3), *y1 = rnd(n, 1), *y2 = rnd(n, 1);
    CHECK(on_unary_f32(ON_UN_SIGMOID, x, y1, n, 0, 0, 1) == ON_OK);
    CHECK(on_unary_f32(ON_UN_SIGMOID, x, y2, n, 0, 0, 2) == ON_OK);
    CHECK_ALLCLOSE(y2, y1, n, 0, 0, "sigmoid threads 1 vs 2");
    int64_t shape[1] = {(int64_t)n}, st[1] = {1};
    CHECK(on_binary_f32(ON_BIN_SUB, 1, shape, x, st, y1, st, y2, 2) == ON_OK);
    int ok = 1;
    for (size_t i = 0; i < n; i++) ok &= y2[i] == x[i] - y1[i];
    CHECK(ok);
    free(x), free(y1), free(y2);
}

static void test_copy_strided_transposes(void) {
    /* src [3, 4, 5] -> dst = transpose(2, 0, 1) */
    float src[60], dst[60];
    for (int i = 0; i < 60; i++) src[i] = (float)i;
    int64_t shape[3] = {5, 3, 4}, ss[3] = {1, 20, 5}, ds[3] = {12, 4, 1};
    CHECK(on_copy_strided(4, 3, shape, src, ss, dst, ds, 2) == ON_OK);
    int ok = 1;
    for (int k = 0; k < 5; k++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++) ok &= dst[k * 12 + i * 4 + j] == src[i * 20 + j * 5 + k];
    CHECK(ok);
    CHECK(on_copy_strided(3, 3, shape, src, ss, dst, ds, 1) == ON_ERR_ARG);
}

static void test_concat_and_gather(void) {
    int64_t a[6] = {0, 1, 2, 3, 4, 5}, b[4] = {6, 7, 8, 9}, out[10];
    const void *srcs[2] = {a, b};
    int64_t lens[2] = {3, 2}; /* [2, 3] ++ [2, 2] along axis 1 */
    CHECK(on_concat(8, 2, srcs, lens, 2, 1, out, 1) == ON_OK);
    int64_t want[10] = {0, 1, 2, 6, 7, 3, 4, 5, 8, 9};
    CHECK(memcmp(out, want, sizeof want) == 0);
    float x[12], y8[8];
    for (int i = 0; i < 12; i++) x[i] = (float)i;
    int64_t idx[2] = {2, 0}; /* rows 2 and 0 of x [3, 4] */
    CHECK(on_gather(4, x, 1, 3, 4, idx, 2, y8, 1) == ON_OK);
    CHECK(y8[0] == 8.f && y8[4] == 0.f && y8[7] == 3.f);
    int64_t bad[1] = {3};
    CHECK(on_gather(4, x, 1, 3, 4, bad, 1, y8, 1) == ON_ERR_ARG);
}

static void test_reduce_mean_middle_axis(void) {
    float x[2 * 3 * 4], y[8];
    for (int i = 0; i < 24; i++) x[i] = (float)i;
    CHECK(on_reduce_f32(ON_RED_MEAN, x, y, 2, 3, 4, 1) == ON_OK);
    CHECK_NEAR(y[0], 4.0f, 0, 1e-6f);
    CHECK_NEAR(y[7], 19.0f, 0, 1e-6f);
    CHECK(on_reduce_f32(ON_RED_MAX, x, y, 8, 3, 1, 1) == ON_OK);
    CHECK_NEAR(y[0], 2.0f, 0, 0);
}

static void test_resize_nearest_and_linear(void) {
    float x[4] = {0, 1, 2, 3}, y[16];
    int64_t iy[4] = {0, 0, 1, 1}, ix[4] = {0, 0, 1, 1};
    CHECK(on_resize_nearest2d_f32(x, y, 1, 2, 2, 4, 4, iy, ix, 1) == ON_OK);
    CHECK(y[0] == 0 && y[3] == 1 && y[15] == 3);
    int64_t y0[2] = {0, 0}, y1[2] = {1, 1}, x0[2] = {0, 0}, x1[2] = {1, 1};
    float wy[2] = {0, 0.5f}, wx[2] = {0, 0.5f}, out[4];
    CHECK(on_resize_linear2d_f32(x, out, 1, 2, 2, 2, 2, y0, y1, wy, x0, x1, wx, 1) == ON_OK);
    CHECK_NEAR(out[3], 1.5f, 0, 1e-6f);
    int64_t badi[4] = {0, 0, 2, 1};
    CHECK(on_resize_nearest2d_f32(x, y, 1, 2, 2, 4, 4, badi, ix, 1) == ON_ERR_ARG);
}

int main(void) {
    const on_isa_t best = on_active_isa();
    /* the row kernels of every table this machine can run (AVX-512 adds 16-lane unary ops to AVX2's) */
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_isa_available((on_isa_t)isa) || on_set_isa((on_isa_t)isa) != 0) continue;
        printf("ops tests: ISA %s (table %s)\n", on_isa_name(on_active_isa()), on_kernels_active()->ops->name);
        RUN(test_binary_rows_match_reference);
        RUN(test_unary_fast_paths_match_reference);
        RUN(test_softmax_and_layernorm_rows_match_reference);
        RUN(test_pool_planes_match_reference);
        RUN(test_pool_driver_dilated_and_whole_plane);
        RUN(test_pool_nchwc8_matches_plane_reference);
        RUN(test_row_reduce_matches_reference);
    }
    on_set_isa(best);
    printf("ops tests: ISA %s (table %s)\n", on_isa_name(on_active_isa()), on_kernels_active()->ops->name);
    RUN(test_binary_broadcast_channel_scale_matches_naive);
    RUN(test_channel_affine_nchwc8_matches_naive);
    RUN(test_large_elementwise_is_split_across_threads_identically);
    RUN(test_copy_strided_transposes);
    RUN(test_concat_and_gather);
    RUN(test_reduce_mean_middle_axis);
    RUN(test_resize_nearest_and_linear);
    return on_test_summary();
}
