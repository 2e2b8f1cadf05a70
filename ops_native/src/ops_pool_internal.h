/* ops_pool_internal.h - shared between the reference pooling and its fast paths. */
#ifndef OPS_POOL_INTERNAL_H
#define OPS_POOL_INTERNAL_H

#include <stdint.h>

#include "on_ops.h"

/* One pooled output exactly as the reference defines it: the fast paths use it at the borders, so
   padding, dilation, NaN and count_include_pad behave identically everywhere. */
float on_pool2d_one_ref(int is_max, const float *x, int64_t ih, int64_t iw, int64_t pb, int64_t pr, int64_t oy,
                        int64_t ox, const on_pool2d_params *p);

#endif
