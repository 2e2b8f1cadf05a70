/* ops_elementwise.c - reference elementwise kernels with numpy broadcasting.
 *
 * A broadcast is described by the output shape and one element-stride vector per operand (0 on
 * broadcast axes). Dimensions are collapsed first so that the common cases (same shape, per-channel
 * scale, bias over the last axis) become a loop over long rows handled by one row kernel; rows are
 * cut in chunks so a single huge row is still split across threads.
 */
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "on_ops.h"

#define ROW_CHUNK 16384 /* elements per parallel work item: ~64 KiB per operand */

/* ---- broadcast iteration ------------------------------------------------------------------------- */
typedef struct {
    int ndim;
    int nops;
    int64_t shape[ON_MAX_DIMS];
    int64_t st[3][ON_MAX_DIMS];
    int64_t rows;    /* product of all but the last dim */
    int64_t n;       /* last dim */
    int64_t chunks;  /* chunks per row */
} bcast_t;

/* Collapse unit dims and contiguous runs. Returns 0 on a bad argument. */
static int bcast_init(bcast_t *bc, int nops, int ndim, const int64_t *shape, const int64_t *const *strides) {
    if (ndim < 0 || ndim > ON_MAX_DIMS || nops < 1 || nops > 3) return 0;
    bc->nops = nops;
    int d = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return 0;
        if (shape[i] == 0) { /* empty tensor */
            bc->ndim = 1;
            bc->shape[0] = 0;
            for (int k = 0; k < nops; k++) bc->st[k][0] = 0;
            bc->rows = 1;
            bc->n = 0;
            bc->chunks = 0;
            return 1;
        }
        if (shape[i] == 1) continue;
        bc->shape[d] = shape[i];
        for (int k = 0; k < nops; k++) bc->st[k][d] = strides[k][i];
        d++;
    }
    if (d == 0) {
        bc->shape[0] = 1;
        for (int k = 0; k < nops; k++) bc->st[k][0] = 1;
        d = 1;
    }
    /* merge dim i into i + 1 from the inside out */
    int m = d - 1;
    int64_t sh[ON_MAX_DIMS], st[3][ON_MAX_DIMS];
    sh[m] = bc->shape[d - 1];
    for (int k = 0; k < nops; k++) st[k][m] = bc->st[k][d - 1];
    for (int i = d - 2; i >= 0; i--) {
        int ok = 1;
        for (int k = 0; k < nops; k++)
            if (bc->st[k][i] != st[k][m] * sh[m]) ok = 0;
        if (ok) {
            sh[m] *= bc->shape[i];
        } else {
            m--;
            sh[m] = bc->shape[i];
            for (int k = 0; k < nops; k++) st[k][m] = bc->st[k][i];
        }
    }
    bc->ndim = d - m;
    for (int i = 0; i < bc->ndim; i++) {
        bc->shape[i] = sh[m + i];
        for (int k = 0; k < nops; k++) bc->st[k][i] = st[k][m + i];
    }
    bc->n = bc->shape[bc->ndim - 1];
    bc->rows = 1;
    for (int i = 0; i < bc->ndim - 1; i++) bc->rows *= bc->shape[i];
    bc->chunks = (bc->n + ROW_CHUNK - 1) / ROW_CHUNK;
    return 1;
}

/* Element offsets of each operand at the start of row `row`. */
static void bcast_row_offsets(const bcast_t *bc, int64_t row, int64_t *off) {
    for (int k = 0; k < bc->nops; k++) off[k] = 0;
    for (int i = bc->ndim - 2; i >= 0; i--) {
        int64_t idx = row % bc->shape[i];
        row /= bc->shape[i];
        for (int k = 0; k < bc->nops; k++) off[k] += idx * bc->st[k][i];
    }
}

/* ---- reference row kernels ------------------------------------------------------------------------ */
#define BIN_LOOP(expr)                                                    \
    for (size_t i = 0; i < n; i++) {                                      \
        const float x = a[(int64_t)i * sa], y = b[(int64_t)i * sb];       \
        out[i] = (expr);                                                  \
    }

static int binary_row_ref(on_binary_op op, const float *a, int64_t sa, const float *b, int64_t sb, float *out,
                          size_t n) {
    switch (op) {
    case ON_BIN_ADD: BIN_LOOP(x + y) break;
    case ON_BIN_SUB: BIN_LOOP(x - y) break;
    case ON_BIN_MUL: BIN_LOOP(x * y) break;
    case ON_BIN_DIV: BIN_LOOP(x / y) break;
    case ON_BIN_POW: BIN_LOOP(powf(x, y)) break;
    case ON_BIN_MIN: BIN_LOOP((isnan(x) || x < y) ? x : y) break;
    case ON_BIN_MAX: BIN_LOOP((isnan(x) || x > y) ? x : y) break;
    default: return 0;
    }
    return 1;
}

static float gelu_tanh_ref(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

static int unary_ref(on_unary_op op, const float *x, float *y, size_t n, float alpha, float beta) {
    size_t i;
    switch (op) {
    case ON_UN_RELU: for (i = 0; i < n; i++) y[i] = x[i] > 0.0f ? x[i] : 0.0f; break;
    case ON_UN_LEAKY_RELU: for (i = 0; i < n; i++) y[i] = x[i] >= 0.0f ? x[i] : alpha * x[i]; break;
    case ON_UN_CLIP:
        for (i = 0; i < n; i++) {
            float v = x[i] < alpha ? alpha : x[i];
            y[i] = v > beta ? beta : v;
        }
        break;
    case ON_UN_SIGMOID: for (i = 0; i < n; i++) y[i] = 1.0f / (1.0f + expf(-x[i])); break;
    case ON_UN_HARD_SIGMOID:
        for (i = 0; i < n; i++) y[i] = fmaxf(0.0f, fminf(1.0f, alpha * x[i] + beta));
        break;
    case ON_UN_HARD_SWISH:
        for (i = 0; i < n; i++) y[i] = x[i] * fmaxf(0.0f, fminf(1.0f, x[i] * (1.0f / 6.0f) + 0.5f));
        break;
    case ON_UN_TANH: for (i = 0; i < n; i++) y[i] = tanhf(x[i]); break;
    case ON_UN_GELU: for (i = 0; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f)); break;
    case ON_UN_GELU_TANH: for (i = 0; i < n; i++) y[i] = gelu_tanh_ref(x[i]); break;
    case ON_UN_EXP: for (i = 0; i < n; i++) y[i] = expf(x[i]); break;
    case ON_UN_LOG: for (i = 0; i < n; i++) y[i] = logf(x[i]); break;
    case ON_UN_SQRT: for (i = 0; i < n; i++) y[i] = sqrtf(x[i]); break;
    case ON_UN_NEG: for (i = 0; i < n; i++) y[i] = -x[i]; break;
    case ON_UN_ABS: for (i = 0; i < n; i++) y[i] = fabsf(x[i]); break;
    case ON_UN_ERF: for (i = 0; i < n; i++) y[i] = erff(x[i]); break;
    case ON_UN_RECIPROCAL: for (i = 0; i < n; i++) y[i] = 1.0f / x[i]; break;
    case ON_UN_FLOOR: for (i = 0; i < n; i++) y[i] = floorf(x[i]); break;
    case ON_UN_CEIL: for (i = 0; i < n; i++) y[i] = ceilf(x[i]); break;
    case ON_UN_ELU: for (i = 0; i < n; i++) y[i] = x[i] >= 0.0f ? x[i] : alpha * (expf(x[i]) - 1.0f); break;
    case ON_UN_SOFTPLUS:
        for (i = 0; i < n; i++) y[i] = x[i] > 20.0f ? x[i] : log1pf(expf(x[i]));
        break;
    case ON_UN_AFFINE: for (i = 0; i < n; i++) y[i] = alpha * x[i] + beta; break;
    default: return 0;
    }
    return 1;
}

/* defined in ops_norm.c / ops_pool.c */
int on_softmax_row_ref(const float *x, float *y, size_t cols, int log);
int on_layernorm_row_ref(const float *x, const float *scale, const float *bias, float *y, size_t cols, float eps);
int on_pool2d_plane_ref(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oh, int64_t ow,
                        int64_t pb, int64_t pr, const on_pool2d_params *p);
int on_row_reduce_ref(int is_max, const float *x, size_t n, float *out);
int on_pool2d_c8_row_ref(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oy, int64_t ow,
                         int64_t pb, int64_t pr, const on_pool2d_params *p);

int on_affine_c8_rows_ref(const float *x, float *y, size_t pixels, const float *a, const float *b) {
    for (size_t i = 0; i < pixels; i++)
        for (size_t l = 0; l < ON_C0; l++) y[i * ON_C0 + l] = x[i * ON_C0 + l] * a[l] + b[l];
    return 1;
}

const on_ops_table on_ops_table_scalar = {
    "scalar", binary_row_ref, unary_ref, on_softmax_row_ref, on_layernorm_row_ref, on_pool2d_plane_ref,
    on_row_reduce_ref, on_pool2d_c8_row_ref, on_affine_c8_rows_ref,
};

/* ---- binary ----------------------------------------------------------------------------------------- */
typedef struct {
    bcast_t bc;
    int op;
    const void *a, *b, *c;
    void *out;
    const on_ops_table *tab;
} ew_ctx;

static void binary_work(void *vctx, size_t begin, size_t end) {
    const ew_ctx *c = vctx;
    const bcast_t *bc = &c->bc;
    for (size_t it = begin; it < end; it++) {
        int64_t row = (int64_t)it / bc->chunks, ch = (int64_t)it % bc->chunks;
        int64_t off[3];
        bcast_row_offsets(bc, row, off);
        int64_t lo = ch * ROW_CHUNK, hi = lo + ROW_CHUNK < bc->n ? lo + ROW_CHUNK : bc->n;
        int64_t sa = bc->st[0][bc->ndim - 1], sb = bc->st[1][bc->ndim - 1];
        const float *a = (const float *)c->a + off[0] + lo * sa;
        const float *b = (const float *)c->b + off[1] + lo * sb;
        float *o = (float *)c->out + row * bc->n + lo;
        size_t n = (size_t)(hi - lo);
        int fast = (sa == 0 || sa == 1) && (sb == 0 || sb == 1);
        if (!(fast && c->tab->binary_row((on_binary_op)c->op, a, sa, b, sb, o, n)))
            binary_row_ref((on_binary_op)c->op, a, sa, b, sb, o, n);
    }
}

on_status on_binary_f32(on_binary_op op, int ndim, const int64_t *shape, const float *a,
                        const int64_t *a_strides, const float *b, const int64_t *b_strides, float *out,
                        int nthreads) {
    if ((int)op < 0 || op >= ON_BIN_COUNT || !a || !b || !out || (ndim > 0 && (!shape || !a_strides || !b_strides)))
        return ON_ERR_ARG;
    ew_ctx c;
    const int64_t *st[2] = {a_strides, b_strides};
    if (!bcast_init(&c.bc, 2, ndim, shape, st)) return ON_ERR_ARG;
    c.op = op;
    c.a = a;
    c.b = b;
    c.out = out;
    c.tab = on_kernels_active()->ops;
    size_t items = (size_t)(c.bc.rows * c.bc.chunks);
    if (items * (size_t)c.bc.n < 32768) nthreads = 1;
    on_parallel_for(items, binary_work, &c, nthreads);
    return ON_OK;
}

/* ---- compare ---------------------------------------------------------------------------------------- */
static void compare_work(void *vctx, size_t begin, size_t end) {
    const ew_ctx *c = vctx;
    const bcast_t *bc = &c->bc;
    for (size_t it = begin; it < end; it++) {
        int64_t row = (int64_t)it / bc->chunks, ch = (int64_t)it % bc->chunks;
        int64_t off[3];
        bcast_row_offsets(bc, row, off);
        int64_t lo = ch * ROW_CHUNK, hi = lo + ROW_CHUNK < bc->n ? lo + ROW_CHUNK : bc->n;
        int64_t sa = bc->st[0][bc->ndim - 1], sb = bc->st[1][bc->ndim - 1];
        const float *a = (const float *)c->a + off[0];
        const float *b = (const float *)c->b + off[1];
        uint8_t *o = (uint8_t *)c->out + row * bc->n;
        for (int64_t i = lo; i < hi; i++) {
            float x = a[i * sa], y = b[i * sb];
            uint8_t r = 0;
            switch ((on_compare_op)c->op) {
            case ON_CMP_EQ: r = x == y; break;
            case ON_CMP_LT: r = x < y; break;
            case ON_CMP_GT: r = x > y; break;
            case ON_CMP_LE: r = x <= y; break;
            case ON_CMP_GE: r = x >= y; break;
            default: break;
            }
            o[i] = r;
        }
    }
}

on_status on_compare_f32(on_compare_op op, int ndim, const int64_t *shape, const float *a,
                         const int64_t *a_strides, const float *b, const int64_t *b_strides, uint8_t *out,
                         int nthreads) {
    if ((int)op < 0 || op >= ON_CMP_COUNT || !a || !b || !out || (ndim > 0 && (!shape || !a_strides || !b_strides)))
        return ON_ERR_ARG;
    ew_ctx c;
    const int64_t *st[2] = {a_strides, b_strides};
    if (!bcast_init(&c.bc, 2, ndim, shape, st)) return ON_ERR_ARG;
    c.op = op;
    c.a = a;
    c.b = b;
    c.out = out;
    size_t items = (size_t)(c.bc.rows * c.bc.chunks);
    if (items * (size_t)c.bc.n < 32768) nthreads = 1;
    on_parallel_for(items, compare_work, &c, nthreads);
    return ON_OK;
}

/* ---- where -------------------------------------------------------------------------------------------- */
static void where_work(void *vctx, size_t begin, size_t end) {
    const ew_ctx *c = vctx;
    const bcast_t *bc = &c->bc;
    for (size_t it = begin; it < end; it++) {
        int64_t row = (int64_t)it / bc->chunks, ch = (int64_t)it % bc->chunks;
        int64_t off[3];
        bcast_row_offsets(bc, row, off);
        int64_t lo = ch * ROW_CHUNK, hi = lo + ROW_CHUNK < bc->n ? lo + ROW_CHUNK : bc->n;
        int64_t sc = bc->st[0][bc->ndim - 1], sx = bc->st[1][bc->ndim - 1], sy = bc->st[2][bc->ndim - 1];
        const uint8_t *cond = (const uint8_t *)c->a + off[0];
        const float *x = (const float *)c->b + off[1];
        const float *y = (const float *)c->c + off[2];
        float *o = (float *)c->out + row * bc->n;
        for (int64_t i = lo; i < hi; i++) o[i] = cond[i * sc] ? x[i * sx] : y[i * sy];
    }
}

on_status on_where_f32(int ndim, const int64_t *shape, const uint8_t *cond, const int64_t *c_strides,
                       const float *x, const int64_t *x_strides, const float *y, const int64_t *y_strides,
                       float *out, int nthreads) {
    if (!cond || !x || !y || !out || (ndim > 0 && (!shape || !c_strides || !x_strides || !y_strides)))
        return ON_ERR_ARG;
    ew_ctx c;
    const int64_t *st[3] = {c_strides, x_strides, y_strides};
    if (!bcast_init(&c.bc, 3, ndim, shape, st)) return ON_ERR_ARG;
    c.a = cond;
    c.b = x;
    c.c = y;
    c.out = out;
    size_t items = (size_t)(c.bc.rows * c.bc.chunks);
    if (items * (size_t)c.bc.n < 32768) nthreads = 1;
    on_parallel_for(items, where_work, &c, nthreads);
    return ON_OK;
}

/* ---- unary ---------------------------------------------------------------------------------------------- */
typedef struct {
    on_unary_op op;
    const float *x;
    float *y;
    size_t n;
    float alpha, beta;
    const on_ops_table *tab;
} unary_ctx;

static void unary_work(void *vctx, size_t begin, size_t end) {
    const unary_ctx *c = vctx;
    size_t lo = begin * ROW_CHUNK, hi = end * ROW_CHUNK < c->n ? end * ROW_CHUNK : c->n;
    if (!c->tab->unary(c->op, c->x + lo, c->y + lo, hi - lo, c->alpha, c->beta))
        unary_ref(c->op, c->x + lo, c->y + lo, hi - lo, c->alpha, c->beta);
}

on_status on_unary_f32(on_unary_op op, const float *x, float *y, size_t n, float alpha, float beta,
                       int nthreads) {
    if ((int)op < 0 || op >= ON_UN_COUNT || (n > 0 && (!x || !y))) return ON_ERR_ARG;
    unary_ctx c = {op, x, y, n, alpha, beta, on_kernels_active()->ops};
    size_t items = (n + ROW_CHUNK - 1) / ROW_CHUNK;
    if (n < 32768) nthreads = 1;
    on_parallel_for(items, unary_work, &c, nthreads);
    return ON_OK;
}
