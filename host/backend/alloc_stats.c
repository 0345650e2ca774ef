// Pointer → size table of the allocation tracker: open addressing with linear probing, deleted
// slots re-filled by backward-shift, so a run that allocates and frees every step (scratch growth,
// evaluation buffers) never degrades the table. Allocations are few (flat buffers, not tensors),
// so a mutex around each call costs nothing measurable.
#include "alloc_stats.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define TRACKER_INITIAL_SLOTS 1024  // power of two; grows ×2 past half full

static size_t slot_of(const void *p, size_t nslots) {
  uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull;  // Fibonacci hashing
  return (size_t)(h >> 32) & (nslots - 1);
}

static void *calloc_or_die(size_t n, size_t size) {
  void *p = calloc(n, size);
  if (!p) {
    fprintf(stderr, "error: %s:%d: allocation tracker: out of host memory\n", __FILE__, __LINE__);
    exit(1);
  }
  return p;
}

static void insert_slot(sn_alloc_slot *slots, size_t nslots, const void *p, size_t bytes) {
  size_t i = slot_of(p, nslots);
  while (slots[i].ptr && slots[i].ptr != p) i = (i + 1) & (nslots - 1);
  slots[i].ptr = p, slots[i].bytes = bytes;
}

static void grow(sn_alloc_tracker *t) {
  size_t n = t->nslots * 2;
  sn_alloc_slot *slots = calloc_or_die(n, sizeof *slots);
  for (size_t i = 0; i < t->nslots; i++)
    if (t->slots[i].ptr) insert_slot(slots, n, t->slots[i].ptr, t->slots[i].bytes);
  free(t->slots);
  t->slots = slots, t->nslots = n;
}

void sn_alloc_tracker_add(sn_alloc_tracker *t, const void *p, size_t bytes) {
  if (!p) return;
  pthread_mutex_lock(&t->lock);
  if (!t->slots) t->nslots = TRACKER_INITIAL_SLOTS, t->slots = calloc_or_die(t->nslots, sizeof *t->slots);
  if (2 * (t->used + 1) > t->nslots) grow(t);
  insert_slot(t->slots, t->nslots, p, bytes);
  t->used++;
  t->stats.in_use += bytes;
  if (t->stats.in_use > t->stats.peak) t->stats.peak = t->stats.in_use;
  pthread_mutex_unlock(&t->lock);
}

void sn_alloc_tracker_remove(sn_alloc_tracker *t, const void *p) {
  if (!p) return;
  pthread_mutex_lock(&t->lock);
  if (!t->slots) {
    pthread_mutex_unlock(&t->lock);
    return;
  }
  const size_t mask = t->nslots - 1;
  size_t i = slot_of(p, t->nslots);
  while (t->slots[i].ptr && t->slots[i].ptr != p) i = (i + 1) & mask;
  if (t->slots[i].ptr) {
    t->stats.in_use -= t->slots[i].bytes;
    t->used--;
    // Backward-shift deletion: pull later entries of the probe run into the hole.
    size_t hole = i, j = i;
    for (;;) {
      j = (j + 1) & mask;
      if (!t->slots[j].ptr) break;
      size_t home = slot_of(t->slots[j].ptr, t->nslots);
      // j may move into the hole if its home is not cyclically within (hole, j]
      int stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
      if (!stays) t->slots[hole] = t->slots[j], hole = j;
    }
    t->slots[hole].ptr = NULL, t->slots[hole].bytes = 0;
  }
  pthread_mutex_unlock(&t->lock);
}

sn_alloc_stats sn_alloc_tracker_stats(sn_alloc_tracker *t) {
  pthread_mutex_lock(&t->lock);
  sn_alloc_stats s = t->stats;
  pthread_mutex_unlock(&t->lock);
  return s;
}

void sn_alloc_tracker_reset_peak(sn_alloc_tracker *t) {
  pthread_mutex_lock(&t->lock);
  t->stats.peak = t->stats.in_use;
  pthread_mutex_unlock(&t->lock);
}
