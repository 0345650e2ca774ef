// Allocation accounting of one backend's memory: bytes in use and their high-water mark, kept by
// pointer so a free knows its size (cudaFree does not tell). Both backends keep one tracker each
// for everything they allocate (buffers and scratch), so `ops->memory_stats` reports what the run
// itself holds; the CUDA context, cuBLAS and NCCL internals are outside it. Thread-safe.
#pragma once
#include <pthread.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sn_alloc_stats {
  size_t in_use;  // bytes allocated and not yet freed
  size_t peak;    // most bytes in use at once since the start or the last reset
} sn_alloc_stats;

typedef struct sn_alloc_slot {
  const void *ptr;  // NULL = empty slot
  size_t bytes;
} sn_alloc_slot;

// A backend's tracker is a static `sn_alloc_tracker t = SN_ALLOC_TRACKER_INIT;` (no set-up call).
typedef struct sn_alloc_tracker {
  pthread_mutex_t lock;
  sn_alloc_slot *slots;  // pointer → size table, allocated on the first add
  size_t nslots, used;
  sn_alloc_stats stats;
} sn_alloc_tracker;
#define SN_ALLOC_TRACKER_INIT {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0, {0, 0}}

void sn_alloc_tracker_add(sn_alloc_tracker *t, const void *p, size_t bytes);
// Forgets p (a pointer never added, or NULL, changes nothing).
void sn_alloc_tracker_remove(sn_alloc_tracker *t, const void *p);
sn_alloc_stats sn_alloc_tracker_stats(sn_alloc_tracker *t);
void sn_alloc_tracker_reset_peak(sn_alloc_tracker *t);  // peak = in_use

#ifdef __cplusplus
}
#endif
