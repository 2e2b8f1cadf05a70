/* on_common.h - shared definitions of the ops_native kernel core.
 *
 * Status codes, ISA dispatch, the channel-block layout constant, the thread pool entry point and
 * aligned allocation helpers. Every other header of the library includes this one.
 */
#ifndef ON_COMMON_H
#define ON_COMMON_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes ------------------------------------------------------------------------- */
typedef enum {
    ON_OK = 0,
    ON_ERR_ARG,          /* a NULL pointer, a negative or zero size, an unknown enum value */
    ON_ERR_SHAPE,        /* shapes do not agree with each other */
    ON_ERR_NOMEM,        /* allocation failed */
    ON_ERR_UNSUPPORTED,  /* valid request this build/ISA cannot run */
    ON_ERR_INTERNAL      /* a bug: should never happen */
} on_status;

const char *on_status_str(on_status s);

/* ---- ISA dispatch ------------------------------------------------------------------------- */
typedef enum {
    ON_ISA_SCALAR = 0,   /* portable C reference */
    ON_ISA_AVX2 = 1,     /* x86-64 AVX2 + FMA (name "avx2-fma") */
    ON_ISA_NEON = 2,     /* aarch64 Advanced SIMD */
    ON_ISA_AVX512 = 3,   /* x86-64 AVX-512F (name "avx512f"): its own GEMM micro-kernel, AVX2 kernels elsewhere */
    ON_ISA_COUNT
} on_isa_t;

/* The ISA used by every dispatched kernel. Detected once (cpuid + XCR0 on x86, always NEON on
 * aarch64); OPS_NATIVE_ISA=scalar|avx2|avx512|neon forces one (see on_isa_env_status). */
on_isa_t on_active_isa(void);
/* "scalar", "avx2-fma", "neon", "avx512f"; "unknown" for anything else. */
const char *on_isa_name(on_isa_t isa);
/* Parse "scalar" | "avx2" | "avx2-fma" | "avx512" | "avx512f" | "neon"; returns -1 for an unknown name. */
int on_isa_from_name(const char *name);
/* 1 if this CPU and this build can run the ISA. */
int on_isa_available(on_isa_t isa);
/* Switch the active ISA. Returns 0 on success, -1 if unavailable (active ISA unchanged). */
int on_set_isa(on_isa_t isa);
/* ON_OK, or ON_ERR_UNSUPPORTED / ON_ERR_ARG when OPS_NATIVE_ISA named an unavailable / unknown ISA
 * (the active ISA then stays the detected best one). */
on_status on_isa_env_status(void);

/* ---- layout --------------------------------------------------------------------------------- */
/* Channel block of the NCHWc layout: 8 floats = one AVX2 register (two NEON registers). */
#define ON_C0 8

/* ---- threading ------------------------------------------------------------------------------ */
/* Run fn(ctx, begin, end) over [0, n) split into at most nthreads contiguous chunks. Workers are
 * persistent, created lazily (grown to the largest count ever asked) and reused; nthreads <= 1 or
 * n <= 1 runs inline on the caller. The caller takes part as one of the threads. Calls from several
 * threads at once are serialised; a nested call from inside fn runs inline. */
void on_parallel_for(size_t n, void (*fn)(void *ctx, size_t begin, size_t end), void *ctx, int nthreads);
/* Get the workers of an nthreads pool spinning before a burst of parallel calls (one inference), so
 * the first kernels of the burst do not wait for a sleeping thread to be scheduled (tens of
 * microseconds on a VM). Does not wait; a no-op for nthreads <= 1 or inside the pool. */
void on_pool_warm(int nthreads);
/* Hardware threads of this machine (>= 1). */
int on_num_cpus(void);

/* ---- memory ----------------------------------------------------------------------------------- */
#define ON_ALIGN 64
/* 64-byte aligned allocation; size 0 gives a valid unique pointer. Free with on_free. */
void *on_malloc(size_t size);
void *on_calloc(size_t count, size_t size);
void on_free(void *p);

/* Per-thread scratch buffers, grown on demand and kept for the life of the thread, so kernels do
 * not allocate on the hot path. The buffer of a slot stays valid until the next on_scratch call with
 * the same slot on the same thread; never free it. Nested users take different slots:
 * 0-3 GEMM / convolution (on_gemm.h, on_conv.h), 4-7 the other ops (on_ops.h).
 * Returns NULL if the allocation fails (or slot is out of range). */
#define ON_SCRATCH_SLOTS 8
void *on_scratch(int slot, size_t bytes);

/* Temporary buffer: the slot's scratch up to ON_SCRATCH_KEEP_MAX bytes (kept for reuse), a plain
 * allocation above (so one huge call does not pin its memory to the thread). Release with
 * on_temp_free(p, owned). NULL on failure. */
#define ON_SCRATCH_KEEP_MAX ((size_t)32 << 20)
void *on_temp_alloc(int slot, size_t bytes, int *owned);
void on_temp_free(void *p, int owned);

/* overflow-checked size arithmetic: returns 0 on overflow, 1 on success */
static inline int on_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* ---- activations fused into kernel epilogues ------------------------------------------------- */
typedef enum {
    ON_ACT_NONE = 0,
    ON_ACT_RELU,
    ON_ACT_CLIP,        /* min(max(x, alpha), beta); relu6 = clip(0, 6) */
    ON_ACT_LEAKY_RELU,  /* x >= 0 ? x : alpha * x */
    ON_ACT_HARDSWISH,   /* x * clip(x / 6 + 0.5, 0, 1) */
    ON_ACT_SIGMOID,
    ON_ACT_SILU,        /* x * sigmoid(x) (Swish): Conv -> Sigmoid -> Mul(conv, .) of YOLO-style nets */
    ON_ACT_GELU,        /* 0.5 x (1 + erf(x / sqrt 2)): MatMul + bias -> Gelu of transformer MLPs */
    ON_ACT_COUNT
} on_act_kind;

typedef struct {
    on_act_kind kind;
    float alpha;
    float beta;
} on_act_t;

/* Reference (scalar) activation: the definition every fast path is tested against. */
static inline float on_act_ref(on_act_t a, float x) {
    switch (a.kind) {
    case ON_ACT_RELU: return x > 0.0f ? x : 0.0f;
    case ON_ACT_CLIP: return x < a.alpha ? a.alpha : (x > a.beta ? a.beta : x);
    case ON_ACT_LEAKY_RELU: return x >= 0.0f ? x : a.alpha * x;
    case ON_ACT_HARDSWISH: {
        float t = x * (1.0f / 6.0f) + 0.5f;
        t = t < 0.0f ? 0.0f : (t > 1.0f ? 1.0f : t);
        return x * t;
    }
    case ON_ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    case ON_ACT_SILU: return x / (1.0f + expf(-x));
    case ON_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    default: return x;
    }
}

/* Activations built on exp/erf: x86 computes them in registers (x86/math_*.h); the portable and NEON
 * kernels apply them with on_act_ref when the result is stored. */
static inline int on_act_is_transcendental(on_act_kind k) {
    return k == ON_ACT_SIGMOID || k == ON_ACT_SILU || k == ON_ACT_GELU;
}

#ifdef __cplusplus
}
#endif
#endif /* ON_COMMON_H */
