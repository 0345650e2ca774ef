// Schema-driven run config: one table row per key gives its type, place in sn_run_config, valid
// range, default and help, so a new key is one row. Defaults, parsing, --set overrides, validation,
// the resolved dump and --print-schema (the key table of docs/USAGE.md) all walk the table.
#define _GNU_SOURCE
#include "run_config.h"

#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "common.h"

typedef enum {
  FIELD_INT,
  FIELD_U64,
  FIELD_FLOAT,
  FIELD_DOUBLE,
  FIELD_BOOL,
  FIELD_STRING,      // free text
  FIELD_PATH,        // file path, resolved against the config file's folder
  FIELD_MODEL_DESC,  // path of a JSON description, or an inline JSON object
  FIELD_CHOICE,      // one of `choices` ("a|b|c")
  FIELD_PATH_LIST,   // data.train, stage0.data: a path or a list of paths
  FIELD_NAME_LIST,   // names: a comma-separated string or a list of strings, kept comma-joined
} field_type;

// What a path key names: checked when the path exists (a missing one is the loader's to report).
typedef enum { PATH_ANY, PATH_FILE, PATH_DIR } path_kind;

typedef struct {
  const char *key;       // dotted path
  field_type type;
  size_t offset;         // into sn_run_config
  size_t size;           // bytes of string fields
  double min, max;       // numeric range (inclusive)
  const char *choices;   // FIELD_CHOICE
  double def_num;        // default of numeric and bool fields (floats get (float)def_num)
  const char *def_str;   // default of string fields; NULL = ""
  const char *help;
  path_kind kind;        // path fields: what the path must name when it exists
} field_spec;

#define OFF(member) offsetof(sn_run_config, member)
#define SZ(member) sizeof(((sn_run_config *)0)->member)
#define NUM(key, type, member, lo, hi, def, help) {key, type, OFF(member), 0, lo, hi, NULL, def, NULL, help, PATH_ANY}
#define STR(key, type, member, def, help) {key, type, OFF(member), SZ(member), 0, 0, NULL, 0, def, help, PATH_ANY}
#define PATH(key, type, member, kind, help) {key, type, OFF(member), SZ(member), 0, 0, NULL, 0, NULL, help, kind}
#define CHOICE(key, member, choices, def, help) \
  {key, FIELD_CHOICE, OFF(member), SZ(member), 0, 0, choices, 0, def, help, PATH_ANY}
#define BIG_INT 1e9

// What the one training loop reads of every stage: accumulation and length.
#define LOOP_FIELDS(stage, prefix)                                                                           \
  NUM(prefix ".grad_accum", FIELD_INT, stage.grad_accum, 1, 1 << 16, 1, "micro-batches per step"),           \
  NUM(prefix ".steps", FIELD_INT, stage.steps, 0, BIG_INT, 0, "0 = from epochs"),                            \
  NUM(prefix ".epochs", FIELD_FLOAT, stage.epochs, 0, 1e6, 1, "used when steps = 0")

#define OPTIM_FIELDS(stage, prefix, peak)                                                                 \
  NUM(prefix ".lr", FIELD_FLOAT, stage.optim.lr, 0, 10, peak, "peak learning rate"),                      \
  NUM(prefix ".min_lr_ratio", FIELD_FLOAT, stage.optim.min_lr_ratio, 0, 1, 0.1, "final lr / peak"),       \
  NUM(prefix ".weight_decay", FIELD_FLOAT, stage.optim.weight_decay, 0, 10, 0.01, "AdamW decoupled"),     \
  NUM(prefix ".beta1", FIELD_FLOAT, stage.optim.beta1, 0, 0.999999, 0.9, "AdamW beta1"),                  \
  NUM(prefix ".beta2", FIELD_FLOAT, stage.optim.beta2, 0, 0.999999999, 0.999, "AdamW beta2"),             \
  NUM(prefix ".eps", FIELD_FLOAT, stage.optim.eps, 1e-30, 1, 1e-8, "AdamW epsilon"),                      \
  NUM(prefix ".warmup_steps", FIELD_INT, stage.optim.warmup_steps, 0, BIG_INT, 10, "linear warm-up"),     \
  CHOICE(prefix ".schedule", stage.optim.schedule, "cosine|linear|constant", "cosine",                    \
         "decay after warm-up"),                                                                          \
  NUM(prefix ".clip_grad_norm", FIELD_FLOAT, stage.optim.clip_grad_norm, 0, 1e9, 1, "0 = off"),            \
  CHOICE(prefix ".state_dtype", stage.optim.state_dtype, "fp32|bf16", "fp32",                             \
         "fp32 master and moments; bf16: half the bytes, stochastic rounding")

static const field_spec SCHEMA[] = {
    {"run_dir", FIELD_PATH, OFF(run_dir), SZ(run_dir), 0, 0, NULL, 0, "runs/default", "output folder of the run",
     PATH_DIR},
    CHOICE("device", device, "cpu|cuda", "cpu", "backend"),
    NUM("seed", FIELD_U64, seed, 0, 0, 1234, "seed of every random choice"),
    NUM("threads", FIELD_INT, threads, 0, 4096, 0, "CPU threads; 0 = all cores"),
    NUM("comm_timeout_s", FIELD_DOUBLE, comm_timeout_s, 1, 1e6, 600, "collective timeout"),
    {"data.train", FIELD_PATH_LIST, OFF(data.train), SZ(data.train[0]), 0, 0, NULL, 0, NULL,
     "training JSONL files", PATH_FILE},
    PATH("data.cache_dir", FIELD_PATH, data.cache_dir, PATH_DIR, "token shard cache; empty = RUN/cache"),
    NUM("data.skip_bad_lines", FIELD_BOOL, data.skip_bad_lines, 0, 1, 0, "skip and count bad lines"),
    NUM("data.max_line_bytes", FIELD_INT, data.max_line_bytes, 64, 1 << 30, 1 << 20, "longest JSONL line"),
    STR("data.query_prompt", FIELD_STRING, data.query_prompt, "Query: {text}", "template with {text}"),
    STR("data.doc_prompt", FIELD_STRING, data.doc_prompt, "Title: {title}\nText: {text}",
        "template with {title} and {text}"),
    NUM("data.max_query_len", FIELD_INT, data.max_query_len, 2, 1 << 20, 32, "tokens"),
    NUM("data.max_doc_len", FIELD_INT, data.max_doc_len, 2, 1 << 20, 128, "tokens"),
    NUM("data.allow_random_negatives", FIELD_BOOL, data.allow_random_negatives, 0, 1, 1,
        "examples without negatives borrow other documents"),
    PATH("stage0.model", FIELD_PATH, stage0.model, PATH_DIR,
         "Hugging Face folder to continue pretraining (sn_train --stage 0 only)"),
    PATH("stage0.model_desc", FIELD_MODEL_DESC, stage0.model_desc, PATH_FILE, "fresh model description"),
    PATH("stage0.tokenizer", FIELD_PATH, stage0.tokenizer, PATH_ANY, "tokenizer file or folder"),
    {"stage0.data", FIELD_PATH_LIST, OFF(stage0.data), SZ(stage0.data[0]), 0, 0, NULL, 0, NULL,
     "pretraining text: JSONL files of {\"text\": ...} lines, or plain text files (one document each)", PATH_FILE},
    PATH("stage0.eval_data", FIELD_PATH, stage0.eval_data, PATH_FILE,
         "held-out text (same formats): its perplexity after training, in RUN/eval/stage0.json; empty = none"),
    NUM("stage0.seq_len", FIELD_INT, stage0.seq_len, 2, 1 << 20, 512, "tokens per packed window"),
    NUM("stage0.batch_seqs", FIELD_INT, stage0.batch_seqs, 1, BIG_INT, 8, "global batch, in windows"),
    CHOICE("stage0.recompute", stage0.recompute, "none|layer", "none",
           "layer: keep block inputs only, re-run each block in backward"),
    LOOP_FIELDS(stage0, "stage0"),
    OPTIM_FIELDS(stage0, "stage0.optim", 3e-4),
    PATH("stage1.model", FIELD_PATH, stage1.model, PATH_DIR, "Hugging Face folder of the LLM"),
    PATH("stage1.model_desc", FIELD_MODEL_DESC, stage1.model_desc, PATH_FILE, "fresh model description"),
    PATH("stage1.tokenizer", FIELD_PATH, stage1.tokenizer, PATH_ANY, "tokenizer file or folder"),
    NUM("stage1.shared_towers", FIELD_BOOL, stage1.shared_towers, 0, 1, 0, "one parameter set"),
    CHOICE("stage1.pooling", stage1.pooling, "last|mean|cls", "last", "embedding pooling"),
    NUM("stage1.temperature", FIELD_FLOAT, stage1.temperature, 1e-4, 100, 0.05, "InfoNCE tau"),
    NUM("stage1.symmetric", FIELD_BOOL, stage1.symmetric, 0, 1, 0, "add document->query term"),
    NUM("stage1.kd_weight", FIELD_FLOAT, stage1.kd_weight, 0, 1e6, 0,
        "> 0: add kd_weight x KL(teacher || student) over each query's positive and hard negatives, "
        "teacher = the data's pos_scores/neg_scores (FlagEmbedding's kl_div); 0 = off"),
    NUM("stage1.kd_temperature", FIELD_FLOAT, stage1.kd_temperature, 1e-4, 100, 1,
        "softmax temperature of the teacher scores (the student's is stage1.temperature)"),
    NUM("stage1.batch_queries", FIELD_INT, stage1.batch_queries, 1, BIG_INT, 32, "global batch"),
    NUM("stage1.max_tokens_per_rank", FIELD_INT, stage1.max_tokens_per_rank, 0, BIG_INT, 0,
        "token budget per rank batch; 0 = fixed count"),
    NUM("stage1.negatives_per_query", FIELD_INT, stage1.negatives_per_query, 0, 1024, 1, "hard negatives"),
    NUM("stage1.cross_device_negatives", FIELD_BOOL, stage1.cross_device_negatives, 0, 1, 1, "gather docs"),
    NUM("stage1.grad_cache_chunk", FIELD_INT, stage1.grad_cache_chunk, 0, BIG_INT, 0, "0 = direct"),
    CHOICE("stage1.recompute", stage1.recompute, "none|layer", "none",
           "layer: keep block inputs only, re-run each block in backward"),
    LOOP_FIELDS(stage1, "stage1"),
    OPTIM_FIELDS(stage1, "stage1.optim", 1e-5),
    NUM("stage1.lora.rank", FIELD_INT, stage1.lora.rank, 0, 65536, 0,
        "LoRA rank r: two adapters over one frozen base; 0 = full fine-tune"),
    NUM("stage1.lora.alpha", FIELD_FLOAT, stage1.lora.alpha, 1e-6, 1e6, 16, "update scale alpha / r"),
    NUM("stage1.lora.dropout", FIELD_FLOAT, stage1.lora.dropout, 0, 0.99, 0, "peft lora_dropout on each adapter's input"),
    STR("stage1.lora.targets", FIELD_NAME_LIST, stage1.lora.targets, SN_LORA_ALL_TARGETS,
        "adapted linears, a list or comma string of " SN_LORA_ALL_TARGETS),
    NUM("stage1.lora.shared", FIELD_BOOL, stage1.lora.shared, 0, 1, 0, "one adapter for both towers"),
    NUM("stage1.mine.every_steps", FIELD_INT, stage1.mine.every_steps, 0, BIG_INT, 0,
        "> 0: after every N steps the current towers mine new negatives for the training data; 0 = off"),
    NUM("stage1.mine.rounds", FIELD_INT, stage1.mine.rounds, 0, BIG_INT, 0,
        "> 0: this many mining rounds, evenly spaced (every total_steps / (rounds + 1) steps); 0 = off"),
    PATH("stage1.mine.corpus", FIELD_PATH, stage1.mine.corpus, PATH_FILE,
         "BEIR corpus.jsonl mined from; empty = the training data's own documents"),
    NUM("stage1.mine.range_lo", FIELD_INT, stage1.mine.range_lo, 0, BIG_INT, 10,
        "first rank (0-based, positives removed) negatives are drawn from"),
    NUM("stage1.mine.range_hi", FIELD_INT, stage1.mine.range_hi, 1, BIG_INT, 100, "end of the ranks (excluded)"),
    NUM("stage1.mine.negatives", FIELD_INT, stage1.mine.negatives, 1, 1024, 7, "negatives mined per example"),
    CHOICE("stage1.mine.margin_kind", stage1.mine.margin_kind, "none|absolute|relative", "none",
           "absolute: keep scores <= pos - margin; relative: <= pos x (1 - margin)"),
    NUM("stage1.mine.margin", FIELD_FLOAT, stage1.mine.margin, -1e6, 1e6, 0, "the margin of margin_kind"),
    PATH("stage2.student", FIELD_PATH, stage2.student, PATH_DIR, "Hugging Face folder of the student"),
    PATH("stage2.student_desc", FIELD_MODEL_DESC, stage2.student_desc, PATH_FILE, "fresh student description"),
    NUM("stage2.student_from_teacher", FIELD_INT, stage2.student_from_teacher, 0, 1024, 0,
        "student = the stage-1 query tower's first N blocks (and its tokenizer); 0 = off"),
    PATH("stage2.tokenizer", FIELD_PATH, stage2.tokenizer, PATH_ANY, "the student's tokenizer"),
    CHOICE("stage2.pooling", stage2.pooling, "last|mean|cls", "cls", "student pooling"),
    NUM("stage2.alpha", FIELD_FLOAT, stage2.alpha, 0, 1e6, 1, "MSE weight"),
    NUM("stage2.beta", FIELD_FLOAT, stage2.beta, 0, 1e6, 1, "1-cos weight"),
    NUM("stage2.gamma", FIELD_FLOAT, stage2.gamma, 0, 1e6, 0, "InfoNCE weight"),
    NUM("stage2.temperature", FIELD_FLOAT, stage2.temperature, 1e-4, 100, 0.05, "tau of the gamma term"),
    NUM("stage2.batch_queries", FIELD_INT, stage2.batch_queries, 1, BIG_INT, 64, "global batch"),
    NUM("stage2.negatives_per_query", FIELD_INT, stage2.negatives_per_query, 0, 1024, 1, "gamma term"),
    LOOP_FIELDS(stage2, "stage2"),
    OPTIM_FIELDS(stage2, "stage2.optim", 1e-4),
    CHOICE("stage2.pseudo_queries.from", stage2.pseudo_queries.from, "none|titles|short_texts|both", "none",
           "pseudo-queries from the training documents: titles, first sentences, both"),
    NUM("stage2.pseudo_queries.max", FIELD_INT, stage2.pseudo_queries.max, 0, BIG_INT, 0,
        "most pseudo-queries kept; 0 = all"),
    NUM("stage2.pseudo_queries.per_batch", FIELD_INT, stage2.pseudo_queries.per_batch, 1, BIG_INT, 64,
        "pseudo-queries added to each global batch"),
    NUM("stage2.pseudo_queries.words", FIELD_INT, stage2.pseudo_queries.words, 1, 1024, 16,
        "a short text: the first sentence, at most this many words"),
    NUM("stage2.pseudo_queries.weight", FIELD_FLOAT, stage2.pseudo_queries.weight, 0, 1e6, 1,
        "weight of their MSE and 1-cos terms"),
    NUM("train.skip_nonfinite", FIELD_BOOL, train.skip_nonfinite, 0, 1, 0,
        "skip and count steps whose loss or gradient norm is NaN/inf; false = stop the run"),
    NUM("checkpoint.every", FIELD_INT, checkpoint.every, 0, BIG_INT, 0, "0 = end of stage only"),
    NUM("checkpoint.keep", FIELD_INT, checkpoint.keep, 1, 1000, 2, "complete checkpoints kept"),
    PATH("eval.data", FIELD_PATH, eval.data, PATH_DIR, "BEIR folder; empty = no evaluation"),
    STR("eval.split", FIELD_STRING, eval.split, "test", "qrels split"),
    NUM("eval.batch", FIELD_INT, eval.batch, 1, 1 << 20, 64, "sequences per encode batch"),
    NUM("eval.bm25", FIELD_BOOL, eval.bm25, 0, 1, 0, "also score BM25 on eval.data (a row in the summary)"),
    NUM("log.every", FIELD_INT, log.every, 1, BIG_INT, 10, "steps per log line (not a terminal)"),
    CHOICE("export.dtype", export.dtype, "source|f32|bf16", "source",
           "weights of the final towers (RUN/final/*); source = as trained: bf16 on CUDA, f32 on the CPU"),
    NUM("dist.zero", FIELD_INT, dist.zero, 0, 2, 0,
        "ZeRO stage: 0 replicated, 1 optimizer state sharded, 2 gradients too"),
    NUM("dist.zero1", FIELD_BOOL, dist.zero1, 0, 1, 0, "alias of dist.zero = 1"),
    NUM("dist.overlap", FIELD_BOOL, dist.overlap, 0, 1, 1, "all-reduce gradients during backward"),
    NUM("dist.bucket_mb", FIELD_FLOAT, dist.bucket_mb, 0.001, 1e4, 25, "MB per overlapped all-reduce"),
    NUM("dist.check_replicas_every", FIELD_INT, dist.check_replicas_every, 0, BIG_INT, 0,
        "steps between weight checksums across ranks (0 = never)"),
};

void sn_run_config_defaults(sn_run_config *c) {
  memset(c, 0, sizeof *c);  // data.train: no files
  for (size_t i = 0; i < SN_ARRAY_LEN(SCHEMA); i++) {
    const field_spec *f = &SCHEMA[i];
    void *dst = (char *)c + f->offset;
    switch (f->type) {
      case FIELD_INT:
      case FIELD_BOOL: *(int *)dst = (int)f->def_num; break;
      case FIELD_U64: *(uint64_t *)dst = (uint64_t)f->def_num; break;
      case FIELD_FLOAT: *(float *)dst = (float)f->def_num; break;
      case FIELD_DOUBLE: *(double *)dst = f->def_num; break;
      case FIELD_PATH_LIST: break;
      default: snprintf(dst, f->size, "%s", f->def_str ? f->def_str : ""); break;
    }
  }
}

// ---- error reporting ------------------------------------------------------------------------

typedef struct {
  char *buf;
  size_t len;
  const char *source;  // "configs/x.json" or "--set"
} err_sink;

__attribute__((format(printf, 2, 3))) static int fail(err_sink *e, const char *fmt, ...) {
  int n = snprintf(e->buf, e->len, "%s: ", e->source);
  if (n < 0 || (size_t)n >= e->len) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->buf + n, e->len - (size_t)n, fmt, ap);
  va_end(ap);
  return -1;
}

// ---- key lookup and suggestions -------------------------------------------------------------

static const field_spec *find_field(const char *key) {
  for (size_t i = 0; i < SN_ARRAY_LEN(SCHEMA); i++)
    if (strcmp(SCHEMA[i].key, key) == 0) return &SCHEMA[i];
  return NULL;
}

// True when `prefix` names an object of the schema ("stage1", "stage1.optim").
static int is_section(const char *prefix) {
  size_t n = strlen(prefix);
  for (size_t i = 0; i < SN_ARRAY_LEN(SCHEMA); i++)
    if (strncmp(SCHEMA[i].key, prefix, n) == 0 && SCHEMA[i].key[n] == '.') return 1;
  return 0;
}

static size_t edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  size_t *row = callocCheck(lb + 1, sizeof *row);
  for (size_t j = 0; j <= lb; j++) row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t cost = (tolower((unsigned char)a[i - 1]) == tolower((unsigned char)b[j - 1])) ? 0 : 1;
      size_t best = SN_MIN(row[j] + 1, row[j - 1] + 1);
      row[j] = SN_MIN(best, diag + cost);
      diag = up;
    }
  }
  size_t d = row[lb];
  free(row);
  return d;
}

// The valid key nearest to an unknown one: compared both as full dotted paths and by last
// component, so "stage1.temprature" and "temprature" both find "stage1.temperature".
static const char *nearest_key(const char *key) {
  const char *best = NULL;
  size_t best_d = (size_t)-1;
  const char *leaf = strrchr(key, '.');
  leaf = leaf ? leaf + 1 : key;
  for (size_t i = 0; i < SN_ARRAY_LEN(SCHEMA); i++) {
    const char *cand = SCHEMA[i].key;
    const char *cand_leaf = strrchr(cand, '.');
    cand_leaf = cand_leaf ? cand_leaf + 1 : cand;
    size_t d = SN_MIN(edit_distance(key, cand), edit_distance(leaf, cand_leaf) + 1);
    if (d < best_d) {
      best_d = d;
      best = cand;
    }
  }
  // A suggestion farther than half the key's length is noise.
  return (best && best_d <= strlen(leaf) / 2 + 1) ? best : NULL;
}

static int unknown_key(err_sink *e, const char *key) {
  const char *near = nearest_key(key);
  if (near) return fail(e, "unknown key '%s' (did you mean '%s'?)", key, near);
  return fail(e, "unknown key '%s'", key);
}

// ---- setting one field from a JSON value ----------------------------------------------------

// A path value relative to the config file's folder; one that does not fit dst is an error, never
// cut (a cut path names another file).
static int resolve_path(err_sink *e, const field_spec *f, char *dst, size_t size, const char *value,
                        const char *base_dir) {
  int n;
  if (value[0] == '\0' || value[0] == '/' || !base_dir || strcmp(base_dir, ".") == 0)
    n = snprintf(dst, size, "%s", value);
  else
    n = snprintf(dst, size, "%s/%s", base_dir, value);
  if (n < 0 || (size_t)n >= size)
    return fail(e, "'%s' is too long (%d bytes as a path; at most %zu)", f->key, n, size - 1);
  return 0;
}

static int set_string(err_sink *e, const field_spec *f, char *dst, const char *s) {
  if (strlen(s) >= f->size)
    return fail(e, "'%s' is too long (%zu bytes; at most %zu)", f->key, strlen(s), f->size - 1);
  snprintf(dst, f->size, "%s", s);
  return 0;
}

static int set_choice(err_sink *e, const field_spec *f, char *dst, const char *s) {
  const char *p = f->choices;
  size_t n = strlen(s);
  while (p && *p) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && strncmp(p, s, n) == 0) return set_string(e, f, dst, s);
    p = bar ? bar + 1 : NULL;
  }
  return fail(e, "'%s' must be one of %s, got \"%s\"", f->key, f->choices, s);
}

static int set_number(err_sink *e, const field_spec *f, void *dst, const cJSON *v) {
  if (f->type == FIELD_BOOL) {
    if (!cJSON_IsBool(v)) return fail(e, "'%s' must be true or false", f->key);
    *(int *)dst = cJSON_IsTrue(v);
    return 0;
  }
  if (cJSON_IsString(v))  // a --set value that is not wholly a JSON number ("3abc", "0x10", "2 7")
    return fail(e, "'%s' must be a number (%s), got \"%s\"", f->key, f->help, v->valuestring);
  if (!cJSON_IsNumber(v)) return fail(e, "'%s' must be a number (%s)", f->key, f->help);
  double x = v->valuedouble;
  if (!isfinite(x)) return fail(e, "'%s' must be finite", f->key);
  int integral = (f->type == FIELD_INT || f->type == FIELD_U64);
  if (integral && x != floor(x)) return fail(e, "'%s' must be an integer, got %g", f->key, x);
  if (f->type == FIELD_U64) {
    if (x < 0 || x > 9007199254740992.0)
      return fail(e, "'%s' must be an integer in [0, 2^53], got %g", f->key, x);
    *(uint64_t *)dst = (uint64_t)x;
    return 0;
  }
  if (x < f->min || x > f->max)
    return fail(e, "'%s' must be in [%g, %g] (%s), got %g", f->key, f->min, f->max, f->help, x);
  if (f->type == FIELD_INT) *(int *)dst = (int)x;
  else if (f->type == FIELD_FLOAT) *(float *)dst = (float)x;
  else *(double *)dst = x;
  return 0;
}

// A path-list key's paths (SN_CFG_MAX_TRAIN_FILES of SN_CFG_PATH_MAX) and their count.
typedef char cfg_path_array[SN_CFG_MAX_TRAIN_FILES][SN_CFG_PATH_MAX];
static cfg_path_array *path_list(const sn_run_config *c, const field_spec *f) {
  return (cfg_path_array *)((char *)c + f->offset);
}
static int *path_list_count(const sn_run_config *c, const field_spec *f) {
  return (int *)(f->offset == OFF(stage0.data) ? &c->stage0.n_data : &c->data.n_train);
}

static int set_path_list(err_sink *e, const field_spec *f, sn_run_config *c, const cJSON *v,
                         const char *base_dir) {
  cfg_path_array *paths = path_list(c, f);
  if (cJSON_IsString(v)) {
    *path_list_count(c, f) = 1;
    return resolve_path(e, f, (*paths)[0], f->size, v->valuestring, base_dir);
  }
  if (!cJSON_IsArray(v)) return fail(e, "'%s' must be a path or a list of paths", f->key);
  int n = cJSON_GetArraySize(v);
  if (n > SN_CFG_MAX_TRAIN_FILES)
    return fail(e, "'%s' has %d files; at most %d", f->key, n, SN_CFG_MAX_TRAIN_FILES);
  int i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, v) {
    if (!cJSON_IsString(item)) return fail(e, "'%s'[%d] must be a string path", f->key, i);
    if (resolve_path(e, f, (*paths)[i], f->size, item->valuestring, base_dir) != 0) return -1;
    i++;
  }
  *path_list_count(c, f) = n;
  return 0;
}

// A list of names joined by commas, or a comma string as given.
static int set_name_list(err_sink *e, const field_spec *f, char *dst, const cJSON *v) {
  if (cJSON_IsString(v)) return set_string(e, f, dst, v->valuestring);
  if (!cJSON_IsArray(v)) return fail(e, "'%s' must be a list of names or a comma-separated string", f->key);
  char joined[SN_CFG_NAMES_MAX] = "";
  int i = 0;
  const cJSON *item;
  cJSON_ArrayForEach(item, v) {
    if (!cJSON_IsString(item)) return fail(e, "'%s'[%d] must be a string", f->key, i);
    size_t used = strlen(joined);
    int n = snprintf(joined + used, sizeof joined - used, "%s%s", i ? "," : "", item->valuestring);
    if (n < 0 || (size_t)n >= sizeof joined - used) return fail(e, "'%s' is too long", f->key);
    i++;
  }
  return set_string(e, f, dst, joined);
}

static int set_field(err_sink *e, sn_run_config *c, const field_spec *f, const cJSON *v,
                     const char *base_dir) {
  void *dst = (char *)c + f->offset;
  switch (f->type) {
    case FIELD_INT:
    case FIELD_U64:
    case FIELD_FLOAT:
    case FIELD_DOUBLE:
    case FIELD_BOOL:
      return set_number(e, f, dst, v);
    case FIELD_PATH_LIST:
      return set_path_list(e, f, c, v, base_dir);
    case FIELD_NAME_LIST:
      return set_name_list(e, f, dst, v);
    case FIELD_MODEL_DESC:
      if (cJSON_IsObject(v)) {
        char *text = cJSON_PrintUnformatted(v);
        int rc = set_string(e, f, dst, text);
        free(text);
        return rc;
      }
      if (cJSON_IsNull(v)) return set_string(e, f, dst, "");
      if (!cJSON_IsString(v)) return fail(e, "'%s' must be a path or an object", f->key);
      return resolve_path(e, f, dst, f->size, v->valuestring, base_dir);
    case FIELD_PATH:
    case FIELD_STRING:
    case FIELD_CHOICE:
      if (cJSON_IsNull(v) && f->type != FIELD_CHOICE) return set_string(e, f, dst, "");
      if (!cJSON_IsString(v)) return fail(e, "'%s' must be a string (%s)", f->key, f->help);
      if (f->type == FIELD_CHOICE) return set_choice(e, f, dst, v->valuestring);
      if (f->type == FIELD_STRING) return set_string(e, f, dst, v->valuestring);
      return resolve_path(e, f, dst, f->size, v->valuestring, base_dir);
  }
  return fail(e, "'%s': internal error: unknown field type", f->key);
}

// Walks one JSON object, setting leaves and descending into sections.
static int apply_object(err_sink *e, sn_run_config *c, const cJSON *obj, const char *prefix,
                        const char *base_dir) {
  const cJSON *item;
  cJSON_ArrayForEach(item, obj) {
    char key[256];
    if (!item->string) return fail(e, "an entry of '%s' has no key", prefix[0] ? prefix : "top level");
    int n = snprintf(key, sizeof key, "%s%s%s", prefix, prefix[0] ? "." : "", item->string);
    if (n < 0 || (size_t)n >= sizeof key) return fail(e, "key '%s' is too long", item->string);
    if (key[0] == '_') continue;  // "_comment" keys document a config file
    const field_spec *f = find_field(key);
    if (f) {
      if (set_field(e, c, f, item, base_dir) != 0) return -1;
    } else if (is_section(key)) {
      if (!cJSON_IsObject(item)) return fail(e, "'%s' must be an object", key);
      if (apply_object(e, c, item, key, base_dir) != 0) return -1;
    } else {
      return unknown_key(e, key);
    }
  }
  return 0;
}

// ---- NUL characters in JSON strings ---------------------------------------------------------

// cJSON decodes "\u0000" into a NUL that ends its C string, so "a\u0000b" would silently become
// "a". The text is scanned for that escape before it is applied; the dotted key path of the string
// holding it goes into the message.
#define NUL_SCAN_MAX_DEPTH 32  // sections nest 3 deep; deeper names are left out of the message
#define NUL_SCAN_KEY_MAX 64

typedef struct {
  int depth;
  int is_object[NUL_SCAN_MAX_DEPTH];
  char key[NUL_SCAN_MAX_DEPTH][NUL_SCAN_KEY_MAX];  // the key being read at each object level
  int expect_key[NUL_SCAN_MAX_DEPTH];
} nul_scan;

static void nul_scan_where(const nul_scan *st, int in_key, char *where, size_t wlen) {
  where[0] = '\0';
  int last = SN_MIN(st->depth, NUL_SCAN_MAX_DEPTH);
  for (int d = 0; d < last; d++) {
    if (!st->is_object[d] || (d == last - 1 && in_key)) continue;
    size_t used = strlen(where);
    snprintf(where + used, wlen - used, "%s%s", used ? "." : "", st->key[d]);
  }
  if (in_key) {
    size_t used = strlen(where);
    snprintf(where + used, wlen - used, "%s(a key)", used ? "." : "");
  }
  if (!where[0]) snprintf(where, wlen, "(top level)");
}

// Returns 1 with the key path in `where` when valid JSON text has a string with "\u0000".
static int find_nul_escape(const char *json, char *where, size_t wlen) {
  nul_scan st = {0};
  for (const char *p = json; *p; p++) {
    int top = st.depth - 1, tracked = top >= 0 && top < NUL_SCAN_MAX_DEPTH;
    if (*p == '{' || *p == '[') {
      if (st.depth < NUL_SCAN_MAX_DEPTH) {
        st.is_object[st.depth] = *p == '{';
        st.expect_key[st.depth] = 1;
        st.key[st.depth][0] = '\0';
      }
      st.depth++;
    } else if (*p == '}' || *p == ']') {
      st.depth--;
    } else if (*p == ',' && tracked) {
      st.expect_key[top] = 1;
    } else if (*p == ':' && tracked) {
      st.expect_key[top] = 0;
    } else if (*p == '"') {
      const int in_key = tracked && st.is_object[top] && st.expect_key[top];
      const char *start = ++p;
      for (; *p && *p != '"'; p++) {
        if (*p != '\\') continue;
        if (strncmp(p, "\\u0000", 6) == 0) {
          nul_scan_where(&st, in_key, where, wlen);
          return 1;
        }
        p++;  // the escaped character (a quote or backslash does not end the string)
      }
      if (in_key) snprintf(st.key[top], NUL_SCAN_KEY_MAX, "%.*s", (int)(p - start), start);
      if (!*p) return 0;
    }
  }
  return 0;
}

static int apply_override(err_sink *e, sn_run_config *c, const char *assignment) {
  const char *eq = strchr(assignment, '=');
  if (!eq || eq == assignment)
    return fail(e, "'%s' is not of the form key=value (e.g. stage1.temperature=0.02)", assignment);
  char key[256];
  size_t klen = (size_t)(eq - assignment);
  if (klen >= sizeof key) return fail(e, "key in '%s' is too long", assignment);
  memcpy(key, assignment, klen);
  key[klen] = '\0';
  const field_spec *f = find_field(key);
  if (!f) {
    if (is_section(key)) return fail(e, "'%s' is a section; set one of its keys", key);
    return unknown_key(e, key);
  }
  // The value is JSON when the whole of it parses as JSON (numbers, true, [..], {..}), else a
  // plain string: "3abc" is the string "3abc" (which a number key refuses), never the number 3.
  cJSON *v = cJSON_ParseWithOpts(eq + 1, NULL, 1);
  char where[256];
  if (v && find_nul_escape(eq + 1, where, sizeof where)) {
    cJSON_Delete(v);
    return fail(e, "'%s': a string holds \\u0000 (a NUL character), which no key accepts", key);
  }
  if (!v) v = cJSON_CreateString(eq + 1);
  int rc = set_field(e, c, f, v, ".");
  cJSON_Delete(v);
  return rc;
}

// Aliases resolved to one meaning, so that the resolved config (and its hash) does not depend on
// which spelling a run used: dist.zero1 = true is dist.zero = 1.
static int resolve_aliases(err_sink *e, sn_run_config *c) {
  if (c->dist.zero1 && c->dist.zero == 2)
    return fail(e, "'dist.zero1' is true but 'dist.zero' is 2: dist.zero1 is an alias of dist.zero = 1; give one");
  if (c->dist.zero1) c->dist.zero = 1;
  c->dist.zero1 = c->dist.zero == 1;
  return 0;
}

// Every path key that exists names what its row says: data.train naming a folder is refused here,
// naming the key, not by an mmap error deep in the data loader.
static int check_path_kinds(err_sink *e, const sn_run_config *c) {
  char why[SN_CFG_PATH_MAX + 128];
  for (size_t i = 0; i < SN_ARRAY_LEN(SCHEMA); i++) {
    const field_spec *f = &SCHEMA[i];
    if (f->kind == PATH_ANY) continue;
    const char *value = (const char *)c + f->offset;
    if (f->type == FIELD_MODEL_DESC && value[0] == '{') continue;  // an inline description
    const int n = f->type == FIELD_PATH_LIST ? *path_list_count(c, f) : 1;
    for (int k = 0; k < n; k++) {
      const char *path = f->type == FIELD_PATH_LIST ? (*path_list(c, f))[k] : value;
      if (sn_check_path_kind(f->key, path, f->kind == PATH_DIR, why, sizeof why) != 0) return fail(e, "%s", why);
    }
  }
  return 0;
}

// The model layer counts the tokens of one forward pass in an int, and the trainer sizes its
// batch buffers by sequences x length: every such product of the settings must fit, whatever the
// rank count (a rank's batch is a slice of the global one).
#define SN_CFG_MAX_BATCH_TOKENS ((size_t)INT_MAX)

static int check_tokens(err_sink *e, size_t seqs, const char *seqs_what, size_t len, const char *len_key) {
  size_t tokens;
  if (sn_mul_size_ok(seqs, len, SN_CFG_MAX_BATCH_TOKENS, &tokens) != 0)
    return fail(e, "%s x '%s' (%zu x %zu tokens) is more than %zu tokens in one batch: lower one of them",
                seqs_what, len_key, seqs, len, SN_CFG_MAX_BATCH_TOKENS);
  return 0;
}

static int check_batch_sizes(err_sink *e, const sn_run_config *c) {
  const size_t lq = (size_t)c->data.max_query_len, ld = (size_t)c->data.max_doc_len;
  const size_t docs1 = (size_t)c->stage1.batch_queries * ((size_t)c->stage1.negatives_per_query + 1);
  const size_t docs2 = (size_t)c->stage2.batch_queries * ((size_t)c->stage2.negatives_per_query + 1);
  const size_t pseudo2 = strcmp(c->stage2.pseudo_queries.from, "none") ? (size_t)c->stage2.pseudo_queries.per_batch : 0;
  if (check_tokens(e, (size_t)c->stage0.batch_seqs, "'stage0.batch_seqs'", (size_t)c->stage0.seq_len, "stage0.seq_len") ||
      check_tokens(e, (size_t)c->eval.batch, "'eval.batch'", lq, "data.max_query_len") ||
      check_tokens(e, (size_t)c->eval.batch, "'eval.batch'", ld, "data.max_doc_len") ||
      check_tokens(e, (size_t)c->stage1.batch_queries, "'stage1.batch_queries'", lq, "data.max_query_len") ||
      check_tokens(e, docs1, "'stage1.batch_queries' x ('stage1.negatives_per_query' + 1)", ld, "data.max_doc_len") ||
      check_tokens(e, (size_t)c->stage2.batch_queries + pseudo2,
                   "'stage2.batch_queries' + 'stage2.pseudo_queries.per_batch'", lq, "data.max_query_len") ||
      check_tokens(e, docs2, "'stage2.batch_queries' x ('stage2.negatives_per_query' + 1)", ld, "data.max_doc_len"))
    return -1;
  return 0;
}

// Cross-field checks that a single range cannot express.
static int validate(err_sink *e, const sn_run_config *c) {
  if (check_path_kinds(e, c) != 0 || check_batch_sizes(e, c) != 0) return -1;
  if (c->run_dir[0] == '\0') return fail(e, "'run_dir' must not be empty");
  if (c->stage0.model[0] && c->stage0.model_desc[0])
    return fail(e, "'stage0.model' and 'stage0.model_desc' are exclusive: give one");
  if (c->stage0.steps == 0 && c->stage0.epochs <= 0)
    return fail(e, "'stage0.steps' or 'stage0.epochs' must be positive");
  if (c->stage1.model[0] && c->stage1.model_desc[0])
    return fail(e, "'stage1.model' and 'stage1.model_desc' are exclusive: give one");
  if (c->stage2.student[0] && c->stage2.student_desc[0])
    return fail(e, "'stage2.student' and 'stage2.student_desc' are exclusive: give one");
  if (c->stage2.student_from_teacher > 0 && (c->stage2.student[0] || c->stage2.student_desc[0] || c->stage2.tokenizer[0]))
    return fail(e, "'stage2.student_from_teacher' takes the student and its tokenizer from the teacher: leave "
                   "'stage2.student', 'stage2.student_desc' and 'stage2.tokenizer' empty");
  if (c->stage2.student_from_teacher > 0 && strcmp(c->stage2.pooling, c->stage1.pooling) != 0)
    return fail(e, "'stage2.student_from_teacher': the student pools like the teacher: set 'stage2.pooling' to "
                   "'stage1.pooling' (%s), not %s", c->stage1.pooling, c->stage2.pooling);
  if (c->stage1.steps == 0 && c->stage1.epochs <= 0)
    return fail(e, "'stage1.steps' or 'stage1.epochs' must be positive");
  if (c->stage2.steps == 0 && c->stage2.epochs <= 0)
    return fail(e, "'stage2.steps' or 'stage2.epochs' must be positive");
  if (c->stage2.alpha == 0 && c->stage2.beta == 0 && c->stage2.gamma == 0)
    return fail(e, "'stage2.alpha', 'stage2.beta' and 'stage2.gamma' are all 0: nothing to learn");
  if (!strstr(c->data.query_prompt, "{text}"))
    return fail(e, "'data.query_prompt' must contain {text}");
  if (!strstr(c->data.doc_prompt, "{text}"))
    return fail(e, "'data.doc_prompt' must contain {text}");
  if (c->stage1.mine.every_steps > 0 && c->stage1.mine.rounds > 0)
    return fail(e, "'stage1.mine.every_steps' and 'stage1.mine.rounds' are exclusive: give one");
  if (c->stage1.mine.every_steps > 0 || c->stage1.mine.rounds > 0) {
    if (c->stage1.mine.range_hi <= c->stage1.mine.range_lo)
      return fail(e, "'stage1.mine.range_hi' (%d) must exceed 'stage1.mine.range_lo' (%d)", c->stage1.mine.range_hi,
                  c->stage1.mine.range_lo);
    if (c->stage1.mine.negatives > c->stage1.mine.range_hi - c->stage1.mine.range_lo)
      return fail(e, "'stage1.mine.negatives' (%d) exceeds the %d ranks of 'stage1.mine.range_lo'..'range_hi'",
                  c->stage1.mine.negatives, c->stage1.mine.range_hi - c->stage1.mine.range_lo);
    if (c->stage1.mine.negatives < c->stage1.negatives_per_query)
      return fail(e, "'stage1.mine.negatives' (%d) is below 'stage1.negatives_per_query' (%d)",
                  c->stage1.mine.negatives, c->stage1.negatives_per_query);
    if (!strcmp(c->stage1.mine.margin_kind, "relative") && (c->stage1.mine.margin < 0 || c->stage1.mine.margin >= 1))
      return fail(e, "'stage1.mine.margin' (%g) must be in [0, 1) with margin_kind relative",
                  (double)c->stage1.mine.margin);
    if (c->stage1.kd_weight > 0)
      return fail(e, "'stage1.mine' with 'stage1.kd_weight': mined rounds replace the data's teacher scores; "
                  "use one or the other");
  }
  if (c->stage1.lora.rank > 0) {
    char why[256];
    unsigned mask;
    if (sn_lora_targets_parse(c->stage1.lora.targets, &mask, why, sizeof why) != 0)
      return fail(e, "'stage1.lora.targets': %s", why);
    if (c->stage1.shared_towers)
      return fail(e, "'stage1.shared_towers' with 'stage1.lora': use 'stage1.lora.shared' for one adapter");
  }
  return 0;
}

int sn_run_config_parse(sn_run_config *cfg, const char *json, const char *path,
                        const char *const *overrides, int n_overrides, char *err, size_t errlen) {
  sn_run_config_defaults(cfg);
  err_sink e = {err, errlen, path ? path : "config"};
  if (json) {
    // require_null_terminated: text after the object (a second object, a stray brace) is an
    // error, not ignored
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(json, &end, 1);
    if (!root) {
      const char *at = cJSON_GetErrorPtr();
      int line = 1;
      for (const char *p = json; at && p < at; p++) line += (*p == '\n');
      cJSON *prefix = cJSON_ParseWithOpts(json, &end, 0);  // valid JSON followed by more text?
      cJSON_Delete(prefix);
      if (prefix) return fail(&e, "line %d: text after the JSON object (one object per config file)", line);
      return fail(&e, "line %d: not valid JSON", line);
    }
    if (!cJSON_IsObject(root)) {
      cJSON_Delete(root);
      return fail(&e, "the top level must be a JSON object");
    }
    char where[256];
    if (find_nul_escape(json, where, sizeof where)) {
      cJSON_Delete(root);
      return fail(&e, "'%s': a string holds \\u0000 (a NUL character), which no key accepts", where);
    }
    char *dir_buf = strdupCheck(path ? path : ".");  // dirname() writes into its argument
    const char *base_dir = path ? dirname(dir_buf) : ".";
    int rc = apply_object(&e, cfg, root, "", base_dir);
    free(dir_buf);
    cJSON_Delete(root);
    if (rc != 0) return -1;
  }
  err_sink set_err = {err, errlen, "--set"};
  for (int i = 0; i < n_overrides; i++)
    if (apply_override(&set_err, cfg, overrides[i]) != 0) return -1;
  if (resolve_aliases(&e, cfg) != 0) return -1;
  return validate(&e, cfg);
}

int sn_run_config_load(sn_run_config *cfg, const char *path, const char *const *overrides,
                       int n_overrides, char *err, size_t errlen) {
  if (!path) return sn_run_config_parse(cfg, NULL, NULL, overrides, n_overrides, err, errlen);
  char *text = sn_read_file(path, NULL);
  if (!text) {
    snprintf(err, errlen, "%s: cannot read the config: %s", path, strerror(errno));
    return -1;
  }
  int rc = sn_run_config_parse(cfg, text, path, overrides, n_overrides, err, errlen);
  free(text);
  return rc;
}

// ---- the resolved dump ----------------------------------------------------------------------

// Returns the object for the dotted prefix of `key`, creating sections on the way; *leaf gets the
// last component.
static cJSON *section_for(cJSON *root, const char *key, const char **leaf) {
  cJSON *obj = root;
  const char *start = key;
  for (const char *dot; (dot = strchr(start, '.')) != NULL; start = dot + 1) {
    char name[64];
    snprintf(name, sizeof name, "%.*s", (int)(dot - start), start);
    cJSON *child = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (!child) child = cJSON_AddObjectToObject(obj, name);
    obj = child;
  }
  *leaf = start;
  return obj;
}

char *sn_run_config_to_json(const sn_run_config *c) {
  cJSON *root = cJSON_CreateObject();
  for (size_t i = 0; i < SN_ARRAY_LEN(SCHEMA); i++) {
    const field_spec *f = &SCHEMA[i];
    const char *leaf;
    cJSON *obj = section_for(root, f->key, &leaf);
    const void *src = (const char *)c + f->offset;
    switch (f->type) {
      case FIELD_INT: cJSON_AddNumberToObject(obj, leaf, *(const int *)src); break;
      case FIELD_U64: cJSON_AddNumberToObject(obj, leaf, (double)*(const uint64_t *)src); break;
      case FIELD_FLOAT: cJSON_AddNumberToObject(obj, leaf, *(const float *)src); break;
      case FIELD_DOUBLE: cJSON_AddNumberToObject(obj, leaf, *(const double *)src); break;
      case FIELD_BOOL: cJSON_AddBoolToObject(obj, leaf, *(const int *)src); break;
      case FIELD_PATH_LIST: {
        cJSON *arr = cJSON_AddArrayToObject(obj, leaf);
        for (int k = 0; k < *path_list_count(c, f); k++)
          cJSON_AddItemToArray(arr, cJSON_CreateString((*path_list(c, f))[k]));
        break;
      }
      case FIELD_MODEL_DESC: {
        cJSON *inline_obj = ((const char *)src)[0] == '{' ? cJSON_Parse(src) : NULL;
        if (inline_obj) cJSON_AddItemToObject(obj, leaf, inline_obj);
        else cJSON_AddStringToObject(obj, leaf, src);
        break;
      }
      default: cJSON_AddStringToObject(obj, leaf, src); break;
    }
  }
  char *text = cJSON_Print(root);
  cJSON_Delete(root);
  return text;
}

// A hash of the resolved settings that decide what is computed. Checkpointing and logging
// settings are left out so they can change between a run and its resume.
uint64_t sn_run_config_hash(const sn_run_config *c) {
  sn_run_config copy = *c;
  memset(&copy.checkpoint, 0, sizeof copy.checkpoint);
  memset(&copy.log, 0, sizeof copy.log);
  memset(&copy.eval, 0, sizeof copy.eval);
  copy.comm_timeout_s = 0;
  copy.threads = 0;
  char *text = sn_run_config_to_json(&copy);
  uint64_t h = sn_hash64(text, strlen(text), 0);
  free(text);
  return h;
}

sn_lora_config sn_run_config_lora(const sn_run_config *cfg) {
  sn_lora_config l = {.rank = cfg->stage1.lora.rank, .alpha = cfg->stage1.lora.alpha,
                      .dropout = cfg->stage1.lora.dropout};
  char why[256];
  if (l.rank > 0 && sn_lora_targets_parse(cfg->stage1.lora.targets, &l.targets, why, sizeof why) != 0)
    sn_bad_input("stage1.lora.targets: %s", why);
  return l;
}

// ---- the schema as documentation ------------------------------------------------------------

// A markdown table cell: '|' would end the cell and a newline the row, so both are escaped.
static void md_cell(FILE *out, const char *s) {
  for (; *s; s++) {
    if (*s == '|') fputs("\\|", out);
    else if (*s == '\n') fputs("\\n", out);
    else fputc(*s, out);
  }
}

static const char *type_name(field_type t) {
  switch (t) {
    case FIELD_INT: return "int";
    case FIELD_U64: return "u64";
    case FIELD_FLOAT: return "float";
    case FIELD_DOUBLE: return "double";
    case FIELD_BOOL: return "bool";
    case FIELD_STRING: return "string";
    case FIELD_PATH: return "path";
    case FIELD_MODEL_DESC: return "path or object";
    case FIELD_CHOICE: return "choice";
    case FIELD_PATH_LIST: return "path list";
    case FIELD_NAME_LIST: return "name list";
  }
  return "?";
}

void sn_run_config_print_schema(FILE *out) {
  fprintf(out, "| key | type | default | range/choices | help |\n|---|---|---|---|---|\n");
  for (size_t i = 0; i < SN_ARRAY_LEN(SCHEMA); i++) {
    const field_spec *f = &SCHEMA[i];
    fprintf(out, "| `%s` | %s | ", f->key, type_name(f->type));
    switch (f->type) {  // the default cell, then the range cell (no range: empty)
      case FIELD_BOOL: fputs(f->def_num ? "true |" : "false |", out); break;
      case FIELD_U64: fprintf(out, "%.10g | [0, 2^53]", f->def_num); break;
      case FIELD_INT:
      case FIELD_FLOAT:
      case FIELD_DOUBLE: fprintf(out, "%.10g | [%.10g, %.10g]", f->def_num, f->min, f->max); break;
      case FIELD_PATH_LIST: fputs("[] |", out); break;
      default:
        if (f->def_str && f->def_str[0]) {
          fputc('`', out);
          md_cell(out, f->def_str);
          fputc('`', out);
        } else {
          fputs("\"\"", out);
        }
        fputs(" |", out);
        if (f->choices) {
          fputc(' ', out);
          md_cell(out, f->choices);
        }
        break;
    }
    fputs(" | ", out);
    md_cell(out, f->help);
    fputs(" |\n", out);
  }
}
