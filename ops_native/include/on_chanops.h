/* on_chanops.h - ops along the channel axis of NCHW float32 tensors: LRN (a window of channels at each
 * pixel) and PRelu (a learned slope per channel, or any slope that broadcasts to x).
 *
 * Same conventions as on_ops.h: validated arguments, an on_status, nthreads <= 1 runs on the caller.
 */
#ifndef ON_CHANOPS_H
#define ON_CHANOPS_H

#include <stddef.h>
#include <stdint.h>

#include "on_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- LRN ----------------------------------------------------------------------------------------- */
/* x viewed as [n, c, inner]: y = x / (bias + alpha / size * sum of x^2 over channels
 * [ch - (size-1)/2, ch + ceil((size-1)/2)] clipped to [0, c))^beta (ONNX LRN). */
on_status on_lrn_f32(const float *x, float *y, size_t n, size_t c, size_t inner, int64_t size, float alpha,
                     float beta, float bias, int nthreads);
/* The definition, window recomputed at every point in double precision: what the tests compare with. */
on_status on_lrn_f32_ref(const float *x, float *y, size_t n, size_t c, size_t inner, int64_t size, float alpha,
                         float beta, float bias);

/* ---- PRelu --------------------------------------------------------------------------------------- */
/* y = x >= 0 ? x : slope * x; x and y contiguous over `shape`, slope addressed through element strides
 * (0 on broadcast axes, numpy's unidirectional broadcasting of slope to x). */
on_status on_prelu_f32(int ndim, const int64_t *shape, const float *x, const float *slope,
                       const int64_t *slope_strides, float *y, int nthreads);

/* ---- fast-path table (one per ISA, in the ISA's kernel table: kernels.h) ----------------------------- */
typedef struct {
    const char *name;
    /* LRN over `len` adjacent pixels of one image: x/y point at channel 0 of the first pixel, channel ch
     * starts at + ch * plane. The window sum slides along the channels in `sum` (len floats of scratch):
     * one square added and one removed per channel, whatever the size. lo/hi: channels below/above. */
    int (*lrn_span)(const float *x, float *y, size_t c, size_t plane, size_t len, size_t lo, size_t hi,
                    float alpha_over_size, float bias, float beta, float *sum);
    /* y[i] = x[i] >= 0 ? x[i] : s[i * ss] * x[i] for i < n, ss in {0, 1} */
    int (*prelu_row)(const float *x, const float *s, int64_t ss, float *y, size_t n);
} on_chan_table;

extern const on_chan_table on_chan_table_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const on_chan_table on_chan_table_avx2;
extern const on_chan_table on_chan_table_avx512;
#endif
#if defined(__aarch64__)
extern const on_chan_table on_chan_table_neon;
#endif

#ifdef __cplusplus
}
#endif
#endif /* ON_CHANOPS_H */
