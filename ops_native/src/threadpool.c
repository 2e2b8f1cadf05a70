/* threadpool.c - persistent worker pool behind on_parallel_for.
 *
 * One job at a time: the caller publishes (fn, ctx, n, nchunks) and a 64-bit ticket
 * (generation << 32 | next chunk). Workers and the caller claim chunks by CAS on the ticket, so a
 * late worker can never claim a chunk of a newer job with the older job's function. The caller
 * first closes the ticket (new generation, chunk CLOSED) and only then rewrites the job: a worker
 * still claiming in the old generation fails its CAS instead of pairing an old ticket with the new
 * job's chunk count (which ran a chunk twice and wrapped `remaining`, a hang found by the warm-up
 * test under ASan). Workers spin
 * briefly after a job (back-to-back kernels are common) and then sleep on a condition variable.
 * Workers are created lazily, only when a call asks for more threads than exist: no allocation on
 * the hot path.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "threadpool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define ON_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define ON_CPU_RELAX() __asm__ volatile("yield")
#else
#define ON_CPU_RELAX() ((void)0)
#endif

/* How long an idle worker (or a waiting caller) spins before sleeping: longer than the gaps between
 * the parallel kernels of one inference (elementwise and shape ops run inline between them; on the
 * transformer zoo model the gaps reach ~1 ms), and short enough that an idle agent stops burning its
 * cores almost at once. A futex wake-up costs 30-100 us on a VM, as much as a whole small GEMM:
 * with 300 us the worker was asleep at most parallel kernels of small models, and 2 threads ran no
 * faster than 1. */
#define SPIN_NS 2000000L

typedef void (*on_range_fn)(void *ctx, size_t begin, size_t end);

#define CLOSED 0xffffffffu /* chunk field of a ticket whose job is being written */

static struct {
    pthread_mutex_t call_lock; /* serialises callers */
    pthread_mutex_t mu;        /* guards sleeping/waking */
    pthread_cond_t cv_work;
    pthread_cond_t cv_done;
    int nworkers;
    _Atomic(on_range_fn) fn;
    _Atomic(void *) ctx;
    atomic_size_t n;
    atomic_uint nchunks;
    atomic_uint_least64_t ticket; /* generation << 32 | next chunk */
    atomic_uint remaining;        /* chunks of the current job not yet finished */
} g_pool = {
    .call_lock = PTHREAD_MUTEX_INITIALIZER,
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .cv_work = PTHREAD_COND_INITIALIZER,
    .cv_done = PTHREAD_COND_INITIALIZER,
};

static _Thread_local int tl_in_pool = 0;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

static void chunk_bounds(size_t n, unsigned nchunks, unsigned c, size_t *b, size_t *e) {
    size_t q = n / nchunks, r = n % nchunks;
    *b = q * c + (c < r ? c : r);
    *e = *b + q + (c < r ? 1 : 0);
}

/* Claim and run chunks of generation gen until none is left. */
static void run_chunks(uint32_t gen) {
    for (;;) {
        uint64_t t = atomic_load_explicit(&g_pool.ticket, memory_order_acquire);
        if ((uint32_t)(t >> 32) != gen) return;
        unsigned nchunks = atomic_load_explicit(&g_pool.nchunks, memory_order_relaxed);
        on_range_fn fn = atomic_load_explicit(&g_pool.fn, memory_order_relaxed);
        void *ctx = atomic_load_explicit(&g_pool.ctx, memory_order_relaxed);
        size_t n = atomic_load_explicit(&g_pool.n, memory_order_relaxed);
        unsigned c = (unsigned)(t & 0xffffffffu);
        if (c == CLOSED) { /* the caller is writing this generation's job: it opens in a moment */
            ON_CPU_RELAX();
            continue;
        }
        if (c >= nchunks) return;
        if (!atomic_compare_exchange_weak_explicit(&g_pool.ticket, &t, t + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        size_t b, e;
        chunk_bounds(n, nchunks, c, &b, &e);
        if (e > b) fn(ctx, b, e);
        if (atomic_fetch_sub_explicit(&g_pool.remaining, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&g_pool.mu);
            pthread_cond_broadcast(&g_pool.cv_done);
            pthread_mutex_unlock(&g_pool.mu);
        }
    }
}

static void *worker_main(void *arg) {
    tl_in_pool = 1;
    uint32_t seen = (uint32_t)(uintptr_t)arg; /* generation current when this worker was made */
    for (;;) {
        uint32_t gen = seen;
        long long deadline = now_ns() + SPIN_NS;
        for (unsigned i = 1;; i++) {
            gen = (uint32_t)(atomic_load_explicit(&g_pool.ticket, memory_order_acquire) >> 32);
            if (gen != seen) break;
            ON_CPU_RELAX();
            if ((i & 255u) == 0 && now_ns() > deadline) break;
        }
        if (gen == seen) {
            pthread_mutex_lock(&g_pool.mu);
            while ((gen = (uint32_t)(atomic_load(&g_pool.ticket) >> 32)) == seen)
                pthread_cond_wait(&g_pool.cv_work, &g_pool.mu);
            pthread_mutex_unlock(&g_pool.mu);
        }
        seen = gen;
        run_chunks(gen);
    }
    return NULL;
}

/* A forked child has none of the parent's workers: start again from an empty pool. */
static void atfork_child(void) {
    pthread_mutex_init(&g_pool.call_lock, NULL);
    pthread_mutex_init(&g_pool.mu, NULL);
    pthread_cond_init(&g_pool.cv_work, NULL);
    pthread_cond_init(&g_pool.cv_done, NULL);
    g_pool.nworkers = 0;
}
static void atfork_prepare(void) { pthread_mutex_lock(&g_pool.call_lock); }
static void atfork_parent(void) { pthread_mutex_unlock(&g_pool.call_lock); }
static void register_atfork(void) { pthread_atfork(atfork_prepare, atfork_parent, atfork_child); }

/* Grow the pool to `want` workers; returns how many exist (may be fewer if creation failed). */
static int ensure_workers(int want) {
    while (g_pool.nworkers < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        uintptr_t gen = (uintptr_t)(uint32_t)(atomic_load(&g_pool.ticket) >> 32);
        int rc = pthread_create(&th, &attr, worker_main, (void *)gen);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        g_pool.nworkers++;
    }
    return g_pool.nworkers;
}

int on_threadpool_workers(void) {
    pthread_mutex_lock(&g_pool.call_lock);
    int n = g_pool.nworkers;
    pthread_mutex_unlock(&g_pool.call_lock);
    return n;
}

int on_num_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Start the next generation closed (call_lock held). The exchange is acq_rel: the job stores that
 * follow cannot move before it, and a worker CAS that succeeded before it (old generation) has had
 * its reads of the old job completed. Returns the new generation. */
static uint32_t close_ticket(void) {
    uint64_t old = atomic_load_explicit(&g_pool.ticket, memory_order_relaxed);
    uint32_t gen = (uint32_t)(old >> 32) + 1u;
    atomic_exchange_explicit(&g_pool.ticket, ((uint64_t)gen << 32) | CLOSED, memory_order_acq_rel);
    return gen;
}

/* Publish an empty job: every worker sees a new generation, finds no chunk and spins for SPIN_NS
 * waiting for the next one. Callers never wait on an empty job (remaining = 0). */
void on_pool_warm(int nthreads) {
    if (nthreads > ON_MAX_THREADS) nthreads = ON_MAX_THREADS;
    if (nthreads <= 1 || tl_in_pool) return;
    pthread_once(&g_atfork_once, register_atfork);
    pthread_mutex_lock(&g_pool.call_lock);
    if (ensure_workers(nthreads - 1) >= 1) {
        uint32_t gen = close_ticket();
        atomic_store_explicit(&g_pool.nchunks, 0u, memory_order_relaxed);
        atomic_store_explicit(&g_pool.remaining, 0u, memory_order_relaxed);
        atomic_store_explicit(&g_pool.ticket, (uint64_t)gen << 32, memory_order_release);
        pthread_mutex_lock(&g_pool.mu);
        pthread_cond_broadcast(&g_pool.cv_work);
        pthread_mutex_unlock(&g_pool.mu);
    }
    pthread_mutex_unlock(&g_pool.call_lock);
}

void on_parallel_for(size_t n, void (*fn)(void *ctx, size_t begin, size_t end), void *ctx, int nthreads) {
    if (!fn || n == 0) return;
    if (nthreads > ON_MAX_THREADS) nthreads = ON_MAX_THREADS;
    if ((size_t)nthreads > n) nthreads = (int)n;
    if (nthreads <= 1 || tl_in_pool) {
        fn(ctx, 0, n);
        return;
    }
    pthread_once(&g_atfork_once, register_atfork);
    pthread_mutex_lock(&g_pool.call_lock);
    int workers = ensure_workers(nthreads - 1);
    if (workers < 1) {
        pthread_mutex_unlock(&g_pool.call_lock);
        fn(ctx, 0, n);
        return;
    }
    unsigned nchunks = (unsigned)nthreads;
    uint32_t gen = close_ticket();
    atomic_store_explicit(&g_pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&g_pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&g_pool.n, n, memory_order_relaxed);
    atomic_store_explicit(&g_pool.nchunks, nchunks, memory_order_relaxed);
    atomic_store_explicit(&g_pool.remaining, nchunks, memory_order_relaxed);
    atomic_store_explicit(&g_pool.ticket, (uint64_t)gen << 32, memory_order_release);
    pthread_mutex_lock(&g_pool.mu);
    pthread_cond_broadcast(&g_pool.cv_work);
    pthread_mutex_unlock(&g_pool.mu);

    tl_in_pool = 1;
    run_chunks(gen);
    tl_in_pool = 0;

    long long deadline = now_ns() + SPIN_NS;
    for (unsigned i = 1; atomic_load_explicit(&g_pool.remaining, memory_order_acquire); i++) {
        ON_CPU_RELAX();
        if ((i & 255u) == 0 && now_ns() > deadline) break;
    }
    if (atomic_load_explicit(&g_pool.remaining, memory_order_acquire)) {
        pthread_mutex_lock(&g_pool.mu);
        while (atomic_load(&g_pool.remaining)) pthread_cond_wait(&g_pool.cv_done, &g_pool.mu);
        pthread_mutex_unlock(&g_pool.mu);
    }
    pthread_mutex_unlock(&g_pool.call_lock);
}
