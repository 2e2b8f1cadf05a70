/* threadpool.h - internals of the persistent worker pool behind on_parallel_for (on_common.h). */
#ifndef ON_THREADPOOL_H
#define ON_THREADPOOL_H

#include "on_common.h"

/* Upper bound on threads one on_parallel_for call uses (caller included). */
#define ON_MAX_THREADS 64

/* Workers currently alive (not counting callers). */
int on_threadpool_workers(void);

#endif
