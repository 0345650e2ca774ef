// sn_train --config FILE.json [--stage 0|1|2|all] [--resume auto|DIR] [--set key=value ...]
// Runs ScalingNote stage 1 (dual towers, InfoNCE), stage 2 (student distillation) or both, or
// stage 0 (causal-LM pretraining of the LLM that stage 1 starts from), with
// checkpoints, exact resume and evaluation. Thin: the work is in host/train/.
#include <float.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "run_config.h"
#include "train.h"

#define MAX_OVERRIDES 256
#define MAX_PLAN_WORLD (1 << 20)  // --world
#define MAX_PLAN_GIB 1e6          // --memory

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_train [--config FILE.json] [--stage 0|1|2|all] [--resume auto|DIR] [--overwrite]\n"
          "                [--set key=value ...] [key=value ...]\n"
          "  --config FILE   run config (JSON); without it the built-in defaults are used\n"
          "  --stage S       1, 2 or all (default all: stage 1, then stage 2); 0: causal-LM\n"
          "                  pretraining (stage0.* keys) into RUN/final/lm, run only when asked\n"
          "  --resume R      auto: continue from the newest complete checkpoint of run_dir;\n"
          "                  DIR: continue from that checkpoint folder\n"
          "  --overwrite     start afresh in a run_dir that holds an earlier run (its metrics,\n"
          "                  checkpoints, final towers and evaluations are removed first); without\n"
          "                  it such a start exits 2\n"
          "  --set k=v       override any config key by its dotted path, e.g.\n"
          "                  --set stage1.temperature=0.02 --set device=cuda\n"
          "  --skip-bad-lines  skip malformed training lines (counted and reported) instead of\n"
          "                  stopping at the first (config key data.skip_bad_lines)\n"
          "  --stop-after N  take N optimizer steps in this run, checkpoint and exit 0, as on\n"
          "                  SIGTERM/SIGUSR1 (time-limited jobs)\n"
          "  --print-config  print the resolved config and exit\n"
          "  --plan          print the memory plan per GPU (weights, gradients, optimizer state,\n"
          "                  activations, workspaces of each phase) and exit: 0 when it fits the\n"
          "                  free device memory, 2 with what would make it fit when it does not\n"
          "  --world N       with --plan: plan for N ranks (GPUs; default 1). --plan needs neither\n"
          "                  MPI nor the device: a login node can plan a GPU job\n"
          "  --memory GIB    with --plan: compare with a device of GIB GiB instead of this one's\n"
          "                  free memory (e.g. --memory 80 for 80 GB GPUs)\n"
          "  --help, -h      this text\n"
          "  --version       the scalingnote version\n"
          "  --print-schema  print every config key (type, default, range, help) as a markdown\n"
          "                  table and exit\n");
}

int main(int argc, char **argv) {
  sn_train_args args = {.stage = SN_TRAIN_STAGES_ALL};
  static const char *overrides[MAX_OVERRIDES];
  sn_cli_init("sn_train", usage);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int has_value = i + 1 < argc;
    sn_cli_std_flag(a);
    if (strcmp(a, "--config") == 0 && has_value) {
      args.config_path = argv[++i];
    } else if (strcmp(a, "--stage") == 0 && has_value) {
      const char *s = argv[++i];
      if (strcmp(s, "0") == 0) args.stage = 0;
      else if (strcmp(s, "1") == 0) args.stage = 1;
      else if (strcmp(s, "2") == 0) args.stage = 2;
      else if (strcmp(s, "all") == 0) args.stage = SN_TRAIN_STAGES_ALL;
      else sn_usage_error("--stage: expected 0, 1, 2 or all, got '%s'", s);
    } else if (strcmp(a, "--overwrite") == 0) {
      args.overwrite = 1;
    } else if (strcmp(a, "--resume") == 0 && has_value) {
      args.resume = argv[++i];
    } else if (strcmp(a, "--stop-after") == 0 && has_value) {
      args.stop_after = sn_flag_i64("--stop-after", argv[++i], 1, INT64_MAX);
    } else if (strcmp(a, "--skip-bad-lines") == 0) {
      if (args.n_overrides == MAX_OVERRIDES) sn_usage_error("too many --set overrides (max %d)", MAX_OVERRIDES);
      overrides[args.n_overrides++] = "data.skip_bad_lines=true";
    } else if (strcmp(a, "--print-schema") == 0) {
      sn_run_config_print_schema(stdout);
      return 0;
    } else if (strcmp(a, "--plan") == 0) {
      args.plan_only = 1;
    } else if (strcmp(a, "--world") == 0 && has_value) {
      args.plan_world = (int)sn_flag_i64("--world", argv[++i], 1, MAX_PLAN_WORLD);
    } else if (strcmp(a, "--memory") == 0 && has_value) {
      args.plan_memory_gib = sn_flag_f64("--memory", argv[++i], DBL_MIN, MAX_PLAN_GIB);
    } else if (strcmp(a, "--print-config") == 0) {
      args.print_config = 1;
    } else if ((strcmp(a, "--set") == 0 && has_value) || (a[0] != '-' && strchr(a, '='))) {
      if (args.n_overrides == MAX_OVERRIDES) sn_usage_error("too many --set overrides (max %d)", MAX_OVERRIDES);
      overrides[args.n_overrides++] = (a[0] == '-') ? argv[++i] : a;
    } else {
      sn_usage_error("unknown or incomplete argument '%s'", a);
    }
  }
  args.overrides = overrides;
  return sn_train_main(&args);
}
