// ZeRO-2 gradients and the sharded weights' all-gather (ZeRO-1 and ZeRO-2).
//
// ZeRO-2 keeps no full gradient buffer. The model writes every backward pass's gradients through a
// grad map (sn_gptr) into one working area of
//   layer buffer 0 | layer buffer 1   (max layer_len each; layer l writes into layer_buf[l % 2])
//   outer buffer                      (the tensors before the layers, then those after them)
// As layer l completes (on_layer_grads) its buffer's reduce-scatter starts, and the one started for
// layer l + 1 is completed: each rank adds its summed part of that range into grad_shard and
// zeroes the buffer, which layer l - 1 writes next. At SN_GRADS_REST the outer buffer (whose
// gradients were written at the start of the pass — projection, final norm — and at its end —
// embeddings) goes the same way. So a pass leaves the working area zero and its gradient summed
// over ranks into the slices, and a step with several passes accumulates them in grad_shard.
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

// Adds buf's elements of [begin, end) that lie in this rank's slice into grad_shard; buf holds
// [begin, end).
static void add_own_part(sn_optimizer *opt, const void *buf, size_t begin, size_t end) {
  size_t lo = SN_MAX(begin, opt->shard_begin), hi = SN_MIN(end, opt->shard_begin + opt->shard_len);
  if (lo >= hi) return;
  void *dst = sn_opt_storage_at(opt, opt->grad_shard, lo - opt->shard_begin);
  opt->ops->add(dst, dst, sn_opt_storage_at(opt, (void *)buf, lo - begin), hi - lo);
}

static size_t layer_end(const sn_optimizer *opt, int l) { return opt->layer_begin[l] + opt->layer_len[l]; }

// counts (world) += the sizes of [begin, end)'s intersections with every rank's slice.
static void add_part_counts(const sn_optimizer *opt, size_t begin, size_t end, size_t *counts) {
  size_t n = opt->model->num_elements, stride = opt->shard_stride;
  for (int q = 0; q < opt->comm->world_size; q++) {
    size_t slice_begin = SN_MIN(n, (size_t)q * stride), slice_end = SN_MIN(n, slice_begin + stride);
    size_t lo = SN_MAX(begin, slice_begin), hi = SN_MIN(end, slice_end);
    if (lo < hi) counts[q] += hi - lo;
  }
}

// Starts the sum of layer l's buffer over ranks, each rank receiving its part.
static void start_layer(sn_optimizer *opt, int l) {
  memset(opt->z2.counts, 0, (size_t)opt->comm->world_size * sizeof(size_t));
  add_part_counts(opt, opt->layer_begin[l], layer_end(opt, l), opt->z2.counts);
  sn_comm_reduce_scatter_v_async(opt->comm, opt->z2.layer_buf[l % 2], opt->z2.counts, opt->ops->storage, NULL);
  opt->buckets_started++;
  opt->z2.pending_layer = l;
}

// Completes the in-flight layer reduce-scatter (if any): its own part into the shard, its buffer
// zeroed.
static void settle_pending_layer(sn_optimizer *opt) {
  int l = opt->z2.pending_layer;
  if (l < 0) return;
  void *buf = opt->z2.layer_buf[l % 2];
  sn_comm_wait(opt->comm);
  add_own_part(opt, buf, opt->layer_begin[l], layer_end(opt, l));
  opt->ops->memset_zero(buf, opt->layer_len[l] * opt->ops->storage_size);
  opt->z2.pending_layer = -1;
}

// The outer buffer at the end of a pass: reduce-scattered, its two ranges' own parts into the
// shard. The parts stay in rank order in the buffer: the head's ranks come before the tail's, and
// a rank owning both has the end of the head and the start of the tail, adjacent.
static void reduce_outer(sn_optimizer *opt) {
  size_t n = opt->model->num_elements, head = opt->z2.head_len, tail = n - opt->z2.tail_begin;
  if (head + tail == 0) return;
  void *outer = opt->z2.outer;
  memset(opt->z2.counts, 0, (size_t)opt->comm->world_size * sizeof(size_t));
  add_part_counts(opt, 0, head, opt->z2.counts);
  add_part_counts(opt, opt->z2.tail_begin, n, opt->z2.counts);
  sn_comm_reduce_scatter_v_async(opt->comm, outer, opt->z2.counts, opt->ops->storage, NULL);
  opt->buckets_started++;
  sn_comm_wait(opt->comm);
  add_own_part(opt, outer, 0, head);
  add_own_part(opt, sn_opt_storage_at(opt, outer, head), opt->z2.tail_begin, n);
  opt->ops->memset_zero(outer, (head + tail) * opt->ops->storage_size);
}

// The model's callback, on every backward pass (ZeRO-2 sums each pass, not only the step's last).
static void zero2_on_grads(void *ctx, int l) {
  sn_optimizer *opt = ctx;
  if (l == SN_GRADS_REST) {
    settle_pending_layer(opt);
    reduce_outer(opt);
    return;
  }
  // Layer l + 1's reduce-scatter ran while layer l computed; its buffer is the one layer l - 1 needs.
  settle_pending_layer(opt);
  start_layer(opt, l);
}

void sn_opt_zero2_init(sn_optimizer *opt) {
  sn_model *m = opt->model;
  const sn_ops *ops = opt->ops;
  int L = m->cfg.n_layers;
  size_t n = m->num_elements;
  opt->layer_begin = callocCheck((size_t)SN_MAX(L, 1), sizeof(size_t));
  opt->layer_len = callocCheck((size_t)SN_MAX(L, 1), sizeof(size_t));
  if (L > 0 && !sn_opt_find_layer_ranges(m, opt->layer_begin, opt->layer_len))
    sn_fatal("dist.zero = 2 needs each layer's tensors contiguous in the parameter buffer");
  size_t max_layer = 0;
  for (int l = 0; l < L; l++) max_layer = SN_MAX(max_layer, opt->layer_len[l]);
  opt->z2.head_len = L > 0 ? opt->layer_begin[0] : n;
  opt->z2.tail_begin = L > 0 ? layer_end(opt, L - 1) : n;
  size_t outer_len = opt->z2.head_len + (n - opt->z2.tail_begin);
  // At least one element per rank: the all-gather stages pieces of work_len / world elements.
  opt->z2.work_len = SN_MAX(2 * max_layer + outer_len, (size_t)opt->comm->world_size);
  opt->z2.work = ops->alloc(opt->z2.work_len * ops->storage_size);
  ops->memset_zero(opt->z2.work, opt->z2.work_len * ops->storage_size);
  opt->z2.layer_buf[0] = opt->z2.work;
  opt->z2.layer_buf[1] = sn_opt_storage_at(opt, opt->z2.work, max_layer);
  opt->z2.outer = sn_opt_storage_at(opt, opt->z2.work, 2 * max_layer);
  opt->z2.pending_layer = -1;
  opt->z2.counts = mallocCheck((size_t)opt->comm->world_size * sizeof(size_t));

  // Regions: [0, head) → outer; layer l → layer_buf[l % 2]; [tail_begin, n) → after head in outer.
  size_t *begin = mallocCheck((size_t)(L + 3) * sizeof *begin);
  void **base = mallocCheck((size_t)(L + 2) * sizeof *base);
  begin[0] = 0;
  base[0] = opt->z2.outer;
  for (int l = 0; l < L; l++) {
    begin[l + 1] = opt->layer_begin[l];
    base[l + 1] = opt->z2.layer_buf[l % 2];
  }
  begin[L + 1] = opt->z2.tail_begin;
  base[L + 1] = sn_opt_storage_at(opt, opt->z2.outer, opt->z2.head_len);
  begin[L + 2] = n;
  opt->z2.region_begin = begin;
  opt->z2.region_base = base;
  opt->z2.map = (sn_grad_map){.n = L + 2, .begin = begin, .base = base};

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
