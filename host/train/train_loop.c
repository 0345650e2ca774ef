// The one training loop of every stage: gradient accumulation over micro-batches, the loss
// all-reduce, clipping and the optimizer step, logging, the replica check, stop requests,
// checkpoints (and the resume from one) and the final save. A stage supplies only its micro-step
// (forward, loss, backward of one micro-batch) and what it trains (sn_stage in train_internal.h).
#define _GNU_SOURCE
#include <math.h>
#include <string.h>

#include "common.h"
#include "train_internal.h"

static void zero_grads(const sn_stage *s) {
  for (int i = 0; i < s->n_models; i++) sn_optimizer_zero_grads(s->optimizers[i].opt);
}

// Sums the per-micro-batch terms (each already this rank's share of the global mean) over the
// accumulation steps and the ranks. totals: the n_terms terms, then tokens, then stop requests.
static void run_micro_batches(sn_trainer *t, sn_stage *s, double *totals) {
  const int n = s->n_terms;
  memset(totals, 0, (size_t)(n + 2) * sizeof *totals);
  for (int micro = 0; micro < s->grad_accum; micro++) {
    const sn_batch *b = sn_sampler_next_or_die(s->sampler);
    double terms[SN_STAGE_MAX_TERMS] = {0};
    int64_t tokens = s->micro_step(s->ctx, b, micro == s->grad_accum - 1, terms);
    for (int i = 0; i < n; i++) totals[i] += terms[i] / s->grad_accum;
    totals[n] += (double)tokens;
  }
  totals[n + 1] = sn_stop_requested ? 1 : 0;
  sn_comm_all_reduce_f64_host(t->comm, totals, n + 2);
}

// Gradients summed over micro-batches become their mean through grad_scale (1 / accumulation),
// given to the norm (what clipping compares) and to the step alike. Returns the lr used.
static float optimizer_step(const sn_stage *s, double *grad_norm) {
  sn_optimizer *opts[SN_STAGE_MAX_TOWERS];
  for (int i = 0; i < s->n_models; i++) {
    opts[i] = s->optimizers[i].opt;
    sn_optimizer_sync_grads(opts[i]);
  }
  float grad_scale = 1.0f / (float)s->grad_accum;
  *grad_norm = sn_optimizers_grad_norm(opts, s->n_models, grad_scale);
  float lr = 0;
  for (int i = 0; i < s->n_models; i++) {
    float used = sn_optimizer_step(opts[i], *grad_norm, grad_scale);
    if (i == 0) lr = used;
  }
  return lr;
}

static void save_final(sn_trainer *t, const sn_stage *s) {
  char names[256] = "", err[1024], final_dir[SN_TRAIN_PATH_MAX + 16];
  snprintf(final_dir, sizeof final_dir, "%s/final", t->run_dir);
  size_t need = 0;
  for (int i = 0; i < s->n_towers; i++) need += s->towers[i].model->num_elements * s->towers[i].model->ops->storage_size;
  if (sn_trainer_disk_room(t->run_dir, need, "the final towers", err, sizeof err) != 0)
    sn_fatal("stage %d: %s; the last checkpoint is kept (free space, then --resume auto)", s->number, err);
  for (int i = 0; i < s->n_towers; i++) {
    sn_trainer_save_final_tower(&s->towers[i], final_dir);
    size_t used = strlen(names);
    snprintf(names + used, sizeof names - used, "%s%s", i ? "," : "", s->towers[i].name);
    if (s->towers[i].model->lora) {
      used = strlen(names);
      snprintf(names + used, sizeof names - used, ",%s", s->towers[i].adapter_name);
    }
  }
  sn_plot_loss_svg(t->run_dir, s->number);
  sn_log("stage %d: done, %s in %s/final/%s%s%s", s->number, s->n_towers > 1 ? "towers" : "tower",
         t->run_dir, s->n_towers > 1 ? "{" : "", names, s->n_towers > 1 ? "}" : "");
}

int sn_train_loop(sn_trainer *t, sn_stage *s, int resuming) {
  int64_t step = 0;
  double elapsed_before = 0;
  if (resuming) step = sn_trainer_restore(t, s->number, s->sampler, s->optimizers, s->n_models, &elapsed_before);
  const int64_t start_step = step;
  const int n = s->n_terms;
  t->ops->memory_reset_peak();  // the stage's own high-water mark, weights included
  double t0 = sn_now_s();
  int stopped = 0;
  while (step < s->total_steps && !stopped) {
    zero_grads(s);
    double totals[SN_STAGE_MAX_TERMS + 2];
    run_micro_batches(t, s, totals);
    double grad_norm = 0;
    float lr = optimizer_step(s, &grad_norm);
    step++;
    double elapsed = elapsed_before + (sn_now_s() - t0);
    double loss = 0;
    for (int i = 0; i < n; i++) loss += totals[i];
    sn_step_record rec = {.stage = s->number, .step = step, .total_steps = s->total_steps,
                          .loss = (float)loss, .lr = lr, .grad_norm = (float)grad_norm,
                          .tokens = (int64_t)totals[n], .elapsed_s = elapsed,
                          .mem_peak_gib = (double)t->ops->memory_stats().peak / SN_GIB};
    if (n > 1) {  // a loss of several terms logs each
      rec.n_terms = n;
      for (int i = 0; i < n; i++) {
        rec.term_names[i] = s->term_names[i];
        rec.terms[i] = (float)totals[i];
      }
    }
    if (!isfinite(rec.loss)) sn_fatal("stage %d: the loss is %f at step %lld", s->number, rec.loss, (long long)step);
    sn_trainer_check_replicas(t, s->models, s->n_models, step, &rec);
    sn_train_log_step(&t->log, &rec);
    stopped = sn_trainer_should_stop(t, totals[n + 1]) && step < s->total_steps;
    if (sn_trainer_checkpoint_due(t, step, s->total_steps, stopped))
      sn_trainer_checkpoint(t, s->number, step, elapsed, s->sampler, s->optimizers, s->n_models, s->towers,
                            s->n_ckpt_towers);
  }
  sn_train_log_end_stage(&t->log);
  int64_t steps_here = step - start_step;
  const sn_optimizer *first = s->optimizers[0].opt;
  if (t->rank == 0 && (first->overlap || first->zero == 2) && steps_here > 0) {
    int64_t buckets = 0;
    for (int i = 0; i < s->n_models; i++) buckets += s->optimizers[i].opt->buckets_started;
    sn_log("stage %d: %.1f overlapped %s per step", s->number, (double)buckets / (double)steps_here,
           first->zero == 2 ? "reduce-scatters" : "all-reduces");
  }
  const size_t planned = sn_plan_stage_bytes(&t->plan, s->number);
  if (t->rank == 0 && planned > 0 && steps_here > 0) {
    const double measured = (double)t->ops->memory_stats().peak;
    sn_log("stage %d: memory peak %.3f GiB measured, %.3f GiB planned (%+.2f%%; %.0f and %zu bytes)", s->number,
           measured / SN_GIB, planned / SN_GIB, 100.0 * ((double)planned - measured) / measured, measured, planned);
  }
  if (!stopped && t->rank == 0) save_final(t, s);
  sn_comm_barrier(t->comm);  // the next stage and the evaluation read the final towers
  t->resume_stage = 0;
  return stopped ? -1 : 0;
}
