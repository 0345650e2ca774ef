// Recorded forward passes for repeated batch shapes (the backend's graphs, ops.h): the embedding
// pass of the encoder library replays one launch per batch instead of one per op. Keyed by the
// host-side sizes the ops are launched with (sequences, tokens, longest sequence), which is all a
// forward's launches depend on: the lengths themselves are read from device memory, so one
// graph serves every batch of the key, with the same kernels and results as a direct run.
#pragma once
#include "ops.h"

#define SN_GRAPH_KEY_LEN 3

typedef struct sn_graph_cache sn_graph_cache;

// NULL when ops has no graphs (the CPU backend).
sn_graph_cache *sn_graph_cache_new(const sn_ops *ops);
void sn_graph_cache_free(sn_graph_cache *c);
// Runs fn(ctx), a sequence of ops without copies or synchronisation, for a batch of this key: the
// recorded graph when there is a current one; else fn directly, and from the key's second run on it
// is also recorded for the next ones (shapes seen once are not worth a recording).
void sn_graph_cache_run(sn_graph_cache *c, const int key[SN_GRAPH_KEY_LEN], void (*fn)(void *ctx), void *ctx);
