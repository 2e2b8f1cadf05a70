/* ops_quant.c - 8-bit quantisation (on_quant.h): the definitions, the portable dot-product tile (the scalar
 * table) and the drivers that split the work over threads and pick the active ISA's tile (kernels.h). */
#include <math.h>

#include "kernels.h"
#include "on_quant.h"

/* ---- (de)quantize ------------------------------------------------------------------------------- */

static int32_t q_lo(on_qtype t) { return t == ON_Q_U8 ? 0 : -128; }
static int32_t q_hi(on_qtype t) { return t == ON_Q_U8 ? 255 : 127; }

/* x / scale, not x * (1 / scale): the division is what ONNX specifies and what ONNX Runtime computes, and
 * the reciprocal's rounding would move values that sit on a rounding boundary. */
static inline int32_t quantize_one(float x, float scale, int32_t zp, int32_t lo, int32_t hi) {
    float v = rintf(x / scale) + (float)zp;   /* rintf: round half to even in the default FP mode */
    v = v < (float)lo ? (float)lo : v;
    v = v > (float)hi ? (float)hi : v;
    return (int32_t)v;
}

/* Values one task of a per-tensor op covers. */
#define ON_Q_CHUNK 4096

/* One (de)quantisation over rows of `inner` values, row r in channel r % c; t is the integer side's type. */
typedef struct {
    const void *x;
    void *y;
    on_qtype t;
    size_t c, inner;
    const float *scale;
    const int32_t *zp;
} qrows_ctx;

static void quantize_rows(void *vctx, size_t begin, size_t end) {
    qrows_ctx *q = vctx;
    int32_t lo = q_lo(q->t), hi = q_hi(q->t);
    for (size_t r = begin; r < end; r++) {   /* r: one (outer, channel) row of `inner` values */
        size_t ch = r % q->c;
        float s = q->scale[ch];
        int32_t z = q->zp[ch];
        const float *x = (const float *)q->x + r * q->inner;
        if (q->t == ON_Q_U8) {
            uint8_t *y = (uint8_t *)q->y + r * q->inner;
            for (size_t i = 0; i < q->inner; i++) y[i] = (uint8_t)quantize_one(x[i], s, z, lo, hi);
        } else {
            int8_t *y = (int8_t *)q->y + r * q->inner;
            for (size_t i = 0; i < q->inner; i++) y[i] = (int8_t)quantize_one(x[i], s, z, lo, hi);
        }
    }
}

static int rows_threads(size_t rows, size_t inner, int nthreads) {
    return rows * inner < (1u << 16) ? 1 : nthreads;   /* below ~64k values a split costs more than it saves */
}

on_status on_quantize_f32(const float *x, void *y, on_qtype yt, size_t outer, size_t c, size_t inner,
                          const float *scale, const int32_t *zp, int nthreads) {
    if (c == 0 || !scale || !zp || (yt != ON_Q_U8 && yt != ON_Q_S8)) return ON_ERR_ARG;
    if (outer * c * inner == 0) return ON_OK;
    if (!x || !y) return ON_ERR_ARG;
    for (size_t ch = 0; ch < c; ch++)
        if (!(scale[ch] != 0.0f) || zp[ch] < q_lo(yt) || zp[ch] > q_hi(yt)) return ON_ERR_ARG;
    size_t n = outer * c * inner;
    if (c == 1) {   /* per tensor: split the flat tensor into chunks, whatever its rows */
        size_t rows = (n + ON_Q_CHUNK - 1) / ON_Q_CHUNK;
        qrows_ctx q = {x, y, yt, 1, ON_Q_CHUNK, scale, zp};
        size_t full = n / ON_Q_CHUNK;
        on_parallel_for(full, quantize_rows, &q, rows_threads(full, ON_Q_CHUNK, nthreads));
        if (rows > full) {   /* the tail */
            size_t at = full * ON_Q_CHUNK;
            qrows_ctx t = {x + at, (char *)y + at, yt, 1, n - at, scale, zp};
            quantize_rows(&t, 0, 1);
        }
        return ON_OK;
    }
    qrows_ctx q = {x, y, yt, c, inner, scale, zp};
    on_parallel_for(outer * c, quantize_rows, &q, rows_threads(outer * c, inner, nthreads));
    return ON_OK;
}

static void dequantize_rows(void *vctx, size_t begin, size_t end) {
    qrows_ctx *q = vctx;
    for (size_t r = begin; r < end; r++) {
        size_t ch = r % q->c;
        float s = q->scale[ch];
        int32_t z = q->zp[ch];
        float *y = (float *)q->y + r * q->inner;
        size_t at = r * q->inner;
        if (q->t == ON_Q_U8) {
            const uint8_t *x = (const uint8_t *)q->x + at;
            for (size_t i = 0; i < q->inner; i++) y[i] = (float)((int32_t)x[i] - z) * s;
        } else if (q->t == ON_Q_S8) {
            const int8_t *x = (const int8_t *)q->x + at;
            for (size_t i = 0; i < q->inner; i++) y[i] = (float)((int32_t)x[i] - z) * s;
        } else {   /* int32: the difference in 64 bits, as it can leave int32's range */
            const int32_t *x = (const int32_t *)q->x + at;
            for (size_t i = 0; i < q->inner; i++) y[i] = (float)((int64_t)x[i] - z) * s;
        }
    }
}

on_status on_dequantize_f32(const void *x, on_qtype xt, float *y, size_t outer, size_t c, size_t inner,
                            const float *scale, const int32_t *zp, int nthreads) {
    if (c == 0 || !scale || !zp || (xt != ON_Q_U8 && xt != ON_Q_S8 && xt != ON_Q_S32)) return ON_ERR_ARG;
    if (outer * c * inner == 0) return ON_OK;
    if (!x || !y) return ON_ERR_ARG;
    qrows_ctx q = {x, y, xt, c, inner, scale, zp};
    on_parallel_for(outer * c, dequantize_rows, &q, rows_threads(outer * c, inner, nthreads));
    return ON_OK;
}

void on_dynamic_qparams_f32(const float *x, size_t n, float *scale, int32_t *zp) {
    float lo = 0.0f, hi = 0.0f;   /* the range always holds 0, so that 0 is exact (padding, ReLU zeros) */
    for (size_t i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    float s = hi == lo ? 1.0f : (hi - lo) / 255.0f;
    float z = 0.0f - lo / s;
    z = z < 0.0f ? 0.0f : (z > 255.0f ? 255.0f : z);
    *scale = s;
    *zp = (int32_t)rintf(z);
}

typedef struct {
    const float *x;
    int16_t *y;
    size_t n;
    float scale;
    int32_t zp;
} centered_ctx;

static void centered_work(void *vctx, size_t begin, size_t end) {
    centered_ctx *q = vctx;
    for (size_t t = begin; t < end; t++) {
        size_t i0 = t * ON_Q_CHUNK, i1 = i0 + ON_Q_CHUNK < q->n ? i0 + ON_Q_CHUNK : q->n;
        for (size_t i = i0; i < i1; i++) q->y[i] = (int16_t)(quantize_one(q->x[i], q->scale, q->zp, 0, 255) - q->zp);
    }
}

on_status on_quantize_centered_s16(const float *x, int16_t *y, size_t n, float scale, int32_t zp, int nthreads) {
    if (!(scale != 0.0f) || zp < 0 || zp > 255) return ON_ERR_ARG;
    if (n == 0) return ON_OK;
    if (!x || !y) return ON_ERR_ARG;
    centered_ctx q = {x, y, n, scale, zp};
    size_t tasks = (n + ON_Q_CHUNK - 1) / ON_Q_CHUNK;
    on_parallel_for(tasks, centered_work, &q, n < (1u << 16) ? 1 : nthreads);
    return ON_OK;
}

on_status on_q8_to_s16(const void *x, on_qtype xt, size_t rows, size_t cols, size_t ldx, const int32_t *zp,
                       size_t zp_stride, int16_t *y, size_t ldy) {
    if ((xt != ON_Q_U8 && xt != ON_Q_S8) || ldx < cols || ldy < cols || !zp) return ON_ERR_ARG;
    if (rows == 0) return ON_OK;
    if (!x || !y) return ON_ERR_ARG;
    for (size_t r = 0; r < rows; r++) {
        int32_t z = zp[r * zp_stride];
        int16_t *yr = y + r * ldy;
        if (xt == ON_Q_U8) {
            const uint8_t *xr = (const uint8_t *)x + r * ldx;
            for (size_t k = 0; k < cols; k++) yr[k] = (int16_t)((int32_t)xr[k] - z);
        } else {
            const int8_t *xr = (const int8_t *)x + r * ldx;
            for (size_t k = 0; k < cols; k++) yr[k] = (int16_t)((int32_t)xr[k] - z);
        }
        for (size_t k = cols; k < ldy; k++) yr[k] = 0;
    }
    return ON_OK;
}

/* ---- integer GEMM -------------------------------------------------------------------------------- */

static int32_t dot_s16(const int16_t *a, const int16_t *b, size_t kk) {
    int32_t s = 0;
    for (size_t k = 0; k < kk; k++) s += (int32_t)a[k] * (int32_t)b[k];
    return s;
}

on_status on_qgemm_s16_ref(size_t m, size_t n, size_t kk, const int16_t *a, size_t lda, const int16_t *bt,
                           size_t ldb, int32_t *c) {
    if (kk > ON_QGEMM_MAX_K || lda < kk || ldb < kk) return ON_ERR_ARG;
    if (m * n == 0) return ON_OK;
    if (!a || !bt || !c) return ON_ERR_ARG;
    for (size_t i = 0; i < m; i++)
        for (size_t j = 0; j < n; j++) c[i * n + j] = dot_s16(a + i * lda, bt + j * ldb, kk);
    return ON_OK;
}

static void dot_1x4__scalar(const int16_t *a, const int16_t *bt, size_t ldb, size_t kk, int32_t acc[4]) {
    for (int j = 0; j < 4; j++) acc[j] = dot_s16(a, bt + (size_t)j * ldb, kk);
}

const on_quant_table on_quant_table_scalar = {"scalar", dot_1x4__scalar};

typedef struct {
    size_t m, n, kk, lda, ldb, ldc, scale_stride;
    const int16_t *a, *bt;
    int32_t *c_i32;
    float *out;
    const float *scale, *bias;
    int accumulate;
    const on_quant_table *tab;
} qgemm_ctx;

static void qgemm_store(const qgemm_ctx *g, size_t i, size_t j, int32_t acc) {
    size_t at = i * g->ldc + j;
    if (!g->out) {
        g->c_i32[at] = acc;
        return;
    }
    float v = (float)acc * g->scale[j * g->scale_stride];
    if (g->accumulate) v = g->out[at] + v;
    if (g->bias) v += g->bias[j];
    g->out[at] = v;
}

/* One task: 4 columns of B (4 x K int16: L1-sized for K up to ~1000) against every row of A, so B is
 * read from memory once and A, the smaller operand in these models, streams from cache. */
static void qgemm_work(void *vctx, size_t begin, size_t end) {
    const qgemm_ctx *g = vctx;
    size_t k16 = g->kk & ~(size_t)15;
    for (size_t t = begin; t < end; t++) {
        size_t j0 = t * 4, nj = g->n - j0 < 4 ? g->n - j0 : 4;
        const int16_t *b = g->bt + j0 * g->ldb;
        for (size_t i = 0; i < g->m; i++) {
            const int16_t *a = g->a + i * g->lda;
            int32_t acc[4] = {0, 0, 0, 0};
            if (nj == 4) {
                if (k16) g->tab->dot_1x4(a, b, g->ldb, k16, acc);
                for (size_t j = 0; j < 4; j++) acc[j] += dot_s16(a + k16, b + j * g->ldb + k16, g->kk - k16);
            } else {
                for (size_t j = 0; j < nj; j++) acc[j] = dot_s16(a, b + j * g->ldb, g->kk);
            }
            for (size_t j = 0; j < nj; j++) qgemm_store(g, i, j0 + j, acc[j]);
        }
    }
}

on_status on_qgemm_s16(size_t m, size_t n, size_t kk, const int16_t *a, size_t lda, const int16_t *bt, size_t ldb,
                       int32_t *c_i32, float *out_f32, size_t ldc, const float *scale, size_t scale_stride,
                       const float *bias, int accumulate, int nthreads) {
    if (kk > ON_QGEMM_MAX_K || lda < kk || ldb < kk || ldc < n) return ON_ERR_ARG;
    if (m * n == 0) return ON_OK;
    if (!a || !bt || (!c_i32 && !out_f32) || (out_f32 && !scale)) return ON_ERR_ARG;
    qgemm_ctx g = {m, n, kk, lda, ldb, ldc, scale_stride, a, bt, c_i32, out_f32, scale, bias, accumulate,
                   on_kernels_active()->quant};
    size_t tasks = (n + 3) / 4;
    /* below ~1M multiply-adds (tens of microseconds) the split costs more than it saves */
    on_parallel_for(tasks, qgemm_work, &g, (double)m * (double)n * (double)kk < 1e6 ? 1 : nthreads);
    return ON_OK;
}

/* ---- LSTM gates ---------------------------------------------------------------------------------- */

static inline float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

static inline float clipf_(float x, float clip) {
    if (clip <= 0.0f) return x;
    return x > clip ? clip : (x < -clip ? -clip : x);
}

on_status on_lstm_gates_f32(float *g, const float *bias, const float *peep, float *c, float *h, size_t ldh,
                            size_t batch, size_t hidden, float clip, int input_forget) {
    if (batch * hidden == 0) return ON_OK;
    if (!g || !c || !h || ldh < hidden) return ON_ERR_ARG;
    size_t H = hidden;
    for (size_t b = 0; b < batch; b++) {
        float *gb = g + b * 4 * H, *cb = c + b * H, *hb = h + b * ldh;
        for (size_t j = 0; j < H; j++) {
            float gi = gb[j], go = gb[H + j], gf = gb[2 * H + j], gc = gb[3 * H + j];
            if (bias) {
                gi += bias[j];
                go += bias[H + j];
                gf += bias[2 * H + j];
                gc += bias[3 * H + j];
            }
            gi = clipf_(gi, clip);
            go = clipf_(go, clip);
            gf = clipf_(gf, clip);
            gc = clipf_(gc, clip);
            float cp = cb[j];
            float i = sigmoidf_(peep ? gi + peep[j] * cp : gi);
            float f = input_forget ? 1.0f - i : sigmoidf_(peep ? gf + peep[2 * H + j] * cp : gf);
            float cn = f * cp + i * tanhf(gc);
            float o = sigmoidf_(peep ? go + peep[H + j] * cn : go);
            cb[j] = cn;
            hb[j] = o * tanhf(cn);
        }
    }
    return ON_OK;
}
