#include "optimizer.h"

#include <math.h>
#include <string.h>

#include "common.h"

sn_schedule sn_schedule_from_name(const char *name) {
  if (strcmp(name, "linear") == 0) return SN_SCHEDULE_LINEAR;
  if (strcmp(name, "constant") == 0) return SN_SCHEDULE_CONSTANT;
  return SN_SCHEDULE_COSINE;
}

static float *alloc_zeroed_f32(const sn_ops *ops, size_t n) {
  float *p = ops->alloc(n * sizeof(float));
  ops->memset_zero(p, n * sizeof(float));
  return p;
}

void sn_optimizer_init(sn_optimizer *opt, sn_model *model, const sn_cfg_optim *cfg, int64_t total_steps) {
  memset(opt, 0, sizeof *opt);
  const sn_ops *ops = model->ops;
  size_t n = model->num_elements;
  opt->model = model;
  opt->ops = ops;
  opt->cfg = *cfg;
  opt->total_steps = total_steps;
  opt->m = alloc_zeroed_f32(ops, n);
  opt->v = alloc_zeroed_f32(ops, n);
  if (ops->storage != SN_DTYPE_F32) {
    opt->master = ops->alloc(n * sizeof(float));
    ops->storage_to_f32(opt->master, model->weights, n);
  }
  opt->scratch = ops->alloc(sizeof(float));
  opt->spans = sn_model_param_spans(model, cfg->weight_decay, &opt->nspans);
}

void sn_optimizer_free(sn_optimizer *opt) {
  const sn_ops *ops = opt->ops;
  if (!ops) return;
  ops->free(opt->m);
  ops->free(opt->v);
  if (opt->master) ops->free(opt->master);
  ops->free(opt->scratch);
  free(opt->spans);
  memset(opt, 0, sizeof *opt);
}

double sn_grad_sum_squares(const sn_model *m, float *scratch) {
  const sn_ops *ops = m->ops;
  ops->memset_zero(scratch, sizeof(float));
  ops->sum_squares(scratch, m->grads, m->num_elements);
  float host = 0;
  ops->download(&host, scratch, sizeof host);
  return host;
}

float sn_optimizer_step(sn_optimizer *opt, double grad_norm, float grad_scale) {
  float lr = sn_lr_at(opt->step, opt->cfg.warmup_steps, opt->total_steps, opt->cfg.lr,
                      opt->cfg.min_lr_ratio, sn_schedule_from_name(opt->cfg.schedule));
  float clip = 1.0f;
  if (opt->cfg.clip_grad_norm > 0 && grad_norm > opt->cfg.clip_grad_norm)
    clip = (float)(opt->cfg.clip_grad_norm / (grad_norm + 1e-6));
  opt->step++;
  sn_adamw_hparams hp = {.lr = lr, .beta1 = opt->cfg.beta1, .beta2 = opt->cfg.beta2,
                         .eps = opt->cfg.eps, .step = opt->step, .grad_scale = grad_scale * clip};
  sn_model *m = opt->model;
  float *master = opt->master ? opt->master : (float *)m->weights;
  opt->ops->adamw(m->weights, master, m->grads, opt->m, opt->v, opt->spans, opt->nspans, &hp);
  return lr;
}

float *sn_optimizer_download(const sn_optimizer *opt, int which) {
  size_t n = opt->model->num_elements;
  float *host = mallocCheck(n * sizeof(float));
  if (which == 1) opt->ops->download(host, opt->m, n * sizeof(float));
  else if (which == 2) opt->ops->download(host, opt->v, n * sizeof(float));
  else if (opt->master) opt->ops->download(host, opt->master, n * sizeof(float));
  else opt->ops->download_f32(host, opt->model->weights, n);
  return host;
}

void sn_optimizer_upload(sn_optimizer *opt, const float *master, const float *m, const float *v) {
  size_t n = opt->model->num_elements;
  opt->ops->upload(opt->m, m, n * sizeof(float));
  opt->ops->upload(opt->v, v, n * sizeof(float));
  if (opt->master) opt->ops->upload(opt->master, master, n * sizeof(float));
  opt->ops->upload_f32(opt->model->weights, master, n);
}
