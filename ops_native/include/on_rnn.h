/* on_rnn.h - recurrent layers (ONNX LSTM, GRU, RNN) for float32, the whole sequence in one call.
 *
 * Speed design: the input projection X W^T (+ both biases) of every time step and both directions is ONE
 * packed GEMM before the loop; each step is one packed GEMM H_{t-1} R^T (two for a GRU whose reset gate
 * is applied before the product) plus one fused cell kernel per batch row (gate activations + state
 * update), dispatched through the kernel table (kernels.h: on_kernel_table.rnn). The two directions of a
 * bidirectional layer run on two threads when nthreads >= 2.
 *
 * Gate order is ONNX's: LSTM i, o, f, c; GRU z, r, h; RNN one gate. Weights are packed by the caller
 * (on_packed_b, on_gemm.h): W of all directions as one [input, D * G * H] matrix (direction-major
 * columns), R per direction as [H, G * H] (a GRU with linear_before_reset = 0: [H, 2H] for z, r and a
 * separate [H, H] for h).
 */
#ifndef ON_RNN_H
#define ON_RNN_H

#include <stddef.h>
#include <stdint.h>

#include "on_common.h"
#include "on_gemm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The activation functions the ONNX recurrent ops allow (their alpha / beta as in the ONNX op of the
 * same name; the caller fills the defaults). */
typedef enum {
    ON_RNN_ACT_SIGMOID = 0,
    ON_RNN_ACT_TANH,
    ON_RNN_ACT_RELU,
    ON_RNN_ACT_HARD_SIGMOID,     /* max(0, min(1, alpha x + beta)) */
    ON_RNN_ACT_LEAKY_RELU,       /* x >= 0 ? x : alpha x */
    ON_RNN_ACT_THRESHOLDED_RELU, /* x > alpha ? x : 0 */
    ON_RNN_ACT_SCALED_TANH,      /* alpha tanh(beta x) */
    ON_RNN_ACT_ELU,              /* x >= 0 ? x : alpha (exp(x) - 1) */
    ON_RNN_ACT_SOFTSIGN,         /* x / (1 + |x|) */
    ON_RNN_ACT_SOFTPLUS,         /* log(1 + exp(x)) */
    ON_RNN_ACT_AFFINE,           /* alpha x + beta */
    ON_RNN_ACT_COUNT
} on_rnn_act_kind;

typedef struct {
    on_rnn_act_kind kind;
    float alpha, beta;
} on_rnn_act;

/* Reference activation: the definition every fast path is tested against. */
static inline float on_rnn_act_ref(on_rnn_act a, float x) {
    switch (a.kind) {
    case ON_RNN_ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case ON_RNN_ACT_TANH: return tanhf(x);
    case ON_RNN_ACT_RELU: return x > 0.0f ? x : 0.0f;
    case ON_RNN_ACT_HARD_SIGMOID: return fmaxf(0.0f, fminf(1.0f, a.alpha * x + a.beta));
    case ON_RNN_ACT_LEAKY_RELU: return x >= 0.0f ? x : a.alpha * x;
    case ON_RNN_ACT_THRESHOLDED_RELU: return x > a.alpha ? x : 0.0f;
    case ON_RNN_ACT_SCALED_TANH: return a.alpha * tanhf(a.beta * x);
    case ON_RNN_ACT_ELU: return x >= 0.0f ? x : a.alpha * (expf(x) - 1.0f);
    case ON_RNN_ACT_SOFTSIGN: return x / (1.0f + fabsf(x));
    case ON_RNN_ACT_SOFTPLUS: return x > 20.0f ? x : log1pf(expf(x));
    case ON_RNN_ACT_AFFINE: return a.alpha * x + a.beta;
    default: return x;
    }
}

typedef enum { ON_RNN_LSTM = 0, ON_RNN_GRU, ON_RNN_SIMPLE } on_rnn_kind;

/* One direction's cell: what the per-row cell kernels need. */
typedef struct {
    size_t hidden;              /* H */
    on_rnn_act f, g, h;         /* LSTM f, g, h; GRU f, g; RNN f */
    float clip;                 /* > 0: gate pre-activations clamped to [-clip, clip]; 0: none */
    const float *peephole;      /* LSTM P of this direction, [3H] (i, o, f), or NULL */
    int input_forget;           /* LSTM: f = 1 - i */
    int linear_before_reset;    /* GRU: h~ = g(x_h + r (H R_h^T + Rb_h)) instead of g(x_h + (r H) R_h^T + Rb_h) */
} on_rnn_cell;

/* Per-row cell kernels. xg: the input projection of the row (G * H gates, biases included); hg: the
 * recurrent product H_{t-1} R^T of the row. Each returns 1 when it handled the request, 0 to let the
 * caller use the reference (an activation the fast path does not have). */
typedef struct {
    const char *name;
    /* LSTM: c (in/out) and h (out) of one row; h may alias nothing else */
    int (*lstm_row)(const on_rnn_cell *p, const float *xg, const float *hg, float *c, float *h);
    /* GRU: h = (1 - z) h~ + z h_prev. hg holds z, r, h products; with linear_before_reset = 0 its h part
     * is already (r h_prev) R_h^T. h may alias h_prev. */
    int (*gru_row)(const on_rnn_cell *p, const float *xg, const float *hg, const float *h_prev, float *h);
    /* GRU with linear_before_reset = 0, before the h product: rh = f(x_r + hg_r) * h_prev */
    int (*gru_reset_row)(const on_rnn_cell *p, const float *xg, const float *hg, const float *h_prev, float *rh);
    /* RNN: h = f(xg + hg) */
    int (*rnn_row)(const on_rnn_cell *p, const float *xg, const float *hg, float *h);
} on_rnn_kernels;

extern const on_rnn_kernels on_rnn_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const on_rnn_kernels on_rnn_kernels_avx2;
extern const on_rnn_kernels on_rnn_kernels_avx512;
#endif
#if defined(__aarch64__)
extern const on_rnn_kernels on_rnn_kernels_neon;
#endif

/* Strides (in floats) of a [time, direction, batch, hidden]-indexed tensor, so one description covers
 * ONNX layout 0 (Y [T, D, B, H]) and 1 (Y [B, T, D, H]); states use the time-free part. */
typedef struct {
    size_t t, d, b;
} on_rnn_strides;

typedef struct {
    on_rnn_kind kind;
    size_t seq, batch, input, hidden, ndir;
    int reverse;                        /* ndir == 1: the one direction runs backwards */
    on_rnn_cell cell[2];                /* per direction */
    const on_packed_b *w;               /* [input, ndir * G * H] */
    const float *w_bias;                /* [ndir * G * H] added to the input projection, or NULL */
    const on_packed_b *r[2];            /* per direction: [H, G * H] (GRU lbr = 0: [H, 2H]) */
    const on_packed_b *r_h[2];          /* GRU lbr = 0: [H, H]; NULL otherwise */
    const float *r_bias[2];             /* bias of the product with r ([G * H]: a GRU's Rb_h with lbr = 1), or NULL */
    size_t x_ts, x_bs;                  /* X row strides (in rows of `input` floats) of time and batch */
    on_rnn_strides y, st;               /* Y and the states (initial_h, initial_c, Y_h, Y_c; t unused) */
} on_rnn_desc;

/* Run the layer. x: the input rows; seq_lens: [batch] or NULL (all `seq`); h0 / c0: initial states or
 * NULL (zeros); y, y_h, y_c: outputs or NULL (not wanted). Steps past a row's length give zeros in y; y_h
 * / y_c hold the state after its last valid step (zeros for a row of length 0, as ONNX Runtime). */
on_status on_rnn_f32(const on_rnn_desc *d, const float *x, const int32_t *seq_lens, const float *h0,
                     const float *c0, float *y, float *y_h, float *y_c, int nthreads);

#ifdef __cplusplus
}
#endif
#endif /* ON_RNN_H */
