# cython: language_level=3
"""ops_native._core: the one compiled extension of the native kernel core.

Each kernel family keeps its Cython bindings in its own .pxi file; they are compiled into this
single module so that the whole library shares one thread pool and one ISA dispatch table.
"""

include "kernels_gemm.pxi"
include "kernels_conv.pxi"
include "kernels_ops.pxi"
include "kernels_chanops.pxi"
include "kernels_rnn.pxi"
include "kernels_quant.pxi"
include "pool.pxi"
include "executor.pxi"
