// Replica check for data parallelism: after a step every rank must hold bit-identical weights
// (replicated AdamW takes the same step everywhere; ZeRO all-gathers the updated slices). A
// 64-bit hash of each rank's weights is gathered and compared, so a silent divergence (a missed
// all-reduce, a stale bucket, a nondeterministic update) stops the run at the step it happened.
#include <string.h>

#include "common.h"
#include "train_internal.h"

#define REPLICA_HASH_CHUNK_BYTES ((size_t)64 << 20)  // host staging buffer for the download
#define REPLICA_HASH_SEED 0x5eedULL

_Static_assert(sizeof(size_t) == sizeof(uint64_t), "hashes travel as size_t counts");

static uint64_t hash_weights(const sn_model *m, unsigned char *staging, uint64_t h) {
  size_t bytes = m->num_elements * m->ops->storage_size;
  for (size_t off = 0; off < bytes; off += REPLICA_HASH_CHUNK_BYTES) {
    size_t len = SN_MIN(REPLICA_HASH_CHUNK_BYTES, bytes - off);
    m->ops->download(staging, (const char *)m->weights + off, len);
    h = sn_hash64(staging, len, h);
  }
  return h;
}

void sn_trainer_check_replicas(const sn_trainer *t, sn_model *const *models, int n, int64_t step,
                               sn_step_record *rec) {
  int every = t->cfg.dist.check_replicas_every;
  if (every <= 0 || step % every != 0) return;
  unsigned char *staging = mallocCheck(REPLICA_HASH_CHUNK_BYTES);
  uint64_t h = REPLICA_HASH_SEED;
  for (int i = 0; i < n; i++) h = hash_weights(models[i], staging, h);
  free(staging);
  uint64_t *all = mallocCheck((size_t)t->world * sizeof *all);
  sn_comm_all_gather_u64_host(t->comm, h, all);
  for (int r = 1; r < t->world; r++)
    if (all[r] != all[0])
      sn_fatal("step %lld: the weights differ across ranks (hash %016llx on rank 0, %016llx on rank %d): "
               "the data-parallel replicas diverged", (long long)step, (unsigned long long)all[0],
               (unsigned long long)all[r], r);
  free(all);
  rec->has_weights_hash = 1;
  rec->weights_hash = h;
}
