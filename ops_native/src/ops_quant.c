/* ops_quant.c - 8-bit quantisation (on_quant.h): the definitions, the portable dot-product tile (the scalar
 * table) and the drivers that split the work over threads and pick the active ISA's tile (kernels.h). */
#include <math.h>
#include <string.h>

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

static void range__scalar(const float *x, size_t n, float *lo_out, float *hi_out) {
    float lo = 0.0f, hi = 0.0f;   /* the range always holds 0, so that 0 is exact (padding, ReLU zeros) */
    for (size_t i = 0; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    *lo_out = lo;
    *hi_out = hi;
}

static void quantize_u8__scalar(const float *x, size_t n, float scale, int32_t zp, uint8_t *y) {
    for (size_t i = 0; i < n; i++) y[i] = (uint8_t)quantize_one(x[i], scale, zp, 0, 255);
}

static void quantize_centered_s16__scalar(const float *x, size_t n, float scale, int32_t zp, int16_t *y) {
    for (size_t i = 0; i < n; i++) y[i] = (int16_t)(quantize_one(x[i], scale, zp, 0, 255) - zp);
}

/* The range over chunks of the tensor, one task a chunk (at most ON_Q_RANGE_TASKS), merged after. */
#define ON_Q_RANGE_TASKS 64

typedef struct {
    const float *x;
    size_t n, chunk;
    float lo[ON_Q_RANGE_TASKS], hi[ON_Q_RANGE_TASKS];
    const on_quant_table *tab;
} range_ctx;

static void range_work(void *vctx, size_t begin, size_t end) {
    range_ctx *r = vctx;
    for (size_t t = begin; t < end; t++) {
        size_t i0 = t * r->chunk, i1 = i0 + r->chunk < r->n ? i0 + r->chunk : r->n;
        r->tab->range(r->x + i0, i1 - i0, &r->lo[t], &r->hi[t]);
    }
}

void on_dynamic_qparams_f32(const float *x, size_t n, float *scale, int32_t *zp, int nthreads) {
    range_ctx r = {x, n, 1u << 16, {0}, {0}, on_kernels_active()->quant};
    float lo = 0.0f, hi = 0.0f;
    if (r.chunk * ON_Q_RANGE_TASKS < n) r.chunk = (n + ON_Q_RANGE_TASKS - 1) / ON_Q_RANGE_TASKS;
    size_t tasks = (n + r.chunk - 1) / r.chunk;
    on_parallel_for(tasks, range_work, &r, nthreads);
    for (size_t t = 0; t < tasks; t++) {   /* min / max are exact: the split does not change the result */
        lo = r.lo[t] < lo ? r.lo[t] : lo;
        hi = r.hi[t] > hi ? r.hi[t] : hi;
    }
    float s = hi == lo ? 1.0f : (hi - lo) / 255.0f;
    float z = 0.0f - lo / s;
    z = z < 0.0f ? 0.0f : (z > 255.0f ? 255.0f : z);
    *scale = s;
    *zp = (int32_t)rintf(z);
}

typedef struct {
    const float *x;
    void *y;
    size_t n;
    float scale;
    int32_t zp;
    int centered;
    const on_quant_table *tab;
} centered_ctx;

static void centered_work(void *vctx, size_t begin, size_t end) {
    centered_ctx *q = vctx;
    for (size_t t = begin; t < end; t++) {
        size_t i0 = t * ON_Q_CHUNK, i1 = i0 + ON_Q_CHUNK < q->n ? i0 + ON_Q_CHUNK : q->n;
        if (q->centered)
            q->tab->quantize_centered_s16(q->x + i0, i1 - i0, q->scale, q->zp, (int16_t *)q->y + i0);
        else
            q->tab->quantize_u8(q->x + i0, i1 - i0, q->scale, q->zp, (uint8_t *)q->y + i0);
    }
}

static on_status quantize_pt_u8(const float *x, void *y, size_t n, float scale, int32_t zp, int centered,
                                int nthreads) {
    if (!(scale != 0.0f) || zp < 0 || zp > 255) return ON_ERR_ARG;
    if (n == 0) return ON_OK;
    if (!x || !y) return ON_ERR_ARG;
    centered_ctx q = {x, y, n, scale, zp, centered, on_kernels_active()->quant};
    size_t tasks = (n + ON_Q_CHUNK - 1) / ON_Q_CHUNK;
    on_parallel_for(tasks, centered_work, &q, n < (1u << 16) ? 1 : nthreads);
    return ON_OK;
}

on_status on_quantize_centered_s16(const float *x, int16_t *y, size_t n, float scale, int32_t zp, int nthreads) {
    return quantize_pt_u8(x, y, n, scale, zp, 1, nthreads);
}

on_status on_quantize_u8_pt(const float *x, uint8_t *y, size_t n, float scale, int32_t zp, int nthreads) {
    return quantize_pt_u8(x, y, n, scale, zp, 0, nthreads);
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

static void tile_packed__scalar(size_t mr, size_t kk, const int16_t *a, size_t lda, const int16_t *panel,
                                int32_t *acc) {
    for (size_t r = 0; r < mr; r++)
        for (size_t j = 0; j < ON_QGEMM_NR; j++) {
            int32_t sum = 0;
            for (size_t k = 0; k < kk; k++)
                sum += (int32_t)a[r * lda + k] * (int32_t)panel[(k / 2) * 2 * ON_QGEMM_NR + j * 2 + (k & 1)];
            acc[r * ON_QGEMM_NR + j] = sum;
        }
}

static void tile_packed_s8__scalar(size_t mr, size_t kk, const int16_t *a, size_t lda, const int8_t *panel,
                                   int32_t *acc) {
    for (size_t r = 0; r < mr; r++)
        for (size_t j = 0; j < ON_QGEMM_NR; j++) {
            int32_t sum = 0;
            for (size_t k = 0; k < kk; k++)
                sum += (int32_t)a[r * lda + k] * (int32_t)panel[(k / 2) * 2 * ON_QGEMM_NR + j * 2 + (k & 1)];
            acc[r * ON_QGEMM_NR + j] = sum;
        }
}

const on_quant_table on_quant_table_scalar = {"scalar", dot_1x4__scalar, tile_packed__scalar, tile_packed_s8__scalar,
                                              range__scalar,
                                              quantize_u8__scalar, quantize_centered_s16__scalar};

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

/* ---- packed integer GEMM ------------------------------------------------------------------------- */

static size_t kpairs(size_t kk) { return (kk + 1) / 2; }
static size_t npanels(size_t n) { return (n + ON_QGEMM_NR - 1) / ON_QGEMM_NR; }

size_t on_qgemm_packed_size(size_t kk, size_t n) { return npanels(n) * kpairs(kk) * 2 * ON_QGEMM_NR; }

typedef struct {
    const void *b;
    on_qtype t;
    size_t kk, n, sk, sj, zp_stride;
    const int32_t *zp;
    int16_t *bp;
} pack_ctx;

/* Row-major B (sj == 1): two rows of 16 bytes make one panel row. One loop per type and zero-point kind,
 * with no branch inside, so the compiler vectorises it (this packs every ConvInteger input at run time). */
#define PACK_ROWS(T, ZJ)                                                                                       \
    for (size_t pp = 0; pp < kp; pp++) {                                                                       \
        const T *r0 = (const T *)p->b + (2 * pp) * p->sk + j0;                                                 \
        const T *r1 = 2 * pp + 1 < p->kk ? r0 + p->sk : NULL;                                                  \
        int16_t *d = dst + pp * 2 * ON_QGEMM_NR;                                                               \
        if (r1)                                                                                                \
            for (size_t jj = 0; jj < ON_QGEMM_NR; jj++) {                                                      \
                d[jj * 2] = (int16_t)((int32_t)r0[jj] - (ZJ));                                                 \
                d[jj * 2 + 1] = (int16_t)((int32_t)r1[jj] - (ZJ));                                             \
            }                                                                                                  \
        else                                                                                                   \
            for (size_t jj = 0; jj < ON_QGEMM_NR; jj++) {                                                      \
                d[jj * 2] = (int16_t)((int32_t)r0[jj] - (ZJ));                                                 \
                d[jj * 2 + 1] = 0;                                                                             \
            }                                                                                                  \
    }

static void pack_work(void *vctx, size_t begin, size_t end) {
    const pack_ctx *p = vctx;
    size_t kp = kpairs(p->kk);
    for (size_t q = begin; q < end; q++) {
        int16_t *dst = p->bp + q * kp * 2 * ON_QGEMM_NR;
        size_t j0 = q * ON_QGEMM_NR;
        if (p->sj == 1 && j0 + ON_QGEMM_NR <= p->n) {   /* a full panel of row-major B */
            const int32_t *zp = p->zp + j0 * p->zp_stride;
            int32_t z = p->zp[0];
            if (p->t == ON_Q_U8 && !p->zp_stride) {
                PACK_ROWS(uint8_t, z)
            } else if (p->t == ON_Q_U8) {
                PACK_ROWS(uint8_t, zp[jj])
            } else if (!p->zp_stride) {
                PACK_ROWS(int8_t, z)
            } else {
                PACK_ROWS(int8_t, zp[jj])
            }
            continue;
        }
        for (size_t jj = 0; jj < ON_QGEMM_NR; jj++) {   /* any strides, a partial panel */
            size_t j = j0 + jj;
            if (j >= p->n) {
                for (size_t k = 0; k < 2 * kp; k++) dst[(k / 2) * 2 * ON_QGEMM_NR + jj * 2 + (k & 1)] = 0;
                continue;
            }
            int32_t z = p->zp[j * p->zp_stride];
            for (size_t k = 0; k < 2 * kp; k++) {
                int32_t v = 0;
                if (k < p->kk) {
                    size_t at = k * p->sk + j * p->sj;
                    v = (p->t == ON_Q_U8 ? (int32_t)((const uint8_t *)p->b)[at] : (int32_t)((const int8_t *)p->b)[at]) - z;
                }
                dst[(k / 2) * 2 * ON_QGEMM_NR + jj * 2 + (k & 1)] = (int16_t)v;
            }
        }
    }
}

on_status on_qgemm_pack_b_q8(const void *b, on_qtype bt, size_t kk, size_t n, size_t sk, size_t sj, const int32_t *zp,
                             size_t zp_stride, int16_t *bp, int nthreads) {
    if ((bt != ON_Q_U8 && bt != ON_Q_S8) || !zp || kk > ON_QGEMM_MAX_K) return ON_ERR_ARG;
    if (kk * n == 0) return ON_OK;
    if (!b || !bp) return ON_ERR_ARG;
    pack_ctx p = {b, bt, kk, n, sk, sj, zp_stride, zp, bp};
    on_parallel_for(npanels(n), pack_work, &p, kk * n < (1u << 16) ? 1 : nthreads);
    return ON_OK;
}

typedef struct {
    size_t m, n, kk, lda, ldc, scale_stride, mblocks;
    const int16_t *a, *bp;
    const int8_t *bp8;
    int32_t *c_i32;
    float *out;
    const float *scale, *bias;
    int accumulate;
    const on_quant_table *tab;
} qgemm_packed_ctx;

/* Rows of A one task covers: a block of A (MB x K int16) stays in L2 while the task's panel streams once. */
#define ON_QGEMM_MB (ON_QGEMM_MR * 16)

/* One task: one panel of B against one block of rows of A, tile by tile, with the epilogue per tile. */
static void qgemm_packed_work(void *vctx, size_t begin, size_t end) {
    const qgemm_packed_ctx *g = vctx;
    size_t kp = kpairs(g->kk);
    int32_t acc[ON_QGEMM_MR * ON_QGEMM_NR];
    for (size_t t = begin; t < end; t++) {
        size_t q = t / g->mblocks, mb = t % g->mblocks;
        size_t j0 = q * ON_QGEMM_NR, nj = g->n - j0 < ON_QGEMM_NR ? g->n - j0 : ON_QGEMM_NR;
        size_t panel_at = q * kp * 2 * ON_QGEMM_NR;
        size_t i_end = (mb + 1) * ON_QGEMM_MB < g->m ? (mb + 1) * ON_QGEMM_MB : g->m;
        for (size_t i0 = mb * ON_QGEMM_MB; i0 < i_end; i0 += ON_QGEMM_MR) {
            size_t mr = i_end - i0 < ON_QGEMM_MR ? i_end - i0 : ON_QGEMM_MR;
            if (g->bp8)
                g->tab->tile_packed_s8(mr, g->kk, g->a + i0 * g->lda, g->lda, g->bp8 + panel_at, acc);
            else
                g->tab->tile_packed(mr, g->kk, g->a + i0 * g->lda, g->lda, g->bp + panel_at, acc);
            for (size_t r = 0; r < mr; r++) {
                const int32_t *ar = acc + r * ON_QGEMM_NR;
                size_t at = (i0 + r) * g->ldc + j0;
                if (!g->out) {
                    for (size_t j = 0; j < nj; j++) g->c_i32[at + j] = ar[j];
                    continue;
                }
                float *o = g->out + at;
                const float *sc = g->scale + j0 * g->scale_stride;
                for (size_t j = 0; j < nj; j++) {
                    float v = (float)ar[j] * sc[j * g->scale_stride];
                    if (g->accumulate) v = o[j] + v;
                    if (g->bias) v += g->bias[j0 + j];
                    o[j] = v;
                }
            }
        }
    }
}

on_status on_qgemm_narrow_s8(const int16_t *bp, size_t count, int8_t *out) {
    if (count && (!bp || !out)) return ON_ERR_ARG;
    for (size_t i = 0; i < count; i++) {
        if (bp[i] < -128 || bp[i] > 127) return ON_ERR_ARG;
        out[i] = (int8_t)bp[i];
    }
    return ON_OK;
}

on_status on_qgemm_s16_packed(size_t m, size_t n, size_t kk, const int16_t *a, size_t lda, const int16_t *bp,
                              const int8_t *bp8, int32_t *c_i32, float *out_f32, size_t ldc, const float *scale,
                              size_t scale_stride, const float *bias, int accumulate, int nthreads) {
    if (kk > ON_QGEMM_MAX_K || lda < kk || ldc < n) return ON_ERR_ARG;
    if (m * n == 0) return ON_OK;
    if (!a || (!bp && !bp8) || (!c_i32 && !out_f32) || (out_f32 && !scale)) return ON_ERR_ARG;
    size_t mblocks = (m + ON_QGEMM_MB - 1) / ON_QGEMM_MB;
    qgemm_packed_ctx g = {.m = m, .n = n, .kk = kk, .lda = lda, .ldc = ldc, .scale_stride = scale_stride,
                          .mblocks = mblocks, .a = a, .bp = bp, .bp8 = bp ? NULL : bp8, .c_i32 = c_i32, .out = out_f32,
                          .scale = scale, .bias = bias, .accumulate = accumulate, .tab = on_kernels_active()->quant};
    /* below ~1M multiply-adds (tens of microseconds) the split costs more than it saves */
    on_parallel_for(npanels(n) * mblocks, qgemm_packed_work, &g,
                    (double)m * (double)n * (double)kk < 1e6 ? 1 : nthreads);
    return ON_OK;
}

/* ---- ConvInteger's im2col, packed ------------------------------------------------------------------ */
/* Two steps: the im2col in bytes (row (ch, ky, kx) of oh * ow pixels: contiguous copies of input rows at
 * stride 1, the zero point where the window leaves the image), then the row-major pack, which takes the zero
 * point off. The byte matrix is 1/2 of the packed size and is written at memcpy speed. */

typedef struct {
    const uint8_t *x;
    size_t c, h, w;
    size_t g[10];
    uint8_t zp;
    uint8_t *cols;
} im2col_ctx;

static void im2col_work(void *vctx, size_t begin, size_t end) {
    const im2col_ctx *p = vctx;
    size_t kh = p->g[0], kw = p->g[1], sh = p->g[2], sw = p->g[3], dh = p->g[4], dw = p->g[5];
    size_t pt = p->g[6], pl = p->g[7], oh = p->g[8], ow = p->g[9];
    for (size_t row = begin; row < end; row++) {   /* row = (ch * kh + ky) * kw + kx */
        size_t ch = row / (kh * kw), ky = row / kw % kh, kx = row % kw;
        uint8_t *dst = p->cols + row * oh * ow;
        /* the outputs whose input column is inside the image: ox in [lo, hi) */
        ptrdiff_t off = (ptrdiff_t)(kx * dw) - (ptrdiff_t)pl;
        size_t lo = off >= 0 ? 0 : ((size_t)(-off) + sw - 1) / sw;
        size_t hi = off >= (ptrdiff_t)p->w ? 0 : ((size_t)((ptrdiff_t)p->w - off) + sw - 1) / sw;
        hi = hi < ow ? hi : ow;
        lo = lo < hi ? lo : hi;
        for (size_t oy = 0; oy < oh; oy++, dst += ow) {
            ptrdiff_t iy = (ptrdiff_t)(oy * sh + ky * dh) - (ptrdiff_t)pt;
            if (iy < 0 || iy >= (ptrdiff_t)p->h) {
                memset(dst, p->zp, ow);
                continue;
            }
            const uint8_t *src = p->x + (ch * p->h + (size_t)iy) * p->w;
            memset(dst, p->zp, lo);
            if (sw == 1)
                memcpy(dst + lo, src + (ptrdiff_t)lo + off, hi - lo);
            else
                for (size_t ox = lo; ox < hi; ox++) dst[ox] = src[(ptrdiff_t)(ox * sw) + off];
            memset(dst + hi, p->zp, ow - hi);
        }
    }
}

on_status on_qconv_pack_im2col_q8(const void *x, on_qtype xt, size_t c, size_t h, size_t w, const size_t geom[10],
                                  int32_t zp, uint8_t *cols, int16_t *bp, int nthreads) {
    if ((xt != ON_Q_U8 && xt != ON_Q_S8) || !geom || zp < q_lo(xt) || zp > q_hi(xt)) return ON_ERR_ARG;
    for (int i = 0; i < 6; i++)
        if (geom[i] == 0) return ON_ERR_ARG;
    size_t kk = c * geom[0] * geom[1], npix = geom[8] * geom[9];
    if (kk > ON_QGEMM_MAX_K) return ON_ERR_ARG;
    if (kk * npix == 0) return ON_OK;
    if (!x || !bp || !cols) return ON_ERR_ARG;
    /* bytes: an int8 value and its zero point keep their bit patterns, so the copy is type-blind */
    im2col_ctx p = {x, c, h, w, {0}, (uint8_t)zp, cols};
    for (int i = 0; i < 10; i++) p.g[i] = geom[i];
    int threads = kk * npix < (1u << 16) ? 1 : nthreads;
    on_parallel_for(kk, im2col_work, &p, threads);
    return on_qgemm_pack_b_q8(cols, xt, kk, npix, npix, 1, &zp, 0, bp, threads);
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
