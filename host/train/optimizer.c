#include "optimizer.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "counter_rng.h"
#include "optimizer_internal.h"

sn_schedule sn_schedule_from_name(const char *name) {
  if (strcmp(name, "linear") == 0) return SN_SCHEDULE_LINEAR;
  if (strcmp(name, "constant") == 0) return SN_SCHEDULE_CONSTANT;
  return SN_SCHEDULE_COSINE;
}

int sn_optim_state_bf16(const sn_cfg_optim *cfg) { return strcmp(cfg->state_dtype, "bf16") == 0; }

static void *alloc_zeroed(const sn_ops *ops, size_t n, size_t elem_size) {
  void *p = ops->alloc(SN_MAX(n, 1) * elem_size);
  ops->memset_zero(p, SN_MAX(n, 1) * elem_size);
  return p;
}

// The moments' element: fp32, or the storage dtype with the bf16 state (fp32 storage then holds
// the bf16 values).
static sn_dtype moment_dtype(const sn_ops *ops, int state_bf16) { return state_bf16 ? ops->storage : SN_DTYPE_F32; }
// A separate fp32 master: unless the weights are their own (fp32 storage and not sharded, or the
// bf16 state). Sharded fp32, the slice's master is its own buffer even on fp32 backends: checkpoints
// download and restore it as the slice, apart from the weights every rank holds whole.
static int has_master(const sn_ops *ops, int zero, int state_bf16) {
  return !state_bf16 && (ops->storage != SN_DTYPE_F32 || zero);
}

// The model's spans clipped to [begin, begin + len), offsets made relative to begin.
static sn_param_span *clip_spans(const sn_param_span *all, int n_all, size_t begin, size_t len, int *n) {
  sn_param_span *out = mallocCheck((size_t)SN_MAX(n_all, 1) * sizeof *out);
  *n = 0;
  for (int i = 0; i < n_all; i++) {
    size_t lo = SN_MAX(all[i].offset, begin), hi = SN_MIN(all[i].offset + all[i].count, begin + len);
    if (lo >= hi) continue;
    out[(*n)++] = (sn_param_span){.offset = lo - begin, .count = hi - lo, .weight_decay = all[i].weight_decay};
  }
  return out;
}

void sn_optimizer_init(sn_optimizer *opt, sn_model *model, const sn_cfg_optim *cfg, int64_t total_steps,
                       sn_comm *comm, int zero, uint64_t round_seed) {
  memset(opt, 0, sizeof *opt);
  const sn_ops *ops = model->ops;
  size_t n = model->num_elements;
  int world = comm ? comm->world_size : 1;
  opt->model = model;
  opt->ops = ops;
  opt->comm = comm;
  opt->cfg = *cfg;
  opt->total_steps = total_steps;
  opt->state_bf16 = sn_optim_state_bf16(cfg);
  opt->round_seed = round_seed;
  opt->zero = world > 1 ? zero : 0;
  opt->shard_len = n;
  if (opt->zero) {
    opt->shard_stride = SN_CEIL_DIV(n, (size_t)world);
    opt->shard_begin = SN_MIN(n, (size_t)comm->rank * opt->shard_stride);
    opt->shard_len = SN_MIN(n, opt->shard_begin + opt->shard_stride) - opt->shard_begin;
    opt->grad_shard = ops->alloc(opt->shard_stride * ops->storage_size);
    ops->memset_zero(opt->grad_shard, opt->shard_stride * ops->storage_size);
  }
  if (opt->zero == 1) opt->exchange = ops->alloc((size_t)world * opt->shard_stride * ops->storage_size);
  if (opt->zero == 2) sn_opt_zero2_init(opt);
  else if (!model->grads) sn_model_alloc_grads(model);
  const size_t moment_size = sn_dtype_size(moment_dtype(ops, opt->state_bf16));
  opt->m = alloc_zeroed(ops, opt->shard_len, moment_size);
  opt->v = alloc_zeroed(ops, opt->shard_len, moment_size);
  if (has_master(ops, opt->zero, opt->state_bf16)) {
    opt->master = ops->alloc(SN_MAX(opt->shard_len, 1) * sizeof(float));
    ops->storage_to_f32(opt->master, sn_opt_storage_at(opt, model->weights, opt->shard_begin), opt->shard_len);
  }
  opt->scratch = ops->alloc(sizeof(float));
  int n_all = 0;
  sn_param_span *all = sn_model_param_spans(model, cfg->weight_decay, &n_all);
  opt->spans = clip_spans(all, n_all, opt->shard_begin, opt->shard_len, &opt->nspans);
  free(all);
}

sn_optimizer_plan sn_optimizer_plan_bytes(const sn_model *m, int world, int zero, const sn_cfg_optim *cfg) {
  // as sn_optimizer_init, for rank 0 (whose slice is the largest)
  const sn_ops *ops = m->ops;
  const size_t n = m->num_elements, es = ops->storage_size;
  zero = world > 1 ? zero : 0;
  const size_t stride = zero ? SN_CEIL_DIV(n, (size_t)world) : n, shard = SN_MIN(n, stride);
  sn_optimizer_plan p = {0};
  p.grads = zero == 2 ? sn_optimizer_zero2_work_bytes(m, es, world) : n * es;
  const int state_bf16 = sn_optim_state_bf16(cfg);
  p.moments = 2 * SN_MAX(shard, 1) * sn_dtype_size(moment_dtype(ops, state_bf16)) + sizeof(float);  // + the norm scratch
  if (has_master(ops, zero, state_bf16)) p.master = SN_MAX(shard, 1) * sizeof(float);
  p.moments_desc = !state_bf16                    ? "fp32 m and v"
                   : ops->storage == SN_DTYPE_F32 ? "m and v as bf16 values in fp32 (the weights their own master)"
                                                  : "bf16 m and v (the bf16 weights their own master)";
  if (zero) p.exchange = stride * es;                          // the gradient slice
  if (zero == 1) p.exchange += (size_t)world * stride * es;   // the padded all-gather buffer
  return p;
}

// The element range of each layer, from the parameter names ("layers.<l>." for decoders,
// "encoder.layer.<l>." for BERT). Returns 0 unless every layer's tensors are contiguous and the
// layers follow each other in the buffer (the layout host/model/model.c writes).
int sn_opt_find_layer_ranges(const sn_model *m, size_t *begin, size_t *len) {
  int L = m->cfg.n_layers;
  size_t *end = callocCheck((size_t)SN_MAX(L, 1), sizeof *end);
  for (int l = 0; l < L; l++) begin[l] = SIZE_MAX;
  size_t layer_elems = 0;
  for (int i = 0; i < m->nparams; i++) {
    const sn_param *p = &m->params[i];
    int l;
    if (sscanf(p->name, "layers.%d.", &l) != 1 && sscanf(p->name, "encoder.layer.%d.", &l) != 1) continue;
    if (l < 0 || l >= L) continue;
    begin[l] = SN_MIN(begin[l], p->offset);
    end[l] = SN_MAX(end[l], p->offset + p->count);
    layer_elems += p->count;
  }
  int ok = L > 0;
  size_t covered = 0;
  for (int l = 0; l < L && ok; l++) {
    ok = begin[l] != SIZE_MAX && (l == 0 || begin[l] == end[l - 1]);
    if (ok) len[l] = end[l] - begin[l], covered += len[l];
  }
  free(end);
  return ok && covered == layer_elems;
}

void sn_optimizer_enable_overlap(sn_optimizer *opt, size_t bucket_bytes) {
  if (!opt->comm || opt->comm->world_size == 1 || opt->zero) return;
  int L = opt->model->cfg.n_layers;
  opt->layer_begin = callocCheck((size_t)SN_MAX(L, 1), sizeof(size_t));
  opt->layer_len = callocCheck((size_t)SN_MAX(L, 1), sizeof(size_t));
  opt->overlap = sn_opt_find_layer_ranges(opt->model, opt->layer_begin, opt->layer_len);
  opt->bucket_elems = SN_MAX(bucket_bytes / opt->ops->storage_size, 1);
}

static void start_bucket(sn_optimizer *opt, size_t begin, size_t end) {
  if (end <= begin) return;
  void *buf = sn_opt_storage_at(opt, opt->model->grads, begin);
  sn_comm_all_reduce_async(opt->comm, buf, end - begin, opt->ops->storage, NULL);
  opt->buckets_started++;
}

// The model's callback: layer l is done; layers finish from the last down, so the pending range
// grows downwards and starts once it holds a bucket's worth.
static void on_layer_grads(void *ctx, int l) {
  sn_optimizer *opt = ctx;
  if (l == SN_GRADS_REST) return;  // flush_overlap starts the rest
  if (opt->pending_end == opt->pending_begin) opt->pending_end = opt->layer_begin[l] + opt->layer_len[l];
  opt->pending_begin = opt->layer_begin[l];
  if (opt->pending_end - opt->pending_begin >= opt->bucket_elems) {
    start_bucket(opt, opt->pending_begin, opt->pending_end);
    opt->pending_end = opt->pending_begin;
  }
}

void sn_optimizer_arm_overlap(sn_optimizer *opt) {
  if (!opt->overlap) return;
  int L = opt->model->cfg.n_layers;
  opt->armed = 1;
  opt->pending_begin = opt->pending_end = opt->layer_begin[L - 1] + opt->layer_len[L - 1];
  opt->model->on_layer_grads = on_layer_grads;
  opt->model->on_layer_grads_ctx = opt;
}

void sn_optimizer_flush_overlap(sn_optimizer *opt) {
  if (opt->armed != 1) return;
  sn_model *m = opt->model;
  int L = m->cfg.n_layers;
  m->on_layer_grads = NULL;
  m->on_layer_grads_ctx = NULL;
  opt->armed = 2;  // everything started; sync_grads only waits
  size_t layers_end = opt->layer_begin[L - 1] + opt->layer_len[L - 1];
  start_bucket(opt, opt->pending_begin, opt->pending_end);
  start_bucket(opt, 0, opt->layer_begin[0]);
  start_bucket(opt, layers_end, m->num_elements);
}

// After an armed backward: starts what flush_overlap has not, then waits for every bucket.
static void finish_overlap(sn_optimizer *opt) {
  sn_optimizer_flush_overlap(opt);
  opt->armed = 0;
  sn_comm_wait(opt->comm);
}

void sn_optimizer_free(sn_optimizer *opt) {
  const sn_ops *ops = opt->ops;
  if (!ops) return;
  if (opt->zero == 2) sn_opt_zero2_free(opt);
  free(opt->layer_begin);
  free(opt->layer_len);
  void *bufs[] = {opt->m, opt->v, opt->master, opt->scratch, opt->grad_shard, opt->exchange};
  for (size_t i = 0; i < SN_ARRAY_LEN(bufs); i++)
    if (bufs[i]) ops->free(bufs[i]);
  free(opt->spans);
  memset(opt, 0, sizeof *opt);
}

void sn_optimizer_sync_grads(sn_optimizer *opt) {
  sn_comm *comm = opt->comm;
  if (!comm || comm->world_size == 1) return;
  const sn_ops *ops = opt->ops;
  sn_model *m = opt->model;
  if (opt->armed) {
    finish_overlap(opt);
    return;
  }
  if (opt->zero == 2) return;  // summed into grad_shard during the backward passes
  if (!opt->zero) {
    sn_comm_all_reduce_sum(comm, m->grads, m->num_elements, ops->storage);
    return;
  }
  // The padded exchange buffer: the gradient, then zeros up to world * stride.
  size_t n = m->num_elements, padded = (size_t)comm->world_size * opt->shard_stride;
  ops->copy(opt->exchange, m->grads, n * ops->storage_size);
  if (padded > n) ops->memset_zero(sn_opt_storage_at(opt, opt->exchange, n), (padded - n) * ops->storage_size);
  sn_comm_reduce_scatter_sum(comm, opt->exchange, opt->grad_shard, opt->shard_stride, ops->storage);
}

void sn_optimizer_zero_grads(sn_optimizer *opt) {
  if (opt->zero == 2) opt->ops->memset_zero(opt->grad_shard, opt->shard_stride * opt->ops->storage_size);
  else sn_model_zero_grads(opt->model);
}

sn_grad_bytes sn_optimizer_grad_bytes(const sn_optimizer *opt) {
  size_t es = opt->ops->storage_size, world = opt->comm ? (size_t)opt->comm->world_size : 1;
  sn_grad_bytes b = {.full_size = opt->model->num_elements * es};
  b.full = opt->zero == 2 ? 0 : b.full_size;
  b.exchange = opt->zero == 1 ? world * opt->shard_stride * es : 0;
  b.slice = opt->zero ? opt->shard_stride * es : 0;
  b.working = opt->zero == 2 ? opt->z2.work_len * es : 0;
  return b;
}

static double local_sum_squares(sn_optimizer *opt) {
  const sn_ops *ops = opt->ops;
  const void *grads = opt->zero ? opt->grad_shard : opt->model->grads;
  ops->memset_zero(opt->scratch, sizeof(float));
  ops->sum_squares(opt->scratch, grads, opt->shard_len);
  float host = 0;
  ops->download(&host, opt->scratch, sizeof host);
  return host;
}

double sn_optimizers_grad_norm(sn_optimizer *const *opts, int n, float grad_scale) {
  double sumsq = 0;
  int sharded = 0;
  for (int i = 0; i < n; i++) {
    sumsq += local_sum_squares(opts[i]);
    sharded |= opts[i]->zero != 0;
  }
  if (sharded) sn_comm_all_reduce_f64_host(opts[0]->comm, &sumsq, 1);  // every rank's slice
  return sqrt(sumsq) * grad_scale;
}

float sn_optimizer_step(sn_optimizer *opt, double grad_norm, float grad_scale) {
  float lr = sn_lr_at(opt->step, opt->cfg.warmup_steps, opt->total_steps, opt->cfg.lr,
                      opt->cfg.min_lr_ratio, sn_schedule_from_name(opt->cfg.schedule));
  float clip = 1.0f;
  if (opt->cfg.clip_grad_norm > 0 && grad_norm > opt->cfg.clip_grad_norm)
    clip = (float)(opt->cfg.clip_grad_norm / (grad_norm + 1e-6));
  opt->step++;
  sn_adamw_hparams hp = {.lr = lr, .beta1 = opt->cfg.beta1, .beta2 = opt->cfg.beta2, .eps = opt->cfg.eps,
                         .step = opt->step, .grad_scale = grad_scale * clip, .state_bf16 = opt->state_bf16,
                         .round_key = sn_rng_stream_key(opt->round_seed, (uint64_t)opt->step),
                         .index_base = opt->shard_begin};
  sn_model *m = opt->model;
  const sn_ops *ops = opt->ops;
  if (!opt->zero) {
    ops->adamw(m->weights, opt->master, m->grads, opt->m, opt->v, opt->spans, opt->nspans, &hp);  // NULL: its own
    return lr;
  }
  // This rank's slice, updated in place (tensors without a span, an unused lm_head, keep their
  // weights), then all-gathered.
  if (opt->shard_len > 0)
    ops->adamw(sn_opt_storage_at(opt, m->weights, opt->shard_begin), opt->master, opt->grad_shard, opt->m,
               opt->v, opt->spans, opt->nspans, &hp);
  sn_opt_all_gather_weights(opt);
  return lr;
}

// Where `which` lives for this rank's slice and in what dtype: the master (or the slice of the
// weights when they are their own master), m or v.
typedef struct {
  char *base;  // the slice's first element
  sn_dtype dtype;
} state_view;
static state_view state_of(const sn_optimizer *opt, sn_opt_state which) {
  if (which == SN_OPT_MASTER)
    return opt->master ? (state_view){(char *)opt->master, SN_DTYPE_F32}
                       : (state_view){sn_opt_storage_at(opt, opt->model->weights, opt->shard_begin), opt->ops->storage};
  return (state_view){which == SN_OPT_M ? opt->m : opt->v, moment_dtype(opt->ops, opt->state_bf16)};
}

void sn_optimizer_download_range(const sn_optimizer *opt, sn_opt_state which, size_t start, size_t count,
                                 float *dst) {
  if (start + count > opt->shard_len)
    sn_fatal("optimizer download of [%zu, %zu) past its slice of %zu", start, start + count, opt->shard_len);
  const state_view s = state_of(opt, which);
  const char *src = s.base + start * sn_dtype_size(s.dtype);
  if (s.dtype == SN_DTYPE_F32) opt->ops->download(dst, src, count * sizeof(float));
  else opt->ops->download_f32(dst, src, count);
  opt->ops->synchronize();
}

void sn_optimizer_upload_range(sn_optimizer *opt, sn_opt_state which, size_t begin, size_t count, const float *src) {
  const sn_ops *ops = opt->ops;
  if (begin + count > opt->model->num_elements)
    sn_fatal("optimizer upload of [%zu, %zu) past the model's %zu elements", begin, begin + count,
             opt->model->num_elements);
  if (which == SN_OPT_MASTER)
    ops->upload_f32((char *)opt->model->weights + begin * ops->storage_size, src, count);
  const state_view s = state_of(opt, which);
  const size_t lo = SN_MAX(begin, opt->shard_begin), hi = SN_MIN(begin + count, opt->shard_begin + opt->shard_len);
  if ((which != SN_OPT_MASTER || opt->master) && lo < hi) {  // (weights as master: uploaded above)
    char *dst = s.base + (lo - opt->shard_begin) * sn_dtype_size(s.dtype);
    if (s.dtype == SN_DTYPE_F32) ops->upload(dst, src + (lo - begin), (hi - lo) * sizeof(float));
    else ops->upload_f32(dst, src + (lo - begin), hi - lo);
  }
  ops->synchronize();  // src may be a mapping the caller releases next
}

// Warm-up: lr rises linearly to peak, reaching peak * (step + 1) / warmup_steps on step `step`,
// so the first step already moves (a 0 learning rate would waste it). Then decay over
// [warmup_steps, total_steps] from peak to min_ratio * peak; at and after total_steps: the floor.
float sn_lr_at(int64_t step, int64_t warmup_steps, int64_t total_steps, float peak_lr,
               float min_ratio, sn_schedule schedule) {
  if (step < 0) step = 0;
  if (step < warmup_steps) return peak_lr * (float)(step + 1) / (float)warmup_steps;
  if (schedule == SN_SCHEDULE_CONSTANT) return peak_lr;
  double min_lr = (double)peak_lr * min_ratio;
  int64_t decay_steps = total_steps - warmup_steps;
  double progress = decay_steps > 0 ? (double)(step - warmup_steps) / (double)decay_steps : 1.0;
  if (progress > 1.0) progress = 1.0;
  double factor;  // 1 at the start of the decay, 0 at its end
  switch (schedule) {
    case SN_SCHEDULE_COSINE: factor = 0.5 * (1.0 + cos(M_PI * progress)); break;
    case SN_SCHEDULE_LINEAR: factor = 1.0 - progress; break;
    default: sn_bad_input("unknown learning-rate schedule %d", (int)schedule);
  }
  return (float)(min_lr + (peak_lr - min_lr) * factor);
}
