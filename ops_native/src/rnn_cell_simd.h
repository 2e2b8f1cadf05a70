/* rnn_cell_simd.h - the fused recurrent cell kernels written once over a small vector vocabulary; each ISA
 * file (x86/rnn_cell_avx2.c, x86/rnn_cell_avx512.c, arm/rnn_cell_neon.c) defines the vocabulary and
 * includes this file, then lists the four row kernels in its on_rnn_kernels table.
 *
 * The vocabulary: type V with V_LANES floats; v_load, v_store, v_set1, v_add, v_sub, v_mul,
 * v_fmadd(a, b, c) = a * b + c, v_min, v_max, v_abs, v_div, v_exp, v_sigmoid, v_tanh, and v_select(m, a, b)
 * for a lane mask m computed by v_gt(a, b) / v_ge(a, b) (type VM).
 * Rows are processed V_LANES at a time; the tail goes through the reference element (rnn_internal.h).
 * Every activation but Softplus has a vector form; a cell with Softplus returns 0 (reference).
 */
#ifndef ON_RNN_CELL_SIMD_H
#define ON_RNN_CELL_SIMD_H

#include "rnn_internal.h"

static inline int rnn_act_vectorised(on_rnn_act a) { return a.kind != ON_RNN_ACT_SOFTPLUS; }

static inline V v_act(const on_rnn_act *a, V x) {
    switch (a->kind) {
    case ON_RNN_ACT_SIGMOID: return v_sigmoid(x);
    case ON_RNN_ACT_TANH: return v_tanh(x);
    case ON_RNN_ACT_RELU: return v_max(x, v_set1(0.0f));
    case ON_RNN_ACT_HARD_SIGMOID:
        return v_min(v_max(v_fmadd(x, v_set1(a->alpha), v_set1(a->beta)), v_set1(0.0f)), v_set1(1.0f));
    case ON_RNN_ACT_LEAKY_RELU: return v_select(v_ge(x, v_set1(0.0f)), x, v_mul(x, v_set1(a->alpha)));
    case ON_RNN_ACT_THRESHOLDED_RELU: return v_select(v_gt(x, v_set1(a->alpha)), x, v_set1(0.0f));
    case ON_RNN_ACT_SCALED_TANH: return v_mul(v_set1(a->alpha), v_tanh(v_mul(x, v_set1(a->beta))));
    case ON_RNN_ACT_ELU:
        return v_select(v_ge(x, v_set1(0.0f)), x, v_mul(v_set1(a->alpha), v_sub(v_exp(x), v_set1(1.0f))));
    case ON_RNN_ACT_SOFTSIGN: return v_div(x, v_add(v_set1(1.0f), v_abs(x)));
    case ON_RNN_ACT_AFFINE: return v_fmadd(x, v_set1(a->alpha), v_set1(a->beta));
    default: return x;
    }
}

static inline V v_clip(const on_rnn_cell *p, V x) {
    if (p->clip > 0.0f) x = v_min(v_max(x, v_set1(-p->clip)), v_set1(p->clip));
    return x;
}

static int lstm_row_simd(const on_rnn_cell *p, const float *xg, const float *hg, float *c, float *h) {
    if (!rnn_act_vectorised(p->f) || !rnn_act_vectorised(p->g) || !rnn_act_vectorised(p->h)) return 0;
    const size_t H = p->hidden;
    const float *P = p->peephole;
    size_t j = 0;
    for (; j + V_LANES <= H; j += V_LANES) {
        V gi = v_add(v_load(xg + j), v_load(hg + j));
        V go = v_add(v_load(xg + H + j), v_load(hg + H + j));
        V gf = v_add(v_load(xg + 2 * H + j), v_load(hg + 2 * H + j));
        V gc = v_add(v_load(xg + 3 * H + j), v_load(hg + 3 * H + j));
        const V cp = v_load(c + j);
        if (P) {
            gi = v_fmadd(v_load(P + j), cp, gi);
            gf = v_fmadd(v_load(P + 2 * H + j), cp, gf);
        }
        const V i = v_act(&p->f, v_clip(p, gi));
        const V f = p->input_forget ? v_sub(v_set1(1.0f), i) : v_act(&p->f, v_clip(p, gf));
        const V cn = v_fmadd(f, cp, v_mul(i, v_act(&p->g, v_clip(p, gc))));
        if (P) go = v_fmadd(v_load(P + H + j), cn, go);
        const V o = v_act(&p->f, v_clip(p, go));
        v_store(c + j, cn);
        v_store(h + j, v_mul(o, v_act(&p->h, cn)));
    }
    for (; j < H; j++) on_lstm_elem_ref(p, j, xg, hg, c, h);
    return 1;
}

static int gru_row_simd(const on_rnn_cell *p, const float *xg, const float *hg, const float *h_prev, float *h) {
    if (!rnn_act_vectorised(p->f) || !rnn_act_vectorised(p->g)) return 0;
    const size_t H = p->hidden;
    size_t j = 0;
    for (; j + V_LANES <= H; j += V_LANES) {
        const V z = v_act(&p->f, v_clip(p, v_add(v_load(xg + j), v_load(hg + j))));
        V gh;
        if (p->linear_before_reset) {
            const V r = v_act(&p->f, v_clip(p, v_add(v_load(xg + H + j), v_load(hg + H + j))));
            gh = v_fmadd(r, v_load(hg + 2 * H + j), v_load(xg + 2 * H + j));
        } else {
            gh = v_add(v_load(xg + 2 * H + j), v_load(hg + 2 * H + j));
        }
        const V ht = v_act(&p->g, v_clip(p, gh));
        const V hp = v_load(h_prev + j);
        /* (1 - z) h~ + z h_prev = h~ + z (h_prev - h~) */
        v_store(h + j, v_fmadd(z, v_sub(hp, ht), ht));
    }
    for (; j < H; j++) on_gru_elem_ref(p, j, xg, hg, h_prev, h);
    return 1;
}

static int gru_reset_row_simd(const on_rnn_cell *p, const float *xg, const float *hg, const float *h_prev,
                              float *rh) {
    if (!rnn_act_vectorised(p->f)) return 0;
    const size_t H = p->hidden;
    size_t j = 0;
    for (; j + V_LANES <= H; j += V_LANES) {
        const V r = v_act(&p->f, v_clip(p, v_add(v_load(xg + H + j), v_load(hg + H + j))));
        v_store(rh + j, v_mul(r, v_load(h_prev + j)));
    }
    for (; j < H; j++) on_gru_reset_elem_ref(p, j, xg, hg, h_prev, rh);
    return 1;
}

static int rnn_row_simd(const on_rnn_cell *p, const float *xg, const float *hg, float *h) {
    if (!rnn_act_vectorised(p->f)) return 0;
    const size_t H = p->hidden;
    size_t j = 0;
    for (; j + V_LANES <= H; j += V_LANES)
        v_store(h + j, v_act(&p->f, v_clip(p, v_add(v_load(xg + j), v_load(hg + j)))));
    for (; j < H; j++) on_rnn_elem_ref(p, j, xg, hg, h);
    return 1;
}

#endif
