// Shared by the stage loops and the driver (host/train/*.c); not a public API.
#pragma once
#include <signal.h>
#include <stdint.h>

#include "checkpoint.h"
#include "comm.h"
#include "data.h"
#include "export.h"
#include "mine.h"
#include "model.h"
#include "optimizer.h"
#include "run_config.h"
#include "tokenizer.h"
#include "train_log.h"
#include "train_plan.h"

#define SN_TRAIN_PATH_MAX 1200
#define SN_FINGERPRINTS 8
#define SN_STATE_CONFIG_SECTION "config"  // state.bin: the resolved config the checkpoint was written with

// Set by SIGTERM/SIGINT/SIGUSR1: finish the step, checkpoint, exit 0.
extern volatile sig_atomic_t sn_stop_requested;

typedef struct {
  sn_run_config cfg;
  const sn_ops *ops;
  sn_comm *comm;
  int rank, world;
  uint64_t config_hash;
  char run_dir[SN_TRAIN_PATH_MAX];
  char cache_dir[SN_TRAIN_PATH_MAX];
  sn_train_log log;
  sn_train_examples examples;
  int examples_loaded;
  // resume point: the checkpoint to continue from (empty = fresh), its stage and step
  char resume_dir[SN_TRAIN_PATH_MAX];
  int resume_stage;
  int64_t resume_step;
  sn_memory_plan plan;    // per-rank memory of each phase, checked before loading
  int64_t stop_after;     // steps this run may take before stopping as on a signal (0 = no limit)
  int64_t steps_this_run;
  // Steps of the current stage skipped for a non-finite loss or gradient norm
  // (train.skip_nonfinite); saved in checkpoints, so a resume continues the count.
  int64_t skipped_nonfinite;
  // What checkpoints depend on (train_resume.c): each stage's architecture and tokenizer, the data.
  uint64_t fingerprints[SN_FINGERPRINTS];
} sn_trainer;

// ---- run folder and resume point (train_run_dir.c, train_resume.c) ------------------------
// Takes run_dir's lock for this process's lifetime; exits 2 naming the holder's pid when another
// process has it. Rank 0, before anything else is written.
void sn_run_dir_lock(const char *run_dir);
// A fresh start: exits 2 when run_dir holds an earlier run (metrics.jsonl, checkpoints), unless
// overwrite, which removes what sn_train wrote there first.
void sn_run_dir_claim_fresh(const char *run_dir, int overwrite);
// Fills t->fingerprints from the config (model descriptions, tokenizer and data file contents) for
// the stages the run trains (do0, do1, do2); the others stay 0 (unknown, not compared).
void sn_trainer_fingerprint(sn_trainer *t, int do0, int do1, int do2);
// The fingerprints and the resolved config, as state.bin sections.
void sn_trainer_add_fingerprints(const sn_trainer *t, sn_state_writer *w);
// The checkpoint `resume` names ("auto": the newest valid one of run_dir, NULL: none): sets
// resume_dir/stage/step from its state.bin; exits 2 when it does not validate or was written for
// another architecture, tokenizer or data; warns when other keys that change the numbers differ.
void sn_trainer_find_resume_point(sn_trainer *t, const char *resume);

// Runs one tower over packed sequences: forward, then sn_model_pool (pooling, optional
// projection, L2 norm: the one embedding path that sn_embed and sn_eval use too); and the backward
// of that chain. Several runners may share one model (shared towers): each has its own
// activations, so a query forward and a document forward can both wait for their backward.
typedef struct {
  sn_model *model;
  const sn_ops *ops;
  sn_acts *acts;
  sn_tokens tok;
  sn_pooling pooling;
  int max_seqs, max_tokens;
  int out_dim;         // C, or the projection's output width
  void *dhidden;       // (max_tokens, C) storage
  // LoRA dropout while training (off by default): the stage sets a key per micro-batch; each
  // chunk's forward (and the backward of it) takes masks from the key and the chunk's first sequence.
  int dropout_on;
  uint64_t dropout_key;
} sn_tower_runner;

void sn_runner_init(sn_tower_runner *r, sn_model *m, sn_pooling pooling, int max_seqs, int max_tokens);
void sn_runner_free(sn_tower_runner *r);
// What sn_runner_init allocates, plus the backward slots of a forward kept for backward under
// `recompute` when for_backward (the memory plan; m may be an sn_model_plan table).
size_t sn_runner_plan_bytes(const sn_model *m, int max_seqs, int max_tokens, int for_backward,
                            sn_recompute recompute);
// The pre-normalisation embedding of the last forward: (n, out_dim) storage.
const void *sn_runner_raw(const sn_tower_runner *r);
// Embeds n packed sequences (host ids and cu_seqlens): emb (n, out_dim) fp32 backend memory,
// L2-normalised. for_backward keeps what sn_runner_backward needs. `what` names the input in errors.
void sn_runner_forward(sn_tower_runner *r, const int32_t *ids, const int32_t *cu_seqlens, int n,
                       int for_backward, float *emb, const char *what);
// Backward of the last forward from d_emb (n, out_dim) fp32, given the normalised emb it produced;
// d_raw_extra (n, out_dim) storage, when non-NULL, is a gradient w.r.t. the raw (pre-norm)
// embedding added on top. Accumulates into the model's grads.
void sn_runner_backward(sn_tower_runner *r, const float *d_emb, const float *emb,
                        const void *d_raw_extra);
// The whole contrastive batch of one tower (n packed sequences): with grad_cache = 0 one forward
// that keeps activations; else chunks of `chunk` sequences without them (gradient caching's first
// pass). emb (n, out_dim) fp32 backend memory.
void sn_embed_batch(sn_tower_runner *r, int grad_cache, int chunk, const int32_t *ids,
                    const int32_t *cu, int n, float *emb, const char *what);
// Backpropagates d_emb (n, out_dim) through the tower: from the kept activations, or (grad_cache)
// chunk by chunk after re-running each chunk's forward into chunk_emb (chunk, out_dim) scratch.
// arm (may be NULL): the optimizer whose overlapped all-reduce is armed before the last backward
// call, when this is the step's last pass through the model.
void sn_backward_batch(sn_tower_runner *r, int grad_cache, int chunk, const int32_t *ids,
                       const int32_t *cu, int n, const float *d_emb, const float *emb,
                       float *chunk_emb, sn_optimizer *arm, const char *what);
// The optimizer of a model with overlap enabled as the config says. stream: which of the stage's
// optimizers (0, 1: the query and document towers), for the bf16 state's own rounding bits.
void sn_trainer_optimizer_init(const sn_trainer *t, sn_optimizer *opt, sn_model *m, const sn_cfg_optim *cfg,
                               int64_t total_steps, int stream);
// Embeds a whole token set in chunks of at most max_seqs sequences / max_tokens tokens into host
// memory (n_seqs, out_dim), normalised. Used for teacher and document caches.
float *sn_runner_embed_set(sn_tower_runner *r, const sn_token_set *set, int verbose, const char *what);

// Sequences [s0, s1) of a packed host batch as their own packed batch: ids pointer and rebased
// cu_seqlens (s1 - s0 + 1 entries written to cu_out).
const int32_t *sn_sub_batch(const int32_t *ids, const int32_t *cu, int s0, int s1, int32_t *cu_out);

// Ranks other than 0 wait for a file rank 0 writes after long work (an evaluation, an embedding
// cache) by polling, not in a collective, so the work may outlast the collective timeout.
#define SN_RANK0_WAIT_S (4 * 3600.0)
// Returns when `ready(path, ctx)` is true, polling; exits after SN_RANK0_WAIT_S.
void sn_wait_for(const char *path, int (*ready)(const char *path, void *ctx), void *ctx, int rank);
int sn_path_exists(const char *path, void *unused);

// Towers and their tokenizers. The architecture of a configured tower without loading it: a model
// folder's config.json or a description (exits 2 naming `what` when neither reads).
void sn_trainer_model_config(const char *dir, const char *desc, const char *what, sn_model_config *mc);
sn_model *sn_trainer_load_model(const sn_trainer *t, const char *dir, const char *desc, uint64_t seed,
                                const char *what);
sn_tokenizer *sn_trainer_load_tokenizer(const char *path, const char *fallback_dir, const char *what);
// The folder a tower's tokenizer files are copied from when it is saved: path itself when it is a
// folder, else the folder holding it (path falls back to fallback when empty).
void sn_tokenizer_dir_of(const char *path, const char *fallback, char *out, size_t size);
void sn_trainer_check_vocab(const sn_tokenizer *tok, const sn_model *m, const char *what);
// Token sets of the training data for one tower (cached shards; rank 0 builds).
void sn_trainer_query_set(sn_trainer *t, const sn_tokenizer *tok, const sn_model *m, const char *name,
                          sn_token_set *out);
void sn_trainer_doc_set(sn_trainer *t, const sn_tokenizer *tok, const sn_model *m, sn_token_set *out);
// Other texts as queries (data.query_prompt, data.max_query_len): stage 2's pseudo-queries.
void sn_trainer_query_text_set(sn_trainer *t, const sn_tokenizer *tok, const sn_model *m, const char *name,
                               const sn_text_item *items, int64_t n, sn_token_set *out);

// A tower as a Hugging Face folder (exits on failure: for the final towers).
void sn_trainer_save_tower(const sn_model *m, const char *dir, const char *tokenizer_dir);
// 0 when dir's file system has room for `need` bytes (and a margin); else -1 with err naming
// `what`, the bytes and the free space.
int sn_trainer_disk_room(const char *dir, size_t need, const char *what, char *err, size_t errlen);

// A tower written into a checkpoint folder.
typedef struct {
  const char *name;          // folder name inside the checkpoint: "query_tower", ...
  const sn_model *model;
  const char *tokenizer_dir; // where its tokenizer files come from ("" = none)
  // LoRA towers (model->lora): checkpoints hold only the adapter, as a peft folder of this name;
  // the final save writes the merged tower under `name` and the adapter beside it.
  const char *adapter_name;  // "query_adapter", ...
  const char *base_name;     // the adapter's base_model_name_or_path (stage1.model)
  // How the tower was trained, for the sentence-transformers files of its folder (NULL: none).
  const sn_export_info *export_info;
} sn_ckpt_tower;

// What a tower's export says about its training: the pooling, the data prompts, the tower's role
// (SN_EXPORT_ROLE_*) with its length limit, the tokenizer's EOS and padding.
void sn_trainer_export_info(const sn_trainer *t, const sn_model *m, const sn_tokenizer *tok, const char *pooling,
                            const char *role, sn_export_info *out);

// A final tower into final_dir/<name> as a Hugging Face folder (merged, for a LoRA tower, plus its
// peft folder final_dir/<adapter_name>), its weights in `dtype` (export.dtype), without an untied
// lm_head (sn_model_export). Exits on failure.
void sn_trainer_save_final_tower(const sn_ckpt_tower *tw, const char *final_dir, sn_dtype dtype);
// export.dtype as a dtype: "source" is the backend's storage dtype.
sn_dtype sn_trainer_export_dtype(const sn_trainer *t);
// RUN/final/<tower>/README.md, the model card (train_card.c): base model, stage, data, steps, loss
// settings, prompt, pooling and length, RUN/eval's metrics when present, usage with
// sentence-transformers and sn_embed. Rewritten after the evaluation. Returns 0, or -1 with err.
int sn_train_write_card(const sn_trainer *t, int stage, const char *tower, char *err, size_t errlen);
// Optimizer state saved under a prefix ("query", "doc", "student").
typedef struct {
  const char *prefix;
  sn_optimizer *opt;
} sn_ckpt_optimizer;
// 0 when every weight the optimizers train (a tower, or a LoRA tower's adapter) is finite; else -1
// with err naming the optimizer's prefix. One sum_squares pass per parameter set on the backend,
// into the optimizer's own scratch (no allocation: the memory plan stays exact): a NaN or inf (or a
// weight beyond ~1e19, whose square overflows) makes the sum non-finite. Every rank holds the same
// weights, so every rank gets the same answer. Checkpoints and final towers are refused on -1.
int sn_trainer_weights_finite(const sn_ckpt_optimizer *opts, int nopts, char *err, size_t errlen);
// A checkpoint after `step` of `stage`: the towers, the optimizers, the data cursor, the step and
// elapsed time. Returns 0, or -1 after a warning (the previous checkpoint stays intact).
int sn_trainer_checkpoint(sn_trainer *t, int stage, int64_t step, double elapsed_s,
                          const sn_sampler *sampler, const sn_ckpt_optimizer *opts, int nopts,
                          const sn_ckpt_tower *towers, int ntowers);
// Restores a checkpoint's optimizers (from state.bin, or assembled from the per-rank shards of a
// ZeRO run of any world size) and data cursor; returns the step and sets *elapsed_s.
int64_t sn_trainer_restore(sn_trainer *t, int stage, sn_sampler *sampler, const sn_ckpt_optimizer *opts,
                           int nopts, double *elapsed_s);
// Whether a checkpoint is due after `step`: every checkpoint.every steps, when stopping, at the end.
int sn_trainer_checkpoint_due(const sn_trainer *t, int64_t step, int64_t total, int stopping);

// True when the run should stop after the step just taken (a signal on any rank, or --stop-after):
// agreed across ranks through `requested_anywhere` (the sum of every rank's request flag).
int sn_trainer_should_stop(sn_trainer *t, double requested_anywhere);
// When dist.check_replicas_every divides `step`: hashes the weights of the n models on every rank
// and compares the hashes (data parallelism must keep the replicas bit-identical); exits naming the
// step and the ranks that differ. Fills rec's weights_hash when it checked.
void sn_trainer_check_replicas(const sn_trainer *t, sn_model *const *models, int n, int64_t step,
                               sn_step_record *rec);
// Exits 2 when k negatives per query cannot be distinct documents of the data.
void sn_trainer_check_negatives(const sn_trainer *t, int k, const char *key);
// Number of optimizer steps of a stage from its config.
int64_t sn_trainer_total_steps(int steps, float epochs, int64_t batches_per_epoch, int grad_accum);

// ---- a stage: what sn_train_loop trains ----------------------------------------------------
#define SN_STAGE_MAX_TERMS 3
#define SN_STAGE_MAX_TOWERS 2

typedef struct sn_stage_s {
  int number;            // 0, 1, 2: in checkpoints, log lines and metrics records
  int grad_accum;        // micro-batches per optimizer step
  int64_t total_steps;
  sn_sampler *sampler;
  // The distinct parameter sets trained (one with shared towers) and their optimizers, in
  // checkpoint order; optimizers[0]'s lr is the one logged.
  int n_models;
  sn_model *models[SN_STAGE_MAX_TOWERS];
  sn_ckpt_optimizer optimizers[SN_STAGE_MAX_TOWERS];
  // The towers saved under RUN/final/<name>; a checkpoint holds the first n_ckpt_towers (shared
  // towers are saved as both query_tower and doc_tower, but checkpointed once).
  int n_towers, n_ckpt_towers;
  sn_ckpt_tower towers[SN_STAGE_MAX_TOWERS];
  // The loss is the sum of n_terms terms; with more than one, each is logged by name.
  int n_terms;
  const char *term_names[SN_STAGE_MAX_TERMS];
  // One micro-batch: forward, loss, backward, accumulating into the models' gradients. Adds this
  // rank's share of each loss term (already divided by the global batch, not by grad_accum: the
  // loop scales gradients and terms by 1/grad_accum) into terms; returns the batch's tokens.
  // last_micro: the step's last micro-batch, before whose backward the overlapped all-reduce is armed.
  int64_t (*micro_step)(void *ctx, const sn_batch *b, int last_micro, double *terms);
  // Optional: called before each step's micro-batches with the steps done so far (stage 1's
  // mining rounds swap the training data here, and s->sampler with it).
  void (*before_step)(void *ctx, struct sn_stage_s *s, int64_t steps_done);
  void *ctx;
  // The final save into RUN/final when it is not the towers' (stage 0 writes a causal LM);
  // NULL: each tower as an embedding model with its card.
  void (*save_final)(void *ctx, const char *final_dir);
  void *save_final_ctx;
} sn_stage;

// ---- stage 1's mining rounds (train_mine.c) --------------------------------------------------
// With stage1.mine.every_steps = S > 0 (or .rounds = R: S = total / (R + 1), R rounds), round r (r = 1, 2, ...) is mined before step r*S + 1 by the
// towers of step r*S and written to RUN/mined/round_<r>.jsonl; from then on the training data is
// that file's lines (the same examples in the same order, with the mined negatives), the sampler
// continuing from its cursor. A checkpoint of step P trains on round (P - 1) / S, so a resume
// reloads that file and reproduces the uninterrupted run.
typedef struct {
  int on;                  // stage1.mine.every_steps or .rounds is set
  int every;               // S (with .rounds: set by sn_stage1_mining_space once the steps are known)
  int max_rounds;          // .rounds, or 0: no cap
  sn_beir_records corpus;  // stage1.mine.corpus, or the original training documents
  sn_mine_opts opts;       // the seed is set per round
} sn_stage1_mining;

void sn_stage1_mining_init(const sn_trainer *t, sn_stage1_mining *m);
// With stage1.mine.rounds = R: S = max(1, total_steps / (R + 1)), at most R rounds.
void sn_stage1_mining_space(sn_stage1_mining *m, int64_t total_steps);
void sn_stage1_mining_free(sn_stage1_mining *m);
// The round whose data trains step steps_done + 1 (0: the configured data).
int sn_stage1_round_in_use(const sn_stage1_mining *m, int64_t steps_done);
// Whether round `round` is mined before step steps_done + 1 (steps_done a positive multiple of S).
int sn_stage1_round_due(const sn_stage1_mining *m, int64_t steps_done, int *round);
// Replaces t->examples by round `round`'s file (exits 2 when it is missing or unreadable).
void sn_stage1_load_round(sn_trainer *t, int round);
// Mines round `round` with the towers (every rank searches a slice of the corpus, rank 0 writes the
// file, the others wait for it), then loads it.
void sn_stage1_mine_round(sn_trainer *t, const sn_stage1_mining *m, int round, sn_model *query, sn_model *doc,
                          const sn_tokenizer *tok);

// Trains a set-up stage to its total steps (after restoring the resume checkpoint when resuming),
// then saves its final towers. Returns 0 when the stage finished, -1 when it stopped early (a
// signal or --stop-after) after writing a checkpoint.
int sn_train_loop(sn_trainer *t, sn_stage *s, int resuming);

// RUN/final/<this>: stage 0's causal LM (and its checkpoint folder's name for the model).
#define SN_STAGE0_FINAL_NAME "lm"

// The stages: set up, sn_train_loop, free. Return 0 when finished, -1 when stopped early.
// Stage 0 (pretraining) also evaluates stage0.eval_data's perplexity when it finishes.
int sn_train_stage0(sn_trainer *t);
int sn_train_stage1(sn_trainer *t);
int sn_train_stage2(sn_trainer *t);
