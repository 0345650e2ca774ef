// The allocation tracker behind ops->memory_stats: in-use bytes and the high-water mark stay exact
// through thousands of allocations freed in random order (table growth and backward-shift deletion
// under collisions), frees of unknown pointers change nothing, and the CPU backend counts its
// buffers.
#include <stdlib.h>

#include "alloc_stats.h"
#include "ops.h"
#include "test_util.h"

#define LIVE_MAX 5000   // live pointers at once: forces the table past several doublings
#define ROUNDS 40000    // random add/remove operations

static void check_stats(sn_alloc_tracker *t, size_t in_use, size_t peak, const char *when) {
  sn_alloc_stats s = sn_alloc_tracker_stats(t);
  CHECK(s.in_use == in_use && s.peak == peak, "%s: in_use %zu peak %zu, want %zu and %zu", when, s.in_use,
        s.peak, in_use, peak);
}

int main(void) {
  static sn_alloc_tracker t = SN_ALLOC_TRACKER_INIT;
  sn_test_rng rng;
  sn_test_rng_seed(&rng, 7);
  // Fake, distinct, 64-byte-spaced addresses: what malloc returns clusters the same way, so hashes
  // collide in runs and deletions have to shift entries back.
  static char arena[(size_t)LIVE_MAX * 2 * 64];
  const void *live[LIVE_MAX];
  size_t live_bytes[LIVE_MAX], nlive = 0, next_slot = 0, in_use = 0, peak = 0;
  check_stats(&t, 0, 0, "empty");
  sn_alloc_tracker_remove(&t, arena);  // unknown pointer on an empty table
  for (int round = 0; round < ROUNDS; round++) {
    int add = nlive == 0 || (nlive < LIVE_MAX && sn_test_uniform(&rng) < 0.55f);
    if (add) {
      const void *p = arena + (next_slot++ % (2 * LIVE_MAX)) * 64;
      int taken = 0;
      for (size_t i = 0; i < nlive && !taken; i++) taken = live[i] == p;
      if (taken) continue;
      size_t bytes = 1 + (size_t)(sn_test_uniform(&rng) * 1e6);
      sn_alloc_tracker_add(&t, p, bytes);
      live[nlive] = p, live_bytes[nlive++] = bytes;
      in_use += bytes;
      if (in_use > peak) peak = in_use;
    } else {
      size_t i = (size_t)(sn_test_uniform(&rng) * (float)nlive) % nlive;
      sn_alloc_tracker_remove(&t, live[i]);
      in_use -= live_bytes[i];
      live[i] = live[nlive - 1], live_bytes[i] = live_bytes[--nlive];
    }
    if (round % 1000 == 0) check_stats(&t, in_use, peak, "during the random rounds");
  }
  check_stats(&t, in_use, peak, "after the random rounds");
  sn_alloc_tracker_remove(&t, arena + 1);  // never added: changes nothing
  check_stats(&t, in_use, peak, "after removing an unknown pointer");
  sn_alloc_tracker_reset_peak(&t);
  check_stats(&t, in_use, in_use, "after reset_peak");
  while (nlive) sn_alloc_tracker_remove(&t, live[--nlive]);
  check_stats(&t, 0, in_use, "after freeing everything");
  printf("tracker: %d rounds, peak %zu bytes\n", ROUNDS, peak);

  // The CPU backend: a buffer shows in in_use and peak, and leaves in_use when freed.
  const sn_ops *cpu = sn_ops_cpu();
  sn_alloc_stats before = cpu->memory_stats();
  const size_t bytes = 3u << 20;
  void *p = cpu->alloc(bytes);
  sn_alloc_stats during = cpu->memory_stats();
  cpu->free(p);
  sn_alloc_stats after = cpu->memory_stats();
  CHECK(during.in_use == before.in_use + bytes, "cpu alloc: in_use %zu, want %zu", during.in_use,
        before.in_use + bytes);
  CHECK(during.peak >= before.in_use + bytes, "cpu alloc: peak %zu below in_use", during.peak);
  CHECK(after.in_use == before.in_use, "cpu free: in_use %zu, want %zu", after.in_use, before.in_use);
  cpu->memory_reset_peak();
  CHECK(cpu->memory_stats().peak == before.in_use, "cpu reset_peak: peak %zu", cpu->memory_stats().peak);
  return sn_test_finish("test_alloc_stats");
}
