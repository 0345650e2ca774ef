// AdamW over one model's flat parameter buffer: fp32 master weights (when the backend stores bf16)
// and moments in backend memory, per-tensor weight decay (none for norms and biases), global
// gradient-norm clipping and the learning-rate schedule.
#pragma once
#include <stdint.h>

#include "model.h"
#include "run_config.h"

typedef struct {
  sn_model *model;
  const sn_ops *ops;
  sn_cfg_optim cfg;
  int64_t total_steps;
  int64_t step;          // optimizer steps taken
  float *master;         // (N) fp32, or NULL when the backend stores fp32 (weights are the master)
  float *m, *v;          // (N) fp32
  float *scratch;        // one float in backend memory for sums of squares
  sn_param_span *spans;
  int nspans;
} sn_optimizer;

void sn_optimizer_init(sn_optimizer *opt, sn_model *model, const sn_cfg_optim *cfg, int64_t total_steps);
void sn_optimizer_free(sn_optimizer *opt);
// Sum of squares of the model's gradients (one download).
double sn_grad_sum_squares(const sn_model *m, float *scratch);
// One step from the current gradients. grad_norm is the global norm of the *averaged* gradient
// (what clipping compares), grad_scale what turns the accumulated gradient into that average (e.g.
// 1 / accumulation steps). Returns the learning rate used.
float sn_optimizer_step(sn_optimizer *opt, double grad_norm, float grad_scale);
// Host copies for checkpoints: master weights (N floats; downloaded from the weights on fp32
// backends), m and v. Caller frees.
float *sn_optimizer_download(const sn_optimizer *opt, int which /* 0 master, 1 m, 2 v */);
// Restores master (and the weights from it), m and v from host arrays of N floats.
void sn_optimizer_upload(sn_optimizer *opt, const float *master, const float *m, const float *v);
sn_schedule sn_schedule_from_name(const char *name);
