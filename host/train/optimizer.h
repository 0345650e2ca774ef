// AdamW over one model's flat parameter buffer: fp32 master weights (when the backend stores bf16)
// and moments in backend memory, or with optim.state_dtype = "bf16" the bf16 weights as their own
// master and bf16 moments, rounded stochastically (host/backend/adamw_math.h: 8 bytes a parameter
// with the gradient, against 16), per-tensor weight decay (none for norms and biases), global
// gradient-norm clipping and the learning-rate schedule, and the gradient exchange between ranks.
//
// Data parallelism, three modes (dist.zero):
// - replicated (0, the default): gradients are summed with one all-reduce (in buckets during the
//   backward pass); every rank keeps the whole optimizer state and takes the same step.
// - ZeRO-1: rank r owns elements [shard_begin, shard_begin + shard_len) of the flat buffer and keeps
//   master weights and moments for those only; gradients are reduce-scattered (each rank gets the
//   sum of its slice), each rank updates its slice, and the weights are all-gathered.
// - ZeRO-2: as ZeRO-1, and the model keeps no full gradient buffer either: every backward pass
//   writes into small working buffers (two layers' worth, used alternately, and one for the
//   tensors outside the layers) through the model's grad map; as each layer completes its buffer is
//   reduce-scattered (unequal parts: its intersections with the slices) and each rank adds its
//   part to grad_shard. See docs/DESIGN.md.
// At world size 1 every mode is the replicated one.
#pragma once
#include <stdint.h>

#include "comm.h"
#include "model.h"
#include "run_config.h"

// The learning-rate schedule.
typedef enum { SN_SCHEDULE_COSINE = 0, SN_SCHEDULE_LINEAR = 1, SN_SCHEDULE_CONSTANT = 2 } sn_schedule;
// Linear warm-up from 0 over warmup_steps, then decay to min_ratio * peak by total_steps.
// step is 0-based (the step about to be taken).
float sn_lr_at(int64_t step, int64_t warmup_steps, int64_t total_steps, float peak_lr,
               float min_ratio, sn_schedule schedule);

// ZeRO-2's reduce-scatters in flight at once: a layer's, or at the end of a pass layer 0's, the
// head's and the tail's.
#define SN_ZERO2_MAX_PENDING 3

typedef struct {
  sn_model *model;
  const sn_ops *ops;
  sn_comm *comm;
  sn_cfg_optim cfg;
  int64_t total_steps;
  int64_t step;          // optimizer steps taken
  int zero;              // 0 replicated, 1 or 2 the ZeRO stage (0 at world size 1)
  size_t shard_begin;    // first element this rank updates (0 when replicated)
  size_t shard_len;      // elements this rank updates (N when replicated)
  size_t shard_stride;   // ceil(N / world): every rank's slice size in the padded exchange buffer
  int state_bf16;        // optim.state_dtype = "bf16": no master, moments in the storage dtype
  uint64_t round_seed;   // the bf16 state's rounding bits: step s draws stream sn_rng_stream_key(round_seed, s)
  float *master;         // (shard_len) fp32, or NULL when the weights are their own master (fp32
                         // storage and not sharded, or the bf16 state)
  void *m, *v;           // (shard_len) fp32, or the storage dtype with the bf16 state
  void *grad_shard;      // ZeRO: (shard_stride) storage, this rank's summed gradient slice
  void *exchange;        // ZeRO-1: (world * shard_stride) storage, padded copy for the collectives
  float *scratch;        // one float in backend memory for sums of squares
  sn_param_span *spans;  // for this rank's slice, offsets relative to shard_begin
  int nspans;
  // Overlapped gradient all-reduce (replicated mode): layer l's gradients are elements
  // [layer_begin[l], layer_begin[l] + layer_len[l]); buckets of consecutive layers of at least
  // bucket_elems start their all-reduce during the backward pass.
  int overlap;           // enabled (world > 1, not ZeRO-1, layers contiguous in the buffer)
  int armed;             // 1: the current backward pass reports its layers; 2: all buckets started
  size_t *layer_begin, *layer_len;
  size_t bucket_elems;
  size_t pending_begin, pending_end;  // finished layers whose all-reduce has not started
  int64_t buckets_started;            // during armed passes (for the log and the tests)
  // ZeRO-2: the working gradient buffers, one allocation (also the staging area of the weights'
  // all-gather, between backward passes). They hold zeros whenever no backward pass is running.
  struct {
    void *work;            // (work_len) storage: two layer slots, the head's, the tail's
    size_t work_len;
    int n_regions;         // L + 2: the head (before the layers), each layer, the tail (after them)
    size_t *region_begin;  // (n_regions + 1) region r is elements [region_begin[r], region_begin[r + 1])
    void **region_base;    // (n_regions) where region r's gradients are written, inside work
    int pending[SN_ZERO2_MAX_PENDING];  // regions whose reduce-scatter is in flight
    int n_pending;
    size_t *counts;        // (world) the parts of the reduce-scatter being started
    sn_grad_map map;       // the model's view of the regions
  } z2;
} sn_optimizer;

// zero: dist.zero (0, 1, 2); round_seed: the bf16 state's rounding stream (distinct per optimizer of
// a run, and the same when it resumes). Makes the model's gradient storage: its full grads buffer (allocated
// here when missing), or with ZeRO-2 the working buffers and grad map (the model's full buffer,
// if any, is freed). Free the optimizer before the model.
void sn_optimizer_init(sn_optimizer *opt, sn_model *model, const sn_cfg_optim *cfg, int64_t total_steps,
                       sn_comm *comm, int zero, uint64_t round_seed);
void sn_optimizer_free(sn_optimizer *opt);
// Overlaps the gradient all-reduce with the backward pass in buckets of about bucket_bytes (no-op
// unless replicated with several ranks). Call once after init.
void sn_optimizer_enable_overlap(sn_optimizer *opt, size_t bucket_bytes);
// Before the step's last backward pass through this model: its layers' gradients are final as they
// come, so their all-reduce starts then. sn_optimizer_sync_grads completes it.
void sn_optimizer_arm_overlap(sn_optimizer *opt);
// After the armed backward pass has been enqueued: starts the buckets not started yet (the last
// layers, the embeddings and the tensors outside the layers), so that they overlap later work such
// as the other tower's backward. Optional: sync_grads does it otherwise.
void sn_optimizer_flush_overlap(sn_optimizer *opt);
// Zeroes the step's gradients before its first backward pass (the model's buffer, or grad_shard).
void sn_optimizer_zero_grads(sn_optimizer *opt);
// Bytes of gradient storage a rank holds, by kind (0 where the mode has none): for the startup log.
typedef struct {
  size_t full;      // the model's full gradient buffer (replicated, ZeRO-1)
  size_t exchange;  // ZeRO-1's padded copy of it for the reduce-scatter
  size_t slice;     // grad_shard (ZeRO)
  size_t working;   // ZeRO-2's layer, head and tail slots
  size_t full_size; // what one full buffer is, to compare with
} sn_grad_bytes;
sn_grad_bytes sn_optimizer_grad_bytes(const sn_optimizer *opt);
// Sums the gradients over ranks: all-reduce, or reduce-scatter into grad_shard with ZeRO-1 (ZeRO-2
// did it during the backward passes: nothing left to do); after
// an armed backward pass, starts the buckets not yet started and waits for all of them.
void sn_optimizer_sync_grads(sn_optimizer *opt);
// Global gradient norm of several optimizers' models after sync_grads (over every rank's slice with
// ZeRO), times grad_scale.
double sn_optimizers_grad_norm(sn_optimizer *const *opts, int n, float grad_scale);
// One step from the synced gradients. grad_norm is the global norm of the *averaged* gradient
// (what clipping compares), grad_scale what turns the summed gradient into that average (e.g.
// 1 / accumulation steps). With ZeRO the updated weights are all-gathered. Returns the lr used.
float sn_optimizer_step(sn_optimizer *opt, double grad_norm, float grad_scale);
// The optimizer state a checkpoint holds, in pieces small enough for host buffers (a 7B model's is
// 91 GB). `which`: 0 master weights (the weights themselves when they are the master), 1 m, 2 v.
typedef enum { SN_OPT_MASTER = 0, SN_OPT_M = 1, SN_OPT_V = 2 } sn_opt_state;
// Elements [start, start + count) of this rank's slice of `which` into dst (synchronous).
void sn_optimizer_download_range(const sn_optimizer *opt, sn_opt_state which, size_t start, size_t count, float *dst);
// Restores elements [begin, begin + count) of the whole buffer's `which` from src: the part inside
// this rank's slice, and for the master also those weights (every rank holds all the weights).
// Resuming calls it for every piece of the whole buffer, whatever world size wrote them.
void sn_optimizer_upload_range(sn_optimizer *opt, sn_opt_state which, size_t begin, size_t count, const float *src);
sn_schedule sn_schedule_from_name(const char *name);

// What sn_optimizer_init allocates for model m (the memory plan; m may be an sn_model_plan table)
// under ZeRO stage `zero` on `world` ranks with optimizer settings cfg: the gradients (the full
// buffer, or ZeRO-2's working area), the fp32 master weights, the two moments (with the one-float
// norm scratch), and the exchange buffers of ZeRO (the gradient slice, ZeRO-1's padded all-gather
// buffer). moments_desc: what the moments are, for the plan's lines ("fp32 m and v").
typedef struct {
  size_t grads, master, moments, exchange;
  const char *moments_desc;
} sn_optimizer_plan;
sn_optimizer_plan sn_optimizer_plan_bytes(const sn_model *m, int world, int zero, const sn_cfg_optim *cfg);
// 1 when cfg asks for the bf16 state (optim.state_dtype = "bf16").
int sn_optim_state_bf16(const sn_cfg_optim *cfg);
// ZeRO-2's working gradient area for m on `world` ranks (optimizer_zero.c).
size_t sn_optimizer_zero2_work_bytes(const sn_model *m, size_t storage_size, int world);
