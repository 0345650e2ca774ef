// ZeRO-2 gradients and the sharded weights' all-gather (ZeRO-1 and ZeRO-2).
//
// ZeRO-2 keeps no full gradient buffer. The model writes every backward pass's gradients through a
// grad map (sn_gptr) whose regions are the tensors before the layers (the head: embeddings), each
// layer, and the tensors after them (the tail: final norm, projection), into one working area:
//   layer slot 0 | layer slot 1 | head | tail      (layer l writes into slot l % 2)
// As layer l completes (on_layer_grads) its reduce-scatter starts, and the one started for layer
// l + 1 is completed: each rank adds its summed part of that range into grad_shard and zeroes the
// slot, which layer l - 1 writes next. At SN_GRADS_REST the head and the tail (written at the end
// and at the start of the pass) go the same way. So a pass leaves the working area zero and its
// gradient summed over ranks into the slices, and a step of several passes accumulates them in
// grad_shard.
//
// The reduce-scatter has unequal parts (sn_comm_reduce_scatter_v_async): a layer's range crosses
// the slices' boundaries arbitrarily (a slice is ceil(N / world) elements, a layer anything), so
// rank q's part is the range's intersection with slice q, usually empty for all but one or two
// ranks. The parts lie in rank order in the buffer because the slices do. It is one collective
// with the same order on every rank, overlaps the lower layers' backward on NCCL (the
// communicator's stream), and adds in rank order on MPI, so a step of one backward pass gives the
// replicated mode's gradient sums bit for bit.
#include <string.h>

#include "common.h"
#include "optimizer_internal.h"

// Each region sits in the working area at the same address modulo this many bytes as in a flat
// buffer from ops->alloc (cudaMalloc's alignment), so the kernels take the same vectorised paths
// and cuBLASLt the same algorithms as without ZeRO-2 (both depend on 16-byte alignment).
#define GRAD_ALIGN_BYTES 256

static size_t region_len(const sn_optimizer *opt, int r) {
  return opt->z2.region_begin[r + 1] - opt->z2.region_begin[r];
}

// counts (world) = the sizes of region r's intersections with every rank's slice.
static void part_counts(const sn_optimizer *opt, int r, size_t *counts) {
  size_t n = opt->model->num_elements, stride = opt->shard_stride;
  size_t begin = opt->z2.region_begin[r], end = opt->z2.region_begin[r + 1];
  for (int q = 0; q < opt->comm->world_size; q++) {
    size_t slice_begin = SN_MIN(n, (size_t)q * stride), slice_end = SN_MIN(n, slice_begin + stride);
    size_t lo = SN_MAX(begin, slice_begin), hi = SN_MIN(end, slice_end);
    counts[q] = lo < hi ? hi - lo : 0;
  }
}

// Starts the sum of region r's buffer over ranks, each rank receiving its part.
static void start_region(sn_optimizer *opt, int r) {
  if (region_len(opt, r) == 0) return;
  part_counts(opt, r, opt->z2.counts);
  sn_comm_reduce_scatter_v_async(opt->comm, opt->z2.region_base[r], opt->z2.counts, opt->ops->storage, NULL);
  opt->buckets_started++;
  opt->z2.pending[opt->z2.n_pending++] = r;
}

// Completes the reduce-scatters in flight: each region's own part (the part of its range inside
// this rank's slice, in place in its buffer) into grad_shard, its buffer zeroed.
static void settle_pending(sn_optimizer *opt) {
  if (opt->z2.n_pending == 0) return;
  const sn_ops *ops = opt->ops;
  sn_comm_wait(opt->comm);
  for (int i = 0; i < opt->z2.n_pending; i++) {
    int r = opt->z2.pending[i];
    size_t begin = opt->z2.region_begin[r], end = opt->z2.region_begin[r + 1];
    size_t lo = SN_MAX(begin, opt->shard_begin), hi = SN_MIN(end, opt->shard_begin + opt->shard_len);
    void *buf = opt->z2.region_base[r];
    if (lo < hi) {
      void *dst = sn_opt_storage_at(opt, opt->grad_shard, lo - opt->shard_begin);
      ops->add(dst, dst, sn_opt_storage_at(opt, buf, lo - begin), hi - lo);
    }
    ops->memset_zero(buf, (end - begin) * ops->storage_size);
  }
  opt->z2.n_pending = 0;
}

// The model's callback, on every backward pass (ZeRO-2 sums each pass, not only the step's last).
static void zero2_on_grads(void *ctx, int l) {
  sn_optimizer *opt = ctx;
  if (l == SN_GRADS_REST) {  // the head and the tail join layer 0's reduce-scatter
    start_region(opt, 0);
    start_region(opt, opt->z2.n_regions - 1);
    settle_pending(opt);
    return;
  }
  // Layer l + 1's reduce-scatter ran while layer l computed; its slot is the one layer l - 1 needs.
  settle_pending(opt);
  start_region(opt, l + 1);
}

// The regions of a model (the head [0, first layer), each layer, the tail [last layer's end, n):
// begin (L + 3)) and the working area's layout, in elements: two alternating layer slots, then the
// head's slot, then the tail's. A elements make GRAD_ALIGN_BYTES; a region starting at element o
// sits o % A elements into its slot, whose start is a multiple of A. Returns the area's length.
static size_t zero2_layout(const sn_model *m, size_t storage_size, int world, size_t *layer_begin, size_t *layer_len,
                           size_t *begin, size_t *layer_slot, size_t *head_at, size_t *tail_slot_at) {
  const int L = m->cfg.n_layers, R = L + 2;
  const size_t n = m->num_elements;
  if (L > 0 && !sn_opt_find_layer_ranges(m, layer_begin, layer_len))
    sn_fatal("dist.zero = 2 needs each layer's tensors contiguous in the parameter buffer");
  begin[0] = 0;
  for (int l = 0; l < L; l++) begin[l + 1] = layer_begin[l];
  begin[L + 1] = L > 0 ? layer_begin[L - 1] + layer_len[L - 1] : n;
  begin[R] = n;
  const size_t A = GRAD_ALIGN_BYTES / storage_size;
  size_t max_layer = 0;
  for (int l = 0; l < L; l++) max_layer = SN_MAX(max_layer, layer_len[l]);
  *layer_slot = SN_CEIL_DIV(max_layer + A, A) * A;
  *head_at = 2 * *layer_slot;
  *tail_slot_at = *head_at + SN_CEIL_DIV(begin[1] - begin[0], A) * A;
  const size_t end = *tail_slot_at + SN_CEIL_DIV(begin[R] - begin[R - 1] + A, A) * A;
  // At least one element per rank: the all-gather stages pieces of work_len / world elements.
  return SN_MAX(end, (size_t)world);
}

size_t sn_optimizer_zero2_work_bytes(const sn_model *m, size_t storage_size, int world) {
  const int L = m->cfg.n_layers;
  size_t *lb = callocCheck((size_t)SN_MAX(L, 1), sizeof(size_t)), *ll = callocCheck((size_t)SN_MAX(L, 1), sizeof(size_t));
  size_t *begin = mallocCheck((size_t)(L + 3) * sizeof *begin), slot, head, tail;
  size_t len = zero2_layout(m, storage_size, world, lb, ll, begin, &slot, &head, &tail);
  free(lb), free(ll), free(begin);
  return len * storage_size;
}

void sn_opt_zero2_init(sn_optimizer *opt) {
  sn_model *m = opt->model;
  const sn_ops *ops = opt->ops;
  int L = m->cfg.n_layers, R = L + 2;
  opt->layer_begin = callocCheck((size_t)SN_MAX(L, 1), sizeof(size_t));
  opt->layer_len = callocCheck((size_t)SN_MAX(L, 1), sizeof(size_t));
  size_t *begin = mallocCheck((size_t)(R + 1) * sizeof *begin);
  size_t layer_slot, head_at, tail_slot_at;
  opt->z2.work_len = zero2_layout(m, ops->storage_size, opt->comm->world_size, opt->layer_begin, opt->layer_len,
                                  begin, &layer_slot, &head_at, &tail_slot_at);
  opt->z2.n_regions = R;
  opt->z2.region_begin = begin;
  const size_t A = GRAD_ALIGN_BYTES / ops->storage_size;
  opt->z2.work = ops->alloc(opt->z2.work_len * ops->storage_size);
  ops->memset_zero(opt->z2.work, opt->z2.work_len * ops->storage_size);
  void **base = mallocCheck((size_t)R * sizeof *base);
  base[0] = sn_opt_storage_at(opt, opt->z2.work, head_at);
  for (int l = 0; l < L; l++) base[l + 1] = sn_opt_storage_at(opt, opt->z2.work, (l % 2) * layer_slot + begin[l + 1] % A);
  base[R - 1] = sn_opt_storage_at(opt, opt->z2.work, tail_slot_at + begin[R - 1] % A);
  opt->z2.region_base = base;
  opt->z2.map = (sn_grad_map){.n = R, .begin = begin, .base = base};
  opt->z2.n_pending = 0;
  opt->z2.counts = mallocCheck((size_t)opt->comm->world_size * sizeof(size_t));

  if (m->grads) ops->free(m->grads);
  m->grads = NULL;
  m->grad_map = &opt->z2.map;
  m->on_layer_grads = zero2_on_grads;
  m->on_layer_grads_ctx = opt;
}

void sn_opt_zero2_free(sn_optimizer *opt) {
  sn_model *m = opt->model;
  if (m && m->grad_map == &opt->z2.map) {
    m->grad_map = NULL;
    m->on_layer_grads = NULL;
    m->on_layer_grads_ctx = NULL;
  }
  if (opt->z2.work) opt->ops->free(opt->z2.work);
  free(opt->z2.counts);
  free(opt->z2.region_begin);
  free(opt->z2.region_base);
}

// The gather runs in pieces of `piece` elements per rank through `stage` (world * piece): each
// rank puts the next piece of its slice (zero-padded past its end) at its position, and after the
// all-gather every rank copies each rank's piece to where that slice lives in the weights.
void sn_opt_all_gather_weights(sn_optimizer *opt) {
  const sn_ops *ops = opt->ops;
  sn_comm *comm = opt->comm;
  sn_model *m = opt->model;
  size_t n = m->num_elements, stride = opt->shard_stride, world = (size_t)comm->world_size;
  // ZeRO-1 has the padded exchange buffer (one piece: the whole slice); ZeRO-2 the working area,
  // free between backward passes, and zeroed again after.
  void *stage = opt->zero == 2 ? opt->z2.work : opt->exchange;
  size_t piece = opt->zero == 2 ? SN_MIN(stride, opt->z2.work_len / world) : stride;
  for (size_t at = 0; at < stride; at += piece) {
    size_t k = SN_MIN(piece, stride - at);
    void *mine = sn_opt_storage_at(opt, stage, (size_t)comm->rank * k);
    size_t have = opt->shard_len > at ? SN_MIN(k, opt->shard_len - at) : 0;
    if (have) ops->copy(mine, sn_opt_storage_at(opt, m->weights, opt->shard_begin + at), have * ops->storage_size);
    if (have < k) ops->memset_zero(sn_opt_storage_at(opt, mine, have), (k - have) * ops->storage_size);
    sn_comm_all_gather(comm, mine, stage, k, ops->storage);
    for (size_t r = 0; r < world; r++) {
      size_t begin = SN_MIN(n, r * stride + at), end = SN_MIN(n, r * stride + at + k);  // at + k <= stride
      if (r == (size_t)comm->rank || begin >= end) continue;  // its own piece is in place already
      ops->copy(sn_opt_storage_at(opt, m->weights, begin), sn_opt_storage_at(opt, stage, r * k),
                (end - begin) * ops->storage_size);
    }
  }
  if (opt->zero == 2) ops->memset_zero(opt->z2.work, opt->z2.work_len * ops->storage_size);
}
