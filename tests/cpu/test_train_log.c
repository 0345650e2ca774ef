// The progress line and the loss plot. tok/s: measured over the steps since the previous printed
// line (the logging interval), so it follows a change of speed at the next line instead of
// repeating one value. SVG: axis titles, value ticks, one panel per stage-2 term.
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "test_util.h"
#include "train_log.h"

#define STEPS 8
#define EVERY 2

int main(void) {
  char dir[] = "/tmp/sn_test_train_log_XXXXXX";
  if (!mkdtemp(dir)) sn_fatal("mkdtemp failed");
  char err_path[256], svg_path[256];
  snprintf(err_path, sizeof err_path, "%s/stderr.txt", dir);
  snprintf(svg_path, sizeof svg_path, "%s/loss_stage2.svg", dir);
  // stderr to a file: not a terminal, so plain lines every EVERY steps (and step 1).
  fflush(stderr);
  int saved = dup(fileno(stderr));
  if (!freopen(err_path, "w", stderr)) sn_fatal("cannot redirect stderr");
  sn_train_log log;
  sn_train_log_open(&log, dir, 1, EVERY);
  // 1000 tokens per step; steps 1-4 take 1 s each, steps 5-8 take 4 s each.
  double elapsed = 0;
  for (int step = 1; step <= STEPS; step++) {
    elapsed += step <= 4 ? 1.0 : 4.0;
    sn_step_record r = {.stage = 2, .step = step, .total_steps = STEPS, .loss = 1.0f / step, .lr = 1e-4f,
                        .grad_norm = 1, .tokens = 1000, .elapsed_s = elapsed, .n_terms = 3,
                        .term_names = {"mse", "cos", "infonce"},
                        .terms = {0.001f / step, 0.01f / step, 1.0f / step}};
    sn_train_log_step(&log, &r);
  }
  sn_train_log_end_stage(&log);
  sn_train_log_close(&log);
  fflush(stderr);
  dup2(saved, fileno(stderr));
  close(saved);

  char *text = sn_read_file(err_path, NULL);
  CHECK(text != NULL, "no progress output");
  // Lines at steps 1, 2, 4, 6, 8: intervals of 1, 1, 2, 2 and 2 steps.
  static const struct { int step; int tok_s; } want[] = {{1, 1000}, {2, 1000}, {4, 1000}, {6, 250}, {8, 250}};
  for (size_t i = 0; text && i < SN_ARRAY_LEN(want); i++) {
    char needle[96];
    snprintf(needle, sizeof needle, "step %d/%d |", want[i].step, STEPS);
    const char *line = strstr(text, needle);
    CHECK(line != NULL, "no line for step %d in:\n%s", want[i].step, text);
    if (!line) continue;
    snprintf(needle, sizeof needle, "| %d tok/s |", want[i].tok_s);
    const char *eol = strchr(line, '\n');
    const char *hit = strstr(line, needle);
    CHECK(hit && (!eol || hit < eol), "step %d: expected '%s' in: %.*s", want[i].step, needle,
          eol ? (int)(eol - line) : 200, line);
  }
  free(text);

  CHECK(sn_plot_loss_svg(dir, 2) == 0, "sn_plot_loss_svg failed");
  char *svg = sn_read_file(svg_path, NULL);
  CHECK(svg != NULL, "no %s", svg_path);
  if (svg) {
    CHECK(strstr(svg, ">step</text>") != NULL, "no x-axis title");
    static const char *const titles[] = {"loss (sum of the terms)", "mse term", "cos term", "infonce term"};
    for (size_t i = 0; i < SN_ARRAY_LEN(titles); i++)
      CHECK(strstr(svg, titles[i]) != NULL, "no panel titled '%s'", titles[i]);
    // The mse term (0.001 .. 0.000125) has its own scale: ticks in thousandths.
    CHECK(strstr(svg, ">0.001</text>") != NULL, "the mse panel has no tick at 0.001");
    CHECK(strstr(svg, ">8</text>") != NULL, "no x tick at step 8");
  }
  free(svg);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", dir);
  return sn_test_finish("test_train_log");
}
