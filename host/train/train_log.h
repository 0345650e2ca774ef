// What a run reports: one progress line on stderr (updated in place on a terminal, plain lines
// otherwise), metrics.jsonl in the run folder (one object per step), and at the end of a stage an
// SVG plot of the loss curves.
#pragma once
#include <stdint.h>
#include <stdio.h>

#define SN_LOG_MAX_TERMS 4

typedef struct {
  int stage;
  int64_t step, total_steps;
  float loss;
  float lr;
  float grad_norm;
  int64_t tokens;      // tokens processed in this step (all ranks)
  double elapsed_s;    // since the stage started (including resumed time)
  int n_terms;         // stage 2: named loss terms (mse, cos, infonce)
  const char *term_names[SN_LOG_MAX_TERMS];
  float terms[SN_LOG_MAX_TERMS];
  double mem_peak_gib;  // this rank's backend memory high-water mark (ops->memory_stats), GiB
  int has_weights_hash;   // dist.check_replicas_every: every rank's weights hashed to this value
  uint64_t weights_hash;
  int64_t skipped_nonfinite;  // steps of this stage skipped so far (train.skip_nonfinite); shown when > 0
} sn_step_record;

typedef struct {
  FILE *metrics;        // RUN/metrics.jsonl, appended
  char metrics_path[1100];
  int is_tty;
  int every;            // plain-line interval when not a terminal
  int active;           // rank 0 logs; the others are silent
  // tok/s of the progress line: the tokens of the steps since the previous printed line over the
  // time they took (differences of elapsed_s, the stage's own clock).
  int have_base;          // base_elapsed_s is set (from the first record of a stage or a resume)
  double base_elapsed_s;  // elapsed_s at the previous printed line
  double interval_tokens; // tokens of the steps since then
  float tok_per_s;        // shown; 0 until the first interval is measured
} sn_train_log;

// Opens RUN/metrics.jsonl for appending. active = 0 makes every call a no-op.
void sn_train_log_open(sn_train_log *log, const char *run_dir, int active, int every);
// Drops the records after `step` of `stage` and those of later stages, so a resumed (or restarted)
// run's file has no duplicated steps.
void sn_train_log_truncate_after(sn_train_log *log, int stage, int64_t step);
void sn_train_log_step(sn_train_log *log, const sn_step_record *r);
// Ends the in-place line (a newline on a terminal).
void sn_train_log_end_stage(sn_train_log *log);
void sn_train_log_close(sn_train_log *log);

// Reads RUN/metrics.jsonl and writes RUN/loss_stage<N>.svg: the loss against step and, for a loss
// of several terms (stage 2: mse, cos, infonce), one panel per term below it, each with its own
// scale, axis titles and value ticks. Returns 0, or -1 when there is nothing to plot or the file
// cannot be written.
int sn_plot_loss_svg(const char *run_dir, int stage);
