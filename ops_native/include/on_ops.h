/* on_ops.h - the non-GEMM kernels of ops_native: elementwise (numpy broadcasting), activations,
 * softmax / layer norm / batch norm, pooling, reductions, resize and data movement.
 *
 * Conventions: float32 compute, contiguous outputs, strides counted in elements (0 = broadcast),
 * shapes of at most ON_MAX_DIMS dimensions. Every entry point validates its arguments, returns an
 * on_status and never aborts. nthreads <= 1 runs on the caller.
 */
#ifndef ON_OPS_H
#define ON_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "on_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ON_MAX_DIMS 8

/* ---- elementwise ------------------------------------------------------------------------------ */
typedef enum {
    ON_BIN_ADD = 0,
    ON_BIN_SUB,
    ON_BIN_MUL,
    ON_BIN_DIV,
    ON_BIN_POW,
    ON_BIN_MIN,
    ON_BIN_MAX,
    ON_BIN_COUNT
} on_binary_op;

typedef enum { ON_CMP_EQ = 0, ON_CMP_LT, ON_CMP_GT, ON_CMP_LE, ON_CMP_GE, ON_CMP_COUNT } on_compare_op;

typedef enum {
    ON_UN_RELU = 0,
    ON_UN_LEAKY_RELU,   /* alpha = slope */
    ON_UN_CLIP,         /* alpha = min, beta = max */
    ON_UN_SIGMOID,
    ON_UN_HARD_SIGMOID, /* max(0, min(1, alpha * x + beta)) */
    ON_UN_HARD_SWISH,   /* x * max(0, min(1, x / 6 + 0.5)) */
    ON_UN_TANH,
    ON_UN_GELU,         /* 0.5 x (1 + erf(x / sqrt 2)) */
    ON_UN_GELU_TANH,    /* tanh approximation */
    ON_UN_EXP,
    ON_UN_LOG,
    ON_UN_SQRT,
    ON_UN_NEG,
    ON_UN_ABS,
    ON_UN_ERF,
    ON_UN_RECIPROCAL,
    ON_UN_FLOOR,
    ON_UN_CEIL,
    ON_UN_ELU,          /* alpha */
    ON_UN_SOFTPLUS,
    ON_UN_AFFINE,       /* alpha * x + beta */
    ON_UN_COUNT
} on_unary_op;

/* out[i] = a[i] op b[i] over `shape` (out contiguous, a/b addressed through element strides). */
on_status on_binary_f32(on_binary_op op, int ndim, const int64_t *shape, const float *a,
                        const int64_t *a_strides, const float *b, const int64_t *b_strides, float *out,
                        int nthreads);
/* out[i] = (a[i] cmp b[i]) as 0/1 bytes (ONNX bool). */
on_status on_compare_f32(on_compare_op op, int ndim, const int64_t *shape, const float *a,
                         const int64_t *a_strides, const float *b, const int64_t *b_strides, uint8_t *out,
                         int nthreads);
/* out[i] = cond[i] ? x[i] : y[i] */
on_status on_where_f32(int ndim, const int64_t *shape, const uint8_t *cond, const int64_t *c_strides,
                       const float *x, const int64_t *x_strides, const float *y, const int64_t *y_strides,
                       float *out, int nthreads);
/* y = f(x) over n contiguous elements; x == y allowed. */
on_status on_unary_f32(on_unary_op op, const float *x, float *y, size_t n, float alpha, float beta,
                       int nthreads);

/* ---- normalisation ---------------------------------------------------------------------------- */
/* Softmax (or LogSoftmax when log != 0) of each row of a [rows, cols] matrix. */
on_status on_softmax_f32(const float *x, float *y, size_t rows, size_t cols, int log, int nthreads);
/* y = (x - mean) / sqrt(var + eps) * scale + bias per row; bias may be NULL. */
on_status on_layernorm_f32(const float *x, const float *scale, const float *bias, float *y, size_t rows,
                           size_t cols, float eps, int nthreads);
/* y[n, c, i] = x[n, c, i] * scale[c] + shift[c]: inference BatchNormalization after folding. */
on_status on_channel_affine_f32(const float *x, const float *scale, const float *shift, float *y, size_t n,
                                size_t c, size_t inner, int nthreads);
/* The same on the NCHWc8 layout: x, y [n][cblocks][pixels][ON_C0]; scale, shift [cblocks * ON_C0]. */
on_status on_channel_affine_nchwc8_f32(const float *x, const float *scale, const float *shift, float *y, size_t n,
                                       size_t cblocks, size_t pixels, int nthreads);
/* Channel c of y is channel src[c] of x, both NCHWc8 ([n][ceil(C/8)][pixels][ON_C0], cin / cout channels;
 * y's lanes past cout become zero): a channel shuffle or any other channel permutation / selection. */
on_status on_channel_gather_nchwc8_f32(const float *x, size_t cin, const int64_t *src, size_t cout, float *y,
                                       size_t n, size_t pixels, int nthreads);

/* ---- pooling ---------------------------------------------------------------------------------- */
typedef struct {
    int64_t kh, kw;              /* window */
    int64_t sh, sw;              /* strides */
    int64_t dh, dw;              /* dilations (max pool only; 1 for average) */
    int64_t pt, pl;              /* top / left padding; bottom / right follow from the output size */
    int count_include_pad;       /* average pool: divide by the full window, padding included */
} on_pool2d_params;

/* planes = N * C; input [planes, ih, iw], output [planes, oh, ow]. Windows that only partly overlap the
 * input (padding or ceil_mode) use the overlapping part; count_include_pad counts padding inside
 * [-pt, ih + pb) (pb derived so that ceil_mode overhang beyond the pads is never counted). */
on_status on_maxpool2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw, int64_t oh,
                           int64_t ow, const on_pool2d_params *p, int nthreads);
on_status on_avgpool2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw, int64_t oh,
                           int64_t ow, int64_t pb, int64_t pr, const on_pool2d_params *p, int nthreads);
/* The same pooling on the NCHWc8 layout (on_conv.h): x [blocks][ih][iw][ON_C0] -> y [blocks][oh][ow][ON_C0],
 * blocks = N * ceil(C / 8). Every output pixel is one vector of 8 channels, so padded borders and narrow
 * planes cost what the interior does (the plane kernels fall back to scalar code there). is_max as above;
 * pb / pr only matter for count_include_pad. */
on_status on_pool2d_nchwc8_f32(int is_max, const float *x, float *y, size_t blocks, int64_t ih, int64_t iw,
                               int64_t oh, int64_t ow, int64_t pb, int64_t pr, const on_pool2d_params *p,
                               int nthreads);
/* y[r] = mean (is_max = 0) or max (is_max = 1) of row r of a [rows, cols] matrix. */
on_status on_global_pool_f32(const float *x, float *y, size_t rows, size_t cols, int is_max, int nthreads);

/* ---- reductions -------------------------------------------------------------------------------- */
typedef enum { ON_RED_SUM = 0, ON_RED_MEAN, ON_RED_MAX, ON_RED_MIN, ON_RED_PROD, ON_RED_SUMSQ, ON_RED_COUNT }
    on_reduce_op;
/* x viewed as [outer, r, inner] reduced over the middle axis into y [outer, inner]. */
on_status on_reduce_f32(on_reduce_op op, const float *x, float *y, size_t outer, size_t r, size_t inner,
                        int nthreads);

/* ---- resize (last two axes of a [planes, ih, iw] tensor) -------------------------------------- */
/* Nearest: y[p, i, j] = x[p, iy[i], ix[j]]; the caller maps coordinates (any ONNX mode). */
on_status on_resize_nearest2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw,
                                  int64_t oh, int64_t ow, const int64_t *iy, const int64_t *ix, int nthreads);
/* Bilinear: y = lerp over rows y0/y1 with weight wy (of y1) and columns x0/x1 with weight wx. */
on_status on_resize_linear2d_f32(const float *x, float *y, size_t planes, int64_t ih, int64_t iw,
                                 int64_t oh, int64_t ow, const int64_t *y0, const int64_t *y1, const float *wy,
                                 const int64_t *x0, const int64_t *x1, const float *wx, int nthreads);

/* ---- data movement (any element size: 1, 2, 4 or 8 bytes) ------------------------------------ */
/* dst[idx] = src[idx] over `shape`, both addressed through element strides. Backs Transpose, Slice,
 * Expand, Split and Pad's interior copy. */
on_status on_copy_strided(size_t esize, int ndim, const int64_t *shape, const void *src,
                          const int64_t *src_strides, void *dst, const int64_t *dst_strides, int nthreads);
/* Concat of n inputs along one axis: input i is [outer, lens[i] * inner] bytes-wise contiguous. */
on_status on_concat(size_t esize, int n, const void *const *srcs, const int64_t *lens, int64_t outer,
                    int64_t inner, void *dst, int nthreads);
/* Gather along an axis: src [outer, axis_len, inner], idx[n_idx] (already non-negative, checked < axis_len),
 * dst [outer, n_idx, inner]. */
on_status on_gather(size_t esize, const void *src, int64_t outer, int64_t axis_len, int64_t inner,
                    const int64_t *idx, int64_t n_idx, void *dst, int nthreads);

/* ---- fast-path table (one per ISA, in the ISA's kernel table) ------------------------------------- */
/* Row kernels. Each returns 1 if it handled the request, 0 to let the caller use the reference. */
typedef struct {
    const char *name;
    /* out[i] = a[i*sa] op b[i*sb] for i < n, sa/sb in {0, 1} */
    int (*binary_row)(on_binary_op op, const float *a, int64_t sa, const float *b, int64_t sb, float *out,
                      size_t n);
    int (*unary)(on_unary_op op, const float *x, float *y, size_t n, float alpha, float beta);
    int (*softmax_row)(const float *x, float *y, size_t cols, int log);
    int (*layernorm_row)(const float *x, const float *scale, const float *bias, float *y, size_t cols,
                         float eps);
    /* one plane of max (is_max) / average pooling */
    int (*pool2d_plane)(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oh, int64_t ow,
                        int64_t pb, int64_t pr, const on_pool2d_params *p);
    /* sum (is_max = 0) or max of n floats */
    int (*row_reduce)(int is_max, const float *x, size_t n, float *out);
    /* output row oy of one 8-channel block of NCHWc8 pooling: x [ih][iw][8] -> y [ow][8] */
    int (*pool2d_c8_row)(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oy, int64_t ow,
                         int64_t pb, int64_t pr, const on_pool2d_params *p);
    /* y[i][l] = x[i][l] * a[l] + b[l] for i < pixels, l < ON_C0 (a per-channel affine on one NCHWc8 block) */
    int (*affine_c8_rows)(const float *x, float *y, size_t pixels, const float *a, const float *b);
} on_ops_table;

extern const on_ops_table on_ops_table_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const on_ops_table on_ops_table_avx2;
extern const on_ops_table on_ops_table_avx512;
#endif
#if defined(__aarch64__)
extern const on_ops_table on_ops_table_neon;
#endif
/* The table of the active ISA is on_kernels_active()->ops (src/kernels.h); a table has the scalar row
 * kernel where its ISA has no fast path for an op. */

#ifdef __cplusplus
}
#endif
#endif /* ON_OPS_H */
