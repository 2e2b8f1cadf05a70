/* test_rnn.c - the recurrent layers: every ISA table's fused cells against the scalar reference (all
 * activations, clip, peepholes, input_forget, linear_before_reset, odd widths), and on_rnn_f32 on every
 * ISA against a naive per-step implementation written from the ONNX formulas (LSTM / GRU / RNN, forward /
 * reverse / bidirectional, sequence lengths, both layouts, initial states, threads 1 and 2). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "on_rnn.h"
#include "on_test.h"

static float *rnd(size_t n, float scale) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = on_test_randf() * scale;
    return p;
}

static on_rnn_act act_of(int kind) {
    on_rnn_act a = {(on_rnn_act_kind)kind, 0.0f, 0.0f};
    switch (a.kind) {
    case ON_RNN_ACT_HARD_SIGMOID: a.alpha = 0.2f, a.beta = 0.5f; break;
    case ON_RNN_ACT_LEAKY_RELU: a.alpha = 0.1f; break;
    case ON_RNN_ACT_THRESHOLDED_RELU: a.alpha = 0.3f; break;
    case ON_RNN_ACT_SCALED_TANH: a.alpha = 1.5f, a.beta = 0.7f; break;
    case ON_RNN_ACT_ELU: a.alpha = 0.8f; break;
    case ON_RNN_ACT_AFFINE: a.alpha = 0.6f, a.beta = -0.2f; break;
    default: break;
    }
    return a;
}

static float clipf(const on_rnn_cell *p, float x) {
    return p->clip > 0.0f ? fminf(fmaxf(x, -p->clip), p->clip) : x;
}

/* ---- cells: every ISA table vs the scalar one ----------------------------------------------------- */
static void compare_cells(const on_rnn_kernels *fast, const on_rnn_cell *p, const char *isa) {
    const on_rnn_kernels *ref = &on_rnn_kernels_scalar;
    const size_t H = p->hidden;
    float *xg = rnd(4 * H, 3.0f), *hg = rnd(4 * H, 3.0f), *hp = rnd(H, 1.0f);
    float *c1 = rnd(H, 2.0f), *c2 = malloc(H * sizeof(float)), *h1 = rnd(H, 1), *h2 = rnd(H, 1);
    memcpy(c2, c1, H * sizeof(float));
    char what[160];
    snprintf(what, sizeof what, "%s H=%zu f=%d g=%d h=%d clip=%g peep=%d if=%d lbr=%d", isa, H, p->f.kind, p->g.kind,
             p->h.kind, (double)p->clip, p->peephole != NULL, p->input_forget, p->linear_before_reset);
    const float rtol = 2e-5f, atol = 2e-6f;
    ref->lstm_row(p, xg, hg, c1, h1);
    if (fast->lstm_row(p, xg, hg, c2, h2)) {
        CHECK_ALLCLOSE(c2, c1, H, rtol, atol, what);
        CHECK_ALLCLOSE(h2, h1, H, rtol, atol, what);
    }
    ref->gru_row(p, xg, hg, hp, h1);
    if (fast->gru_row(p, xg, hg, hp, h2)) CHECK_ALLCLOSE(h2, h1, H, rtol, atol, what);
    memcpy(h2, hp, H * sizeof(float)); /* in place: h aliases h_prev */
    if (fast->gru_row(p, xg, hg, h2, h2)) CHECK_ALLCLOSE(h2, h1, H, rtol, atol, what);
    ref->gru_reset_row(p, xg, hg, hp, h1);
    if (fast->gru_reset_row(p, xg, hg, hp, h2)) CHECK_ALLCLOSE(h2, h1, H, rtol, atol, what);
    ref->rnn_row(p, xg, hg, h1);
    if (fast->rnn_row(p, xg, hg, h2)) CHECK_ALLCLOSE(h2, h1, H, rtol, atol, what);
    free(xg), free(hg), free(hp), free(c1), free(c2), free(h1), free(h2);
}

static void test_cells_of_every_isa_match_reference(void) {
    static const size_t widths[] = {1, 7, 8, 16, 33, 64, 100};
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        const on_kernel_table *k = on_kernels_for_isa((on_isa_t)isa);
        if (!k) continue;
        CHECK(k->rnn != NULL && k->rnn->lstm_row && k->rnn->gru_row && k->rnn->gru_reset_row && k->rnn->rnn_row);
        for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
            const size_t H = widths[w];
            float *peep = rnd(3 * H, 1.0f);
            on_rnn_cell p = {.hidden = H, .f = act_of(ON_RNN_ACT_SIGMOID), .g = act_of(ON_RNN_ACT_TANH),
                             .h = act_of(ON_RNN_ACT_TANH)};
            for (int variant = 0; variant < 8; variant++) {
                p.peephole = (variant & 1) ? peep : NULL;
                p.clip = (variant & 2) ? 1.5f : 0.0f;
                p.input_forget = (variant & 4) != 0;
                p.linear_before_reset = (variant & 1) != 0;
                compare_cells(k->rnn, &p, k->rnn->name);
            }
            p.peephole = NULL, p.clip = 0.0f, p.input_forget = 0;
            for (int kind = 0; kind < ON_RNN_ACT_COUNT; kind++) { /* each activation in each slot */
                on_rnn_cell q = p;
                q.f = act_of(kind);
                compare_cells(k->rnn, &q, k->rnn->name);
                q = p;
                q.g = act_of(kind);
                compare_cells(k->rnn, &q, k->rnn->name);
                q = p;
                q.h = act_of(kind);
                q.linear_before_reset = 1;
                compare_cells(k->rnn, &q, k->rnn->name);
            }
            free(peep);
        }
    }
}

/* ---- the sequence driver vs a naive implementation ----------------------------------------------- */
typedef struct {
    on_rnn_kind kind;
    size_t T, B, I, H, D;
    int reverse, layout, lbr, peep, with_lens, with_init, clip, input_forget;
} rnn_case;

static size_t gates(on_rnn_kind k) { return k == ON_RNN_LSTM ? 4 : (k == ON_RNN_GRU ? 3 : 1); }

/* ONNX formulas, one row and one step at a time, weights as given (W [D, GH, I], R [D, GH, H]). */
static void naive(const rnn_case *c, const on_rnn_cell *cells, const float *x, const float *W, const float *R,
                  const float *Wb, const float *Rb, const int32_t *lens, const float *h0, const float *c0, float *y,
                  float *yh, float *yc) {
    const size_t T = c->T, B = c->B, I = c->I, H = c->H, G = gates(c->kind), GH = G * H;
    float *hp = malloc(H * sizeof(float)), *cp = malloc(H * sizeof(float)), *pre = malloc(GH * sizeof(float));
    float *rec = malloc(GH * sizeof(float)), *rh = malloc(H * sizeof(float));
    memset(y, 0, T * c->D * B * H * sizeof(float));
    for (size_t d = 0; d < c->D; d++) {
        const on_rnn_cell *p = &cells[d];
        const int rev = c->D == 2 ? d == 1 : c->reverse;
        const float *w = W + d * GH * I, *r = R + d * GH * H, *wb = Wb + d * GH, *rb = Rb + d * GH;
        for (size_t b = 0; b < B; b++) {
            const size_t len = lens ? (size_t)lens[b] : T;
            for (size_t k = 0; k < H; k++) {
                hp[k] = h0 ? h0[(d * B + b) * H + k] : 0.0f;
                cp[k] = c0 ? c0[(d * B + b) * H + k] : 0.0f;
            }
            for (size_t s = 0; s < len; s++) {
                const size_t t = rev ? len - 1 - s : s;
                const float *xt = x + (t * B + b) * I;
                for (size_t g = 0; g < GH; g++) {
                    double a = wb[g], q = rb[g];
                    for (size_t i = 0; i < I; i++) a += (double)w[g * I + i] * xt[i];
                    for (size_t k = 0; k < H; k++) q += (double)r[g * H + k] * hp[k];
                    pre[g] = (float)a, rec[g] = (float)q;
                }
                for (size_t j = 0; j < H; j++) {
                    float hn, cn = 0.0f;
                    if (c->kind == ON_RNN_LSTM) {
                        const float *P = p->peephole;
                        float gi = pre[j] + rec[j], go = pre[H + j] + rec[H + j];
                        float gf = pre[2 * H + j] + rec[2 * H + j], gc = pre[3 * H + j] + rec[3 * H + j];
                        if (P) gi += P[j] * cp[j], gf += P[2 * H + j] * cp[j];
                        float ig = on_rnn_act_ref(p->f, clipf(p, gi));
                        float fg = p->input_forget ? 1.0f - ig : on_rnn_act_ref(p->f, clipf(p, gf));
                        cn = fg * cp[j] + ig * on_rnn_act_ref(p->g, clipf(p, gc));
                        if (P) go += P[H + j] * cn;
                        hn = on_rnn_act_ref(p->f, clipf(p, go)) * on_rnn_act_ref(p->h, cn);
                    } else if (c->kind == ON_RNN_GRU) {
                        float z = on_rnn_act_ref(p->f, clipf(p, pre[j] + rec[j]));
                        float rg = on_rnn_act_ref(p->f, clipf(p, pre[H + j] + rec[H + j]));
                        float gh;
                        if (p->linear_before_reset) {
                            gh = pre[2 * H + j] + rg * rec[2 * H + j];
                        } else { /* (r * h_prev) R_h^T + Rb_h */
                            double q = rb[2 * H + j];
                            for (size_t k = 0; k < H; k++) {
                                float rk = on_rnn_act_ref(p->f, clipf(p, pre[H + k] + rec[H + k]));
                                q += (double)r[(2 * H + j) * H + k] * (rk * hp[k]);
                            }
                            gh = pre[2 * H + j] + (float)q;
                        }
                        float ht = on_rnn_act_ref(p->g, clipf(p, gh));
                        hn = (1.0f - z) * ht + z * hp[j];
                    } else {
                        hn = on_rnn_act_ref(p->f, clipf(p, pre[j] + rec[j]));
                    }
                    rh[j] = hn;
                    if (c->kind == ON_RNN_LSTM) pre[j] = cn; /* pre[j] no longer needed by later j */
                }
                /* LSTM: pre[0..H) now holds the new cell state; a later j reads only its own index */
                for (size_t j = 0; j < H; j++) {
                    hp[j] = rh[j];
                    if (c->kind == ON_RNN_LSTM) cp[j] = pre[j];
                    y[((t * c->D + d) * B + b) * H + j] = hp[j];
                }
            }
            for (size_t k = 0; k < H; k++) { /* length 0: zero states (ONNX Runtime's choice) */
                yh[(d * B + b) * H + k] = len ? hp[k] : 0.0f;
                yc[(d * B + b) * H + k] = len ? cp[k] : 0.0f;
            }
        }
    }
    free(hp), free(cp), free(pre), free(rec), free(rh);
}

static void run_case(const rnn_case *c, int nthreads) {
    const size_t T = c->T, B = c->B, I = c->I, H = c->H, D = c->D, G = gates(c->kind), GH = G * H;
    float *x = rnd(T * B * I, 1.0f), *W = rnd(D * GH * I, 0.5f), *R = rnd(D * GH * H, 0.5f);
    float *Wb = rnd(D * GH, 0.3f), *Rb = rnd(D * GH, 0.3f), *P = rnd(D * 3 * H, 0.5f);
    float *h0 = c->with_init ? rnd(D * B * H, 1.0f) : NULL, *c0 = c->with_init ? rnd(D * B * H, 1.0f) : NULL;
    int32_t *lens = NULL;
    if (c->with_lens) {
        lens = malloc(B * sizeof(int32_t));
        for (size_t b = 0; b < B; b++) /* full, empty, then partial lengths */
            lens[b] = (int32_t)(b == 0 ? T : b == 1 ? 0 : 1 + (b * 3) % T);
    }
    on_rnn_cell cells[2];
    for (size_t d = 0; d < 2; d++) {
        on_rnn_cell p = {.hidden = H, .f = act_of(ON_RNN_ACT_SIGMOID), .g = act_of(ON_RNN_ACT_TANH),
                         .h = act_of(ON_RNN_ACT_TANH), .clip = c->clip ? 2.0f : 0.0f,
                         .peephole = c->peep ? P + (d % D) * 3 * H : NULL, .input_forget = c->input_forget,
                         .linear_before_reset = c->lbr};
        if (c->kind == ON_RNN_SIMPLE) p.f = act_of(d ? ON_RNN_ACT_RELU : ON_RNN_ACT_TANH);
        cells[d] = p;
    }
    float *y_want = malloc(T * D * B * H * sizeof(float)), *yh_want = malloc(D * B * H * sizeof(float));
    float *yc_want = malloc(D * B * H * sizeof(float));
    naive(c, cells, x, W, R, Wb, Rb, lens, h0, c0, y_want, yh_want, yc_want);

    /* the layer's own layout: layout 1 puts the batch first in X, Y and the states */
    float *xl = malloc(T * B * I * sizeof(float)), *h0l = NULL, *c0l = NULL;
    on_rnn_desc d = {.kind = c->kind, .seq = T, .batch = B, .input = I, .hidden = H, .ndir = D, .reverse = c->reverse};
    if (c->layout) {
        d.x_ts = 1, d.x_bs = T;
        d.y = (on_rnn_strides){.t = D * H, .d = H, .b = T * D * H};
        d.st = (on_rnn_strides){.t = 0, .d = H, .b = D * H};
    } else {
        d.x_ts = B, d.x_bs = 1;
        d.y = (on_rnn_strides){.t = D * B * H, .d = B * H, .b = H};
        d.st = (on_rnn_strides){.t = 0, .d = B * H, .b = H};
    }
    for (size_t t = 0; t < T; t++)
        for (size_t b = 0; b < B; b++) memcpy(xl + (t * d.x_ts + b * d.x_bs) * I, x + (t * B + b) * I, I * sizeof(float));
    if (h0) {
        h0l = malloc(D * B * H * sizeof(float)), c0l = malloc(D * B * H * sizeof(float));
        for (size_t k = 0; k < D; k++)
            for (size_t b = 0; b < B; b++) {
                memcpy(h0l + k * d.st.d + b * d.st.b, h0 + (k * B + b) * H, H * sizeof(float));
                memcpy(c0l + k * d.st.d + b * d.st.b, c0 + (k * B + b) * H, H * sizeof(float));
            }
    }
    /* packed weights and the split of the biases between the two products */
    on_packed_b *pw = NULL, *pr[2] = {NULL, NULL}, *prh[2] = {NULL, NULL};
    float *wbias = malloc(D * GH * sizeof(float)), *rbias = calloc(D * GH, sizeof(float));
    CHECK_EQ_INT(on_packed_b_create(W, I, 1, I, D * GH, &pw), ON_OK);
    for (size_t k = 0; k < D; k++) {
        const int lbr0 = c->kind == ON_RNN_GRU && !c->lbr;
        d.cell[k] = cells[k];
        CHECK_EQ_INT(on_packed_b_create(R + k * GH * H, H, 1, H, lbr0 ? 2 * H : GH, &pr[k]), ON_OK);
        if (lbr0) CHECK_EQ_INT(on_packed_b_create(R + k * GH * H + 2 * H * H, H, 1, H, H, &prh[k]), ON_OK);
        for (size_t g = 0; g < GH; g++) {
            const int rb_in_r = c->kind == ON_RNN_GRU && c->lbr && g >= 2 * H;
            wbias[k * GH + g] = Wb[k * GH + g] + (rb_in_r ? 0.0f : Rb[k * GH + g]);
            if (rb_in_r) rbias[k * GH + g] = Rb[k * GH + g];
        }
        d.r[k] = pr[k], d.r_h[k] = prh[k];
        d.r_bias[k] = c->kind == ON_RNN_GRU && c->lbr ? rbias + k * GH : NULL;
    }
    d.w = pw, d.w_bias = wbias;
    float *y = malloc(T * D * B * H * sizeof(float)), *yh = malloc(D * B * H * sizeof(float));
    float *yc = malloc(D * B * H * sizeof(float));
    for (size_t i = 0; i < T * D * B * H; i++) y[i] = NAN; /* every element must be written */
    CHECK_EQ_INT(on_rnn_f32(&d, xl, lens, h0l, c0l, y, yh, c->kind == ON_RNN_LSTM ? yc : NULL, nthreads), ON_OK);
    char what[200];
    snprintf(what, sizeof what, "%s kind=%d T=%zu B=%zu I=%zu H=%zu D=%zu rev=%d layout=%d lbr=%d peep=%d lens=%d init=%d "
             "clip=%d if=%d threads=%d", on_isa_name(on_active_isa()), c->kind, T, B, I, H, D, c->reverse, c->layout,
             c->lbr, c->peep, c->with_lens, c->with_init, c->clip, c->input_forget, nthreads);
    float *got = malloc(T * D * B * H * sizeof(float));
    for (size_t t = 0; t < T; t++)
        for (size_t k = 0; k < D; k++)
            for (size_t b = 0; b < B; b++)
                memcpy(got + ((t * D + k) * B + b) * H, y + t * d.y.t + k * d.y.d + b * d.y.b, H * sizeof(float));
    CHECK_ALLCLOSE(got, y_want, T * D * B * H, 1e-4f, 1e-5f, what);
    for (size_t k = 0; k < D; k++)
        for (size_t b = 0; b < B; b++) {
            CHECK_ALLCLOSE(yh + k * d.st.d + b * d.st.b, yh_want + (k * B + b) * H, H, 1e-4f, 1e-5f, what);
            if (c->kind == ON_RNN_LSTM)
                CHECK_ALLCLOSE(yc + k * d.st.d + b * d.st.b, yc_want + (k * B + b) * H, H, 1e-4f, 1e-5f, what);
        }
    on_packed_b_free(pw);
    for (size_t k = 0; k < D; k++) on_packed_b_free(pr[k]), on_packed_b_free(prh[k]);
    free(x), free(W), free(R), free(Wb), free(Rb), free(P), free(h0), free(c0), free(lens), free(y_want);
    free(yh_want), free(yc_want), free(xl), free(h0l), free(c0l), free(wbias), free(rbias), free(y), free(yh);
    free(yc), free(got);
}

static void test_layers_match_naive_on_every_isa(void) {
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (on_set_isa((on_isa_t)isa) != 0) continue;
        for (int kind = 0; kind < 3; kind++) {
            for (int v = 0; v < 12; v++) {
                rnn_case c = {.kind = (on_rnn_kind)kind, .T = 5, .B = 3, .I = 6, .H = (v % 3 == 0) ? 17 : 16,
                              .D = (v % 4 == 3) ? 2 : 1, .reverse = (v % 4) == 1, .layout = (v / 2) % 2,
                              .lbr = v % 2, .peep = (v % 3) == 1, .with_lens = v >= 6, .with_init = (v % 5) != 0,
                              .clip = v == 5 || v == 10, .input_forget = v == 7};
                run_case(&c, 1);
                run_case(&c, 2);
            }
        }
        /* a long, wide bidirectional LSTM (the CRNN shape): the per-step GEMMs split across threads */
        rnn_case big = {.kind = ON_RNN_LSTM, .T = 9, .B = 2, .I = 40, .H = 96, .D = 2};
        run_case(&big, 2);
        big.D = 1;
        run_case(&big, 2);
    }
    on_set_isa(on_kernels_for_isa(ON_ISA_AVX512) ? ON_ISA_AVX512
               : on_kernels_for_isa(ON_ISA_AVX2)  ? ON_ISA_AVX2
               : on_kernels_for_isa(ON_ISA_NEON)  ? ON_ISA_NEON
                                                  : ON_ISA_SCALAR);
}

static void test_bad_arguments_are_refused(void) {
    on_rnn_desc d = {.kind = ON_RNN_LSTM, .seq = 2, .batch = 1, .input = 2, .hidden = 2, .ndir = 1};
    float x[4] = {0};
    CHECK_EQ_INT(on_rnn_f32(&d, x, NULL, NULL, NULL, NULL, NULL, NULL, 1), ON_ERR_ARG); /* no weights */
    CHECK_EQ_INT(on_rnn_f32(NULL, x, NULL, NULL, NULL, NULL, NULL, NULL, 1), ON_ERR_ARG);
    float w[16] = {0};
    on_packed_b *pw = NULL, *pr = NULL;
    on_packed_b_create(w, 2, 1, 2, 8, &pw);
    on_packed_b_create(w, 2, 1, 2, 8, &pr);
    d.w = pw, d.r[0] = pr, d.x_ts = 1;
    d.cell[0] = (on_rnn_cell){.hidden = 2};
    CHECK_EQ_INT(on_rnn_f32(&d, x, NULL, NULL, NULL, NULL, NULL, NULL, 1), ON_OK);
    int32_t lens[1] = {3}; /* longer than the sequence */
    CHECK_EQ_INT(on_rnn_f32(&d, x, lens, NULL, NULL, NULL, NULL, NULL, 1), ON_ERR_ARG);
    d.hidden = 3; /* R does not match */
    CHECK_EQ_INT(on_rnn_f32(&d, x, NULL, NULL, NULL, NULL, NULL, NULL, 1), ON_ERR_SHAPE);
    on_packed_b_free(pw), on_packed_b_free(pr);
}

int main(void) {
    RUN(test_cells_of_every_isa_match_reference);
    RUN(test_layers_match_naive_on_every_isa);
    RUN(test_bad_arguments_are_refused);
    return on_test_summary();
}
