/* dispatch.c - run-time ISA detection, the per-ISA kernel tables and the active-table switch.
 *
 * x86-64: AVX2 and FMA need the CPUID feature bits AND the OS saving YMM state (OSXSAVE + XCR0
 * bits 1|2), otherwise the first AVX instruction faults; AVX-512F also needs the opmask and ZMM
 * state (XCR0 bits 5|6|7). aarch64: Advanced SIMD is architectural.
 * OPS_NATIVE_ISA=scalar|avx2|avx512|neon forces a path; an unavailable one is reported through
 * on_isa_env_status() and the detected best ISA stays active.
 * The kernel tables (kernels.h) are constants, one per ISA of this build, written out below in one place;
 * the active one is a single atomic pointer, so on_active_isa() and the kernels can never disagree.
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <time.h>

#include "kernels.h"
#include "on_common.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define ON_HAVE_X86 1
#endif

/* ---- kernel tables ---------------------------------------------------------------------------- */
static const on_kernel_table k_scalar = {
    .isa = ON_ISA_SCALAR,
    .gemm = &on_f32_gemm_4x16__scalar,
    .dw_planes = on_conv_dw_planes__scalar,
    .dw_c8 = on_conv_dw_c8__scalar,
    .transpose = on_transpose_f32__scalar,
    .nchwc_row = on_conv_nchwc_row__scalar,
    .nchwc_row16 = NULL,
    .nchwc_pack = on_conv_nchwc_pack__scalar,
    .nchwc_pack_lanes = on_conv_nchwc_pack_lanes__scalar,
    .ops = &on_ops_table_scalar,
    .chan = &on_chan_table_scalar,
    .rnn = &on_rnn_kernels_scalar,
    .quant = &on_quant_table_scalar,
};
#ifdef ON_HAVE_X86
static const on_kernel_table k_avx2 = {
    .isa = ON_ISA_AVX2,
    .gemm = &on_f32_gemm_6x16__avx2_fma,
    .dw_planes = on_conv_dw_planes__avx2,
    .dw_c8 = on_conv_dw_c8__avx2,
    .transpose = on_transpose_f32__avx2,
    .nchwc_row = on_conv_nchwc_row__avx2,
    .nchwc_row16 = NULL,
    .nchwc_span = on_conv_nchwc_span__avx2,
    .nchwc_pack = on_conv_nchwc_pack__avx2,
    .nchwc_pack_lanes = on_conv_nchwc_pack_lanes__avx2,
    .ops = &on_ops_table_avx2,
    .chan = &on_chan_table_avx2,
    .rnn = &on_rnn_kernels_avx2,
    .quant = &on_quant_table_avx2,
};
/* AVX-512F: its own GEMM tile, 16-channel NCHWc rows and ops table; the AVX2 kernels everywhere else */
static const on_kernel_table k_avx512 = {
    .isa = ON_ISA_AVX512,
    .gemm = &on_f32_gemm_12x16__avx512f,
    .dw_planes = on_conv_dw_planes__avx2,
    .dw_c8 = on_conv_dw_c8__avx2,
    .transpose = on_transpose_f32__avx2,
    .nchwc_row = on_conv_nchwc_row__avx2,
    .nchwc_row16 = on_conv_nchwc_row16__avx512,
    .nchwc_pack = on_conv_nchwc_pack__avx2,
    .nchwc_pack_lanes = on_conv_nchwc_pack_lanes__avx2,
    .ops = &on_ops_table_avx512,
    .chan = &on_chan_table_avx512,
    .rnn = &on_rnn_kernels_avx512,
    .quant = &on_quant_table_avx2,
};
#endif
#if defined(__aarch64__)
static const on_kernel_table k_neon = {
    .isa = ON_ISA_NEON,
    .gemm = &on_f32_gemm_6x16__neon,
    .dw_planes = on_conv_dw_planes__neon,
    .dw_c8 = on_conv_dw_c8__scalar,
    .transpose = on_transpose_f32__scalar,
    .nchwc_row = on_conv_nchwc_row__neon,
    .nchwc_row16 = NULL,
    .nchwc_pack = on_conv_nchwc_pack__scalar,
    .nchwc_pack_lanes = on_conv_nchwc_pack_lanes__scalar,
    .ops = &on_ops_table_neon,
    .chan = &on_chan_table_neon,
    .rnn = &on_rnn_kernels_neon,
    .quant = &on_quant_table_neon,
};
#endif

/* The table of an ISA this build has (NULL otherwise), whether or not this CPU runs it. */
static const on_kernel_table *table_of(on_isa_t isa) {
    switch (isa) {
    case ON_ISA_SCALAR: return &k_scalar;
#ifdef ON_HAVE_X86
    case ON_ISA_AVX2: return &k_avx2;
    case ON_ISA_AVX512: return &k_avx512;
#endif
#if defined(__aarch64__)
    case ON_ISA_NEON: return &k_neon;
#endif
    default: return NULL;
    }
}

/* ---- the active table -------------------------------------------------------------------------- */
static _Atomic(const on_kernel_table *) g_active = &k_scalar;
static on_status g_env_status = ON_OK;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static on_isa_t g_best = ON_ISA_SCALAR;

#ifdef ON_HAVE_X86
static int x86_has_avx2_fma(void) {
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!(fma && osxsave && avx)) return 0;
    unsigned int xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 0x6u) != 0x6u) return 0; /* XMM and YMM state enabled by the OS */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    return (b >> 5) & 1; /* AVX2 */
}

static int x86_has_avx512f(void) {
    if (!x86_has_avx2_fma()) return 0;
    unsigned int a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((b >> 16) & 1)) return 0; /* AVX512F */
    unsigned int xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    return (xcr0_lo & 0xE6u) == 0xE6u; /* XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM saved by the OS */
}
#endif

int on_isa_available(on_isa_t isa) {
    switch (isa) {
    case ON_ISA_SCALAR: return 1;
#ifdef ON_HAVE_X86
    case ON_ISA_AVX2: return x86_has_avx2_fma();
    case ON_ISA_AVX512: return x86_has_avx512f();
#endif
#if defined(__aarch64__)
    case ON_ISA_NEON: return 1;
#endif
    default: return 0;
    }
}

static void detect_once(void) {
#if defined(__aarch64__)
    g_best = ON_ISA_NEON;
#elif defined(ON_HAVE_X86)
    g_best = x86_has_avx512f() ? ON_ISA_AVX512 : (x86_has_avx2_fma() ? ON_ISA_AVX2 : ON_ISA_SCALAR);
#else
    g_best = ON_ISA_SCALAR;
#endif
    on_isa_t chosen = g_best;
    const char *env = getenv("OPS_NATIVE_ISA");
    if (env && env[0]) {
        int want = on_isa_from_name(env);
        if (want < 0) g_env_status = ON_ERR_ARG;
        else if (!on_isa_available((on_isa_t)want)) g_env_status = ON_ERR_UNSUPPORTED;
        else chosen = (on_isa_t)want;
    }
    atomic_store(&g_active, table_of(chosen));
}

const on_kernel_table *on_kernels_active(void) {
    pthread_once(&g_once, detect_once);
    return atomic_load_explicit(&g_active, memory_order_relaxed);
}

const on_kernel_table *on_kernels_for_isa(on_isa_t isa) {
    return on_isa_available(isa) ? table_of(isa) : NULL;
}

on_isa_t on_active_isa(void) { return on_kernels_active()->isa; }

on_status on_isa_env_status(void) {
    pthread_once(&g_once, detect_once);
    return g_env_status;
}

const char *on_isa_name(on_isa_t isa) {
    switch (isa) {
    case ON_ISA_SCALAR: return "scalar";
    case ON_ISA_AVX2: return "avx2-fma";
    case ON_ISA_NEON: return "neon";
    case ON_ISA_AVX512: return "avx512f";
    default: return "unknown";
    }
}

int on_isa_from_name(const char *name) {
    if (!name) return -1;
    if (strcmp(name, "scalar") == 0) return ON_ISA_SCALAR;
    if (strcmp(name, "avx2") == 0 || strcmp(name, "avx2-fma") == 0) return ON_ISA_AVX2;
    if (strcmp(name, "neon") == 0) return ON_ISA_NEON;
    if (strcmp(name, "avx512") == 0 || strcmp(name, "avx512f") == 0) return ON_ISA_AVX512;
    return -1;
}

int on_set_isa(on_isa_t isa) {
    pthread_once(&g_once, detect_once);
    const on_kernel_table *k = ((int)isa < 0 || isa >= ON_ISA_COUNT) ? NULL : on_kernels_for_isa(isa);
    if (!k) return -1;
    atomic_store_explicit(&g_active, k, memory_order_relaxed);
    return 0;
}

static double mono_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double on_fma_peak_gflops(on_isa_t isa, double seconds) {
    float (*burst)(size_t) = NULL;
    double lanes = 1.0;
    if (!on_isa_available(isa)) return 0.0;
    switch (isa) {
    case ON_ISA_SCALAR: burst = on_fma_burst__scalar; break;
#ifdef ON_HAVE_X86
    case ON_ISA_AVX2: burst = on_fma_burst__avx2; lanes = 8.0; break;
    case ON_ISA_AVX512: burst = on_fma_burst__avx512; lanes = 16.0; break;
#endif
#if defined(__aarch64__)
    case ON_ISA_NEON: burst = on_fma_burst__neon; lanes = 4.0; break;
#endif
    default: return 0.0;
    }
    size_t iters = 1u << 16;
    volatile float sink = 0.0f;
    for (;;) { /* size a slice to about seconds / 5 */
        double t0 = mono_seconds();
        sink += burst(iters);
        double dt = mono_seconds() - t0;
        if (dt >= seconds / 5.0 || iters > ((size_t)1 << 40)) break;
        iters *= 2;
    }
    double best = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = mono_seconds();
        sink += burst(iters);
        double dt = mono_seconds() - t0;
        double gf = dt > 0.0 ? (double)iters * 12.0 * lanes * 2.0 / dt / 1e9 : 0.0;
        if (gf > best) best = gf;
    }
    (void)sink;
    return best;
}
