/* ops_quant_avx2.c - the integer GEMM's 1x4 dot tile on AVX2: int16 x int16 pairs summed into int32 by
 * _mm256_madd_epi16 (operands are 8-bit values minus their zero points, |v| <= 255, so a pair sums to at
 * most 2 * 255 * 255 and never saturates; on_quant.h). */
#include <immintrin.h>

#include "on_quant.h"

static inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static void dot_1x4__avx2(const int16_t *a, const int16_t *bt, size_t ldb, size_t kk, int32_t acc[4]) {
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    const int16_t *b0 = bt, *b1 = bt + ldb, *b2 = bt + 2 * ldb, *b3 = bt + 3 * ldb;
    for (size_t k = 0; k < kk; k += 16) {
        __m256i va = _mm256_loadu_si256((const __m256i *)(a + k));
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(va, _mm256_loadu_si256((const __m256i *)(b0 + k))));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(va, _mm256_loadu_si256((const __m256i *)(b1 + k))));
        s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(va, _mm256_loadu_si256((const __m256i *)(b2 + k))));
        s3 = _mm256_add_epi32(s3, _mm256_madd_epi16(va, _mm256_loadu_si256((const __m256i *)(b3 + k))));
    }
    acc[0] = hsum_epi32(s0);
    acc[1] = hsum_epi32(s1);
    acc[2] = hsum_epi32(s2);
    acc[3] = hsum_epi32(s3);
}

const on_quant_table on_quant_table_avx2 = {"avx2", dot_1x4__avx2};
