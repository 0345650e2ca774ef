// The run configuration of sn_train: a JSON file validated against one schema before any work.
// Unknown keys, wrong types and out-of-range values are errors naming the key (with the nearest
// valid key suggested); `--set a.b=value` overrides any key by its dotted path. Every field has a
// default (in its schema row, host/io/run_config.c), so the resolved config (written into the run
// folder) is complete.
#pragma once
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "lora_config.h"

#define SN_CFG_MAX_TRAIN_FILES 16
#define SN_CFG_PATH_MAX 1024
#define SN_CFG_TEXT_MAX 1024
#define SN_CFG_NAMES_MAX 128

typedef struct {
  float lr;
  float min_lr_ratio;    // final lr = lr * min_lr_ratio
  float weight_decay;    // decoupled; never applied to norms and biases
  float beta1, beta2, eps;
  int warmup_steps;
  char schedule[16];     // "cosine" | "linear" | "constant"
  float clip_grad_norm;  // 0 = off
  char state_dtype[8];   // "fp32": fp32 master and moments | "bf16": bf16 weights as master and
                         // moments, stochastic rounding (host/backend/adamw_math.h)
} sn_cfg_optim;

// Stage 0: causal-LM pretraining (next-token loss over packed raw text), run only by sn_train --stage 0.
typedef struct {
  char model[SN_CFG_PATH_MAX];       // Hugging Face folder to continue pretraining, or "" with model_desc
  char model_desc[SN_CFG_PATH_MAX];  // JSON description file of a fresh model ("" = none)
  char tokenizer[SN_CFG_PATH_MAX];   // "" = the model folder's tokenizer
  int n_data;
  char data[SN_CFG_MAX_TRAIN_FILES][SN_CFG_PATH_MAX];  // JSONL {"text": ...} or plain text files
  char eval_data[SN_CFG_PATH_MAX];   // held-out text (one file, same formats): perplexity at the end
  int seq_len;            // tokens per packed window
  int batch_seqs;         // global batch (all ranks), in windows
  char recompute[8];      // "none" | "layer"
  int grad_accum;         // micro-batches per optimizer step
  int steps;              // optimizer steps; 0 = derive from epochs
  float epochs;
  sn_cfg_optim optim;
} sn_cfg_stage0;

typedef struct {
  char model[SN_CFG_PATH_MAX];  // Hugging Face folder, or "" with model_desc
  char model_desc[SN_CFG_PATH_MAX]; // JSON description file of a fresh model ("" = none)
  char tokenizer[SN_CFG_PATH_MAX];  // "" = the model folder's tokenizer
  int shared_towers;      // one parameter set for queries and documents
  char pooling[8];        // "last" | "mean" | "cls"
  float temperature;
  int symmetric;          // add the document→query term
  float kd_weight;        // > 0: KL term toward the data's pos_scores/neg_scores (teacher scores)
  float kd_temperature;   // the teacher scores' softmax temperature
  int batch_queries;      // global batch (all ranks), in queries
  int max_tokens_per_rank; // > 0: token budget per rank batch (queries + documents), batch_queries a cap
  int negatives_per_query;
  int cross_device_negatives;
  int grad_cache_chunk;   // sequences per chunk in the gradient-cache re-run; 0 = direct backward
  char recompute[8];      // "none" | "layer": activation recomputation in the towers' backward
  int grad_accum;         // micro-batches per optimizer step
  int steps;              // optimizer steps; 0 = derive from epochs
  float epochs;
  sn_cfg_optim optim;
  struct {
    int rank;             // 0 = full fine-tune; > 0: adapters over one frozen base
    float alpha;          // update scale alpha / rank
    float dropout;        // on each adapter's input, while training
    char targets[SN_CFG_NAMES_MAX];  // "q,k,v,o,gate,up,down" or a subset
    int shared;           // one adapter for both towers
  } lora;
  struct {                // mining rounds (ANCE-style): the towers mine new negatives as they train
    int every_steps;      // 0 = off; else a round after every `every_steps` optimizer steps
    int rounds;           // or: this many rounds, evenly spaced over the stage (0 = off)
    char corpus[SN_CFG_PATH_MAX];  // BEIR corpus.jsonl; "" = the training data's own documents
    int range_lo, range_hi;        // ranks [lo, hi) to draw from (mine.h)
    int negatives;                 // per example
    char margin_kind[12];          // "none" | "absolute" | "relative"
    float margin;
  } mine;
} sn_cfg_stage1;

typedef struct {
  char student[SN_CFG_PATH_MAX];      // Hugging Face folder of the student, or ""
  char student_desc[SN_CFG_PATH_MAX]; // JSON description of a fresh student ("" = none)
  int student_from_teacher;           // > 0: the student is the teacher's first N blocks (0 = off)
  char tokenizer[SN_CFG_PATH_MAX];    // the student's tokenizer ("" = the student folder's)
  char pooling[8];
  float alpha, beta, gamma;           // α·MSE + β·(1−cos) + γ·InfoNCE(student, frozen docs)
  float temperature;                  // for the γ term
  int batch_queries;
  int negatives_per_query;            // for the γ term
  int grad_accum;
  int steps;
  float epochs;
  sn_cfg_optim optim;
  struct {                  // extra distillation texts from the training documents (data.h)
    char from[16];          // "none" | "titles" | "short_texts" | "both"
    int max;                // most pseudo-queries kept; 0 = all
    int per_batch;          // added to each global batch, after its batch_queries real ones
    int words;              // a short text's longest, in words
    float weight;           // of their MSE and 1-cos terms, relative to the real queries'
  } pseudo_queries;
} sn_cfg_stage2;

typedef struct {
  char run_dir[SN_CFG_PATH_MAX];
  char device[8];       // "cpu" | "cuda"
  uint64_t seed;
  int threads;          // OpenMP threads on the CPU backend; 0 = all cores
  double comm_timeout_s;
  struct {
    int n_train;
    char train[SN_CFG_MAX_TRAIN_FILES][SN_CFG_PATH_MAX];
    char cache_dir[SN_CFG_PATH_MAX];  // "" = RUN/cache
    int skip_bad_lines;
    int max_line_bytes;
    char query_prompt[SN_CFG_TEXT_MAX];
    char doc_prompt[SN_CFG_TEXT_MAX];
    int max_query_len, max_doc_len;
    int allow_random_negatives;       // examples without hard negatives borrow other documents
  } data;
  sn_cfg_stage0 stage0;
  sn_cfg_stage1 stage1;
  sn_cfg_stage2 stage2;
  struct {
    int skip_nonfinite;  // a step with a non-finite loss or gradient norm is skipped and counted
                         // (no optimizer update) instead of stopping the run
  } train;
  struct {
    int every;        // steps between checkpoints; 0 = only at the end of each stage
    int keep;         // newest complete checkpoints kept
  } checkpoint;
  struct {
    char data[SN_CFG_PATH_MAX];  // BEIR folder; "" = no evaluation
    char split[32];
    int batch;
    int bm25;         // also score BM25 (bm25.h's defaults) on the eval data: a row beside the towers
  } eval;
  struct {
    int every;        // steps between log lines when not a terminal
  } log;
  struct {
    char dtype[8];    // "source" (the backend's storage: bf16 on CUDA, f32 on the CPU) | "f32" | "bf16"
  } export;
  struct {
    int zero;         // ZeRO stage: 0 replicated, 1 optimizer state sharded, 2 gradients too
    int zero1;        // alias: true means zero = 1 (resolved: zero1 == (zero == 1))
    int overlap;      // start gradient all-reduces during the backward pass (replicated mode)
    float bucket_mb;  // size of those all-reduces
    int check_replicas_every;  // steps between cross-rank weight checksums (0 = never)
  } dist;
} sn_run_config;

// stage1.lora as the model layer takes it (targets parsed; the config was validated).
sn_lora_config sn_run_config_lora(const sn_run_config *cfg);

// Parses and validates a config file, applying `--set key=value` overrides (n_overrides strings of
// the form dotted.key=value; the value is JSON when all of it parses as JSON, else a string). Relative
// paths in the file are resolved against the file's folder. Validation also stats every path that
// exists for its kind (file or folder, per key) and checks that sequences x length of every batch
// fits an int token count. Returns 0, or -1 with a message in err naming the file and key. Never exits.
int sn_run_config_load(sn_run_config *cfg, const char *path, const char *const *overrides,
                       int n_overrides, char *err, size_t errlen);
// Same from JSON text (path used in messages and as the base for relative paths; may be NULL).
int sn_run_config_parse(sn_run_config *cfg, const char *json, const char *path,
                        const char *const *overrides, int n_overrides, char *err, size_t errlen);
// The built-in defaults (no file), each from its key's row of the schema.
void sn_run_config_defaults(sn_run_config *cfg);
// The resolved config as JSON text (every key, defaults filled in). Caller frees.
char *sn_run_config_to_json(const sn_run_config *cfg);
// A stable 64-bit hash of the settings that must match on resume (model, data, batch, seed...).
uint64_t sn_run_config_hash(const sn_run_config *cfg);
// Every key as a markdown table row: | key | type | default | range/choices | help | (after a header
// row). docs/USAGE.md holds this output, checked by tests/cpu/test_usage_keys.sh.
void sn_run_config_print_schema(FILE *out);
