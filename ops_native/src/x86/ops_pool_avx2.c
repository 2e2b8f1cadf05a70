/* ops_pool_avx2.c - AVX2 pooling: 8 output columns per register for horizontal strides 1 and 2 (stride 2
 * de-interleaves two loads), scalar at the padded borders; vector sum / max of a row for global pooling. */
#include <immintrin.h>
#include <math.h>

#include "on_ops.h"
#include "ops_pool_internal.h"

static inline __m256 load_strided(const float *src, int64_t sw) {
    if (sw == 1) return _mm256_loadu_ps(src);
    __m256 a = _mm256_loadu_ps(src), b = _mm256_loadu_ps(src + 8);
    __m256 ev = _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)); /* a0 a2 b0 b2 | a4 a6 b4 b6 */
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(ev), _MM_SHUFFLE(3, 1, 2, 0)));
}

/* Output rows oy .. oy + R - 1, 8-column group g, of pool_padded (R a compile-time 1 or 4). */
static inline __attribute__((always_inline)) void pool_padded_rows(const int R, int is_max, const float *buf,
                                                                   int64_t pw, float *y, int64_t ow,
                                                                   const on_pool2d_params *p, int64_t oy, int64_t g,
                                                                   int64_t groups, const float *row_cnt,
                                                                   const float *col_cnt, __m256i tail) {
    const int64_t sw = p->sw;
    __m256 acc[4];
    for (int r = 0; r < R; r++) acc[r] = _mm256_set1_ps(is_max ? -INFINITY : 0.0f);
    for (int64_t ky = 0; ky < p->kh; ky++) {
        const float *row = buf + (oy * p->sh + ky * p->dh) * pw + g * 8 * sw;
        const int64_t rstep = p->sh * pw;
        for (int64_t kx = 0; kx < p->kw; kx++) {
            const float *t = row + kx * p->dw;
            if (is_max)
                for (int r = 0; r < R; r++) acc[r] = _mm256_max_ps(load_strided(t + r * rstep, sw), acc[r]);
            else
                for (int r = 0; r < R; r++) acc[r] = _mm256_add_ps(acc[r], load_strided(t + r * rstep, sw));
        }
    }
    for (int r = 0; r < R; r++) {
        __m256 v = acc[r];
        if (!is_max) {
            const __m256 cnt = _mm256_mul_ps(_mm256_set1_ps(row_cnt[r]), _mm256_loadu_ps(col_cnt + g * 8));
            /* count 0 (a window wholly in the padding): the reference's 0, not 0 / 0 */
            const __m256 none = _mm256_cmp_ps(cnt, _mm256_setzero_ps(), _CMP_EQ_OQ);
            v = _mm256_andnot_ps(none, _mm256_div_ps(v, _mm256_max_ps(cnt, _mm256_set1_ps(1.0f))));
        }
        float *dst = y + (oy + r) * ow + g * 8;
        if (g + 1 < groups) _mm256_storeu_ps(dst, v);
        else _mm256_maskstore_ps(dst, tail, v);
    }
}

/* Pooling on a copy of the plane padded to whole 8-column groups (-inf for max, 0 for average): every output
 * is a vector (the tail group a masked store). Padded borders and row tails took the scalar reference per
 * pixel, which on small planes was most of them: YOLO's SPPF 5x5 pad 2 on 10x10 ran 0.5-0.7 ms a pool (ORT
 * ~0.03), SqueezeNet's 3x3 s2 on 111x111 left 7 of 55 columns to it, ShuffleNet's 3x3 s2 pad 1 average
 * pools on 28x28 and 14x14 planes ran 5-9x ORT's time. An average's divisor is the count of the window's
 * taps inside the input (or inside the declared padding, count_include_pad), which is the row count times the
 * column count: one per output row and one per output column (col_cnt), so the sum of the window (zeros at
 * the padding add nothing) is divided exactly as the reference divides it. */
#define POOL_PAD_MAX_FLOATS 16384 /* 64 KiB of stack: planes up to ~110 x 140 after padding */
#define POOL_PAD_MAX_OW 512
static int pool_padded(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oh, int64_t ow,
                       int64_t pb, int64_t pr, const on_pool2d_params *p) {
    const int64_t sw = p->sw, groups = (ow + 7) / 8;
    const int64_t ph = (oh - 1) * p->sh + (p->kh - 1) * p->dh + 1;
    const int64_t pw = (groups * 8 - 8) * sw + (p->kw - 1) * p->dw + 8 * sw;
    if (ph * pw > POOL_PAD_MAX_FLOATS || groups * 8 > POOL_PAD_MAX_OW) return 0;
    const float fill = is_max ? -INFINITY : 0.0f;
    float buf[POOL_PAD_MAX_FLOATS];
    for (int64_t r = 0; r < ph; r++) {
        float *dst = buf + r * pw;
        const int64_t iy = r - p->pt;
        int64_t c = 0;
        if (iy >= 0 && iy < ih) {
            for (; c < p->pl && c < pw; c++) dst[c] = fill;
            const int64_t n = iw < pw - c ? iw : pw - c;
            const float *src = x + iy * iw;
            int64_t i = 0;
            for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + c + i, _mm256_loadu_ps(src + i));
            for (; i < n; i++) dst[c + i] = src[i];
            c += n;
        }
        for (; c < pw; c++) dst[c] = fill;
    }
    float col_cnt[POOL_PAD_MAX_OW];
    if (!is_max) {
        const int64_t lo = p->count_include_pad ? -p->pl : 0, hi = p->count_include_pad ? iw + pr : iw;
        for (int64_t ox = 0; ox < groups * 8; ox++) {
            int64_t k0, k1;
            on_pool_tap_range(ox * sw - p->pl, p->dw, p->kw, lo, hi, &k0, &k1);
            col_cnt[ox] = (float)(ox < ow && k1 > k0 ? k1 - k0 : 0);
        }
    }
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(ow - (groups - 1) * 8)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    /* four output rows at a time: four independent accumulator chains (one chain of 9 dependent adds per
     * vector left the 3x3 average latency-bound), then the rest one by one */
    const int64_t rlo = p->count_include_pad ? -p->pt : 0, rhi = p->count_include_pad ? ih + pb : ih;
    for (int64_t oy = 0; oy < oh;) {
        const int64_t rows = oh - oy >= 4 ? 4 : 1;
        float row_cnt[4] = {0.0f, 0.0f, 0.0f, 0.0f};   /* an average's taps per output row, once per row */
        for (int64_t r = 0; r < rows && !is_max; r++) {
            int64_t k0, k1;
            on_pool_tap_range((oy + r) * p->sh - p->pt, p->dh, p->kh, rlo, rhi, &k0, &k1);
            row_cnt[r] = (float)(k1 > k0 ? k1 - k0 : 0);
        }
        for (int64_t g = 0; g < groups; g++) {
            if (rows == 4) pool_padded_rows(4, is_max, buf, pw, y, ow, p, oy, g, groups, row_cnt, col_cnt, tail);
            else pool_padded_rows(1, is_max, buf, pw, y, ow, p, oy, g, groups, row_cnt, col_cnt, tail);
        }
        oy += rows;
    }
    return 1;
}

int on_pool2d_plane_avx2(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oh, int64_t ow,
                         int64_t pb, int64_t pr, const on_pool2d_params *p) {
    const int64_t sw = p->sw;
    if (sw > 2) return 0;
    if ((p->pt || p->pl || pb || pr || ow % 8) && pool_padded(is_max, x, y, ih, iw, oh, ow, pb, pr, p)) return 1;
    /* columns whose whole window (and the over-read of the stride-2 load) lies inside the row */
    const int64_t span = (p->kw - 1) * p->dw + (sw == 2 ? 1 : 0);
    int64_t ox_lo = (p->pl + sw - 1) / sw;
    int64_t num = iw - 1 - span + p->pl;
    int64_t ox_hi = num < 0 ? -1 : num / sw; /* inclusive */
    if (ox_hi > ow - 1) ox_hi = ow - 1;
    for (int64_t oy = 0; oy < oh; oy++) {
        float *yr = y + oy * ow;
        int64_t y0 = oy * p->sh - p->pt;
        int64_t valid_rows = 0, padded_rows = 0;
        for (int64_t ky = 0; ky < p->kh; ky++) {
            int64_t iy = y0 + ky * p->dh;
            if (iy >= 0 && iy < ih) valid_rows++;
            if (iy >= -p->pt && iy < ih + pb) padded_rows++;
        }
        int64_t ox = 0;
        for (; ox < ox_lo && ox < ow; ox++) yr[ox] = on_pool2d_one_ref(is_max, x, ih, iw, pb, pr, oy, ox, p);
        const float cnt = (float)((p->count_include_pad ? padded_rows : valid_rows) * p->kw);
        const __m256 inv = _mm256_set1_ps(cnt > 0 ? 1.0f / cnt : 0.0f);
        for (; ox + 7 <= ox_hi && valid_rows > 0; ox += 8) {
            __m256 acc = _mm256_set1_ps(is_max ? -INFINITY : 0.0f);
            const int64_t x0 = ox * sw - p->pl;
            for (int64_t ky = 0; ky < p->kh; ky++) {
                int64_t iy = y0 + ky * p->dh;
                if (iy < 0 || iy >= ih) continue;
                const float *row = x + iy * iw + x0;
                for (int64_t kx = 0; kx < p->kw; kx++) {
                    __m256 v = load_strided(row + kx * p->dw, sw);
                    acc = is_max ? _mm256_max_ps(v, acc) : _mm256_add_ps(acc, v);
                }
            }
            _mm256_storeu_ps(yr + ox, is_max ? acc : _mm256_mul_ps(acc, inv));
        }
        for (; ox < ow; ox++) yr[ox] = on_pool2d_one_ref(is_max, x, ih, iw, pb, pr, oy, ox, p);
    }
    return 1;
}

/* NCHWc8: one __m256 per pixel, the window clipped to the input per pixel (on_pool_tap_range). Max keeps
 * NaN like the reference: a separate unordered mask, since vmaxps drops a NaN in its first operand. */
int on_pool2d_c8_row_avx2(int is_max, const float *x, float *y, int64_t ih, int64_t iw, int64_t oy, int64_t ow,
                          int64_t pb, int64_t pr, const on_pool2d_params *p) {
    const int64_t y0 = oy * p->sh - p->pt;
    int64_t ky0, ky1, py0, py1;
    on_pool_tap_range(y0, p->dh, p->kh, 0, ih, &ky0, &ky1);
    on_pool_tap_range(y0, p->dh, p->kh, -p->pt, ih + pb, &py0, &py1);
    const int64_t rows = ky1 > ky0 ? ky1 - ky0 : 0, prows = py1 > py0 ? py1 - py0 : 0;
    const int64_t rs = iw * 8, ks = p->dh * rs, ts = p->dw * 8;
    for (int64_t ox = 0; ox < ow; ox++) {
        const int64_t x0 = ox * p->sw - p->pl;
        int64_t kx0, kx1;
        on_pool_tap_range(x0, p->dw, p->kw, 0, iw, &kx0, &kx1);
        const int64_t cols = kx1 > kx0 ? kx1 - kx0 : 0;
        const float *base = x + (y0 + ky0 * p->dh) * rs + (x0 + kx0 * p->dw) * 8;
        __m256 acc;
        if (is_max) {
            __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, nan = _mm256_setzero_ps();
            for (int64_t ky = 0; ky < rows; ky++) {
                const float *row = base + ky * ks;
                int64_t kx = 0;
                for (; kx + 2 <= cols; kx += 2) {
                    const __m256 a = _mm256_loadu_ps(row + kx * ts), b = _mm256_loadu_ps(row + (kx + 1) * ts);
                    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, b, _CMP_UNORD_Q));
                    m0 = _mm256_max_ps(a, m0);
                    m1 = _mm256_max_ps(b, m1);
                }
                if (kx < cols) {
                    const __m256 a = _mm256_loadu_ps(row + kx * ts);
                    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
                    m0 = _mm256_max_ps(a, m0);
                }
            }
            acc = _mm256_blendv_ps(_mm256_max_ps(m0, m1), _mm256_set1_ps(NAN), nan);
        } else {
            __m256 s0 = _mm256_setzero_ps(), s1 = s0;
            for (int64_t ky = 0; ky < rows; ky++) {
                const float *row = base + ky * ks;
                int64_t kx = 0;
                for (; kx + 2 <= cols; kx += 2) {
                    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(row + kx * ts));
                    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(row + (kx + 1) * ts));
                }
                if (kx < cols) s0 = _mm256_add_ps(s0, _mm256_loadu_ps(row + kx * ts));
            }
            int64_t cnt = rows * cols;
            if (p->count_include_pad) {
                int64_t px0, px1;
                on_pool_tap_range(x0, p->dw, p->kw, -p->pl, iw + pr, &px0, &px1);
                cnt = prows * (px1 > px0 ? px1 - px0 : 0);
            }
            acc = _mm256_mul_ps(_mm256_add_ps(s0, s1), _mm256_set1_ps(cnt > 0 ? 1.0f / (float)cnt : 0.0f));
        }
        _mm256_storeu_ps(y + ox * 8, acc);
    }
    return 1;
}

int on_row_reduce_avx2(int is_max, const float *x, size_t n, float *out) {
    size_t i = 0;
    if (is_max) {
        __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
        for (; i + 16 <= n; i += 16) {
            m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
            m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
        }
        float buf[8], m = -INFINITY;
        _mm256_storeu_ps(buf, _mm256_max_ps(m0, m1));
        for (int k = 0; k < 8; k++) m = buf[k] > m ? buf[k] : m;
        for (; i < n; i++) m = x[i] > m ? x[i] : m;
        *out = m;
    } else {
        __m256 s0 = _mm256_setzero_ps(), s1 = s0;
        for (; i + 16 <= n; i += 16) {
            s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + i));
            s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + i + 8));
        }
        float buf[8], s = 0.0f;
        _mm256_storeu_ps(buf, _mm256_add_ps(s0, s1));
        for (int k = 0; k < 8; k++) s += buf[k];
        for (; i < n; i++) s += x[i];
        *out = s;
    }
    return 1;
}
