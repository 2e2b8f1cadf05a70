/* rnn_internal.h - one element of each recurrent cell in plain C: the reference cell kernels (ops_rnn.c)
 * are loops over these, and the SIMD cells (rnn_cell_simd.h) use them for the tail of a row, so every
 * path computes one definition. Gate order and formulas: on_rnn.h. */
#ifndef ON_RNN_INTERNAL_H
#define ON_RNN_INTERNAL_H

#include "on_rnn.h"

#define ON_SLOT_RNN 7 /* on_temp_alloc slot of on_rnn_f32's workspace (4-7: the non-GEMM ops) */

static inline float on_rnn_clip(const on_rnn_cell *p, float x) {
    if (p->clip > 0.0f) x = x < -p->clip ? -p->clip : (x > p->clip ? p->clip : x);
    return x;
}

/* LSTM element j: c[j] updated in place, h[j] written. */
static inline void on_lstm_elem_ref(const on_rnn_cell *p, size_t j, const float *xg, const float *hg, float *c,
                                    float *h) {
    const size_t H = p->hidden;
    float gi = xg[j] + hg[j], go = xg[H + j] + hg[H + j];
    float gf = xg[2 * H + j] + hg[2 * H + j], gc = xg[3 * H + j] + hg[3 * H + j];
    const float cp = c[j];
    if (p->peephole) {
        gi += p->peephole[j] * cp;
        gf += p->peephole[2 * H + j] * cp;
    }
    const float i = on_rnn_act_ref(p->f, on_rnn_clip(p, gi));
    const float f = p->input_forget ? 1.0f - i : on_rnn_act_ref(p->f, on_rnn_clip(p, gf));
    const float cn = f * cp + i * on_rnn_act_ref(p->g, on_rnn_clip(p, gc));
    if (p->peephole) go += p->peephole[H + j] * cn;
    const float o = on_rnn_act_ref(p->f, on_rnn_clip(p, go));
    c[j] = cn;
    h[j] = o * on_rnn_act_ref(p->h, cn);
}

/* GRU element j (h may alias h_prev). */
static inline void on_gru_elem_ref(const on_rnn_cell *p, size_t j, const float *xg, const float *hg,
                                   const float *h_prev, float *h) {
    const size_t H = p->hidden;
    const float z = on_rnn_act_ref(p->f, on_rnn_clip(p, xg[j] + hg[j]));
    float gh;
    if (p->linear_before_reset) {
        const float r = on_rnn_act_ref(p->f, on_rnn_clip(p, xg[H + j] + hg[H + j]));
        gh = xg[2 * H + j] + r * hg[2 * H + j];
    } else {
        gh = xg[2 * H + j] + hg[2 * H + j];
    }
    const float ht = on_rnn_act_ref(p->g, on_rnn_clip(p, gh));
    h[j] = (1.0f - z) * ht + z * h_prev[j];
}

/* GRU reset gate times the previous state (linear_before_reset = 0), element j. */
static inline void on_gru_reset_elem_ref(const on_rnn_cell *p, size_t j, const float *xg, const float *hg,
                                         const float *h_prev, float *rh) {
    const size_t H = p->hidden;
    rh[j] = on_rnn_act_ref(p->f, on_rnn_clip(p, xg[H + j] + hg[H + j])) * h_prev[j];
}

static inline void on_rnn_elem_ref(const on_rnn_cell *p, size_t j, const float *xg, const float *hg, float *h) {
    h[j] = on_rnn_act_ref(p->f, on_rnn_clip(p, xg[j] + hg[j]));
}

#endif
