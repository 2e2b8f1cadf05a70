/* test_dispatch.c - the per-ISA kernel tables (src/kernels.h): one complete table for every ISA this
 * machine runs, none for the others, the scalar table made of the reference kernels, and on_set_isa
 * switching the whole table at once (also while other threads read it). The kernels in the tables are
 * compared with the scalar reference by test_gemm.c, test_conv.c and test_ops.c. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "kernels.h"
#include "on_test.h"

static void test_every_runnable_isa_has_a_complete_table(void) {
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        const on_kernel_table *k = on_kernels_for_isa((on_isa_t)isa);
        CHECK_MSG((k != NULL) == (on_isa_available((on_isa_t)isa) != 0), "isa %s", on_isa_name((on_isa_t)isa));
        if (!k) continue;
        CHECK_EQ_INT(k->isa, isa);
        CHECK(k->gemm && k->gemm->tile && k->gemm->mr > 0);
        CHECK(k->dw_planes && k->dw_c8 && k->transpose && k->nchwc_row && k->nchwc_pack && k->ops);
        CHECK(k->ops->binary_row && k->ops->unary && k->ops->softmax_row && k->ops->layernorm_row &&
              k->ops->pool2d_plane && k->ops->row_reduce);
        /* only AVX-512F has 16-channel NCHWc rows (the plan packs them only where the CPU has it) */
        CHECK_EQ_INT(k->nchwc_row16 != NULL, isa == ON_ISA_AVX512);
    }
    CHECK(on_kernels_for_isa((on_isa_t)42) == NULL);
    CHECK(on_kernels_for_isa((on_isa_t)-1) == NULL);
}

static void test_scalar_table_is_the_reference(void) {
    const on_kernel_table *k = on_kernels_for_isa(ON_ISA_SCALAR);
    CHECK(k && k->gemm == &on_f32_gemm_4x16__scalar && k->ops == &on_ops_table_scalar);
    CHECK(k && k->dw_planes == on_conv_dw_planes__scalar && k->dw_c8 == on_conv_dw_c8__scalar);
    CHECK(k && k->transpose == on_transpose_f32__scalar && k->nchwc_row == on_conv_nchwc_row__scalar &&
          k->nchwc_pack == on_conv_nchwc_pack__scalar);
}

static void test_set_isa_switches_the_whole_table(void) {
    const on_isa_t before = on_active_isa();
    for (int isa = 0; isa < ON_ISA_COUNT; isa++) {
        if (!on_isa_available((on_isa_t)isa)) {
            CHECK_EQ_INT(on_set_isa((on_isa_t)isa), -1);
            continue;
        }
        CHECK_EQ_INT(on_set_isa((on_isa_t)isa), 0);
        CHECK(on_kernels_active() == on_kernels_for_isa((on_isa_t)isa));
        CHECK_EQ_INT(on_active_isa(), isa);
    }
    const on_kernel_table *k = on_kernels_active();
    CHECK_EQ_INT(on_set_isa((on_isa_t)42), -1); /* refused: the table stays */
    CHECK(on_kernels_active() == k);
    CHECK_EQ_INT(on_set_isa(before), 0);
}

typedef struct {
    atomic_int stop;
    atomic_int bad;
} reader_ctx;

static void *reader(void *arg) {
    reader_ctx *c = (reader_ctx *)arg;
    while (!atomic_load(&c->stop)) {
        const on_kernel_table *k = on_kernels_active();
        if (k != on_kernels_for_isa(k->isa)) atomic_fetch_add(&c->bad, 1);
    }
    return NULL;
}

static void test_readers_see_whole_tables_while_the_isa_switches(void) {
    const on_isa_t before = on_active_isa();
    reader_ctx c;
    atomic_init(&c.stop, 0);
    atomic_init(&c.bad, 0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, reader, &c) == 0);
    for (int rep = 0; rep < 20000; rep++) on_set_isa((on_isa_t)(rep % ON_ISA_COUNT)); /* unavailable: refused */
    atomic_store(&c.stop, 1);
    pthread_join(t, NULL);
    CHECK_EQ_INT(atomic_load(&c.bad), 0);
    on_set_isa(before);
}

int main(void) {
    printf("ops_native test_dispatch: best ISA %s\n", on_isa_name(on_active_isa()));
    RUN(test_every_runnable_isa_has_a_complete_table);
    RUN(test_scalar_table_is_the_reference);
    RUN(test_set_isa_switches_the_whole_table);
    RUN(test_readers_see_whole_tables_while_the_isa_switches);
    return on_test_summary();
}
