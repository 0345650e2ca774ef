// The one training loop of every stage: gradient accumulation over micro-batches, the loss
// all-reduce, clipping and the optimizer step, logging, the replica check, stop requests,
// checkpoints (and the resume from one) and the final save. A stage supplies only its micro-step
// (forward, loss, backward of one micro-batch) and what it trains (sn_stage in train_internal.h).
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "train_internal.h"

static void zero_grads(const sn_stage *s) {
  for (int i = 0; i < s->n_models; i++) sn_optimizer_zero_grads(s->optimizers[i].opt);
}

// Test hook: SN_TEST_NAN_LOSS_STEPS="3,5" makes the loss NaN on steps 3 and 5 of every stage, on
// the rank SN_TEST_NAN_LOSS_RANK names (default: every rank). A real NaN is hard to provoke at a
// chosen step and on one rank only; this proves the skip path and that every rank agrees.
static int test_nan_loss_at(const sn_trainer *t, int64_t step) {
  const char *steps = getenv("SN_TEST_NAN_LOSS_STEPS"), *rank = getenv("SN_TEST_NAN_LOSS_RANK");
  if (!steps || (rank && atoi(rank) != t->rank)) return 0;
  for (const char *p = steps; *p;) {
    char *end;
    long long k = strtoll(p, &end, 10);
    if (end == p) return 0;
    if (k == step) return 1;
    p = *end == ',' ? end + 1 : end;
  }
  return 0;
}

// Sums the per-micro-batch terms (each already this rank's share of the global mean) over the
// accumulation steps and the ranks. totals: the n_terms terms, then tokens, then stop requests.
static void run_micro_batches(sn_trainer *t, sn_stage *s, int64_t step, double *totals) {
  const int n = s->n_terms;
  memset(totals, 0, (size_t)(n + 2) * sizeof *totals);
  for (int micro = 0; micro < s->grad_accum; micro++) {
    const sn_batch *b = sn_sampler_next_or_die(s->sampler);
    double terms[SN_STAGE_MAX_TERMS] = {0};
    int64_t tokens = s->micro_step(s->ctx, b, micro == s->grad_accum - 1, terms);
    for (int i = 0; i < n; i++) totals[i] += terms[i] / s->grad_accum;
    totals[n] += (double)tokens;
  }
  if (test_nan_loss_at(t, step)) totals[0] = NAN;
  totals[n + 1] = sn_stop_requested ? 1 : 0;
  sn_comm_all_reduce_f64_host(t->comm, totals, n + 2);  // a NaN on any rank is a NaN on every rank
}

// Gradients summed over micro-batches become their mean through grad_scale (1 / accumulation),
// given to the norm (what clipping compares) and to the step alike.
static float grad_scale_of(const sn_stage *s) { return 1.0f / (float)s->grad_accum; }

// Completes the gradient exchange and returns the global gradient norm: computed from all-reduced
// gradients (or an all-reduced sum of squares under ZeRO), so every rank gets the same value.
static double gradient_norm(const sn_stage *s) {
  sn_optimizer *opts[SN_STAGE_MAX_TOWERS];
  for (int i = 0; i < s->n_models; i++) {
    opts[i] = s->optimizers[i].opt;
    sn_optimizer_sync_grads(opts[i]);
  }
  return sn_optimizers_grad_norm(opts, s->n_models, grad_scale_of(s));
}

// The optimizer update of every model; returns the lr used.
static float optimizer_step(const sn_stage *s, double grad_norm) {
  float lr = 0;
  for (int i = 0; i < s->n_models; i++) {
    float used = sn_optimizer_step(s->optimizers[i].opt, grad_norm, grad_scale_of(s));
    if (i == 0) lr = used;
  }
  return lr;
}

// A step whose loss or gradient norm is NaN or inf (as float, what is logged): stops the run before
// the update, so the last checkpoint is the last good state, or with train.skip_nonfinite counts
// the step (the caller skips the update; the next step's zeroing drops the gradients). Every rank
// sees the same loss and norm (both all-reduced), so every rank decides alike. last_ckpt_step: the
// step of the stage's newest checkpoint (0: none yet), for the message.
static int step_is_finite(sn_trainer *t, const sn_stage *s, int64_t step, int64_t last_ckpt_step,
                          const sn_step_record *rec) {
  if (isfinite(rec->loss) && isfinite(rec->grad_norm)) return 1;
  const char *what = isfinite(rec->loss) ? "gradient norm" : "loss";
  const double value = isfinite(rec->loss) ? rec->grad_norm : rec->loss;
  if (!t->cfg.train.skip_nonfinite) {
    sn_train_log_step(&t->log, rec);
    char ckpt[SN_TRAIN_PATH_MAX + 64] = "no checkpoint of this stage was written before it";
    if (last_ckpt_step > 0) {
      char dir[SN_TRAIN_PATH_MAX];
      sn_ckpt_dir(t->run_dir, s->number, last_ckpt_step, 0, dir, sizeof dir);
      snprintf(ckpt, sizeof ckpt, "%s is the last good state", dir);
    }
    sn_fatal("stage %d: the %s is %f at step %lld; stopped before its optimizer update (%s). Lower "
             "stage%d.optim.lr or check the data and the model, or set train.skip_nonfinite=true to skip such steps",
             s->number, what, value, (long long)step, ckpt, s->number);
  }
  t->skipped_nonfinite++;
  if (t->rank == 0)
    sn_warn("stage %d: the %s is %f at step %lld: step skipped without an optimizer update (%lld skipped in "
            "this stage)", s->number, what, value, (long long)step, (long long)t->skipped_nonfinite);
  return 0;
}

static void save_final(sn_trainer *t, const sn_stage *s) {
  char names[256] = "", err[1024], final_dir[SN_TRAIN_PATH_MAX + 16];
  snprintf(final_dir, sizeof final_dir, "%s/final", t->run_dir);
  if (sn_trainer_weights_finite(s->optimizers, s->n_models, err, sizeof err) != 0)
    sn_fatal("stage %d: refusing to write the final towers: %s", s->number, err);
  size_t need = 0;
  for (int i = 0; i < s->n_towers; i++) need += s->towers[i].model->num_elements * s->towers[i].model->ops->storage_size;
  if (sn_trainer_disk_room(t->run_dir, need, "the final towers", err, sizeof err) != 0)
    sn_fatal("stage %d: %s; the last checkpoint is kept (free space, then --resume auto)", s->number, err);
  if (s->save_final) {  // not towers (stage 0's causal LM)
    s->save_final(s->save_final_ctx, final_dir);
    sn_plot_loss_svg(t->run_dir, s->number);
    sn_log("stage %d: done, %s/final/%s", s->number, t->run_dir, s->towers[0].name);
    return;
  }
  for (int i = 0; i < s->n_towers; i++) {
    sn_trainer_save_final_tower(&s->towers[i], final_dir, sn_trainer_export_dtype(t));
    if (sn_train_write_card(t, s->number, s->towers[i].name, err, sizeof err) != 0) sn_fatal("%s", err);
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
  t->skipped_nonfinite = 0;  // per stage; a resume restores the checkpoint's count
  if (resuming) step = sn_trainer_restore(t, s->number, s->sampler, s->optimizers, s->n_models, &elapsed_before);
  const int64_t start_step = step;
  int64_t last_ckpt_step = step;  // a resume starts from a checkpoint of this step
  const int n = s->n_terms;
  t->ops->memory_reset_peak();  // the stage's own high-water mark, weights included
  double t0 = sn_now_s();
  int stopped = 0;
  while (step < s->total_steps && !stopped) {
    if (s->before_step) s->before_step(s->ctx, s, step);
    zero_grads(s);
    double totals[SN_STAGE_MAX_TERMS + 2];
    run_micro_batches(t, s, step + 1, totals);
    const double grad_norm = gradient_norm(s);
    double loss = 0;
    for (int i = 0; i < n; i++) loss += totals[i];
    step++;
    sn_step_record rec = {.stage = s->number, .step = step, .total_steps = s->total_steps,
                          .loss = (float)loss, .grad_norm = (float)grad_norm,
                          .tokens = (int64_t)totals[n]};
    if (n > 1) {  // a loss of several terms logs each
      rec.n_terms = n;
      for (int i = 0; i < n; i++) {
        rec.term_names[i] = s->term_names[i];
        rec.terms[i] = (float)totals[i];
      }
    }
    // A skipped step logs lr 0: no update was made.
    const int finite = step_is_finite(t, s, step, last_ckpt_step, &rec);
    if (finite) rec.lr = optimizer_step(s, grad_norm);
    rec.skipped_nonfinite = t->skipped_nonfinite;
    rec.elapsed_s = elapsed_before + (sn_now_s() - t0);
    rec.mem_peak_gib = (double)t->ops->memory_stats().peak / SN_GIB;
    sn_trainer_check_replicas(t, s->models, s->n_models, step, &rec);
    sn_train_log_step(&t->log, &rec);
    stopped = sn_trainer_should_stop(t, totals[n + 1]) && step < s->total_steps;
    if (sn_trainer_checkpoint_due(t, step, s->total_steps, stopped) &&
        sn_trainer_checkpoint(t, s->number, step, rec.elapsed_s, s->sampler, s->optimizers, s->n_models, s->towers,
                              s->n_ckpt_towers) == 0)
      last_ckpt_step = step;
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
