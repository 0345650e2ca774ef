// The memory plan (train_plan.h): phases, printing, the fit check and what would make a run fit.
#include "train_plan.h"

#include <stdarg.h>
#include <string.h>

#include "common.h"
#include "eval.h"
#include "train_internal.h"

// Free memory the plan may fill: the rest is for what it does not count (allocator rounding,
// cuBLAS and NCCL internals), a few percent on the H200 (docs/PERFORMANCE.md, memory plan).
#define SN_PLAN_USABLE_FRACTION 0.95
// World sizes tried when more GPUs would make a run fit.
#define SN_PLAN_MAX_WORLD 1024

sn_plan_phase *sn_plan_phase_new(sn_memory_plan *p, const char *name, int stage) {
  if (p->n == SN_PLAN_MAX_PHASES) sn_fatal("memory plan: more than %d phases", SN_PLAN_MAX_PHASES);
  sn_plan_phase *ph = &p->phases[p->n++];
  memset(ph, 0, sizeof *ph);
  snprintf(ph->name, sizeof ph->name, "%s", name);
  ph->stage = stage;
  return ph;
}

void sn_plan_add(sn_plan_phase *ph, const char *what, size_t bytes, const char *how_fmt, ...) {
  if (ph->n == SN_PLAN_MAX_ITEMS) sn_fatal("memory plan: more than %d items in %s", SN_PLAN_MAX_ITEMS, ph->name);
  sn_plan_item *it = &ph->items[ph->n++];
  it->what = what;
  it->bytes = bytes;
  va_list ap;
  va_start(ap, how_fmt);
  vsnprintf(it->how, sizeof it->how, how_fmt, ap);
  va_end(ap);
  ph->total += bytes;
}

const sn_plan_phase *sn_plan_peak(const sn_memory_plan *p) {
  const sn_plan_phase *best = NULL;
  for (int i = 0; i < p->n; i++)
    if (!best || p->phases[i].total > best->total) best = &p->phases[i];
  return best;
}

size_t sn_plan_stage_bytes(const sn_memory_plan *p, int stage) {
  size_t most = 0;
  for (int i = 0; i < p->n; i++)
    if (p->phases[i].stage == stage && strstr(p->phases[i].name, "training"))
      most = SN_MAX(most, p->phases[i].total);
  return most;
}

// Evaluation after a stage: the query and document towers loaded from the run folder (two copies
// even with shared towers) and the inference workspace of one encode batch.
static void eval_plan(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops) {
  if (!cfg->eval.data[0]) return;
  sn_model_config mc;
  sn_trainer_model_config(cfg->stage1.model, cfg->stage1.model_desc, "stage1.model", &mc);
  sn_model *m = sn_model_plan(&mc, ops, 0);
  const int batch = cfg->eval.batch, len = SN_MAX(cfg->data.max_query_len, cfg->data.max_doc_len);
  sn_plan_phase *ph = sn_plan_phase_new(p, "evaluation", -1);
  sn_plan_add(ph, "weights", 2 * m->num_elements * ops->storage_size, "query and document towers, %.3gB each",
              (double)m->num_elements / 1e9);
  sn_plan_add(ph, "activations", sn_embedder_plan_bytes(m, batch, len), "inference, %d sequences x %d tokens", batch,
              len);
  sn_model_free(m);
}

// Hard caps from the models, before any work: the stage-1 towers (and stage 2's teacher and
// document tower) take queries and documents, the student queries; none takes more tokens than its
// max_position_embeddings.
static void check_lengths(const sn_run_config *cfg, int do2) {
  char err[1024];
  sn_model_config mc;
  sn_trainer_model_config(cfg->stage1.model, cfg->stage1.model_desc, "stage1.model", &mc);
  const char *towers = cfg->stage1.model[0] ? "the stage-1 model (stage1.model)" : "the stage-1 model (stage1.model_desc)";
  if (sn_config_check_seq_len(&mc, towers, cfg->data.max_query_len, "data.max_query_len", err, sizeof err) != 0 ||
      sn_config_check_seq_len(&mc, towers, cfg->data.max_doc_len, "data.max_doc_len", err, sizeof err) != 0)
    sn_bad_input("%s", err);
  if (!do2 || cfg->stage2.student_from_teacher > 0) return;  // a student cut from the teacher: checked above
  sn_trainer_model_config(cfg->stage2.student, cfg->stage2.student_desc, "stage2.student", &mc);
  const char *student = cfg->stage2.student[0] ? "the student (stage2.student)" : "the student (stage2.student_desc)";
  if (sn_config_check_seq_len(&mc, student, cfg->data.max_query_len, "data.max_query_len", err, sizeof err) != 0)
    sn_bad_input("%s", err);
}

void sn_memory_plan_build(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world,
                          int do0, int do1, int do2) {
  memset(p, 0, sizeof *p);
  p->world = world;
  if (do0) sn_stage0_plan(p, cfg, ops, world);  // runs alone: no towers, no retrieval evaluation
  if (!do1 && !do2) return;
  check_lengths(cfg, do2);
  if (do1) sn_stage1_plan(p, cfg, ops, world);
  if (do2) sn_stage2_plan(p, cfg, ops, world);
  eval_plan(p, cfg, ops);
}

// "12.34 GiB" or, below a GiB, "56.7 MiB".
static const char *human_bytes(size_t bytes, char *buf, size_t size) {
  if (bytes >= (size_t)SN_GIB) snprintf(buf, size, "%.2f GiB", bytes / SN_GIB);
  else snprintf(buf, size, "%.1f MiB", bytes / (1024.0 * 1024.0));
  return buf;
}

void sn_memory_plan_print(const sn_memory_plan *p, FILE *out, const char *device, size_t free_bytes) {
  char b[32];
  fprintf(out, "memory plan per rank (%s, %d rank%s):\n", device, p->world, p->world > 1 ? "s" : "");
  for (int i = 0; i < p->n; i++) {
    const sn_plan_phase *ph = &p->phases[i];
    fprintf(out, "  %-28s %11s\n", ph->name, human_bytes(ph->total, b, sizeof b));
    for (int j = 0; j < ph->n; j++)
      fprintf(out, "    %-26s %11s  %s\n", ph->items[j].what, human_bytes(ph->items[j].bytes, b, sizeof b),
              ph->items[j].how);
  }
  const sn_plan_phase *peak = sn_plan_peak(p);
  if (!peak) return;
  if (free_bytes)
    fprintf(out, "  peak: %.2f GiB (%s) of %.2f GiB free (%.0f%% usable: %.2f GiB)\n", peak->total / SN_GIB,
            peak->name, free_bytes / SN_GIB, 100 * SN_PLAN_USABLE_FRACTION,
            free_bytes * SN_PLAN_USABLE_FRACTION / SN_GIB);
  else
    fprintf(out, "  peak: %.2f GiB (%s); free memory unknown (no device here: --memory GIB compares with one)\n",
            peak->total / SN_GIB, peak->name);
}

static size_t plan_peak_bytes(const sn_run_config *cfg, const sn_ops *ops, int world, int do1, int do2) {
  sn_memory_plan p;
  sn_memory_plan_build(&p, cfg, ops, world, 0, do1, do2);
  const sn_plan_phase *peak = sn_plan_peak(&p);
  return peak ? peak->total : 0;
}

// One change to the config that the plan can try.
typedef struct {
  const char *setting;  // as --set takes it
  const char *effect;
  int (*applies)(const sn_run_config *c, int world);  // worth suggesting from c
  void (*apply)(sn_run_config *c);
  int alone;  // trains something else or at another precision: suggested alone, not in "all but LoRA"
} plan_variant;

static int can_zero(const sn_run_config *c, int world) { return world > 1 && c->dist.zero < 2; }
static void set_zero(sn_run_config *c) { c->dist.zero = 2, c->dist.zero1 = 0; }
static int can_share(const sn_run_config *c, int world) {
  (void)world;
  return !c->stage1.shared_towers && c->stage1.lora.rank == 0;  // LoRA shares through lora.shared
}
static void set_share(sn_run_config *c) { c->stage1.shared_towers = 1; }
static int can_recompute(const sn_run_config *c, int world) {
  (void)world;
  return strcmp(c->stage1.recompute, "layer") != 0;
}
static void set_recompute(sn_run_config *c) { snprintf(c->stage1.recompute, sizeof c->stage1.recompute, "layer"); }
#define PLAN_GRAD_CACHE_CHUNK 16  // sequences per gradient-cache chunk suggested
static int can_grad_cache(const sn_run_config *c, int world) {
  (void)world;
  return c->stage1.grad_cache_chunk == 0 || c->stage1.grad_cache_chunk > PLAN_GRAD_CACHE_CHUNK;
}
static void set_grad_cache(sn_run_config *c) { c->stage1.grad_cache_chunk = PLAN_GRAD_CACHE_CHUNK; }

#define PLAN_LORA_RANK 32  // the adapters suggested: rank 32 on every linear (torch + peft's usual)
static int can_lora(const sn_run_config *c, int world) {
  (void)world;
  return c->stage1.lora.rank == 0 && !c->stage1.shared_towers;
}
static void set_lora(sn_run_config *c) { c->stage1.lora.rank = PLAN_LORA_RANK; }
static int can_bf16_state(const sn_run_config *c, int world) {
  (void)world;
  return !sn_optim_state_bf16(&c->stage1.optim) && c->stage1.lora.rank == 0;  // adapters' state is small
}
static void set_bf16_state(sn_run_config *c) {
  snprintf(c->stage1.optim.state_dtype, sizeof c->stage1.optim.state_dtype, "bf16");
}

// Tried alone, then all together except LoRA (which trains something else: adapters, not towers)
// and the bf16 state (another precision).
static const plan_variant VARIANTS[] = {
    {"dist.zero=2", "gradients, master weights and moments sharded across ranks", can_zero, set_zero, 0},
    {"stage1.shared_towers=true", "one parameter set for both towers", can_share, set_share, 0},
    {"stage1.grad_cache_chunk=16", "activations of 16 sequences at a time", can_grad_cache, set_grad_cache, 0},
    {"stage1.recompute=layer", "keep block inputs only, re-run blocks in backward", can_recompute, set_recompute, 0},
    {"stage1.optim.state_dtype=bf16", "bf16 weights as master and bf16 moments, stochastic rounding",
     can_bf16_state, set_bf16_state, 1},
    {"stage1.lora.rank=32", "two adapters over one frozen base: no tower gradients or moments", can_lora, set_lora, 1},
};

static void print_variant(FILE *out, const char *setting, size_t peak, size_t usable, const char *effect) {
  char b[32];
  fprintf(out, "  %-34s %11s%s  %s\n", setting, human_bytes(peak, b, sizeof b), peak <= usable ? "  fits" : "      ",
          effect);
}

// What would make the run fit in `usable` bytes: each change alone, all of them together, and the
// fewest ranks (with every change) that would.
static void print_suggestions(const sn_run_config *cfg, const sn_ops *ops, int world, int do1, int do2,
                              size_t usable, FILE *out) {
  fprintf(out, "what would make it fit (peak per rank with the change, as --set KEY=VALUE):\n");
  sn_run_config all = *cfg;
  int any = 0;
  for (size_t i = 0; i < SN_ARRAY_LEN(VARIANTS); i++) {
    if (!VARIANTS[i].applies(cfg, world)) continue;
    sn_run_config v = *cfg;
    VARIANTS[i].apply(&v);
    if (!VARIANTS[i].alone) VARIANTS[i].apply(&all);
    print_variant(out, VARIANTS[i].setting, plan_peak_bytes(&v, ops, world, do1, do2), usable, VARIANTS[i].effect);
    any = 1;
  }
  if (any) print_variant(out, "all but LoRA", plan_peak_bytes(&all, ops, world, do1, do2), usable, "");
  set_zero(&all);
  for (int w = world * 2; w <= SN_PLAN_MAX_WORLD; w *= 2) {
    size_t peak = plan_peak_bytes(&all, ops, w, do1, do2);
    if (peak <= usable) {
      char setting[64];
      snprintf(setting, sizeof setting, "%d ranks, all but LoRA", w);
      print_variant(out, setting, peak, usable, "with dist.zero=2 (sn_train --plan --world N shows it)");
      return;
    }
  }
  fprintf(out, "  not even %d ranks with all but LoRA: weights and gradients alone exceed a rank\n",
          SN_PLAN_MAX_WORLD);
}

void sn_memory_plan_check(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world,
                          int do0, int do1, int do2, int rank, int plan_only, size_t memory_bytes) {
  sn_memory_plan_build(p, cfg, ops, world, do0, do1, do2);
  const sn_plan_phase *peak = sn_plan_peak(p);
  if (!peak) return;
  size_t free_bytes = memory_bytes, total_bytes = memory_bytes;
  if (!memory_bytes) ops->device_memory(&free_bytes, &total_bytes);
  const size_t usable = (size_t)(free_bytes * SN_PLAN_USABLE_FRACTION);
  const int fits = free_bytes == 0 || peak->total <= usable;
  if (rank == 0) {
    if (plan_only || !fits) sn_memory_plan_print(p, stdout, ops->name, free_bytes);
    else
      sn_log("memory plan: peak %.2f GiB per %s (%s) of %.2f GiB free", peak->total / SN_GIB, ops->name,
             peak->name, free_bytes / SN_GIB);
    if (!fits && do0)
      fprintf(stdout, "what would make it fit: a smaller stage0.batch_seqs (with stage0.grad_accum for the same "
                      "batch) or stage0.seq_len, stage0.recompute=layer, more ranks with dist.zero=2\n");
    else if (!fits) print_suggestions(cfg, ops, world, do1, do2, usable, stdout);
    fflush(stdout);
  }
  if (!fits)
    sn_bad_input("the run needs %.2f GiB per rank (%s) in %s, but %.2f GiB are free (%.2f usable): see the plan "
                 "above for what would fit",
                 peak->total / SN_GIB, ops->name, peak->name, free_bytes / SN_GIB, usable / SN_GIB);
}
