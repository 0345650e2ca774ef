// Shared by the optimizer's files: optimizer.c (AdamW, the replicated exchange, ZeRO-1's
// reduce-scatter) and optimizer_zero.c (ZeRO-2's working buffers, the sharded weights' all-gather).
#pragma once
#include <stddef.h>

#include "optimizer.h"

// Element `offset` of a buffer of the backend's storage dtype.
static inline void *sn_opt_storage_at(const sn_optimizer *opt, void *base, size_t offset) {
  return (char *)base + offset * opt->ops->storage_size;
}
// The element range of each layer (begin, len: n_layers entries). Returns 0 unless every layer's
// tensors are contiguous and the layers follow each other in the buffer.
int sn_opt_find_layer_ranges(const sn_model *m, size_t *begin, size_t *len);

// ZeRO-2: allocates the working buffers, installs the grad map and the per-layer callback on the
// model (which must have layers contiguous in its buffer), frees the model's full grads buffer.
void sn_opt_zero2_init(sn_optimizer *opt);
// Uninstalls them from the model and frees them.
void sn_opt_zero2_free(sn_optimizer *opt);
// ZeRO-1 and ZeRO-2: every rank's updated slice of the weights (in place in the model's weights
// at shard_begin) to every rank.
void sn_opt_all_gather_weights(sn_optimizer *opt);
