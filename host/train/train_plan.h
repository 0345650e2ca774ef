// The memory plan: what a run holds per GPU (per rank) in each phase (stage-1 training, the stage-2
// embedding caches, stage-2 training, evaluation), from the config and the model shapes alone —
// nothing is loaded — compared with what the backend can still allocate. Each figure comes from the
// code that allocates it (sn_model_plan_acts_bytes, sn_runner_plan_bytes, sn_optimizer_plan_bytes,
// ops->workspace_bytes), so the plan follows the code. Outside it: the CUDA context, cuBLAS and NCCL
// internals and allocator rounding (the fit keeps SN_PLAN_USABLE_FRACTION of free memory for them),
// and host memory.
#pragma once
#include <stddef.h>
#include <stdio.h>

#include "ops.h"
#include "run_config.h"

#define SN_PLAN_MAX_ITEMS 12
#define SN_PLAN_MAX_PHASES 4
#define SN_PLAN_TEXT 112

typedef struct {
  const char *what;         // "weights", "activations", ...
  size_t bytes;
  char how[SN_PLAN_TEXT];   // how it was counted: "2 towers x 494.0M x bf16"
} sn_plan_item;

typedef struct {
  char name[48];            // "stage 1 training"
  int stage;                // 0 (pretraining), 1, 2; -1 for evaluation
  int n;
  sn_plan_item items[SN_PLAN_MAX_ITEMS];
  size_t total;
} sn_plan_phase;

typedef struct {
  int world;
  int n;
  sn_plan_phase phases[SN_PLAN_MAX_PHASES];
} sn_memory_plan;

// A new phase of p, and an item added to it (how: printf format).
sn_plan_phase *sn_plan_phase_new(sn_memory_plan *p, const char *name, int stage);
void sn_plan_add(sn_plan_phase *ph, const char *what, size_t bytes, const char *how_fmt, ...)
    __attribute__((format(printf, 4, 5)));
// The phase holding the most, or NULL for an empty plan.
const sn_plan_phase *sn_plan_peak(const sn_memory_plan *p);
// The planned bytes of a stage's training phase (0 when not planned).
size_t sn_plan_stage_bytes(const sn_memory_plan *p, int stage);

// The plan of the stages to run (do1, do2) on `world` ranks. Exits 2 naming the key when a model
// config cannot be read.
void sn_memory_plan_build(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world,
                          int do0, int do1, int do2);
// Every phase and item, then the peak against free_bytes (0 = unknown).
void sn_memory_plan_print(const sn_memory_plan *p, FILE *out, const char *device, size_t free_bytes);

// The driver's check before anything is loaded: builds the plan, prints it (in full with
// plan_only, else one line), and when the peak does not fit what the backend can allocate (or
// memory_bytes when non-zero: a device of that size, fully free), prints
// the changes that would make it fit and exits 2. Fills p (for the measured-peak comparison at the
// end of each stage).
void sn_memory_plan_check(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world,
                          int do0, int do1, int do2, int rank, int plan_only, size_t memory_bytes);

// Backend memory of `bytes`, or (ops NULL) only counted: one allocation routine for a stage's
// buffers and their plan, so the two cannot drift apart.
static inline void *sn_plan_take(const sn_ops *ops, size_t bytes, size_t *counted) {
  *counted += bytes;
  return ops ? ops->alloc(bytes) : NULL;
}

// Planners of each stage (beside the code that allocates what they count).
void sn_stage0_plan(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world);
void sn_stage1_plan(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world);
void sn_stage2_plan(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world);
