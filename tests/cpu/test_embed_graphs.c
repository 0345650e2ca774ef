// The graph cache of the embedding pass (host/eval/embed_graphs.c) with a stub backend whose
// "graphs" count what they are asked: a shape's first batch runs directly, its second runs directly
// and is recorded, later ones replay; a scratch move makes the graph stale (recorded again); a full
// cache evicts and frees the oldest; freeing the cache frees every graph; the CPU has no cache.
#include <stdint.h>
#include <string.h>

#include "embed_graphs.h"
#include "test_util.h"

#define SLOTS 64  // GRAPH_CACHE_SLOTS

static struct {
  int recording, begun, ended, launched, freed, live;
  uint64_t epoch;
  int direct_runs, recorded_runs;  // fn called outside / inside a recording
} st;

static void stub_begin(void) { st.recording = 1, st.begun++; }
static void *stub_end(void) {
  st.recording = 0, st.ended++, st.live++;
  return (void *)(intptr_t)st.ended;  // a distinct non-NULL handle per recording
}
static void stub_launch(void *g) { st.launched++; }
static void stub_free(void *g) {
  if (g) st.freed++, st.live--;
}
static uint64_t stub_epoch(void) { return st.epoch; }

static void forward(void *ctx) {
  if (st.recording) st.recorded_runs++;
  else st.direct_runs++;
}

int main(void) {
  CHECK(sn_graph_cache_new(sn_ops_cpu()) == NULL, "the CPU backend has no graphs");
  sn_ops ops = *sn_ops_cpu();
  ops.graph_begin = stub_begin, ops.graph_end = stub_end, ops.graph_launch = stub_launch;
  ops.graph_free = stub_free, ops.scratch_epoch = stub_epoch;
  sn_graph_cache *c = sn_graph_cache_new(&ops);
  CHECK(c != NULL, "a backend with graphs gets a cache");
  const int a[SN_GRAPH_KEY_LEN] = {1, 32, 32}, b[SN_GRAPH_KEY_LEN] = {2, 40, 32};

  sn_graph_cache_run(c, a, forward, NULL);
  CHECK(st.direct_runs == 1 && st.begun == 0, "first sighting: direct only (%d runs, %d recordings)", st.direct_runs,
        st.begun);
  sn_graph_cache_run(c, a, forward, NULL);
  CHECK(st.direct_runs == 2 && st.recorded_runs == 1 && st.ended == 1 && st.launched == 0,
        "second sighting: direct run, then recorded (%d, %d, %d)", st.direct_runs, st.recorded_runs, st.ended);
  for (int i = 0; i < 3; i++) sn_graph_cache_run(c, a, forward, NULL);
  CHECK(st.launched == 3 && st.direct_runs == 2, "later sightings replay (%d launches)", st.launched);
  sn_graph_cache_run(c, b, forward, NULL);
  CHECK(st.direct_runs == 3 && st.launched == 3, "another shape is its own key");

  st.epoch++;  // the backend's scratch moved: a's graph names freed memory
  sn_graph_cache_run(c, a, forward, NULL);
  CHECK(st.launched == 3 && st.direct_runs == 4 && st.ended == 2 && st.freed == 1,
        "a stale graph is run directly and recorded again (%d launches, %d recordings, %d freed)", st.launched,
        st.ended, st.freed);
  sn_graph_cache_run(c, a, forward, NULL);
  CHECK(st.launched == 4, "then replayed");

  // Fill the cache with recorded shapes: a, the oldest claim, is evicted and its graph freed.
  for (int k = 0; k < SLOTS; k++) {
    const int key[SN_GRAPH_KEY_LEN] = {3, 100 + k, 100 + k};
    sn_graph_cache_run(c, key, forward, NULL);
    sn_graph_cache_run(c, key, forward, NULL);
  }
  CHECK(st.live <= SLOTS, "at most %d graphs live, %d", SLOTS, st.live);
  const int launches = st.launched, direct = st.direct_runs;
  sn_graph_cache_run(c, a, forward, NULL);
  CHECK(st.launched == launches && st.direct_runs == direct + 1, "the evicted shape runs directly again");
  sn_graph_cache_free(c);
  CHECK(st.live == 0, "freeing the cache frees every graph (%d left)", st.live);
  return sn_test_finish("test_embed_graphs");
}
