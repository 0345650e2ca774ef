#define _GNU_SOURCE
#include "train_log.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "cJSON.h"
#include "common.h"

// On a terminal the line is redrawn every step: its tok/s is refreshed only over intervals at least
// this long, so that per-step jitter does not make it flicker.
#define TTY_RATE_MIN_S 1.0

void sn_train_log_open(sn_train_log *log, const char *run_dir, int active, int every) {
  memset(log, 0, sizeof *log);
  log->active = active;
  log->every = every > 0 ? every : 1;
  if (!active) return;
  log->is_tty = isatty(fileno(stderr));
  snprintf(log->metrics_path, sizeof log->metrics_path, "%s/metrics.jsonl", run_dir);
  log->metrics = fopen(log->metrics_path, "a");
  if (!log->metrics) sn_fatal("cannot open %s for appending: %s", log->metrics_path, strerror(errno));
}

// Rewrites metrics.jsonl keeping only records of earlier stages, or of `stage` up to `step`.
void sn_train_log_truncate_after(sn_train_log *log, int stage, int64_t step) {
  if (!log->active) return;
  fclose(log->metrics);
  size_t len = 0;
  char *text = sn_read_file(log->metrics_path, &len);
  size_t cap = len + 1, out_len = 0;
  char *out = mallocCheck(cap);
  for (char *line = text, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next) *next++ = '\0';
    cJSON *rec = cJSON_Parse(line);
    if (!rec) continue;  // a torn last line from a crash
    int s = (int)cJSON_GetNumberValue(cJSON_GetObjectItem(rec, "stage"));
    int64_t k = (int64_t)cJSON_GetNumberValue(cJSON_GetObjectItem(rec, "step"));
    cJSON_Delete(rec);
    if (s > stage || (s == stage && k > step)) continue;
    out_len += (size_t)snprintf(out + out_len, cap - out_len, "%s\n", line);
  }
  if (sn_write_file_atomic(log->metrics_path, out, out_len) != 0)
    sn_fatal("cannot rewrite %s: %s", log->metrics_path, strerror(errno));
  free(text);
  free(out);
  log->metrics = fopen(log->metrics_path, "a");
  if (!log->metrics) sn_fatal("cannot open %s: %s", log->metrics_path, strerror(errno));
}

static void format_duration(char *buf, size_t n, double s) {
  if (!isfinite(s) || s < 0) {
    snprintf(buf, n, "--:--");
    return;
  }
  long t = (long)(s + 0.5);
  if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  else snprintf(buf, n, "%02ld:%02ld", t / 60, t % 60);
}

// JSON has no inf or nan: such values are written as null.
static void write_number(FILE *f, const char *key, double v) {
  if (isfinite(v)) fprintf(f, ", \"%s\": %.8g", key, v);
  else fprintf(f, ", \"%s\": null", key);
}

static void write_metrics(sn_train_log *log, const sn_step_record *r) {
  fprintf(log->metrics, "{\"stage\": %d, \"step\": %lld", r->stage, (long long)r->step);
  write_number(log->metrics, "loss", r->loss);
  if (r->stage == 0) write_number(log->metrics, "perplexity", expf(r->loss));  // next-token loss
  write_number(log->metrics, "lr", r->lr);
  write_number(log->metrics, "grad_norm", r->grad_norm);
  fprintf(log->metrics, ", \"tokens\": %lld, \"elapsed_s\": %.3f", (long long)r->tokens, r->elapsed_s);
  fprintf(log->metrics, ", \"mem_peak_gib\": %.3f", r->mem_peak_gib);
  for (int i = 0; i < r->n_terms; i++) write_number(log->metrics, r->term_names[i], r->terms[i]);
  if (r->has_weights_hash) fprintf(log->metrics, ", \"weights_hash\": \"%016llx\"", (unsigned long long)r->weights_hash);
  if (r->skipped_nonfinite > 0)
    fprintf(log->metrics, ", \"skipped_nonfinite\": %lld", (long long)r->skipped_nonfinite);
  fprintf(log->metrics, "}\n");
  fflush(log->metrics);
}

void sn_train_log_step(sn_train_log *log, const sn_step_record *r) {
  if (!log->active) return;
  write_metrics(log, r);
  if (!log->have_base) {
    // A fresh stage starts at elapsed 0. A resumed one knows only its average step time so far:
    // the interval before this record is taken as one such step.
    log->base_elapsed_s = r->elapsed_s * (double)(r->step - 1) / (double)SN_MAX(r->step, 1);
    log->interval_tokens = 0;
    log->have_base = 1;
  }
  log->interval_tokens += (double)r->tokens;
  int last = (r->step == r->total_steps);
  if (!log->is_tty && r->step % log->every != 0 && r->step != 1 && !last) return;
  const double span = r->elapsed_s - log->base_elapsed_s;
  if (span > 0 && (!log->is_tty || span >= TTY_RATE_MIN_S || log->tok_per_s == 0)) {
    log->tok_per_s = (float)(log->interval_tokens / span);
    log->base_elapsed_s = r->elapsed_s;
    log->interval_tokens = 0;
  }
  double per_step = r->elapsed_s / (double)SN_MAX(r->step, 1);
  char elapsed[32], eta[32];
  format_duration(elapsed, sizeof elapsed, r->elapsed_s);
  format_duration(eta, sizeof eta, per_step * (double)(r->total_steps - r->step));
  char terms[128] = "", skipped[48] = "";
  size_t used = 0;
  for (int i = 0; i < r->n_terms && used < sizeof terms; i++)
    used += (size_t)snprintf(terms + used, sizeof terms - used, " %s %.4f", r->term_names[i], r->terms[i]);
  if (r->skipped_nonfinite > 0)
    snprintf(skipped, sizeof skipped, " | skipped %lld", (long long)r->skipped_nonfinite);
  fprintf(stderr,
          "%sstage %d | step %lld/%lld | loss %.4f%s | lr %.2e | gnorm %.3f%s | %.0f tok/s | peak %.2f GiB | %s < %s%s",
          log->is_tty ? "\r\033[K" : "", r->stage, (long long)r->step, (long long)r->total_steps,
          r->loss, terms, r->lr, r->grad_norm, skipped, log->tok_per_s, r->mem_peak_gib, elapsed, eta,
          log->is_tty ? "" : "\n");
  fflush(stderr);
}

void sn_train_log_end_stage(sn_train_log *log) {
  if (log->active && log->is_tty) fputc('\n', stderr);
  log->have_base = 0;
  log->interval_tokens = 0;
  log->tok_per_s = 0;
}

void sn_train_log_close(sn_train_log *log) {
  if (log->metrics) fclose(log->metrics);
  log->metrics = NULL;
}
