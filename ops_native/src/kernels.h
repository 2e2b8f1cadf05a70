/* kernels.h - the per-ISA kernel table: every fast path the drivers dispatch to, one table per ISA.
 *
 * dispatch.c defines one constant table per ISA this build has (the scalar one is the reference, built
 * everywhere) and an atomic pointer to the active one: chosen once at start-up (pthread_once: cpuid /
 * XCR0, OPS_NATIVE_ISA) and switched by on_set_isa. A driver reads on_kernels_active() once per call, so one
 * call never mixes two ISAs. The C tests take any ISA's table with on_kernels_for_isa and compare it with
 * the scalar one. (The ideas of ONNX Runtime MLAS's platform struct and XNNPACK's configs.)
 */
#ifndef ON_KERNELS_H
#define ON_KERNELS_H

#include "conv_internal.h"
#include "gemm_internal.h"
#include "on_chanops.h"
#include "on_ops.h"
#include "on_quant.h"
#include "on_rnn.h"

typedef struct {
    on_isa_t isa;
    const on_gemm_ukernel *gemm;   /* GEMM register tile (GEMM, im2col and 1x1 convolutions) */
    on_dw_planes_fn dw_planes;     /* depthwise conv, one NCHW plane at a time */
    on_dw_planes_fn dw_c8;         /* depthwise conv over 8-channel blocks (on_conv_dw_c8__scalar: no fast one) */
    on_transpose_fn transpose;     /* f32 matrix transpose (1x1 conv on a small image) */
    on_nchwc_row_fn nchwc_row;     /* direct NCHWc conv: one output row of 8-channel blocks */
    on_nchwc_row_fn nchwc_row16;   /* the same with 16-channel blocks (AVX-512F), NULL elsewhere */
    on_nchwc_span_fn nchwc_span;   /* direct NCHWc conv into a blocked output, pixel spans across rows; or NULL */
    on_nchwc_pack_fn nchwc_pack;   /* gather an NCHW input row into channel-interleaved form */
    on_nchwc_pack_lanes_fn nchwc_pack_lanes; /* the same from an NCHWc8 row at any lane offset */
    const on_ops_table *ops;       /* row kernels of the elementwise / norm / pool / reduce ops */
    const on_chan_table *chan;     /* row kernels of LRN and PRelu (on_chanops.h) */
    const on_rnn_kernels *rnn;     /* fused LSTM / GRU / RNN cells, one batch row per call */
    const on_quant_table *quant;   /* integer GEMM dot tile (on_quant.h) */
} on_kernel_table;

/* The table of the active ISA (never NULL). */
const on_kernel_table *on_kernels_active(void);
/* The table of an ISA, or NULL if this build or this CPU cannot run it. */
const on_kernel_table *on_kernels_for_isa(on_isa_t isa);

#endif
