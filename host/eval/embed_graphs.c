// A small cache of recorded graphs by batch shape, oldest recording out first when full.
#include <string.h>

#include "common.h"
#include "embed_graphs.h"

#define GRAPH_CACHE_SLOTS 64  // shapes kept: batch sizes x lengths a server sees repeatedly

typedef struct {
  int key[SN_GRAPH_KEY_LEN];
  int used;        // the slot holds a key
  void *graph;     // NULL until the key's second run
  uint64_t epoch;  // ops->scratch_epoch() when recorded
} graph_slot;

struct sn_graph_cache {
  const sn_ops *ops;
  graph_slot slots[GRAPH_CACHE_SLOTS];
  int next_evict;
};

sn_graph_cache *sn_graph_cache_new(const sn_ops *ops) {
  if (!ops->graph_begin) return NULL;
  sn_graph_cache *c = callocCheck(1, sizeof *c);
  c->ops = ops;
  return c;
}

void sn_graph_cache_free(sn_graph_cache *c) {
  if (!c) return;
  for (int i = 0; i < GRAPH_CACHE_SLOTS; i++) c->ops->graph_free(c->slots[i].graph);
  free(c);
}

static graph_slot *find_or_claim(sn_graph_cache *c, const int key[SN_GRAPH_KEY_LEN], int *fresh) {
  for (int i = 0; i < GRAPH_CACHE_SLOTS; i++)
    if (c->slots[i].used && memcmp(c->slots[i].key, key, sizeof c->slots[i].key) == 0) {
      *fresh = 0;
      return &c->slots[i];
    }
  graph_slot *s = &c->slots[c->next_evict];
  c->next_evict = (c->next_evict + 1) % GRAPH_CACHE_SLOTS;
  c->ops->graph_free(s->graph);
  memset(s, 0, sizeof *s);
  memcpy(s->key, key, sizeof s->key);
  s->used = 1;
  *fresh = 1;
  return s;
}

void sn_graph_cache_run(sn_graph_cache *c, const int key[SN_GRAPH_KEY_LEN], void (*fn)(void *ctx), void *ctx) {
  int fresh;
  graph_slot *s = find_or_claim(c, key, &fresh);
  const sn_ops *ops = c->ops;
  if (s->graph && s->epoch == ops->scratch_epoch()) {
    ops->graph_launch(s->graph);
    return;
  }
  // Direct run first: it sizes the backend's scratch for the shape before anything is recorded.
  fn(ctx);
  if (fresh) return;
  ops->graph_free(s->graph);
  ops->graph_begin();
  fn(ctx);
  s->graph = ops->graph_end();
  s->epoch = ops->scratch_epoch();
}
