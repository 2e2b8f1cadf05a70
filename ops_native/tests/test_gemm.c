/* test_gemm.c - GEMM fast paths vs the reference, thread pool, ISA dispatch, argument checks. */
#include <stdatomic.h>
#include <stdint.h>

#include "on_gemm.h"
#include "on_test.h"

static const on_act_t ACTS[] = {
    {ON_ACT_NONE, 0.0f, 0.0f},       {ON_ACT_RELU, 0.0f, 0.0f},      {ON_ACT_CLIP, 0.0f, 6.0f},
    {ON_ACT_LEAKY_RELU, 0.1f, 0.0f}, {ON_ACT_HARDSWISH, 0.0f, 0.0f}, {ON_ACT_SIGMOID, 0.0f, 0.0f},
    {ON_ACT_CLIP, -0.5f, 0.5f},      {ON_ACT_SILU, 0.0f, 0.0f},      {ON_ACT_GELU, 0.0f, 0.0f},
};
#define NACTS (sizeof(ACTS) / sizeof(ACTS[0]))

static float *alloc_rand(size_t n) {
    float *p = (float *)malloc((n ? n : 1) * sizeof(float));
    on_test_fill(p, n);
    return p;
}

/* One case: every fast path (unpacked, packed; threads 1 and 2) against the reference. lda 0: a padded
 * row stride; else that one. */
static void gemm_case(size_t M, size_t N, size_t K, int ta, int tb, on_bias_kind bk, on_act_t act, float alpha,
                      size_t lda) {
    if (!lda) lda = (ta ? M : K) + 3;
    size_t ldb = (tb ? K : N) + 1, ldc = N + 2; /* padded strides */
    float *A = alloc_rand((ta ? K : M) * lda), *B = alloc_rand((tb ? N : K) * ldb);
    float *bias = alloc_rand(M > N ? M : N);
    float *ref = alloc_rand(M * ldc), *got = alloc_rand(M * ldc);
    on_gemm_epilogue ep = {alpha, bk, bk == ON_BIAS_NONE ? NULL : bias, act};
    CHECK_EQ_INT(on_gemm_ref(ta, tb, M, N, K, A, lda, B, ldb, &ep, ref, ldc), ON_OK);
    float atol = 1e-5f * (float)(K + 1), rtol = 1e-4f;
    char what[160];
    for (int threads = 1; threads <= 2; threads++) {
        snprintf(what, sizeof(what), "on_gemm M%zu N%zu K%zu ta%d tb%d bias%d act%d thr%d", M, N, K, ta, tb, (int)bk,
                 (int)act.kind, threads);
        CHECK_EQ_INT(on_gemm(ta, tb, M, N, K, A, lda, B, ldb, &ep, got, ldc, threads), ON_OK);
        for (size_t m = 0; m < M; m++)
            if (!CHECK_ALLCLOSE(got + m * ldc, ref + m * ldc, N, rtol, atol, what)) break;
        on_packed_b *pb = NULL;
        CHECK_EQ_INT(on_packed_b_create(B, ldb, tb, K, N, &pb), ON_OK);
        if (pb) {
            snprintf(what, sizeof(what), "on_gemm_packed M%zu N%zu K%zu ta%d tb%d bias%d act%d thr%d", M, N, K, ta,
                     tb, (int)bk, (int)act.kind, threads);
            CHECK_EQ_INT(on_gemm_packed(ta, M, N, K, A, lda, pb, &ep, got, ldc, threads), ON_OK);
            for (size_t m = 0; m < M; m++)
                if (!CHECK_ALLCLOSE(got + m * ldc, ref + m * ldc, N, rtol, atol, what)) break;
            on_packed_b_free(pb);
        }
    }
    free(A);
    free(B);
    free(bias);
    free(ref);
    free(got);
}

static void test_gemm_shapes_all_isas(void) {
    static const size_t Ms[] = {1, 2, 5, 6, 7, 8, 13, 31, 67};
    static const size_t Ns[] = {1, 3, 15, 16, 17, 33, 67};
    static const size_t Ks[] = {1, 7, 16, 67, 257, 520};
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_isa_available((on_isa_t)isa)) continue;
        CHECK_EQ_INT(on_set_isa((on_isa_t)isa), 0);
        printf("  gemm isa: %s\n", on_isa_name(on_active_isa()));
        unsigned i = 0;
        for (size_t a = 0; a < sizeof(Ms) / sizeof(Ms[0]); a++)
            for (size_t b = 0; b < sizeof(Ns) / sizeof(Ns[0]); b++)
                for (size_t c = 0; c < sizeof(Ks) / sizeof(Ks[0]); c++, i++) {
                    on_bias_kind bk = (on_bias_kind)(i % 4);
                    float alpha = (i % 5 == 0) ? 0.5f : 1.0f;
                    gemm_case(Ms[a], Ns[b], Ks[c], (i / 3) % 2, (i / 7) % 2, bk, ACTS[i % NACTS], alpha, 0);
                }
        /* lda a multiple of 4 KiB: the driver copies the A blocks into a contiguous buffer (any other lda
         * is read in place), over two K blocks, with and without an epilogue */
        gemm_case(67, 100, 1100, 0, 0, ON_BIAS_NONE, ACTS[0], 1.0f, 2048);
        gemm_case(67, 100, 1100, 0, 0, ON_BIAS_COL, ACTS[1], 0.5f, 2048);
    }
    on_set_isa(ON_ISA_SCALAR);
    on_set_isa(on_isa_available(ON_ISA_AVX2) ? ON_ISA_AVX2 : (on_isa_available(ON_ISA_NEON) ? ON_ISA_NEON : ON_ISA_SCALAR));
}

static void test_gemm_large_threads_match_single(void) {
    size_t M = 150, N = 300, K = 700; /* several K blocks, M and N splits */
    float *A = alloc_rand(M * K), *B = alloc_rand(K * N), *c1 = alloc_rand(M * N), *c2 = alloc_rand(M * N);
    on_gemm_epilogue ep = on_gemm_epilogue_default();
    float *ref = alloc_rand(M * N);
    CHECK_EQ_INT(on_gemm_ref(0, 0, M, N, K, A, K, B, N, &ep, ref, N), ON_OK);
    CHECK_EQ_INT(on_gemm(0, 0, M, N, K, A, K, B, N, &ep, c1, N, 1), ON_OK);
    CHECK_EQ_INT(on_gemm(0, 0, M, N, K, A, K, B, N, &ep, c2, N, 2), ON_OK);
    CHECK_ALLCLOSE(c1, ref, M * N, 1e-4f, 1e-3f, "1 thread vs ref");
    CHECK_ALLCLOSE(c2, c1, M * N, 0.0f, 0.0f, "2 threads bit-identical to 1");
    CHECK_EQ_INT(on_gemm(0, 0, M, N, K, A, K, B, N, &ep, c2, N, 7), ON_OK);
    CHECK_ALLCLOSE(c2, c1, M * N, 0.0f, 0.0f, "7 threads bit-identical to 1");
    free(A);
    free(B);
    free(c1);
    free(c2);
    free(ref);
}

/* on_gemm_batch against the reference per product, for each way the driver can split: products
 * small enough to share out whole, large ones that divide evenly over the threads (whole products)
 * and ones that do not (each product split), with transposed operands read through their strides. */
static void gemm_batch_case(size_t nbatch, size_t M, size_t N, size_t K, int ta, int tb, on_bias_kind bk) {
    size_t lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 2, ldc = N + 1;
    size_t sa = (ta ? K : M) * lda + 5, sb = (tb ? N : K) * ldb + 3, sc = M * ldc + 4;
    float *A = alloc_rand(nbatch * sa), *B = alloc_rand(nbatch * sb);
    float *ref = alloc_rand(nbatch * sc), *got = alloc_rand(nbatch * sc);
    float *bias = alloc_rand(M > N ? M : N);
    on_gemm_epilogue ep = {0.125f, bk, bk == ON_BIAS_NONE ? NULL : bias, {ON_ACT_NONE, 0.0f, 0.0f}};
    for (size_t i = 0; i < nbatch; i++)
        CHECK_EQ_INT(on_gemm_ref(ta, tb, M, N, K, A + i * sa, lda, B + i * sb, ldb, &ep, ref + i * sc, ldc), ON_OK);
    char what[128];
    for (int threads = 1; threads <= 3; threads++) {
        snprintf(what, sizeof(what), "on_gemm_batch b%zu M%zu N%zu K%zu ta%d tb%d thr%d", nbatch, M, N, K, ta, tb,
                 threads);
        CHECK_EQ_INT(on_gemm_batch(ta, tb, M, N, K, A, lda, sa, B, ldb, sb, &ep, got, ldc, sc, nbatch, threads),
                     ON_OK);
        for (size_t i = 0; i < nbatch; i++)
            for (size_t m = 0; m < M; m++)
                if (!CHECK_ALLCLOSE(got + i * sc + m * ldc, ref + i * sc + m * ldc, N, 1e-4f, 1e-5f * (float)(K + 1),
                                    what)) {
                    i = nbatch;
                    break;
                }
    }
    free(A);
    free(B);
    free(bias);
    free(ref);
    free(got);
}

static void test_gemm_batch_every_split_matches_reference(void) {
    gemm_batch_case(12, 7, 9, 5, 0, 1, ON_BIAS_NONE);      /* tiny heads: shared out whole */
    gemm_batch_case(12, 67, 67, 64, 0, 1, ON_BIAS_NONE);   /* attention scores (Q.K^T): panel units */
    gemm_batch_case(12, 67, 64, 67, 0, 0, ON_BIAS_NONE);   /* P.V */
    gemm_batch_case(3, 67, 67, 64, 0, 1, ON_BIAS_COL);     /* 3 x 5 panels: ranges cut products */
    gemm_batch_case(3, 50, 100, 80, 0, 0, ON_BIAS_ROW);
    gemm_batch_case(3, 67, 67, 64, 1, 0, ON_BIAS_NONE);    /* A transposed: products one by one */
    gemm_batch_case(5, 40, 70, 100, 1, 1, ON_BIAS_COL);
}

static void test_gemm_k_zero_gives_bias_activation(void) {
    float bias[3] = {1.0f, -2.0f, 3.0f}, C[6];
    on_gemm_epilogue ep = {1.0f, ON_BIAS_COL, bias, {ON_ACT_RELU, 0.0f, 0.0f}};
    CHECK_EQ_INT(on_gemm(0, 0, 2, 3, 0, NULL, 0, NULL, 3, &ep, C, 3, 1), ON_OK);
    CHECK_NEAR(C[0], 1.0f, 0, 0);
    CHECK_NEAR(C[1], 0.0f, 0, 0);
    CHECK_NEAR(C[5], 3.0f, 0, 0);
}

static void test_gemm_rejects_bad_arguments(void) {
    float A[4] = {0}, B[4] = {0}, C[4];
    on_gemm_epilogue ep = on_gemm_epilogue_default();
    CHECK_EQ_INT(on_gemm(0, 0, 2, 2, 2, NULL, 2, B, 2, &ep, C, 2, 1), ON_ERR_ARG);
    CHECK_EQ_INT(on_gemm(0, 0, 2, 2, 2, A, 1, B, 2, &ep, C, 2, 1), ON_ERR_ARG);  /* lda < K */
    CHECK_EQ_INT(on_gemm(0, 0, 2, 2, 2, A, 2, B, 2, &ep, C, 1, 1), ON_ERR_ARG);  /* ldc < N */
    CHECK_EQ_INT(on_gemm(0, 0, 2, 2, 2, A, 2, B, 2, NULL, C, 2, 1), ON_ERR_ARG);
    ep.bias_kind = ON_BIAS_COL; /* bias kind without a bias pointer */
    CHECK_EQ_INT(on_gemm(0, 0, 2, 2, 2, A, 2, B, 2, &ep, C, 2, 1), ON_ERR_ARG);
    ep = on_gemm_epilogue_default();
    ep.act.kind = (on_act_kind)99;
    CHECK_EQ_INT(on_gemm(0, 0, 2, 2, 2, A, 2, B, 2, &ep, C, 2, 1), ON_ERR_ARG);
    ep = on_gemm_epilogue_default();
    on_packed_b *pb = NULL;
    CHECK_EQ_INT(on_packed_b_create(B, 2, 0, 2, 2, &pb), ON_OK);
    CHECK_EQ_INT(on_gemm_packed(0, 2, 2, 3, A, 3, pb, &ep, C, 2, 1), ON_ERR_SHAPE); /* K mismatch */
    CHECK_EQ_INT(on_gemm_packed(0, 2, 2, 2, A, 2, NULL, &ep, C, 2, 1), ON_ERR_ARG);
    on_packed_b_free(pb);
    CHECK_EQ_INT(on_packed_b_create(NULL, 2, 0, 2, 2, &pb), ON_ERR_ARG);
    CHECK(pb == NULL);
    CHECK_EQ_INT(on_packed_b_create(B, 2, 0, 0, 2, &pb), ON_ERR_ARG);
    CHECK_EQ_INT(on_gemm(0, 0, 0, 2, 2, A, 2, B, 2, &ep, C, 2, 1), ON_OK); /* empty is fine */
}

/* ---- thread pool ------------------------------------------------------------------------------ */

typedef struct {
    atomic_int *hits;
    atomic_int calls;
} cover_ctx;

static void cover_fn(void *vctx, size_t b, size_t e) {
    cover_ctx *c = (cover_ctx *)vctx;
    atomic_fetch_add(&c->calls, 1);
    for (size_t i = b; i < e; i++) atomic_fetch_add(&c->hits[i], 1);
}

static void nested_fn(void *vctx, size_t b, size_t e) {
    cover_ctx *c = (cover_ctx *)vctx;
    for (size_t i = b; i < e; i++) {
        cover_ctx inner = {c->hits + i * 4, 0};
        on_parallel_for(4, cover_fn, &inner, 2); /* nested: runs inline */
    }
}

static void test_parallel_for_covers_every_index_once(void) {
    static const size_t ns[] = {1, 2, 3, 7, 64, 1000};
    static const int ts[] = {1, 2, 3, 5, 16};
    for (size_t a = 0; a < sizeof(ns) / sizeof(ns[0]); a++)
        for (size_t b = 0; b < sizeof(ts) / sizeof(ts[0]); b++) {
            size_t n = ns[a];
            atomic_int *hits = (atomic_int *)calloc(n, sizeof(atomic_int));
            cover_ctx c = {hits, 0};
            for (int rep = 0; rep < 20; rep++) on_parallel_for(n, cover_fn, &c, ts[b]);
            int ok = 1;
            for (size_t i = 0; i < n; i++) ok &= atomic_load(&hits[i]) == 20;
            CHECK_MSG(ok, "n=%zu threads=%d: every index hit exactly 20 times", n, ts[b]);
            int expect_calls = (int)((size_t)ts[b] < n ? (size_t)ts[b] : n);
            CHECK_MSG(atomic_load(&c.calls) == 20 * expect_calls, "n=%zu threads=%d: %d calls, want %d", n, ts[b],
                      atomic_load(&c.calls), 20 * expect_calls);
            free(hits);
        }
    atomic_int *hits = (atomic_int *)calloc(40, sizeof(atomic_int));
    cover_ctx c = {hits, 0};
    on_parallel_for(10, nested_fn, &c, 2);
    int ok = 1;
    for (size_t i = 0; i < 40; i++) ok &= atomic_load(&hits[i]) == 1;
    CHECK_MSG(ok, "nested on_parallel_for covers every index once");
    free(hits);
    on_parallel_for(0, cover_fn, &c, 4); /* n = 0: no call */
    on_parallel_for(5, NULL, &c, 4);     /* NULL fn: ignored */
    CHECK(on_num_cpus() >= 1);
}

/* A warm-up (empty job) between real jobs must not lose or repeat a chunk, whatever the workers are
 * doing when it lands: spinning, asleep, or still leaving the previous job. */
static void test_pool_warm_interleaved_with_jobs(void) {
    static const int ts[] = {1, 2, 3, 8};
    for (size_t b = 0; b < sizeof(ts) / sizeof(ts[0]); b++) {
        size_t n = 257;
        atomic_int *hits = (atomic_int *)calloc(n, sizeof(atomic_int));
        cover_ctx c = {hits, 0};
        for (int rep = 0; rep < 50; rep++) {
            on_pool_warm(ts[b]);
            if (rep % 3 == 0) on_pool_warm(ts[b]); /* back-to-back warm-ups */
            on_parallel_for(n, cover_fn, &c, ts[b]);
        }
        int ok = 1;
        for (size_t i = 0; i < n; i++) ok &= atomic_load(&hits[i]) == 50;
        CHECK_MSG(ok, "threads=%d: every index hit exactly 50 times across warm-ups", ts[b]);
        free(hits);
    }
    on_pool_warm(0);
    on_pool_warm(-3);
}

/* ---- ISA, status, memory ------------------------------------------------------------------------ */

static void test_isa_dispatch_and_names(void) {
    CHECK(on_isa_available(ON_ISA_SCALAR));
    CHECK_EQ_INT(on_isa_from_name("avx2"), ON_ISA_AVX2);
    CHECK_EQ_INT(on_isa_from_name("avx2-fma"), ON_ISA_AVX2);
    CHECK_EQ_INT(on_isa_from_name("neon"), ON_ISA_NEON);
    CHECK_EQ_INT(on_isa_from_name("scalar"), ON_ISA_SCALAR);
    CHECK_EQ_INT(on_isa_from_name("sse9"), -1);
    CHECK(strcmp(on_isa_name(ON_ISA_AVX2), "avx2-fma") == 0);
#if defined(__aarch64__)
    CHECK(on_isa_available(ON_ISA_NEON));
    CHECK(!on_isa_available(ON_ISA_AVX2));
    CHECK_EQ_INT(on_set_isa(ON_ISA_AVX2), -1);
#elif defined(__x86_64__)
    CHECK(!on_isa_available(ON_ISA_NEON));
    CHECK_EQ_INT(on_set_isa(ON_ISA_NEON), -1);
#endif
    on_isa_t before = on_active_isa();
    CHECK_EQ_INT(on_set_isa((on_isa_t)42), -1);
    CHECK_EQ_INT(on_active_isa(), before);
    CHECK(strcmp(on_status_str(ON_ERR_SHAPE), "shape mismatch") == 0);
    CHECK(strcmp(on_status_str((on_status)77), "unknown status") == 0);
    void *p = on_malloc(100), *z = on_malloc(0), *q = on_calloc(10, 4);
    CHECK(p && ((uintptr_t)p % ON_ALIGN) == 0);
    CHECK(z != NULL);
    CHECK(q && ((float *)q)[9] == 0.0f);
    CHECK(on_calloc(SIZE_MAX / 2, 4) == NULL); /* overflow is refused */
    on_free(p);
    on_free(z);
    on_free(q);
}

int main(void) {
    printf("ops_native test_gemm: best ISA %s\n", on_isa_name(on_active_isa()));
    RUN(test_isa_dispatch_and_names);
    RUN(test_parallel_for_covers_every_index_once);
    RUN(test_pool_warm_interleaved_with_jobs);
    RUN(test_gemm_rejects_bad_arguments);
    RUN(test_gemm_k_zero_gives_bias_activation);
    RUN(test_gemm_shapes_all_isas);
    RUN(test_gemm_large_threads_match_single);
    RUN(test_gemm_batch_every_split_matches_reference);
    return on_test_summary();
}
