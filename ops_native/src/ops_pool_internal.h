/* ops_pool_internal.h - shared between the reference pooling and its fast paths. */
#ifndef OPS_POOL_INTERNAL_H
#define OPS_POOL_INTERNAL_H

#include <stdint.h>

#include "on_ops.h"

/* One pooled output exactly as the reference defines it: the fast paths use it at the borders, so
   padding, dilation, NaN and count_include_pad behave identically everywhere. */
float on_pool2d_one_ref(int is_max, const float *x, int64_t ih, int64_t iw, int64_t pb, int64_t pr, int64_t oy,
                        int64_t ox, const on_pool2d_params *p);

/* The taps k < n of a window starting at s0 (step d) whose position s0 + k * d lies in [lo, hi):
 * [*k0, *k1), empty when *k0 >= *k1. Positions grow with k, so the valid taps are one run. */
static inline void on_pool_tap_range(int64_t s0, int64_t d, int64_t n, int64_t lo, int64_t hi, int64_t *k0,
                                     int64_t *k1) {
    int64_t a, b;
    if (d == 1) { /* no 64-bit division (tens of cycles): windows are rarely dilated, and this runs per pixel */
        a = s0 >= lo ? 0 : lo - s0;
        b = s0 >= hi ? 0 : hi - s0;
    } else {
        a = s0 >= lo ? 0 : (lo - s0 + d - 1) / d;
        b = s0 >= hi ? 0 : (hi - 1 - s0) / d + 1;
    }
    *k0 = a;
    *k1 = b < n ? b : n;
}

#endif
