/* on_test.h - tiny header-only harness shared by the ops_native C tests.
 *
 *   #include "on_test.h"
 *   static void test_x(void) { CHECK(1 + 1 == 2); CHECK_NEAR(a, b, 1e-5f, 1e-5f); }
 *   int main(void) { RUN(test_x); return on_test_summary(); }
 *
 * Every CHECK counts one passed/failed assertion; the binary ends with the line
 * "N passed, M failed" and on_test_summary() returns non-zero when M > 0.
 */
#ifndef ON_TEST_H
#define ON_TEST_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static long on_test_passed = 0;
static long on_test_failed = 0;
static const char *on_test_current = "";

#define ON_TEST_FAIL_(...)                                                                      \
    do {                                                                                        \
        on_test_failed++;                                                                       \
        if (on_test_failed <= 50) {                                                             \
            fprintf(stderr, "FAIL %s (%s:%d): ", on_test_current, __FILE__, __LINE__);          \
            fprintf(stderr, __VA_ARGS__);                                                       \
            fputc('\n', stderr);                                                                \
        }                                                                                       \
    } while (0)

/* CHECK(cond): one assertion. */
#define CHECK(cond)                                                                             \
    do {                                                                                        \
        if (cond) on_test_passed++;                                                             \
        else ON_TEST_FAIL_("%s", #cond);                                                        \
    } while (0)

/* CHECK_MSG(cond, fmt, ...): assertion with a formatted context message on failure. */
#define CHECK_MSG(cond, ...)                                                                    \
    do {                                                                                        \
        if (cond) on_test_passed++;                                                             \
        else ON_TEST_FAIL_(__VA_ARGS__);                                                        \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                      \
    do {                                                                                        \
        long long on_a_ = (long long)(a), on_b_ = (long long)(b);                               \
        if (on_a_ == on_b_) on_test_passed++;                                                   \
        else ON_TEST_FAIL_("%s == %s (%lld vs %lld)", #a, #b, on_a_, on_b_);                    \
    } while (0)

/* |a - b| <= atol + rtol * |b|, NaN == NaN, inf == same inf */
static inline int on_test_close(float a, float b, float rtol, float atol) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b)) return a == b;
    return fabsf(a - b) <= atol + rtol * fabsf(b);
}

#define CHECK_NEAR(a, b, rtol, atol)                                                            \
    do {                                                                                        \
        float on_a_ = (float)(a), on_b_ = (float)(b);                                           \
        if (on_test_close(on_a_, on_b_, (rtol), (atol))) on_test_passed++;                      \
        else ON_TEST_FAIL_("%s ~= %s (%.9g vs %.9g)", #a, #b, (double)on_a_, (double)on_b_);    \
    } while (0)

/* Compare n floats; counts ONE assertion; reports the first mismatching index. Returns 1 if close. */
static inline int on_test_allclose_(const float *got, const float *want, size_t n, float rtol, float atol,
                                    const char *what, const char *file, int line) {
    for (size_t i = 0; i < n; i++) {
        if (!on_test_close(got[i], want[i], rtol, atol)) {
            on_test_failed++;
            if (on_test_failed <= 50)
                fprintf(stderr, "FAIL %s (%s:%d): %s: index %zu got %.9g want %.9g\n", on_test_current, file,
                        line, what, i, (double)got[i], (double)want[i]);
            return 0;
        }
    }
    on_test_passed++;
    return 1;
}
#define CHECK_ALLCLOSE(got, want, n, rtol, atol, what)                                          \
    on_test_allclose_((got), (want), (n), (rtol), (atol), (what), __FILE__, __LINE__)

/* Deterministic pseudo-random floats in [-1, 1) (xorshift32). */
static uint32_t on_test_rng_state = 2463534242u;
static inline void on_test_seed(uint32_t s) { on_test_rng_state = s ? s : 1u; }
static inline float on_test_randf(void) {
    uint32_t x = on_test_rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    on_test_rng_state = x;
    return (float)(x >> 8) * (2.0f / 16777216.0f) - 1.0f;
}
static inline void on_test_fill(float *p, size_t n) {
    for (size_t i = 0; i < n; i++) p[i] = on_test_randf();
}

#define RUN(fn)                                                                                 \
    do {                                                                                        \
        on_test_current = #fn;                                                                  \
        long on_f0_ = on_test_failed;                                                           \
        fn();                                                                                   \
        printf("%-40s %s\n", #fn, on_test_failed == on_f0_ ? "ok" : "FAILED");                  \
        fflush(stdout);                                                                         \
    } while (0)

static inline int on_test_summary(void) {
    printf("%ld passed, %ld failed\n", on_test_passed, on_test_failed);
    return on_test_failed ? 1 : 0;
}

#endif /* ON_TEST_H */
