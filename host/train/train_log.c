#define _GNU_SOURCE
#include "train_log.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "cJSON.h"
#include "common.h"

// Seconds of steps over which tokens/s is averaged: long enough to smooth per-step jitter.
#define TOKENS_WINDOW_S 5.0
#define PLOT_WIDTH 720
#define PLOT_HEIGHT 360
#define PLOT_MARGIN 50

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
  double now = sn_now_s();
  if (log->window_start_s == 0) {
    log->window_start_s = now;
    log->window_start_step = r->step - 1;
  }
  log->tokens_window += (double)r->tokens;
  double span = now - log->window_start_s;
  if (span >= TOKENS_WINDOW_S || log->tok_per_s == 0) {
    if (span > 0) log->tok_per_s = (float)(log->tokens_window / span);
    else if (r->elapsed_s > 0) log->tok_per_s = (float)((double)r->tokens / r->elapsed_s);  // first step
    if (span >= TOKENS_WINDOW_S) {
      log->tokens_window = 0;
      log->window_start_s = now;
      log->window_start_step = r->step;
    }
  }
  int last = (r->step == r->total_steps);
  if (!log->is_tty && r->step % log->every != 0 && r->step != 1 && !last) return;
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
  log->window_start_s = 0;
  log->tokens_window = 0;
  log->tok_per_s = 0;
}

void sn_train_log_close(sn_train_log *log) {
  if (log->metrics) fclose(log->metrics);
  log->metrics = NULL;
}

// ---- SVG plot -------------------------------------------------------------------------------

typedef struct {
  const char *name;
  const char *color;
  double *x, *y;
  int n, cap;
} series;

static void series_push(series *s, double x, double y) {
  if (!isfinite(y)) return;
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 256;
    s->x = reallocCheck(s->x, (size_t)s->cap * sizeof *s->x);
    s->y = reallocCheck(s->y, (size_t)s->cap * sizeof *s->y);
  }
  s->x[s->n] = x;
  s->y[s->n] = y;
  s->n++;
}

int sn_plot_loss_svg(const char *run_dir, int stage) {
  char path[1100];
  snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
  char *text = sn_read_file(path, NULL);
  if (!text) return -1;
  series lines[] = {{.name = "loss", .color = "#1f77b4"}, {.name = "mse", .color = "#ff7f0e"},
                    {.name = "cos", .color = "#2ca02c"}, {.name = "infonce", .color = "#d62728"}};
  const int nlines = (int)SN_ARRAY_LEN(lines);
  for (char *line = text, *next; line && *line; line = next) {
    next = strchr(line, '\n');
    if (next) *next++ = '\0';
    cJSON *rec = cJSON_Parse(line);
    if (!rec) continue;
    if ((int)cJSON_GetNumberValue(cJSON_GetObjectItem(rec, "stage")) == stage) {
      double step = cJSON_GetNumberValue(cJSON_GetObjectItem(rec, "step"));
      for (int i = 0; i < nlines; i++) {
        cJSON *v = cJSON_GetObjectItem(rec, lines[i].name);
        if (cJSON_IsNumber(v)) series_push(&lines[i], step, v->valuedouble);
      }
    }
    cJSON_Delete(rec);
  }
  free(text);
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (int i = 0; i < nlines; i++)
    for (int k = 0; k < lines[i].n; k++) {
      xmin = fmin(xmin, lines[i].x[k]);
      xmax = fmax(xmax, lines[i].x[k]);
      ymin = fmin(ymin, lines[i].y[k]);
      ymax = fmax(ymax, lines[i].y[k]);
    }
  int rc = -1;
  if (lines[0].n > 0) {
    if (xmax == xmin) xmax = xmin + 1;
    if (ymax == ymin) ymax = ymin + 1;
    ymin = fmin(ymin, 0);
    const double w = PLOT_WIDTH - 2 * PLOT_MARGIN, h = PLOT_HEIGHT - 2 * PLOT_MARGIN;
    sn_strbuf svg = {0};
#define EMIT(...) sn_strbuf_printf(&svg, __VA_ARGS__)
    EMIT("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" font-family=\"sans-serif\" font-size=\"12\">\n",
         PLOT_WIDTH, PLOT_HEIGHT);
    EMIT("<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n");
    EMIT("<text x=\"%d\" y=\"20\" font-size=\"14\">stage %d loss</text>\n", PLOT_MARGIN, stage);
    EMIT("<rect x=\"%d\" y=\"%d\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" stroke=\"#888\"/>\n",
         PLOT_MARGIN, PLOT_MARGIN, w, h);
    EMIT("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.3g</text>\n", PLOT_MARGIN - 4, PLOT_MARGIN + 4, ymax);
    EMIT("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">%.3g</text>\n", PLOT_MARGIN - 4, PLOT_MARGIN + (int)h, ymin);
    EMIT("<text x=\"%d\" y=\"%d\">%.0f</text>\n", PLOT_MARGIN, PLOT_HEIGHT - PLOT_MARGIN + 16, xmin);
    EMIT("<text x=\"%d\" y=\"%d\" text-anchor=\"end\">step %.0f</text>\n", PLOT_MARGIN + (int)w,
         PLOT_HEIGHT - PLOT_MARGIN + 16, xmax);
    int legend = 0;
    for (int i = 0; i < nlines; i++) {
      if (lines[i].n == 0) continue;
      EMIT("<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", lines[i].color);
      for (int k = 0; k < lines[i].n; k++)
        EMIT("%.1f,%.1f ", PLOT_MARGIN + w * (lines[i].x[k] - xmin) / (xmax - xmin),
             PLOT_MARGIN + h * (1 - (lines[i].y[k] - ymin) / (ymax - ymin)));
      EMIT("\"/>\n<text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n",
           PLOT_MARGIN + (int)w - 80, PLOT_MARGIN + 16 + 14 * legend++, lines[i].color, lines[i].name);
    }
    EMIT("</svg>\n");
#undef EMIT
    char out[1100];
    snprintf(out, sizeof out, "%s/loss_stage%d.svg", run_dir, stage);
    rc = sn_write_file_atomic(out, svg.s, svg.len);
    free(svg.s);
  }
  for (int i = 0; i < nlines; i++) {
    free(lines[i].x);
    free(lines[i].y);
  }
  return rc;
}
