/* math_coeffs.h - constants of the vector exp / erf / erfc bodies, shared by the AVX2 and AVX-512
 * versions (ops_elementwise_avx2.c, ops_elementwise_avx512.c) so both widths compute one function. */
#ifndef ON_MATH_COEFFS_H
#define ON_MATH_COEFFS_H

/* exp(x): clamp to [ON_EXP_LO, ON_EXP_HI], x = n ln2 + r with ln2 split in two for exact reduction,
 * then 1 + r + r^2 * poly(r) (Cephes coefficients, highest degree first). */
#define ON_EXP_HI 88.3762626647949f
#define ON_EXP_LO (-87.3365478515625f)
#define ON_LOG2E 1.44269504088896341f
#define ON_LN2_HI 0.693359375f
#define ON_LN2_LO (-2.12194440e-4f)
static const float on_exp_poly[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                     4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

/* erf(x) for |x| < 1: x * sum c[k] x^(2k) (Taylor series, 11 terms, |error| < 2e-8). */
static const float on_erf_small_c[11] = {1.1283791670955126f,     -0.37612638903183754f,   0.11283791670955126f,
                                         -0.026866170645131252f,  0.0052239776254421878f, -0.00085483270234508528f,
                                         0.00012055332981789664f, -1.4925650358406251e-05f, 1.6462114365889246e-06f,
                                         -1.6365844691234924e-07f, 1.4807192815879218e-08f};

/* erfc(z), z >= 0: t exp(-z^2 + sum c[k] t^k) with t = 1 / (1 + z / 2) (Chebyshev fit of Numerical
 * Recipes' erfcc, relative error < 1.2e-7). */
static const float on_erfc_c[10] = {-1.26551223f, 1.00002368f, 0.37409196f, 0.09678418f, -0.18628806f,
                                    0.27886807f,  -1.13520398f, 1.48851587f, -0.82215223f, 0.17087277f};

#endif
