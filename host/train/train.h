// The ScalingNote stages and their driver (sn_train): stage 0 (causal-LM pretraining, only when
// asked), stage 1 (towers), stage 2 (student).
#pragma once
#include <stdint.h>

// --stage all: stages 1 then 2. Stage 0 (pretraining) runs only as --stage 0.
#define SN_TRAIN_STAGES_ALL (-1)

typedef struct {
  const char *config_path;      // NULL: built-in defaults
  int stage;                    // SN_TRAIN_STAGES_ALL (stages 1 then 2), 0, 1 or 2
  const char *resume;           // NULL, "auto" or a checkpoint folder
  int overwrite;                // a fresh start may replace an earlier run in run_dir
  const char *const *overrides; // "key=value"
  int n_overrides;
  int print_config;
  int64_t stop_after;           // > 0: stop (checkpoint, exit 0) after this many steps in this run
  int plan_only;                // print the memory plan and exit (0 fits, 2 does not)
  int plan_world;               // > 0: plan for this many ranks (default 1)
  double plan_memory_gib;       // > 0: compare the plan with this much device memory, not the free memory
} sn_train_args;

// Returns the process exit status.
int sn_train_main(const sn_train_args *args);

// Mining under several ranks (sn_mine and stage 1's mining rounds): every rank's (Q, k) ranked
// lists of its corpus slice (trec order, global record indices, -1 padded) gathered on every rank
// and merged in trec order (ties by doc_ids descending), in place. Collective.
struct sn_comm;
void sn_mine_gather_merge(struct sn_comm *comm, const char *const *doc_ids, int Q, int k, int32_t *idx,
                          float *scores);
