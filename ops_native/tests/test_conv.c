/* test_conv.c - convolution / ConvTranspose fast paths vs the direct references, every ISA. */
#include "conv_internal.h"
#include "on_conv.h"
#include "on_test.h"

typedef struct {
    const char *name;
    size_t N, C, H, W, OC, KH, KW, sh, sw, dh, dw, pt, pl, pb, pr, group;
    on_act_kind act;
} conv_case;

static const conv_case CASES[] = {
    {"1x1 s1", 2, 8, 10, 7, 16, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_NONE},
    {"1x1 s1 relu many px", 1, 24, 19, 23, 40, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_RELU},
    {"1x1 many out ch (packed input)", 2, 20, 9, 11, 100, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_HARDSWISH},
    {"1x1 s2", 1, 8, 9, 9, 12, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 1, ON_ACT_CLIP},
    /* 1x1 on small images: transposed GEMM with packed W^T (threaded, partial panels, sigmoid) */
    {"1x1 small image deep (2 threads)", 2, 200, 7, 7, 300, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_RELU},
    {"1x1 4x4 sigmoid", 1, 24, 4, 4, 40, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_SIGMOID},
    {"1x1 14x14 odd channels", 1, 13, 14, 14, 21, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_HARDSWISH},
    {"1x1 1x1 image", 3, 17, 1, 1, 33, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_LEAKY_RELU},
    {"1x1 14x14 wide (threaded transposes)", 1, 400, 14, 14, 100, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_CLIP},
    {"1x1 padded", 1, 4, 5, 6, 8, 1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, ON_ACT_NONE},
    {"3x3 s1 p1", 2, 3, 9, 11, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_RELU},
    {"3x3 s2 p1", 1, 16, 14, 13, 24, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, ON_ACT_HARDSWISH},
    {"3x3 deep 7x7", 1, 64, 7, 7, 70, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_NONE},
    {"3x3 asym pads", 1, 5, 8, 9, 7, 3, 3, 1, 1, 1, 1, 0, 2, 1, 0, 1, ON_ACT_LEAKY_RELU},
    {"5x5 s2 dil", 1, 6, 17, 15, 9, 5, 3, 2, 1, 2, 3, 3, 1, 2, 0, 1, ON_ACT_NONE},
    {"groups 4", 1, 8, 12, 13, 12, 3, 3, 1, 2, 2, 1, 2, 1, 0, 1, 4, ON_ACT_SIGMOID},
    {"groups 2 1x1", 2, 8, 6, 6, 6, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, ON_ACT_NONE},
    {"dw mult 2 (grouped)", 1, 4, 5, 5, 8, 5, 5, 2, 2, 1, 1, 2, 2, 2, 2, 4, ON_ACT_NONE},
    {"dw 3x3 s1", 2, 16, 12, 13, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 16, ON_ACT_CLIP},
    {"dw 3x3 s2", 1, 16, 12, 13, 16, 3, 3, 2, 2, 1, 1, 1, 0, 1, 2, 16, ON_ACT_RELU},
    {"dw 3x3 s2 wide", 1, 8, 9, 37, 8, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 8, ON_ACT_HARDSWISH},
    {"dw 5x5 s1 dil2", 1, 8, 11, 10, 8, 5, 5, 1, 1, 2, 2, 4, 4, 4, 4, 8, ON_ACT_NONE},
    {"dw 3x3 s3", 1, 4, 10, 10, 4, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1, 4, ON_ACT_LEAKY_RELU},
    {"dw 7x1 s(2,1)", 1, 4, 14, 6, 4, 7, 1, 2, 1, 1, 1, 3, 0, 3, 0, 4, ON_ACT_NONE},
    {"dw sigmoid", 1, 8, 6, 9, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 8, ON_ACT_SIGMOID},
    /* channel-blocked depthwise (AVX2): partial last block, 3- and 5-wide rows at stride 1 and 2 with
     * 8-, 4- and 1-pixel groups, planes narrower than 8, a 1x1 output, and a plane past the size
     * limit (back on the plane kernel) */
    {"dw c8 C13 N2 3x3 s1", 2, 13, 11, 21, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 13, ON_ACT_CLIP},
    {"dw c8 C20 3x3 s2 asym", 1, 20, 15, 30, 20, 3, 3, 2, 2, 1, 1, 0, 1, 1, 0, 20, ON_ACT_RELU},
    {"dw c8 C24 5x5 s1", 1, 24, 9, 27, 24, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 24, ON_ACT_HARDSWISH},
    {"dw c8 C9 5x5 s2", 2, 9, 13, 23, 9, 5, 5, 2, 2, 1, 1, 2, 2, 2, 2, 9, ON_ACT_SIGMOID},
    {"dw c8 C16 narrow 5x3", 1, 16, 5, 3, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 16, ON_ACT_NONE},
    {"dw c8 C8 1x1 out", 1, 8, 3, 3, 8, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 8, ON_ACT_LEAKY_RELU},
    {"dw c8 C16 3x5 dil (2,1)", 1, 16, 12, 19, 16, 3, 5, 1, 1, 2, 1, 2, 2, 2, 2, 16, ON_ACT_NONE},
    /* stride 2 with outputs >= 16x16: a blocked input is read in place (border pixels skip taps) */
    {"dw c8 C12 s2 in place", 1, 12, 34, 40, 12, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 12, ON_ACT_CLIP},
    {"dw c8 C16 5x5 s2 in place asym", 2, 16, 37, 35, 16, 5, 5, 2, 2, 1, 1, 2, 1, 1, 2, 16, ON_ACT_HARDSWISH},
    {"dw c8 C8 3x3 s2 dil2 in place", 1, 8, 40, 41, 8, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2, 8, ON_ACT_NONE},
    {"dw plane 72x70 past c8 limit", 1, 9, 72, 70, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 9, ON_ACT_CLIP},
    {"1-D as H=1", 2, 6, 1, 31, 10, 1, 5, 1, 2, 1, 1, 0, 2, 0, 2, 1, ON_ACT_NONE},
    {"kernel = input", 1, 3, 4, 4, 5, 4, 4, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_NONE},
    /* groups that start inside an 8-channel block (lane-wise pack / store on blocked tensors) */
    {"groups 4 Cg34 1x1", 1, 136, 7, 9, 136, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 4, ON_ACT_NONE},
    {"groups 3 Cg5 OCg7 3x3 s2", 2, 15, 11, 10, 21, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 3, ON_ACT_RELU},
    {"groups 32 Cg4 3x3", 1, 128, 6, 7, 128, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 32, ON_ACT_NONE},
    {"groups 2 Cg12 OCg10 5x5 sigmoid", 1, 24, 9, 8, 20, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, 2, ON_ACT_SIGMOID},
    /* NCHWc direct path: partial channel blocks, 1..3-block tiles, pixel tails, chunked channels */
    {"nchwc C12 OC20 3x3", 2, 12, 9, 14, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_RELU},
    {"nchwc C5 stem s2", 1, 5, 17, 19, 11, 3, 3, 2, 2, 1, 1, 1, 1, 0, 0, 1, ON_ACT_HARDSWISH},
    {"nchwc 7x7 s2 rgb", 1, 3, 23, 21, 64, 7, 7, 2, 2, 1, 1, 3, 3, 3, 3, 1, ON_ACT_RELU},
    /* RGB stems whose one-block rows write a blocked output from the registers (AVX-512) */
    {"nchwc 3x3 s2 rgb 16", 1, 3, 37, 35, 16, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, ON_ACT_CLIP},
    {"nchwc 3x3 s2 rgb 48", 2, 3, 29, 30, 48, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, ON_ACT_HARDSWISH},
    {"nchwc groups 2 Cg8", 1, 16, 10, 9, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2, ON_ACT_CLIP},
    {"nchwc dil2 asym", 1, 16, 13, 12, 24, 3, 3, 1, 1, 2, 2, 2, 1, 0, 2, 1, ON_ACT_LEAKY_RELU},
    {"nchwc s2 dil2 5x3", 1, 17, 15, 16, 40, 5, 3, 2, 2, 2, 1, 2, 1, 2, 1, 1, ON_ACT_NONE},
    {"nchwc s2 wide rows", 1, 16, 7, 61, 20, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, ON_ACT_RELU}, /* OW 31, 3 blocks */
    {"nchwc s2 wide 2 blocks", 1, 24, 5, 57, 12, 3, 3, 2, 2, 1, 1, 0, 1, 1, 0, 1, ON_ACT_NONE},
    {"nchwc tiny 1x1 out", 1, 24, 3, 3, 33, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_SIGMOID},
    {"nchwc many ch chunks", 1, 136, 6, 11, 56, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_NONE},
    {"nchwc OC 8 single block", 1, 9, 7, 23, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_CLIP},
    {"1x1 few channels big image (direct)", 1, 12, 161, 160, 40, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_CLIP},
    {"nchwc 1x3 stride (1,3)", 1, 8, 5, 29, 16, 1, 3, 1, 3, 1, 1, 0, 1, 0, 1, 1, ON_ACT_NONE},
    /* 14- and 28-wide output rows: the AVX-512 2x14 tiles (stride 1 and 2, a partial 16-channel group) */
    {"nchwc 14-wide rows", 2, 16, 14, 14, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_RELU},
    {"nchwc s2 to 28-wide rows", 1, 24, 56, 56, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, ON_ACT_NONE},
    /* blocked outputs past ON_NCHWC_SPAN_MAX pixels with rows under 24: several pixel spans (AVX2), tiles
     * across row ends,
     * odd widths, stride / dilation / asymmetric pads, partial sums over channel chunks kept in y, and a
     * sigmoid (act(0) != 0) whose pad lanes must still be stored as zeros */
    {"nchwc spans odd width 13x19", 1, 24, 13, 19, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_RELU},
    {"nchwc spans s2 dil2 asym", 1, 16, 31, 29, 24, 3, 3, 2, 2, 2, 2, 2, 1, 0, 2, 1, ON_ACT_HARDSWISH},
    {"nchwc spans sigmoid OC13", 2, 16, 12, 12, 13, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_SIGMOID},
    {"nchwc spans chunks 72ch", 1, 72, 12, 13, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_NONE},
    {"nchwc spans groups 2 OCg16", 1, 32, 11, 13, 32, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2, ON_ACT_CLIP},
    {"nchwc spans rgb 5x5 s2", 1, 3, 41, 37, 16, 5, 5, 2, 2, 1, 1, 2, 2, 2, 2, 1, ON_ACT_RELU},
    /* blocked outputs with rows of 24 pixels or more: the row kernel (rowbuf), beside the spans above */
    {"nchwc spans one row 9x61", 1, 16, 9, 61, 24, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_LEAKY_RELU},
    {"nchwc spans row pieces 3x150", 2, 8, 3, 150, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_NONE},
    /* pointwise sizes for the blocked path's flattened rows: one row, rows that tile the plane
     * exactly (16x16 = 4 x 64), and a prime-sized plane (no exact tiling: copied, last row short) */
    {"1x1 16x16 deep", 2, 40, 16, 16, 24, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_NONE},
    {"1x1 prime plane", 1, 16, 1, 151, 32, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_CLIP},
    {"1x1 groups 2 Cg8 OCg12", 1, 16, 5, 7, 24, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, ON_ACT_NONE},
    /* SiLU and GELU epilogues (exp/erf vector math in registers on x86) on every path */
    {"1x1 silu", 2, 8, 10, 7, 16, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_SILU},
    {"1x1 4x4 gelu (transposed)", 1, 24, 4, 4, 40, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_GELU},
    {"1x1 direct silu", 1, 12, 41, 40, 40, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, ON_ACT_SILU},
    {"nchwc C12 OC20 3x3 silu", 2, 12, 9, 14, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_SILU},
    {"nchwc 3x3 s2 rgb 48 silu", 1, 3, 29, 30, 48, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, ON_ACT_SILU},
    {"nchwc 14-wide gelu", 1, 16, 14, 14, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, ON_ACT_GELU},
    {"groups 4 silu", 1, 8, 12, 13, 12, 3, 3, 1, 2, 2, 1, 2, 1, 0, 1, 4, ON_ACT_SILU},
    {"dw 3x3 s1 silu", 2, 16, 12, 13, 16, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 16, ON_ACT_SILU},
    {"dw c8 C20 3x3 s2 silu", 1, 20, 15, 30, 20, 3, 3, 2, 2, 1, 1, 0, 1, 1, 0, 20, ON_ACT_SILU},
    {"dw c8 C12 s2 in place gelu", 1, 12, 34, 40, 12, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 12, ON_ACT_GELU},
    {"dw plane 72x70 silu", 1, 9, 72, 70, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 9, ON_ACT_SILU},
};

static on_conv_params params_of(const conv_case *c) {
    on_conv_params p = {c->C, c->OC, c->KH, c->KW, c->sh, c->sw, c->dh, c->dw, c->pt, c->pl, c->pb, c->pr,
                        c->group, 0, 0};
    return p;
}

/* Every case through the default path choice, then with the NCHWc path disabled (im2col instead). */
static void check_conv2d_cases(int nchwc) {
    on_conv_set_nchwc_enabled(nchwc);
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_isa_available((on_isa_t)isa)) continue;
        on_set_isa((on_isa_t)isa);
        printf("  conv isa: %s (nchwc %s)\n", on_isa_name(on_active_isa()), nchwc ? "on" : "off");
        for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++) {
            const conv_case *c = &CASES[i];
            on_conv_params p = params_of(c);
            on_act_t act = {c->act, c->act == ON_ACT_CLIP ? 0.0f : 0.1f, 6.0f};
            size_t OH = 0, OW = 0;
            CHECK_EQ_INT(on_conv2d_output_size(&p, c->H, c->W, &OH, &OW), ON_OK);
            size_t xn = c->N * c->C * c->H * c->W, wn = c->OC * (c->C / c->group) * c->KH * c->KW;
            size_t yn = c->N * c->OC * OH * OW;
            float *x = malloc(xn * 4), *w = malloc(wn * 4), *b = malloc(c->OC * 4);
            float *ref = malloc(yn * 4), *got = malloc(yn * 4);
            on_test_fill(x, xn);
            on_test_fill(w, wn);
            on_test_fill(b, c->OC);
            CHECK_EQ_INT(on_conv2d_ref(&p, w, i % 3 ? b : NULL, act, c->N, c->H, c->W, x, ref), ON_OK);
            on_conv2d *plan = NULL;
            CHECK_EQ_INT(on_conv2d_create(&p, w, i % 3 ? b : NULL, act, &plan), ON_OK);
            for (int th = 1; th <= 2 && plan; th++) {
                for (size_t k = 0; k < yn; k++) got[k] = 1e30f;
                CHECK_EQ_INT(on_conv2d_run(plan, c->N, c->H, c->W, x, got, th), ON_OK);
                char what[128];
                snprintf(what, sizeof(what), "%s (path %d, %s, %d threads)", c->name, (int)on_conv2d_path(plan),
                         on_isa_name(on_active_isa()), th);
                CHECK_ALLCLOSE(got, ref, yn, 1e-4f, 1e-4f * (float)(wn / c->OC + 1), what);
            }
            if (c->group == c->C && c->group == c->OC) CHECK_EQ_INT(on_conv2d_path(plan), ON_CONV_PATH_DEPTHWISE);
            if (!strncmp(c->name, "nchwc", 5))
                CHECK_EQ_INT(on_conv2d_path(plan), nchwc ? ON_CONV_PATH_NCHWC : ON_CONV_PATH_IM2COL);
            on_conv2d_free(plan);
            free(x);
            free(w);
            free(b);
            free(ref);
            free(got);
        }
    }
    on_conv_set_nchwc_enabled(1);
}

static void test_conv2d_matches_reference_all_isas(void) { check_conv2d_cases(1); }
static void test_conv2d_im2col_matches_reference_all_isas(void) { check_conv2d_cases(0); }

/* NCHW [N][C][HW] <-> NCHWc8 [N][ceil(C/8)][HW][8]; `to` fills pad lanes with `pad` (kernels must ignore
 * them: a finite junk value, so a leak shows). */
static void to_blocked(const float *x, size_t N, size_t C, size_t HW, float pad, float *xb) {
    size_t cb = (C + 7) / 8;
    for (size_t n = 0; n < N; n++)
        for (size_t b = 0; b < cb; b++)
            for (size_t i = 0; i < HW; i++)
                for (size_t l = 0; l < 8; l++) {
                    size_t c = b * 8 + l;
                    xb[((n * cb + b) * HW + i) * 8 + l] = c < C ? x[(n * C + c) * HW + i] : pad;
                }
}

static void from_blocked(const float *yb, size_t N, size_t C, size_t HW, float *y, int *pad_nonzero) {
    size_t cb = (C + 7) / 8;
    for (size_t n = 0; n < N; n++)
        for (size_t b = 0; b < cb; b++)
            for (size_t i = 0; i < HW; i++)
                for (size_t l = 0; l < 8; l++) {
                    size_t c = b * 8 + l;
                    float v = yb[((n * cb + b) * HW + i) * 8 + l];
                    if (c < C) y[(n * C + c) * HW + i] = v;
                    else if (v != 0.0f) *pad_nonzero = 1;
                }
}

/* Every case in every layout pair its plan allows (ON_CONV_BLOCKED), every ISA: the same numbers as
 * the reference, zeros in the output's pad lanes, and ON_ERR_ARG for a pair it does not allow. */
static void test_conv2d_blocked_layouts_all_isas(void) {
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_isa_available((on_isa_t)isa)) continue;
        on_set_isa((on_isa_t)isa);
        size_t pairs = 0, refused = 0;
        for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++) {
            const conv_case *c = &CASES[i];
            on_conv_params p = params_of(c);
            on_act_t act = {c->act, c->act == ON_ACT_CLIP ? 0.0f : 0.1f, 6.0f};
            size_t OH = 0, OW = 0;
            CHECK_EQ_INT(on_conv2d_output_size(&p, c->H, c->W, &OH, &OW), ON_OK);
            size_t HW = c->H * c->W, OHW = OH * OW, wn = c->OC * (c->C / c->group) * c->KH * c->KW;
            size_t xn = c->N * c->C * HW, yn = c->N * c->OC * OHW;
            size_t xbn = c->N * ((c->C + 7) / 8) * 8 * HW, ybn = c->N * ((c->OC + 7) / 8) * 8 * OHW;
            float *x = malloc(xn * 4), *w = malloc(wn * 4), *b = malloc(c->OC * 4), *ref = malloc(yn * 4);
            float *xb = malloc(xbn * 4), *yb = malloc((ybn > yn ? ybn : yn) * 4), *got = malloc(yn * 4);
            on_test_fill(x, xn);
            on_test_fill(w, wn);
            on_test_fill(b, c->OC);
            to_blocked(x, c->N, c->C, HW, 3.5f, xb);
            CHECK_EQ_INT(on_conv2d_ref(&p, w, i % 2 ? b : NULL, act, c->N, c->H, c->W, x, ref), ON_OK);
            on_conv2d *plan = NULL;
            CHECK_EQ_INT(on_conv2d_create_ex(&p, w, i % 2 ? b : NULL, act, ON_CONV_BLOCKED, &plan), ON_OK);
            for (int xl = 0; xl < 2 && plan; xl++)
                for (int yl = 0; yl < 2; yl++) {
                    if (!xl && !yl) continue;
                    int ok = on_conv2d_layout_ok(plan, (on_layout)xl, (on_layout)yl);
                    CHECK_EQ_INT(ok, on_conv2d_plan_layout_ok(&p, ON_CONV_BLOCKED, (on_layout)xl, (on_layout)yl));
                    /* only a grouped 1x1 whose groups start inside blocks stays on the per-group GEMM */
                    int pw = c->KH == 1 && c->KW == 1 && c->sh == 1 && c->sw == 1 && !c->pt && !c->pl && !c->pb && !c->pr;
                    size_t cg = c->C / c->group, ocg = c->OC / c->group;
                    int gemm = pw && c->group > 1 && c->group != c->C && (cg % 8 || ocg % 8);
                    CHECK_EQ_INT(ok, !gemm);
                    if (!ok) {
                        CHECK_EQ_INT(on_conv2d_run_layout(plan, c->N, c->H, c->W, xl ? xb : x, (on_layout)xl, yb,
                                                          (on_layout)yl, 1), ON_ERR_ARG);
                        refused++;
                        continue;
                    }
                    for (int th = 1; th <= 2; th++) {
                        for (size_t k = 0; k < (ybn > yn ? ybn : yn); k++) yb[k] = 1e30f;
                        CHECK_EQ_INT(on_conv2d_run_layout(plan, c->N, c->H, c->W, xl ? xb : x, (on_layout)xl, yb,
                                                          (on_layout)yl, th), ON_OK);
                        int pad_nonzero = 0;
                        if (yl) from_blocked(yb, c->N, c->OC, OHW, got, &pad_nonzero);
                        else memcpy(got, yb, yn * 4);
                        char what[160];
                        snprintf(what, sizeof(what), "%s (%s -> %s, %s, %d threads)", c->name, xl ? "nchwc8" : "nchw",
                                 yl ? "nchwc8" : "nchw", on_isa_name(on_active_isa()), th);
                        CHECK_ALLCLOSE(got, ref, yn, 1e-4f, 1e-4f * (float)(wn / c->OC + 1), what);
                        CHECK(!pad_nonzero);
                        pairs++;
                    }
                }
            on_conv2d_free(plan);
            free(x);
            free(w);
            free(b);
            free(ref);
            free(xb);
            free(yb);
            free(got);
        }
        printf("  blocked layouts, isa %s: %zu layout runs checked, %zu pairs refused\n",
               on_isa_name(on_active_isa()), pairs, refused);
        CHECK(pairs > 100 && refused > 0);
    }
}

/* conv + residual in one pass (on_conv2d_run_fused) in every layout pair, every ISA, against
 * reference + residual; refused for plans that have an activation or are not on the direct path. */
static void test_conv2d_fused_residual_all_isas(void) {
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_isa_available((on_isa_t)isa)) continue;
        on_set_isa((on_isa_t)isa);
        size_t runs = 0, refused = 0;
        for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++) {
            const conv_case *c = &CASES[i];
            on_conv_params p = params_of(c);
            on_act_t act = {i % 4 ? ON_ACT_NONE : c->act, 0.1f, 6.0f};
            size_t OH = 0, OW = 0;
            CHECK_EQ_INT(on_conv2d_output_size(&p, c->H, c->W, &OH, &OW), ON_OK);
            size_t HW = c->H * c->W, OHW = OH * OW, wn = c->OC * (c->C / c->group) * c->KH * c->KW;
            size_t xn = c->N * c->C * HW, yn = c->N * c->OC * OHW;
            size_t xbn = c->N * ((c->C + 7) / 8) * 8 * HW, ybn = c->N * ((c->OC + 7) / 8) * 8 * OHW;
            float *x = malloc(xn * 4), *w = malloc(wn * 4), *b = malloc(c->OC * 4), *ref = malloc(yn * 4);
            float *res = malloc(yn * 4), *xb = malloc(xbn * 4), *resb = malloc(ybn * 4), *yb = malloc(ybn * 4);
            float *got = malloc(yn * 4);
            on_test_fill(x, xn);
            on_test_fill(w, wn);
            on_test_fill(b, c->OC);
            on_test_fill(res, yn);
            to_blocked(x, c->N, c->C, HW, -2.0f, xb);
            to_blocked(res, c->N, c->OC, OHW, 0.0f, resb);
            CHECK_EQ_INT(on_conv2d_ref(&p, w, b, act, c->N, c->H, c->W, x, ref), ON_OK);
            for (size_t k = 0; k < yn; k++) ref[k] += res[k];
            on_conv2d *plan = NULL;
            CHECK_EQ_INT(on_conv2d_create_ex(&p, w, b, act, ON_CONV_BLOCKED, &plan), ON_OK);
            for (int xl = 0; xl < 2 && plan; xl++)
                for (int yl = 0; yl < 2; yl++) {
                    if (!on_conv2d_layout_ok(plan, (on_layout)xl, (on_layout)yl)) continue;
                    if (!on_conv2d_sum_ok(plan)) {
                        CHECK_EQ_INT(on_conv2d_run_fused(plan, c->N, c->H, c->W, xl ? xb : x, (on_layout)xl, yb,
                                                         (on_layout)yl, yl ? resb : res, 1), ON_ERR_ARG);
                        refused++;
                        continue;
                    }
                    for (int th = 1; th <= 2; th++) {
                        CHECK_EQ_INT(on_conv2d_run_fused(plan, c->N, c->H, c->W, xl ? xb : x, (on_layout)xl, yb,
                                                         (on_layout)yl, yl ? resb : res, th), ON_OK);
                        int pad_nonzero = 0;
                        if (yl) from_blocked(yb, c->N, c->OC, OHW, got, &pad_nonzero);
                        else memcpy(got, yb, yn * 4);
                        char what[160];
                        snprintf(what, sizeof(what), "%s + residual (%d -> %d, %s, %d threads)", c->name, xl, yl,
                                 on_isa_name(on_active_isa()), th);
                        CHECK_ALLCLOSE(got, ref, yn, 1e-4f, 1e-4f * (float)(wn / c->OC + 2), what);
                        CHECK(!pad_nonzero);
                        runs++;
                    }
                }
            on_conv2d_free(plan);
            free(x);
            free(w);
            free(b);
            free(ref);
            free(res);
            free(xb);
            free(resb);
            free(yb);
            free(got);
        }
        printf("  fused residual, isa %s: %zu runs checked, %zu refused\n", on_isa_name(on_active_isa()), runs,
               refused);
        CHECK(runs > 50 && refused > 0);
    }
}

static void test_conv2d_large_threads_identical(void) {
    on_conv_params p = {32, 48, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
    size_t H = 40, W = 33, n = 2, OH, OW;
    CHECK_EQ_INT(on_conv2d_output_size(&p, H, W, &OH, &OW), ON_OK);
    size_t xn = n * 32 * H * W, wn = 48 * 32 * 9, yn = n * 48 * OH * OW;
    float *x = malloc(xn * 4), *w = malloc(wn * 4), *y1 = malloc(yn * 4), *y2 = malloc(yn * 4), *r = malloc(yn * 4);
    on_test_fill(x, xn);
    on_test_fill(w, wn);
    on_act_t act = {ON_ACT_RELU, 0, 0};
    on_conv2d *plan = NULL;
    CHECK_EQ_INT(on_conv2d_create(&p, w, NULL, act, &plan), ON_OK);
    CHECK_EQ_INT(on_conv2d_run(plan, n, H, W, x, y1, 1), ON_OK);
    CHECK_EQ_INT(on_conv2d_run(plan, n, H, W, x, y2, 2), ON_OK);
    CHECK_EQ_INT(on_conv2d_ref(&p, w, NULL, act, n, H, W, x, r), ON_OK);
    CHECK_ALLCLOSE(y1, r, yn, 1e-4f, 1e-3f, "im2col vs ref");
    CHECK_ALLCLOSE(y2, y1, yn, 0.0f, 0.0f, "2 threads identical to 1");
    on_conv2d_free(plan);
    free(x);
    free(w);
    free(y1);
    free(y2);
    free(r);
}

typedef struct {
    const char *name;
    size_t N, C, H, W, OC, KH, KW, sh, sw, dh, dw, pt, pl, pb, pr, group, oph, opw;
} convt_case;

static const convt_case TCASES[] = {
    {"2x2 s2", 1, 4, 5, 6, 3, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 1, 0, 0},
    {"3x3 s2 p1 op1", 2, 3, 4, 5, 5, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1},
    {"3x3 s1 p1", 1, 8, 7, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0},
    {"groups 2 asym", 1, 4, 5, 4, 6, 3, 2, 2, 3, 1, 1, 0, 1, 1, 0, 2, 1, 2},
    {"dilated", 1, 2, 4, 4, 2, 3, 3, 1, 1, 2, 2, 1, 0, 0, 1, 1, 0, 0},
    {"4x4 s2 p1 (decoder)", 1, 16, 8, 8, 8, 4, 4, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0, 0},
    {"depthwise-ish g=C", 1, 6, 5, 5, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 6, 1, 1},
    {"3x3 s3 tiling g2", 1, 4, 3, 5, 6, 3, 3, 3, 3, 1, 1, 0, 0, 0, 0, 2, 0, 0},
    {"2x2 s2 tiling to 1 ch", 2, 24, 6, 7, 1, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 1, 0, 0},
};

static void test_conv_transpose_matches_reference_all_isas(void) {
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_isa_available((on_isa_t)isa)) continue;
        on_set_isa((on_isa_t)isa);
        printf("  conv_transpose isa: %s\n", on_isa_name(on_active_isa()));
        for (size_t i = 0; i < sizeof(TCASES) / sizeof(TCASES[0]); i++) {
            const convt_case *c = &TCASES[i];
            on_conv_params p = {c->C, c->OC, c->KH, c->KW, c->sh, c->sw, c->dh, c->dw, c->pt, c->pl,
                                c->pb, c->pr, c->group, c->oph, c->opw};
            size_t OH = 0, OW = 0;
            CHECK_EQ_INT(on_conv_transpose2d_output_size(&p, c->H, c->W, &OH, &OW), ON_OK);
            size_t xn = c->N * c->C * c->H * c->W, wn = c->C * (c->OC / c->group) * c->KH * c->KW;
            size_t yn = c->N * c->OC * OH * OW;
            float *x = malloc(xn * 4), *w = malloc(wn * 4), *b = malloc(c->OC * 4);
            float *ref = malloc(yn * 4), *got = malloc(yn * 4);
            on_test_fill(x, xn);
            on_test_fill(w, wn);
            on_test_fill(b, c->OC);
            const float *bias = i % 2 ? b : NULL;
            CHECK_EQ_INT(on_conv_transpose2d_ref(&p, w, bias, c->N, c->H, c->W, x, ref), ON_OK);
            on_conv_transpose2d *plan = NULL;
            CHECK_EQ_INT(on_conv_transpose2d_create(&p, w, bias, &plan), ON_OK);
            for (int th = 1; th <= 2 && plan; th++) {
                CHECK_EQ_INT(on_conv_transpose2d_run(plan, c->N, c->H, c->W, x, got, th), ON_OK);
                char what[96];
                snprintf(what, sizeof(what), "%s (%s, %d threads)", c->name, on_isa_name(on_active_isa()), th);
                CHECK_ALLCLOSE(got, ref, yn, 1e-4f, 1e-4f * (float)(c->C + 1), what);
            }
            on_conv_transpose2d_free(plan);
            free(x);
            free(w);
            free(b);
            free(ref);
            free(got);
        }
    }
}

static void test_conv_rejects_bad_arguments(void) {
    float w[64] = {0}, x[64] = {0}, y[64];
    on_act_t none = {ON_ACT_NONE, 0, 0};
    on_conv2d *plan = NULL;
    on_conv_params p = {4, 6, 3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 4, 0, 0}; /* OC 6 not divisible by group 4 */
    CHECK_EQ_INT(on_conv2d_create(&p, w, NULL, none, &plan), ON_ERR_SHAPE);
    CHECK(plan == NULL);
    p.group = 1;
    p.stride_h = 0;
    CHECK_EQ_INT(on_conv2d_create(&p, w, NULL, none, &plan), ON_ERR_ARG);
    p.stride_h = 1;
    CHECK_EQ_INT(on_conv2d_create(&p, NULL, NULL, none, &plan), ON_ERR_ARG);
    size_t OH, OW;
    CHECK_EQ_INT(on_conv2d_output_size(&p, 2, 2, &OH, &OW), ON_ERR_SHAPE); /* 3x3 kernel on 2x2, no pad */
    p.C = 1;
    p.OC = 1;
    CHECK_EQ_INT(on_conv2d_create(&p, w, NULL, none, &plan), ON_OK);
    CHECK_EQ_INT(on_conv2d_run(plan, 1, 2, 2, x, y, 1), ON_ERR_SHAPE);
    CHECK_EQ_INT(on_conv2d_run(plan, 1, 4, 4, NULL, y, 1), ON_ERR_ARG);
    CHECK_EQ_INT(on_conv2d_run(NULL, 1, 4, 4, x, y, 1), ON_ERR_ARG);
    on_conv2d_free(plan);
    on_conv_params t = {2, 2, 3, 3, 2, 2, 1, 1, 0, 0, 0, 0, 1, 2, 0}; /* output_padding >= stride */
    CHECK_EQ_INT(on_conv_transpose2d_output_size(&t, 3, 3, &OH, &OW), ON_ERR_ARG);
    t.out_pad_h = 0;
    t.pad_t = t.pad_b = 9; /* pads eat the whole output */
    CHECK_EQ_INT(on_conv_transpose2d_output_size(&t, 3, 3, &OH, &OW), ON_ERR_SHAPE);
}

int main(void) {
    printf("ops_native test_conv: best ISA %s\n", on_isa_name(on_active_isa()));
    on_isa_t best = on_active_isa();
    RUN(test_conv_rejects_bad_arguments);
    RUN(test_conv2d_matches_reference_all_isas);
    RUN(test_conv2d_im2col_matches_reference_all_isas);
    RUN(test_conv2d_blocked_layouts_all_isas);
    RUN(test_conv2d_fused_residual_all_isas);
    on_set_isa(best);
    RUN(test_conv2d_large_threads_identical);
    RUN(test_conv_transpose_matches_reference_all_isas);
    return on_test_summary();
}
