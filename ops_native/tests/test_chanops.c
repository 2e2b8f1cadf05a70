/* test_chanops.c - LRN and PRelu (on_chanops.h): every ISA's row kernels and the drivers against the
 * definitions (LRN's window recomputed in double precision, PRelu's naive broadcast loop), threads 1 and 2. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "on_chanops.h"
#include "on_test.h"

static float *rnd(size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = on_test_randf() * scale;
    return p;
}

/* sizes that cover the sliding window's edges (c < size, c == 1, even sizes) and the span / SIMD tails */
static void test_lrn_matches_definition(void) {
    const size_t shapes[][3] = {{1, 1, 1}, {1, 3, 17}, {2, 7, 33}, {1, 16, 255}, {1, 5, 257}, {2, 24, 600},
                                {1, 96, 3025}};
    const int64_t sizes[] = {1, 2, 3, 5, 6};
    const float betas[] = {0.75f, 0.5f, 1.0f, 0.6f};
    const float alphas[] = {1e-4f, 0.5f}, biases[] = {1.0f, 2.0f};
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        size_t n = shapes[s][0], c = shapes[s][1], inner = shapes[s][2], total = n * c * inner;
        float *x = rnd(total, 20.0f), *want = rnd(total, 1.0f), *got = rnd(total, 1.0f);
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++)
            for (size_t b = 0; b < sizeof(betas) / sizeof(betas[0]); b++)
                for (int ab = 0; ab < 2; ab++)
                    for (int threads = 1; threads <= 2; threads++) {
                        /* the AlexNet-sized plane only at its real window and two exponents: the sweep
                         * is the small shapes' job (the whole sweep took 40 s under qemu-aarch64) */
                        if (total > 100000 && (sizes[k] != 5 || b > 1)) continue;
                        CHECK(on_lrn_f32_ref(x, want, n, c, inner, sizes[k], alphas[ab], betas[b], biases[ab]) ==
                              ON_OK);
                        CHECK(on_lrn_f32(x, got, n, c, inner, sizes[k], alphas[ab], betas[b], biases[ab],
                                         threads) == ON_OK);
                        char what[128];
                        snprintf(what, sizeof what, "lrn n%zu c%zu inner%zu size%lld beta%g alpha%g t%d", n, c,
                                 inner, (long long)sizes[k], (double)betas[b], (double)alphas[ab], threads);
                        /* the slide's add-then-remove rounding: a few ulp of the largest window sum */
                        on_test_allclose_(got, want, total, 1e-4f, 1e-6f, what, __FILE__, __LINE__);
                    }
        free(x);
        free(want);
        free(got);
    }
}

static void test_lrn_span_fast_matches_scalar(void) {
    const on_chan_table *ref = &on_chan_table_scalar, *fast = on_kernels_active()->chan;
    size_t c = 11, plane = 70;
    float *x = rnd(c * plane, 5.0f), *y1 = rnd(c * plane, 1.0f), *y2 = rnd(c * plane, 1.0f);
    float sum[70];
    for (size_t len = 1; len <= plane; len += 3) {
        CHECK(ref->lrn_span(x, y1, c, plane, len, 2, 2, 0.1f, 1.0f, 0.75f, sum) == 1);
        if (!fast->lrn_span(x, y2, c, plane, len, 2, 2, 0.1f, 1.0f, 0.75f, sum)) continue;
        for (size_t ch = 0; ch < c; ch++) on_test_allclose_(y2 + ch * plane, y1 + ch * plane, len, 1e-5f, 1e-6f,
                                                            "lrn span", __FILE__, __LINE__);
    }
    free(x);
    free(y1);
    free(y2);
}

static void test_lrn_rejects_bad_arguments(void) {
    float x[4] = {1, 2, 3, 4}, y[4];
    CHECK(on_lrn_f32(x, y, 1, 2, 2, 0, 1e-4f, 0.75f, 1.0f, 1) == ON_ERR_ARG);
    CHECK(on_lrn_f32(x, x, 1, 2, 2, 3, 1e-4f, 0.75f, 1.0f, 1) == ON_ERR_ARG);  /* in place: the slide reads x */
    CHECK(on_lrn_f32(NULL, y, 1, 2, 2, 3, 1e-4f, 0.75f, 1.0f, 1) == ON_ERR_ARG);
    CHECK(on_lrn_f32(x, y, 0, 2, 2, 3, 1e-4f, 0.75f, 1.0f, 1) == ON_OK);
}

/* y = prelu(x, slope) over x's shape with the slope broadcast by strides, the naive way */
static void prelu_naive(int ndim, const int64_t *shape, const float *x, const float *s, const int64_t *ss,
                        float *y) {
    size_t total = 1;
    for (int d = 0; d < ndim; d++) total *= (size_t)shape[d];
    for (size_t i = 0; i < total; i++) {
        size_t rest = i;
        int64_t off = 0;
        for (int d = ndim - 1; d >= 0; d--) {
            off += (int64_t)(rest % (size_t)shape[d]) * ss[d];
            rest /= (size_t)shape[d];
        }
        y[i] = x[i] >= 0.0f ? x[i] : s[off] * x[i];
    }
}

static void test_prelu_broadcasts_like_naive_loop(void) {
    struct {
        int ndim;
        int64_t shape[4], ss[4];
    } cases[] = {
        {4, {2, 5, 7, 9}, {0, 1, 0, 0}},        /* NCHW, slope [C, 1, 1] */
        {4, {1, 128, 3, 3}, {0, 1, 0, 0}},      /* MTCNN O-Net's last conv */
        {2, {3, 256}, {0, 1}},                  /* slope [256] after a dense layer */
        {4, {2, 3, 4, 5}, {60, 20, 5, 1}},      /* full-shape slope */
        {3, {4, 1, 37}, {0, 0, 0}},             /* scalar slope */
        {4, {2, 3, 40, 41}, {0, 0, 41, 1}},     /* slope [H, W] */
        {3, {5, 6, 7}, {1, 0, 0}},              /* slope [5, 1, 1] */
        {0, {0}, {0}},                          /* a scalar x */
    };
    for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        size_t total = 1, sn = 1;
        for (int d = 0; d < cases[k].ndim; d++) {
            total *= (size_t)cases[k].shape[d];
            if (cases[k].ss[d]) sn += (size_t)(cases[k].shape[d] - 1) * (size_t)cases[k].ss[d];
        }
        float *x = rnd(total, 3.0f), *s = rnd(sn, 1.0f), *want = rnd(total, 1.0f), *got = rnd(total, 1.0f);
        prelu_naive(cases[k].ndim, cases[k].shape, x, s, cases[k].ss, want);
        for (int threads = 1; threads <= 2; threads++) {
            CHECK(on_prelu_f32(cases[k].ndim, cases[k].shape, x, s, cases[k].ss, got, threads) == ON_OK);
            on_test_allclose_(got, want, total, 0.0f, 0.0f, "prelu", __FILE__, __LINE__);
        }
        free(x);
        free(s);
        free(want);
        free(got);
    }
}

static void test_prelu_rows_fast_match_scalar(void) {
    const on_chan_table *ref = &on_chan_table_scalar, *fast = on_kernels_active()->chan;
    float *x = rnd(131, 4.0f), *s = rnd(131, 1.0f), y1[131], y2[131];
    x[5] = 0.0f;
    x[6] = -0.0f;
    for (size_t n = 1; n <= 131; n += 5)
        for (int64_t ss = 0; ss <= 1; ss++) {
            CHECK(ref->prelu_row(x, s, ss, y1, n) == 1);
            CHECK(fast->prelu_row(x, s, ss, y2, n) == 1);
            on_test_allclose_(y2, y1, n, 0.0f, 0.0f, "prelu row", __FILE__, __LINE__);
        }
    free(x);
    free(s);
}

int main(void) {
    const on_isa_t best = on_active_isa();
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_isa_available((on_isa_t)isa) || on_set_isa((on_isa_t)isa) != 0) continue;
        printf("chanops tests: ISA %s (table %s)\n", on_isa_name(on_active_isa()), on_kernels_active()->chan->name);
        RUN(test_lrn_matches_definition);
        RUN(test_lrn_span_fast_matches_scalar);
        RUN(test_prelu_broadcasts_like_naive_loop);
        RUN(test_prelu_rows_fast_match_scalar);
    }
    on_set_isa(best);
    RUN(test_lrn_rejects_bad_arguments);
    return on_test_summary();
}
