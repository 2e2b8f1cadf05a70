/* common.c - status strings and aligned allocation helpers. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "on_common.h"

const char *on_status_str(on_status s) {
    switch (s) {
    case ON_OK: return "ok";
    case ON_ERR_ARG: return "invalid argument";
    case ON_ERR_SHAPE: return "shape mismatch";
    case ON_ERR_NOMEM: return "out of memory";
    case ON_ERR_UNSUPPORTED: return "unsupported";
    case ON_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

void *on_malloc(size_t size) {
    void *p = NULL;
    /* round up: aligned_alloc wants a multiple of the alignment; +0 gives a unique pointer */
    size_t rounded = (size + ON_ALIGN - 1) / ON_ALIGN * ON_ALIGN;
    if (rounded < size) return NULL;
    if (rounded == 0) rounded = ON_ALIGN;
    if (posix_memalign(&p, ON_ALIGN, rounded) != 0) return NULL;
    return p;
}

void *on_calloc(size_t count, size_t size) {
    size_t total;
    if (!on_mul_size(count, size, &total)) return NULL;
    void *p = on_malloc(total);
    if (p) memset(p, 0, total);
    return p;
}

void on_free(void *p) { free(p); }

static _Thread_local void *tl_scratch[ON_SCRATCH_SLOTS];
static _Thread_local size_t tl_scratch_cap[ON_SCRATCH_SLOTS];

void *on_scratch(int slot, size_t bytes) {
    if (slot < 0 || slot >= ON_SCRATCH_SLOTS) return NULL;
    if (tl_scratch[slot] && tl_scratch_cap[slot] >= bytes) return tl_scratch[slot];
    size_t cap = bytes + bytes / 4 + 4096; /* headroom: a few growing sizes settle quickly */
    if (cap < bytes) return NULL;
    void *p = on_malloc(cap);
    if (!p) return NULL;
    on_free(tl_scratch[slot]);
    tl_scratch[slot] = p;
    tl_scratch_cap[slot] = cap;
    return p;
}

void *on_temp_alloc(int slot, size_t bytes, int *owned) {
    *owned = bytes > ON_SCRATCH_KEEP_MAX;
    return *owned ? on_malloc(bytes) : on_scratch(slot, bytes);
}

void on_temp_free(void *p, int owned) {
    if (owned) on_free(p);
}
