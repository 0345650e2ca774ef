// The two ScalingNote stages and their driver (sn_train).
#pragma once

typedef struct {
  const char *config_path;      // NULL: built-in defaults
  int stage;                    // 0 = all, 1, 2
  const char *resume;           // NULL, "auto" or a checkpoint folder
  const char *const *overrides; // "key=value"
  int n_overrides;
  int print_config;
} sn_train_args;

// Returns the process exit status.
int sn_train_main(const sn_train_args *args);
