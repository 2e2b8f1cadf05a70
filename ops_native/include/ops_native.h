/* ops_native.h - umbrella header of the ops_native kernel core. */
#ifndef OPS_NATIVE_H
#define OPS_NATIVE_H

#include "on_common.h"
#include "on_conv.h"
#include "on_gemm.h"
#if defined(__has_include)
#if __has_include("on_ops.h")
#include "on_ops.h"
#endif
#endif

#endif /* OPS_NATIVE_H */
