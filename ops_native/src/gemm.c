/* gemm.c - SGEMM reference, B packing, the blocked driver and the portable 4x16 micro-kernel.
 * (Over 500 lines on purpose: the driver and the packing share blocking constants and must change together.)
 *
 * Blocking (per thread): K in (balanced) blocks of at most KC; a block of MC rows of A (read in
 * place, or copied into a contiguous per-thread buffer when lda would alias cache sets) runs against
 * every panel of the thread's range before the next row block. A long KC was measured best on Zen 3
 * (fewer passes over C, whose reload is what large problems pay for); a 1024 x 16 panel slice streams
 * from L2. Threads split the packed panels (N) when there are enough of them, else the rows (M).
 */
#include <stdatomic.h>
#include <string.h>

#include "gemm_internal.h"
#include "kernels.h"

#ifndef GEMM_KC
#define GEMM_KC 1024
#endif
#ifndef GEMM_MC
#define GEMM_MC 48
#endif
#define NR ON_GEMM_NR
/* on_gemm reads an unpacked B in place up to this many rows of A */
#define GEMM_DIRECT_B_MAX_M 16

on_gemm_epilogue on_gemm_epilogue_default(void) {
    on_gemm_epilogue ep = {1.0f, ON_BIAS_NONE, NULL, {ON_ACT_NONE, 0.0f, 0.0f}};
    return ep;
}

static inline float bias_at(const on_gemm_epilogue *ep, size_t m, size_t n) {
    switch (ep->bias_kind) {
    case ON_BIAS_SCALAR: return ep->bias[0];
    case ON_BIAS_COL: return ep->bias[n];
    case ON_BIAS_ROW: return ep->bias[m];
    default: return 0.0f;
    }
}

static on_status check_epilogue(const on_gemm_epilogue *ep) {
    if (!ep) return ON_ERR_ARG;
    if ((int)ep->bias_kind < 0 || ep->bias_kind > ON_BIAS_ROW) return ON_ERR_ARG;
    if (ep->bias_kind != ON_BIAS_NONE && !ep->bias) return ON_ERR_ARG;
    if ((int)ep->act.kind < 0 || ep->act.kind >= ON_ACT_COUNT) return ON_ERR_ARG;
    return ON_OK;
}

/* ---- reference ------------------------------------------------------------------------------ */

on_status on_gemm_ref(int trans_a, int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda,
                      const float *B, size_t ldb, const on_gemm_epilogue *ep, float *C, size_t ldc) {
    on_status st = check_epilogue(ep);
    if (st != ON_OK) return st;
    if (M == 0 || N == 0) return ON_OK;
    if (!C || (K > 0 && (!A || !B))) return ON_ERR_ARG;
    for (size_t m = 0; m < M; m++) {
        for (size_t n = 0; n < N; n++) {
            double s = 0.0;
            for (size_t k = 0; k < K; k++) {
                float a = trans_a ? A[k * lda + m] : A[m * lda + k];
                float b = trans_b ? B[n * ldb + k] : B[k * ldb + n];
                s += (double)a * (double)b;
            }
            float v = ep->alpha * (float)s + bias_at(ep, m, n);
            C[m * ldc + n] = on_act_ref(ep->act, v);
        }
    }
    return ON_OK;
}

/* ---- packing -------------------------------------------------------------------------------- */

size_t on_packed_b_floats(size_t K, size_t N) {
    size_t panels = (N + NR - 1) / NR, total;
    if (!on_mul_size(panels, NR, &total) || !on_mul_size(total, K, &total)) return 0;
    return total;
}

typedef struct {
    const float *b;
    size_t ldb, K, N;
    int trans_b;
    float *dst;
} pack_ctx;

static void pack_panels(void *vctx, size_t p_begin, size_t p_end) {
    const pack_ctx *x = (const pack_ctx *)vctx;
    for (size_t p = p_begin; p < p_end; p++) {
        size_t n0 = p * NR, nr = x->N - n0 < NR ? x->N - n0 : NR;
        float *d = x->dst + p * x->K * NR;
        if (!x->trans_b) {
            for (size_t k = 0; k < x->K; k++, d += NR) {
                memcpy(d, x->b + k * x->ldb + n0, nr * sizeof(float));
                for (size_t j = nr; j < NR; j++) d[j] = 0.0f;
            }
        } else {
            for (size_t j = 0; j < NR; j++) {
                const float *src = x->b + (n0 + j) * x->ldb;
                if (j < nr)
                    for (size_t k = 0; k < x->K; k++) d[k * NR + j] = src[k];
                else
                    for (size_t k = 0; k < x->K; k++) d[k * NR + j] = 0.0f;
            }
        }
    }
}

void on_pack_b(const float *b, size_t ldb, int trans_b, size_t K, size_t N, float *dst, int nthreads) {
    pack_ctx x = {b, ldb, K, N, trans_b, dst};
    size_t panels = (N + NR - 1) / NR;
    if ((size_t)K * N < 65536) nthreads = 1;
    on_parallel_for(panels, pack_panels, &x, nthreads);
}

on_status on_packed_b_create(const float *b, size_t ldb, int trans_b, size_t K, size_t N, on_packed_b **out) {
    if (!out) return ON_ERR_ARG;
    *out = NULL;
    if (!b || K == 0 || N == 0) return ON_ERR_ARG;
    if (ldb < (trans_b ? K : N)) return ON_ERR_ARG;
    size_t floats = on_packed_b_floats(K, N), bytes;
    if (floats == 0 || !on_mul_size(floats, sizeof(float), &bytes)) return ON_ERR_NOMEM;
    on_packed_b *pb = (on_packed_b *)on_malloc(sizeof(on_packed_b));
    if (!pb) return ON_ERR_NOMEM;
    pb->data = (float *)on_malloc(bytes);
    if (!pb->data) {
        on_free(pb);
        return ON_ERR_NOMEM;
    }
    pb->K = K;
    pb->N = N;
    pb->npanels = (N + NR - 1) / NR;
    on_pack_b(b, ldb, trans_b, K, N, pb->data, 1);
    *out = pb;
    return ON_OK;
}

void on_packed_b_free(on_packed_b *pb) {
    if (!pb) return;
    on_free(pb->data);
    on_free(pb);
}

/* ---- portable micro-kernel ------------------------------------------------------------------ */

void on_gemm_store_tile_ref(const float *tile, size_t mr, size_t nr, float *c, size_t ldc, int accumulate,
                            const on_gemm_epilogue *ep, size_t m0, size_t n0) {
    for (size_t r = 0; r < mr; r++) {
        float *cr = c + r * ldc;
        const float *t = tile + r * NR;
        for (size_t j = 0; j < nr; j++) {
            float v = t[j];
            if (accumulate) v += cr[j];
            if (ep) v = on_act_ref(ep->act, ep->alpha * v + bias_at(ep, m0 + r, n0 + j));
            cr[j] = v;
        }
    }
}

static void f32_gemm_4x16__scalar(size_t mr, size_t nr, size_t kc, const float *a, size_t lda, const float *b,
                                  size_t ldb, float *c, size_t ldc, int accumulate, const on_gemm_epilogue *ep,
                                  size_t m0, size_t n0) {
    float acc[4][NR];
    memset(acc, 0, sizeof(acc));
    for (size_t k = 0; k < kc; k++) {
        const float *bk = b + k * ldb;
        for (size_t r = 0; r < mr; r++) {
            float av = a[r * lda + k];
            for (size_t j = 0; j < NR; j++) acc[r][j] += av * bk[j];
        }
    }
    on_gemm_store_tile_ref(&acc[0][0], mr, nr, c, ldc, accumulate, ep, m0, n0);
}

const on_gemm_ukernel on_f32_gemm_4x16__scalar = {"f32_gemm_4x16__scalar", 4, f32_gemm_4x16__scalar, NULL};

/* ---- driver --------------------------------------------------------------------------------- */

/* Rows for the next tile: full tiles, but a remainder just past a full tile is split evenly (6-row
 * kernel: 7/8 -> 4+3/4+4; 12-row kernel: 13..17 -> 7+6..9+8) so no tile runs with 1-2 rows (those
 * are FMA-latency bound). */
static inline size_t strip_rows(size_t rem, size_t mr) {
    if (rem > mr && rem < mr + mr / 2) return (rem + 1) / 2;
    return rem < mr ? rem : mr;
}

/* abuf (GEMM_MC * GEMM_KC floats, or NULL): rows of A in a block are copied there (row stride kc)
 * before they run against the panels; see a_block_buffer for when. */
#ifndef GEMM_SHORT_K
#define GEMM_SHORT_K 64
#endif

static void run_panels_buf(const on_gemm_ukernel *uk, size_t m_begin, size_t m_end, size_t p_begin, size_t p_end,
                           size_t N, size_t K, const float *A, size_t lda, const float *panels,
                           size_t panel_stride, size_t ldb, float *C, size_t ldc, const on_gemm_epilogue *ep,
                           float *abuf) {
    size_t nkb = (K + GEMM_KC - 1) / GEMM_KC;
    size_t kc = (K + nkb - 1) / nkb; /* balanced K blocks: no tiny last block */
    /* an epilogue that changes nothing takes the kernels' plain store (its per-row bias, alpha and
     * activation checks cost ~2 % of a 256 x 256 x 256 product) */
    if (ep && ep->bias_kind == ON_BIAS_NONE && ep->alpha == 1.0f && ep->act.kind == ON_ACT_NONE) ep = NULL;
    int copy_a = abuf != NULL;
    for (size_t k0 = 0; k0 < K; k0 += kc) {
        size_t kcur = K - k0 < kc ? K - k0 : kc;
        int first = k0 == 0, last = k0 + kcur == K;
        for (size_t mb = m_begin; mb < m_end; mb += GEMM_MC) {
            size_t me = m_end - mb < GEMM_MC ? m_end : mb + GEMM_MC;
            const float *ab = A + mb * lda + k0;
            size_t ablda = lda;
            if (copy_a) {
                for (size_t r = 0; r < me - mb; r++) memcpy(abuf + r * kcur, ab + r * lda, kcur * sizeof(float));
                ab = abuf;
                ablda = kcur;
            }
            if (kcur <= GEMM_SHORT_K) {
                /* short K (1x1 convs with few input channels): the tiles are cheap and the C stores
                 * dominate. Sweep each row strip across all panels, so C is written as mr sequential
                 * streams; panel-outer order wrote one 64-byte piece of every row in turn, and rows
                 * H*W floats apart (16 KiB at 64x64) all fall into the same cache sets. */
                for (size_t m = mb; m < me;) {
                    size_t mr = strip_rows(me - m, uk->mr);
                    for (size_t p = p_begin; p < p_end;) {
                        size_t n0 = p * NR, step = uk->tile2 && p + 1 < p_end ? 2 : 1;
                        size_t nr = N - n0 < step * NR ? N - n0 : step * NR;
                        const float *bp = panels + p * panel_stride + k0 * ldb;
                        if (step == 2)
                            uk->tile2(mr, nr, kcur, ab + (m - mb) * ablda, ablda, bp, ldb, panel_stride,
                                      C + m * ldc + n0, ldc, !first, last ? ep : NULL, m, n0);
                        else
                            uk->tile(mr, nr, kcur, ab + (m - mb) * ablda, ablda, bp, ldb, C + m * ldc + n0, ldc,
                                     !first, last ? ep : NULL, m, n0);
                        p += step;
                    }
                    m += mr;
                }
                continue;
            }
            for (size_t p = p_begin; p < p_end;) {
                size_t n0 = p * NR, step = uk->tile2 && p + 1 < p_end ? 2 : 1;
                size_t nr = N - n0 < step * NR ? N - n0 : step * NR;
                const float *bp = panels + p * panel_stride + k0 * ldb;
                for (size_t m = mb; m < me;) {
                    size_t mr = strip_rows(me - m, uk->mr);
                    if (step == 2)
                        uk->tile2(mr, nr, kcur, ab + (m - mb) * ablda, ablda, bp, ldb, panel_stride, C + m * ldc + n0,
                                  ldc, !first, last ? ep : NULL, m, n0);
                    else
                        uk->tile(mr, nr, kcur, ab + (m - mb) * ablda, ablda, bp, ldb, C + m * ldc + n0, ldc, !first,
                                 last ? ep : NULL, m, n0);
                    m += mr;
                }
                p += step;
            }
        }
    }
}

/* A contiguous copy of the A blocks pays only when lda is a multiple of 4 KiB (with enough panels
 * and rows to amortise it): the row streams of a tile would otherwise share one group of cache sets.
 * Any other stride is read in place. Copying every A cost 2-3 % at 256 x 256 x 256 on one thread and
 * ~4 % on two, where each thread copies all the rows it sweeps (Zen 5, both kernels); at lda = 1024
 * and 2048 floats the copy measured neutral there and is kept for cores with less associative caches.
 * The buffer is per-thread scratch: a fresh 192 KiB malloc per call would be an mmap + page faults
 * each time. NULL on allocation failure: A is then read in place. */
static float *a_block_buffer(size_t m_begin, size_t m_end, size_t p_begin, size_t p_end, size_t lda) {
    if (p_end - p_begin >= 4 && m_end - m_begin >= 6 && (lda * sizeof(float)) % 4096 == 0)
        return (float *)on_scratch(ON_SLOT_GEMM_A, GEMM_MC * GEMM_KC * sizeof(float));
    return NULL;
}

void on_gemm_run_panels(const on_gemm_ukernel *uk, size_t m_begin, size_t m_end, size_t p_begin, size_t p_end,
                        size_t N, size_t K, const float *A, size_t lda, const float *panels, float *C,
                        size_t ldc, const on_gemm_epilogue *ep) {
    run_panels_buf(uk, m_begin, m_end, p_begin, p_end, N, K, A, lda, panels, K * NR, NR, C, ldc, ep,
                   a_block_buffer(m_begin, m_end, p_begin, p_end, lda));
}

void on_gemm_run_rowmajor_b(const on_gemm_ukernel *uk, size_t m_begin, size_t m_end, size_t p_begin,
                            size_t p_end, size_t N, size_t K, const float *A, size_t lda, const float *B,
                            size_t ldb, float *C, size_t ldc, const on_gemm_epilogue *ep) {
    run_panels_buf(uk, m_begin, m_end, p_begin, p_end, N, K, A, lda, B, NR, ldb, C, ldc, ep,
                   a_block_buffer(m_begin, m_end, p_begin, p_end, lda));
}

typedef struct {
    const on_gemm_ukernel *uk;
    size_t M, N, K, npanels;
    const float *A;
    size_t lda;
    const float *panels;
    size_t panel_stride, ldb; /* packed: K * NR and NR; B read in place: NR and its row stride */
    float *C;
    size_t ldc;
    const on_gemm_epilogue *ep;
    int split_n;
    size_t row_unit;
} gemm_job;

static void gemm_job_range(void *vctx, size_t begin, size_t end) {
    const gemm_job *j = (const gemm_job *)vctx;
    size_t mb = 0, me = j->M, pb = 0, pe = j->npanels;
    if (j->split_n) {
        pb = begin;
        pe = end;
    } else {
        mb = begin * j->row_unit;
        me = end * j->row_unit;
        if (me > j->M) me = j->M;
    }
    run_panels_buf(j->uk, mb, me, pb, pe, j->N, j->K, j->A, j->lda, j->panels, j->panel_stride, j->ldb, j->C,
                   j->ldc, j->ep, a_block_buffer(mb, me, pb, pe, j->lda));
}

static void fill_epilogue_only(size_t M, size_t N, const on_gemm_epilogue *ep, float *C, size_t ldc) {
    for (size_t m = 0; m < M; m++)
        for (size_t n = 0; n < N; n++) C[m * ldc + n] = on_act_ref(ep->act, bias_at(ep, m, n));
}

/* panels/panel_stride/ldb: packed B (K * NR, NR) or B read in place (NR, row stride; N a multiple
 * of NR). */
static on_status run_gemm(int trans_a, size_t M, size_t N, size_t K, const float *A, size_t lda,
                          const float *panels, size_t panel_stride, size_t ldb, const on_gemm_epilogue *ep,
                          float *C, size_t ldc, int nthreads) {
    float *at = NULL;
    int at_owned = 0;
    if (trans_a) { /* op(A) = A^T: make a row-major copy so the micro-kernels read rows */
        size_t bytes;
        if (!on_mul_size(M, K, &bytes) || !on_mul_size(bytes, sizeof(float), &bytes)) return ON_ERR_NOMEM;
        at = (float *)on_temp_alloc(ON_SLOT_AUX, bytes, &at_owned);
        if (!at) return ON_ERR_NOMEM;
        for (size_t k = 0; k < K; k++)
            for (size_t m = 0; m < M; m++) at[m * K + k] = A[k * lda + m];
        A = at;
        lda = K;
    }
    gemm_job j;
    j.uk = on_kernels_active()->gemm;
    j.M = M;
    j.N = N;
    j.K = K;
    j.npanels = (N + NR - 1) / NR;
    j.A = A;
    j.lda = lda;
    j.panels = panels;
    j.panel_stride = panel_stride;
    j.ldb = ldb;
    j.C = C;
    j.ldc = ldc;
    j.ep = ep;
    j.row_unit = j.uk->mr;
    size_t row_units = (M + j.row_unit - 1) / j.row_unit;
    /* below ~0.5 MFLOP a thread hand-off costs more than it saves; a GEMV-like product (few rows) is
     * bound by streaming its weights instead, and splitting that stream pays from ~64K weights (MLP
     * 256->512 at M = 1: 2 threads took 5.0 -> 3.2 us with the workers spinning) */
    double mnk = (double)M * (double)N * (double)K;
    if (mnk < 262144.0 && !(M <= 4 && (double)N * (double)K >= 65536.0)) nthreads = 1;
    if (nthreads < 1) nthreads = 1;
    j.split_n = j.npanels >= (size_t)nthreads * 2 || j.npanels >= row_units;
    if (nthreads == 1)
        gemm_job_range(&j, 0, j.split_n ? j.npanels : row_units);
    else
        on_parallel_for(j.split_n ? j.npanels : row_units, gemm_job_range, &j, nthreads);
    on_temp_free(at, at_owned);
    return ON_OK;
}

static on_status check_common(int trans_a, size_t M, size_t N, size_t K, const float *A, size_t lda,
                              const on_gemm_epilogue *ep, const float *C, size_t ldc) {
    on_status st = check_epilogue(ep);
    if (st != ON_OK) return st;
    if (M == 0 || N == 0) return ON_OK;
    if (!C || ldc < N) return ON_ERR_ARG;
    if (K > 0 && (!A || lda < (trans_a ? M : K))) return ON_ERR_ARG;
    return ON_OK;
}

on_status on_gemm_packed(int trans_a, size_t M, size_t N, size_t K, const float *A, size_t lda,
                         const on_packed_b *B, const on_gemm_epilogue *ep, float *C, size_t ldc, int nthreads) {
    on_status st = check_common(trans_a, M, N, K, A, lda, ep, C, ldc);
    if (st != ON_OK) return st;
    if (!B || !B->data) return ON_ERR_ARG;
    if (B->K != K || B->N != N) return ON_ERR_SHAPE;
    if (M == 0 || N == 0) return ON_OK;
    return run_gemm(trans_a, M, N, K, A, lda, B->data, K * NR, NR, ep, C, ldc, nthreads);
}

on_status on_gemm(int trans_a, int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda,
                  const float *B, size_t ldb, const on_gemm_epilogue *ep, float *C, size_t ldc, int nthreads) {
    on_status st = check_common(trans_a, M, N, K, A, lda, ep, C, ldc);
    if (st != ON_OK) return st;
    if (M == 0 || N == 0) return ON_OK;
    if (K == 0) {
        fill_epilogue_only(M, N, ep, C, ldc);
        return ON_OK;
    }
    if (!B || ldb < (trans_b ? K : N)) return ON_ERR_ARG;
    size_t floats = on_packed_b_floats(K, N), bytes;
    if (floats == 0 || !on_mul_size(floats, sizeof(float), &bytes)) return ON_ERR_NOMEM;
    if (!trans_b && M <= GEMM_DIRECT_B_MAX_M) {
        /* few rows: packing B would cost as much as the product; read full panels in place and pack
         * only a partial last panel */
        size_t nfull = N / NR, tail = N - nfull * NR;
        if (nfull) st = run_gemm(trans_a, M, nfull * NR, K, A, lda, B, NR, ldb, ep, C, ldc, nthreads);
        if (st == ON_OK && tail) {
            on_gemm_epilogue ept = *ep;
            if (ept.bias_kind == ON_BIAS_COL) ept.bias += nfull * NR;
            int owned;
            float *panel = (float *)on_temp_alloc(ON_SLOT_GEMM_PACK_B, K * NR * sizeof(float), &owned);
            if (!panel) return ON_ERR_NOMEM;
            on_pack_b(B + nfull * NR, ldb, 0, K, tail, panel, 1);
            st = run_gemm(trans_a, M, tail, K, A, lda, panel, K * NR, NR, &ept, C + nfull * NR, ldc, 1);
            on_temp_free(panel, owned);
        }
        return st;
    }
    int owned;
    float *panels = (float *)on_temp_alloc(ON_SLOT_GEMM_PACK_B, bytes, &owned);
    if (!panels) return ON_ERR_NOMEM;
    on_pack_b(B, ldb, trans_b, K, N, panels, nthreads);
    st = run_gemm(trans_a, M, N, K, A, lda, panels, K * NR, NR, ep, C, ldc, nthreads);
    on_temp_free(panels, owned);
    return st;
}

float on_fma_burst__scalar(size_t iters) {
    volatile float sink = 0.0f; /* scalar FMAs: the compiler may vectorise, which is then the portable peak */
    float v[12];
    for (int i = 0; i < 12; i++) v[i] = (float)i * 1e-3f;
    for (size_t it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++) v[i] = v[i] * 0.999f + 1e-4f;
    for (int i = 0; i < 12; i++) sink += v[i];
    return sink;
}

typedef struct {
    int trans_a, trans_b;
    size_t M, N, K, lda, ldb, ldc, stride_a, stride_b, stride_c;
    const float *A, *B;
    float *C;
    const on_gemm_epilogue *ep;
    atomic_int failed;
} gemm_batch_job;

static void gemm_batch_range(void *vctx, size_t begin, size_t end) {
    gemm_batch_job *j = (gemm_batch_job *)vctx;
    for (size_t i = begin; i < end; i++) {
        on_status st = on_gemm(j->trans_a, j->trans_b, j->M, j->N, j->K, j->A + i * j->stride_a, j->lda,
                               j->B + i * j->stride_b, j->ldb, j->ep, j->C + i * j->stride_c, j->ldc, 1);
        if (st != ON_OK) atomic_store(&j->failed, (int)st);
    }
}

/* Products big enough to split (ViT's 197 x 197 x 64 scores, 3 heads) are cut as one list of
 * nbatch x npanels panel units shared out in contiguous ranges: one hand-off for the whole batch
 * instead of one per product, balanced to a panel whatever the head count (3 heads on 2 threads:
 * 20 + 19 panels, where whole products give 2 + 1 and a split per product 7 + 6 three times). Each
 * thread packs only the panels of B it runs. */
typedef struct {
    const on_gemm_ukernel *uk;
    int trans_b;
    size_t M, N, K, lda, ldb, ldc, stride_a, stride_b, stride_c, npanels;
    const float *A, *B;
    float *C;
    const on_gemm_epilogue *ep;
    atomic_int failed;
} gemm_batch_panels_job;

static void gemm_batch_panel_range(void *vctx, size_t begin, size_t end) {
    gemm_batch_panels_job *j = (gemm_batch_panels_job *)vctx;
    for (size_t u = begin; u < end;) {
        size_t i = u / j->npanels, pb = u % j->npanels;
        size_t pe = pb + (end - u) < j->npanels ? pb + (end - u) : j->npanels;
        size_t n0 = pb * NR, n1 = pe * NR < j->N ? pe * NR : j->N, cols = n1 - n0;
        int owned;
        float *panels = (float *)on_temp_alloc(ON_SLOT_GEMM_PACK_B, (pe - pb) * j->K * NR * sizeof(float), &owned);
        if (!panels) {
            atomic_store(&j->failed, (int)ON_ERR_NOMEM);
            return;
        }
        const float *b = j->B + i * j->stride_b + (j->trans_b ? n0 * j->ldb : n0);
        on_pack_b(b, j->ldb, j->trans_b, j->K, cols, panels, 1);
        on_gemm_epilogue ep = *j->ep;
        if (ep.bias_kind == ON_BIAS_COL) ep.bias += n0;
        on_gemm_run_panels(j->uk, 0, j->M, 0, pe - pb, cols, j->K, j->A + i * j->stride_a, j->lda, panels,
                           j->C + i * j->stride_c + n0, j->ldc, &ep);
        on_temp_free(panels, owned);
        u += pe - pb;
    }
}

on_status on_gemm_batch(int trans_a, int trans_b, size_t M, size_t N, size_t K, const float *A, size_t lda,
                        size_t stride_a, const float *B, size_t ldb, size_t stride_b, const on_gemm_epilogue *ep,
                        float *C, size_t ldc, size_t stride_c, size_t nbatch, int nthreads) {
    if (nbatch == 0) return ON_OK;
    double flops = 2.0 * (double)M * (double)N * (double)K;
    if (nthreads > 1 && nbatch >= 2 && flops >= 524288.0 && !trans_a && K > 0 && M > 0 && N > 0) {
        on_status st = check_epilogue(ep);
        if (st != ON_OK) return st;
        if (!A || !B || !C || lda < K || ldb < (trans_b ? K : N) || ldc < N) return ON_ERR_ARG;
        gemm_batch_panels_job j = {on_kernels_active()->gemm, trans_b, M, N, K, lda, ldb, ldc, stride_a, stride_b,
                                   stride_c, (N + NR - 1) / NR, A, B, C, ep, 0};
        atomic_init(&j.failed, 0);
        on_parallel_for(nbatch * j.npanels, gemm_batch_panel_range, &j, nthreads);
        return (on_status)atomic_load(&j.failed);
    }
    if (nthreads <= 1 || nbatch < 2 || flops >= 524288.0) {
        /* one thread, or products split one by one (A transposed: on_gemm copies it) */
        for (size_t i = 0; i < nbatch; i++) {
            on_status st = on_gemm(trans_a, trans_b, M, N, K, A + i * stride_a, lda, B + i * stride_b, ldb, ep,
                                   C + i * stride_c, ldc, nthreads);
            if (st != ON_OK) return st;
        }
        return ON_OK;
    }
    gemm_batch_job j = {trans_a, trans_b, M, N, K, lda, ldb, ldc, stride_a, stride_b, stride_c, A, B, C, ep, 0};
    atomic_init(&j.failed, 0);
    on_parallel_for(nbatch, gemm_batch_range, &j, flops * (double)nbatch < 262144.0 ? 1 : nthreads);
    return (on_status)atomic_load(&j.failed);
}
