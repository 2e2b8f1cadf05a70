/* ops_rnn.c - ONNX LSTM / GRU / RNN: the reference cell kernels and the sequence driver (on_rnn.h).
 *
 * The driver: one packed GEMM projects the input rows of every step and direction (biases in its
 * epilogue); then, per direction and step, one packed GEMM H_{t-1} R^T over the batch and one cell
 * kernel call per active row (kernel table: on_kernels_active()->rnn, falling back to the reference
 * when a fast path declines an activation). Rows past their sequence length are skipped, so their state
 * stays the one of their last valid step; a reverse direction walks each row back from its own length.
 */
#include <string.h>

#include "kernels.h"
#include "rnn_internal.h"

/* ---- reference cells (the scalar table) ----------------------------------------------------------- */
static int lstm_row_ref(const on_rnn_cell *p, const float *xg, const float *hg, float *c, float *h) {
    for (size_t j = 0; j < p->hidden; j++) on_lstm_elem_ref(p, j, xg, hg, c, h);
    return 1;
}

static int gru_row_ref(const on_rnn_cell *p, const float *xg, const float *hg, const float *h_prev, float *h) {
    for (size_t j = 0; j < p->hidden; j++) on_gru_elem_ref(p, j, xg, hg, h_prev, h);
    return 1;
}

static int gru_reset_row_ref(const on_rnn_cell *p, const float *xg, const float *hg, const float *h_prev,
                             float *rh) {
    for (size_t j = 0; j < p->hidden; j++) on_gru_reset_elem_ref(p, j, xg, hg, h_prev, rh);
    return 1;
}

static int rnn_row_ref(const on_rnn_cell *p, const float *xg, const float *hg, float *h) {
    for (size_t j = 0; j < p->hidden; j++) on_rnn_elem_ref(p, j, xg, hg, h);
    return 1;
}

const on_rnn_kernels on_rnn_kernels_scalar = {
    .name = "scalar",
    .lstm_row = lstm_row_ref,
    .gru_row = gru_row_ref,
    .gru_reset_row = gru_reset_row_ref,
    .rnn_row = rnn_row_ref,
};

/* ---- driver --------------------------------------------------------------------------------------- */
static size_t gates_of(on_rnn_kind k) { return k == ON_RNN_LSTM ? 4 : (k == ON_RNN_GRU ? 3 : 1); }

typedef struct {
    const on_rnn_desc *d;
    const float *xg; /* input projection: row t * x_ts + b * x_bs, ndir * G * H columns */
    const int32_t *lens;
    const float *h0, *c0;
    float *y, *y_h, *y_c;
    float *work[2]; /* per direction: h [B, H], c [B, H], hg [B, G * H], rh [B, H] */
    int nthreads;   /* threads of each direction's GEMMs */
    on_status st[2];
} rnn_job;

static on_gemm_epilogue bias_epilogue(const float *bias) {
    on_gemm_epilogue ep = on_gemm_epilogue_default();
    if (bias) {
        ep.bias_kind = ON_BIAS_COL;
        ep.bias = bias;
    }
    return ep;
}

static on_status run_direction(const rnn_job *j, size_t dir) {
    const on_rnn_desc *d = j->d;
    const on_rnn_cell *cell = &d->cell[dir];
    const size_t B = d->batch, H = d->hidden, G = gates_of(d->kind), GH = G * H, ldxg = d->ndir * GH;
    const int reverse = d->ndir == 2 ? dir == 1 : d->reverse;
    const int lbr0 = d->kind == ON_RNN_GRU && !cell->linear_before_reset;
    const on_rnn_kernels *fast = on_kernels_active()->rnn, *ref = &on_rnn_kernels_scalar;
    float *h = j->work[dir], *c = h + B * H, *hg = c + B * H, *rh = hg + B * GH;
    const on_gemm_epilogue ep_r = bias_epilogue(d->r_bias[dir]), ep_none = on_gemm_epilogue_default();

    size_t maxlen = 0;
    for (size_t b = 0; b < B; b++) {
        const size_t len = j->lens ? (size_t)j->lens[b] : d->seq;
        if (len > maxlen) maxlen = len;
        const size_t so = dir * d->st.d + b * d->st.b;
        if (j->h0) memcpy(h + b * H, j->h0 + so, H * sizeof(float));
        else memset(h + b * H, 0, H * sizeof(float));
        if (j->c0) memcpy(c + b * H, j->c0 + so, H * sizeof(float));
        else memset(c + b * H, 0, H * sizeof(float));
    }
    memset(rh, 0, B * H * sizeof(float));

    for (size_t s = 0; s < maxlen; s++) {
        on_status st = on_gemm_packed(0, B, lbr0 ? 2 * H : GH, H, h, H, d->r[dir], &ep_r, hg, GH, j->nthreads);
        if (st != ON_OK) return st;
        if (lbr0) {
            for (size_t b = 0; b < B; b++) {
                const size_t len = j->lens ? (size_t)j->lens[b] : d->seq;
                if (s >= len) continue;
                const size_t t = reverse ? len - 1 - s : s;
                const float *xr = j->xg + (t * d->x_ts + b * d->x_bs) * ldxg + dir * GH;
                if (!fast->gru_reset_row(cell, xr, hg + b * GH, h + b * H, rh + b * H))
                    ref->gru_reset_row(cell, xr, hg + b * GH, h + b * H, rh + b * H);
            }
            st = on_gemm_packed(0, B, H, H, rh, H, d->r_h[dir], &ep_none, hg + 2 * H, GH, j->nthreads);
            if (st != ON_OK) return st;
        }
        for (size_t b = 0; b < B; b++) {
            const size_t len = j->lens ? (size_t)j->lens[b] : d->seq;
            if (s >= len) continue;
            const size_t t = reverse ? len - 1 - s : s;
            const float *xr = j->xg + (t * d->x_ts + b * d->x_bs) * ldxg + dir * GH;
            const float *hr = hg + b * GH;
            float *hb = h + b * H;
            switch (d->kind) {
            case ON_RNN_LSTM:
                if (!fast->lstm_row(cell, xr, hr, c + b * H, hb)) ref->lstm_row(cell, xr, hr, c + b * H, hb);
                break;
            case ON_RNN_GRU:
                if (!fast->gru_row(cell, xr, hr, hb, hb)) ref->gru_row(cell, xr, hr, hb, hb);
                break;
            default:
                if (!fast->rnn_row(cell, xr, hr, hb)) ref->rnn_row(cell, xr, hr, hb);
                break;
            }
            if (j->y) memcpy(j->y + t * d->y.t + dir * d->y.d + b * d->y.b, hb, H * sizeof(float));
        }
    }
    for (size_t b = 0; b < B; b++) {
        const size_t len = j->lens ? (size_t)j->lens[b] : d->seq;
        if (j->y)
            for (size_t t = len; t < d->seq; t++) memset(j->y + t * d->y.t + dir * d->y.d + b * d->y.b, 0, H * sizeof(float));
        /* an empty sequence has zero states, not the initial ones (as ONNX Runtime) */
        const size_t so = dir * d->st.d + b * d->st.b;
        if (j->y_h) {
            if (len) memcpy(j->y_h + so, h + b * H, H * sizeof(float));
            else memset(j->y_h + so, 0, H * sizeof(float));
        }
        if (j->y_c) {
            if (len) memcpy(j->y_c + so, c + b * H, H * sizeof(float));
            else memset(j->y_c + so, 0, H * sizeof(float));
        }
    }
    return ON_OK;
}

static void direction_range(void *ctx, size_t begin, size_t end) {
    rnn_job *j = (rnn_job *)ctx;
    for (size_t dir = begin; dir < end; dir++) j->st[dir] = run_direction(j, dir);
}

static on_status check_desc(const on_rnn_desc *d, const int32_t *seq_lens) {
    if (!d || d->kind > ON_RNN_SIMPLE || (d->ndir != 1 && d->ndir != 2) || !d->w) return ON_ERR_ARG;
    if (d->seq == 0 || d->batch == 0 || d->input == 0 || d->hidden == 0) return ON_ERR_ARG;
    const size_t G = gates_of(d->kind), H = d->hidden;
    if (d->w->K != d->input || d->w->N != d->ndir * G * H) return ON_ERR_SHAPE;
    for (size_t dir = 0; dir < d->ndir; dir++) {
        const on_rnn_cell *c = &d->cell[dir];
        if (c->hidden != H) return ON_ERR_SHAPE;
        if (c->f.kind >= ON_RNN_ACT_COUNT || c->g.kind >= ON_RNN_ACT_COUNT || c->h.kind >= ON_RNN_ACT_COUNT)
            return ON_ERR_ARG;
        const int lbr0 = d->kind == ON_RNN_GRU && !c->linear_before_reset;
        if (!d->r[dir] || d->r[dir]->K != H || d->r[dir]->N != (lbr0 ? 2 * H : G * H)) return ON_ERR_SHAPE;
        if (lbr0 && (!d->r_h[dir] || d->r_h[dir]->K != H || d->r_h[dir]->N != H)) return ON_ERR_SHAPE;
    }
    if (d->x_ts * (d->seq - 1) + d->x_bs * (d->batch - 1) >= d->seq * d->batch) return ON_ERR_SHAPE;
    if (seq_lens)
        for (size_t b = 0; b < d->batch; b++)
            if (seq_lens[b] < 0 || (size_t)seq_lens[b] > d->seq) return ON_ERR_ARG;
    return ON_OK;
}

on_status on_rnn_f32(const on_rnn_desc *d, const float *x, const int32_t *seq_lens, const float *h0,
                     const float *c0, float *y, float *y_h, float *y_c, int nthreads) {
    on_status st = check_desc(d, seq_lens);
    if (st != ON_OK) return st;
    if (!x) return ON_ERR_ARG;
    if (nthreads < 1) nthreads = 1;
    const size_t G = gates_of(d->kind), H = d->hidden, B = d->batch, rows = d->seq * d->batch;
    const size_t ldxg = d->ndir * G * H, per_dir = B * H * 3 + B * G * H;
    size_t xg_floats, total, bytes;
    if (!on_mul_size(rows, ldxg, &xg_floats) || !on_mul_size(per_dir, d->ndir, &total) ||
        xg_floats > SIZE_MAX - total || !on_mul_size(xg_floats + total, sizeof(float), &bytes))
        return ON_ERR_NOMEM;
    int owned;
    float *ws = (float *)on_temp_alloc(ON_SLOT_RNN, bytes, &owned);
    if (!ws) return ON_ERR_NOMEM;

    const on_gemm_epilogue ep_w = bias_epilogue(d->w_bias);
    st = on_gemm_packed(0, rows, ldxg, d->input, x, d->input, d->w, &ep_w, ws, ldxg, nthreads);
    if (st == ON_OK) {
        rnn_job j = {.d = d, .xg = ws, .lens = seq_lens, .h0 = h0, .c0 = c0, .y = y, .y_h = y_h, .y_c = y_c,
                     .nthreads = nthreads, .st = {ON_OK, ON_OK}};
        for (size_t dir = 0; dir < d->ndir; dir++) j.work[dir] = ws + xg_floats + dir * per_dir;
        if (d->ndir == 2 && nthreads >= 2) {
            /* the two directions are independent: one thread each, no per-step hand-off */
            j.nthreads = nthreads / 2;
            on_parallel_for(2, direction_range, &j, 2);
        } else {
            direction_range(&j, 0, d->ndir);
        }
        st = j.st[0] != ON_OK ? j.st[0] : j.st[1];
    }
    on_temp_free(ws, owned);
    return st;
}
