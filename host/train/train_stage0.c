// Stage 0: causal-LM pretraining of a decoder (a fresh model description, or a Hugging Face folder
// for continued pretraining) with the next-token loss over packed raw text: the documents of
// stage0.data tokenized with EOS appended (cached token shards, as every stage's data), concatenated
// and cut into windows of stage0.seq_len tokens (data.h: Pretraining text). The windows go through
// the same sampler as stage 2's queries (epochs, ranks, the resumable cursor), the same loop
// (accumulation, clipping, checkpoints, data parallelism and ZeRO). The vocabulary projection and
// the cross-entropy are one fused, chunked op (ops.h: lm_head_xent), so no (tokens, vocab) logits
// are held. The result, RUN/final/lm, is a Qwen2ForCausalLM / LlamaForCausalLM folder that
// transformers loads and stage1.model takes; stage0.eval_data gets its perplexity in
// RUN/eval/stage0.json.
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <string.h>

#include "cJSON.h"
#include "common.h"
#include "train_internal.h"

// A document longer than this many tokens is cut (the shard format holds any length; the prompt
// layer wants a bound). 2^30 tokens is some 4 GB of text: no real document reaches it.
#define SN_STAGE0_MAX_DOC_TOKENS (1 << 30)
// Seeds of this stage's streams, apart from the other stages' (stage 2 uses seed + 2).
#define SN_STAGE0_SEED_SALT 0x5354414745300000ull  // "STAGE0"

typedef struct {
  sn_trainer *t;
  sn_model *model;
  sn_optimizer *opt;
  sn_acts *acts;
  sn_tokens tok;
  int32_t *targets_host;  // (max_tokens)
  int32_t *targets;       // (max_tokens) backend
  void *dhidden;          // (max_tokens, C) storage
  float *loss;            // (1) backend
  float scale;            // 1 / the predicted tokens of one global micro-batch
} stage0_ctx;

// The next token of each position inside its window; SN_IGNORE_TARGET at each window's last token.
// Returns the number of predicted tokens.
static int64_t window_targets(const int32_t *ids, const int32_t *cu, int n, int32_t *targets) {
  int64_t count = 0;
  for (int w = 0; w < n; w++)
    for (int32_t i = cu[w]; i < cu[w + 1]; i++) {
      targets[i] = i + 1 < cu[w + 1] ? ids[i + 1] : SN_IGNORE_TARGET;
      count += targets[i] >= 0;
    }
  return count;
}

// Forward over n windows, the fused LM-head loss (scaled by scale) into c->loss; with backward,
// the gradients into the model (arming the overlapped all-reduce when arm is set).
static float windows_loss(stage0_ctx *c, const int32_t *ids, const int32_t *cu, int n, float scale, int backward,
                          sn_optimizer *arm) {
  const sn_ops *ops = c->t->ops;
  sn_model *m = c->model;
  sn_tokens_upload(&c->tok, ops, ids, cu, n, m->cfg.vocab, "stage 0 windows");
  const int T = cu[n];
  window_targets(ids, cu, n, c->targets_host);
  ops->upload(c->targets, c->targets_host, (size_t)T * sizeof(int32_t));
  const void *hidden = sn_model_forward(m, c->acts, &c->tok, backward);
  const void *w;
  void *dw;
  if (sn_model_lm_head(m, &w, &dw) != 0) sn_fatal("stage 0: the model has no LM head");
  ops->memset_zero(c->loss, sizeof(float));
  // The head's gradient is complete before the backward pass reports its last region (the
  // embeddings, the final norm, the head) to the gradient exchange.
  ops->lm_head_xent(c->loss, backward ? c->dhidden : NULL, backward ? dw : NULL, hidden, w, c->targets, T,
                    m->cfg.vocab, m->cfg.hidden, scale);
  if (backward) {
    if (arm) sn_optimizer_arm_overlap(arm);
    sn_model_backward(m, c->acts, &c->tok, c->dhidden);
    if (arm) sn_optimizer_flush_overlap(arm);
  }
  float loss = 0;
  ops->download(&loss, c->loss, sizeof loss);
  return loss;
}

static int64_t micro_step(void *ctx, const sn_batch *b, int last_micro, double *terms) {
  stage0_ctx *c = ctx;
  terms[0] += windows_loss(c, b->query_ids, b->query_cu_seqlens, b->n_queries, c->scale, 1,
                           last_micro ? c->opt : NULL);
  return b->n_query_tokens;
}

// The windows of a text file set as a token set (rank 0 of each node builds the shard cache).
static int64_t text_windows(sn_trainer *t, const sn_tokenizer *tok, const char *const *paths, int n_paths,
                            const char *name, const char *what, sn_token_set *docs, sn_token_set *windows) {
  sn_text_docs d = {0};
  sn_text_docs_load(&d, paths, n_paths, what);
  if (d.n == 0) sn_bad_input("%s: no documents in the configured files", what);
  sn_prompt_spec spec = {.template_str = NULL, .max_len = SN_STAGE0_MAX_DOC_TOKENS, .add_special = 0,
                         .append_eos = 1};
  sn_text_encoder enc = sn_text_encoder_from_tokenizer(tok);
  sn_shard_cache_opts opts = {.cache_dir = t->cache_dir, .name = name, .is_builder = t->comm->local_rank == 0};
  char err[1024];
  if (sn_token_set_load_or_build(docs, d.items, d.n, &spec, &enc, &opts, err, sizeof err) != 0)
    sn_bad_input("%s: %s", what, err);
  sn_text_docs_free(&d);
  return sn_token_windows(docs, t->cfg.stage0.seq_len, windows);
}

// Every window of the held-out text, each rank its share, forward only: the mean next-token loss
// and its exponential, into RUN/eval/stage0.json (rank 0) and the log.
static void eval_perplexity(sn_trainer *t, stage0_ctx *c, const sn_tokenizer *tok, int max_windows) {
  const sn_cfg_stage0 *s0 = &t->cfg.stage0;
  const char *paths[1] = {s0->eval_data};
  sn_token_set docs, windows;
  const int64_t n = text_windows(t, tok, paths, 1, "stage0-eval", "stage0.eval_data", &docs, &windows);
  if (n == 0)
    sn_bad_input("stage0.eval_data: %s has %lld tokens, less than one window of stage0.seq_len %d", s0->eval_data,
                 (long long)docs.n_tokens, s0->seq_len);
  const double t0 = sn_now_s();
  double sums[2] = {0, 0};  // loss summed over predicted tokens, their count
  int32_t *cu = mallocCheck((size_t)(max_windows + 1) * sizeof *cu), *ids = NULL;
  int64_t cap = 0, *index = mallocCheck((size_t)max_windows * sizeof *index);
  for (int64_t w0 = (int64_t)t->rank * max_windows; w0 < n; w0 += (int64_t)t->world * max_windows) {
    const int k = (int)SN_MIN((int64_t)max_windows, n - w0);
    for (int i = 0; i < k; i++) index[i] = w0 + i;
    sn_token_set_pack(&windows, index, k, &ids, &cap, cu);
    // scale 1: the loss summed over the windows' predicted tokens
    sums[0] += windows_loss(c, ids, cu, k, 1.0f, 0, NULL);
    sums[1] += (double)k * (s0->seq_len - 1);
  }
  sn_comm_all_reduce_f64_host(t->comm, sums, 2);
  const double loss = sums[0] / sums[1], ppl = exp(loss);
  if (t->rank == 0) {
    char path[SN_TRAIN_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/eval", t->run_dir);
    sn_mkdir_p(path);
    snprintf(path, sizeof path, "%s/eval/stage0.json", t->run_dir);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "data", s0->eval_data);
    cJSON_AddNumberToObject(o, "windows", (double)n);
    cJSON_AddNumberToObject(o, "seq_len", s0->seq_len);
    cJSON_AddNumberToObject(o, "tokens", sums[1]);  // predicted tokens
    cJSON_AddNumberToObject(o, "loss", loss);
    cJSON_AddNumberToObject(o, "perplexity", ppl);
    char *json = cJSON_Print(o);
    cJSON_Delete(o);
    if (!json || sn_write_file_atomic(path, json, strlen(json)) != 0) sn_fatal("cannot write %s: %s", path, strerror(errno));
    cJSON_free(json);
    sn_log("eval stage0    loss %.6f  perplexity %.4f  (%lld windows of %d tokens, %.1f s) in %s", loss, ppl,
           (long long)n, s0->seq_len, sn_now_s() - t0, path);
  }
  free(cu), free(ids), free(index);
  sn_token_windows_close(&windows);
  sn_token_set_close(&docs);
}

// RUN/final/lm: the causal LM in export.dtype with its tokenizer files.
typedef struct {
  sn_trainer *t;
  sn_model *model;
  const char *tokenizer_dir;
} final_lm;

static void save_final_lm(void *ctx, const char *final_dir) {
  final_lm *f = ctx;
  char dir[SN_TRAIN_PATH_MAX + 64], err[1024];
  snprintf(dir, sizeof dir, "%s/" SN_STAGE0_FINAL_NAME, final_dir);
  if (sn_model_save_causal_lm(f->model, dir, sn_trainer_export_dtype(f->t), err, sizeof err) != 0) sn_fatal("%s", err);
  if (f->tokenizer_dir[0] && sn_copy_tokenizer_files(f->tokenizer_dir, dir, err, sizeof err) != 0) sn_fatal("%s", err);
}

static sn_recompute recompute_mode(const sn_cfg_stage0 *s0) {
  sn_recompute mode = SN_RECOMPUTE_NONE;
  sn_recompute_parse(s0->recompute, &mode);  // validated by the config schema
  return mode;
}

// ---- the memory plan (what sn_train_stage0 allocates) -------------------------------------------

// Buffers of the stage beside the model's activations: tokens, targets, dhidden, the loss.
static size_t stage_buffer_bytes(int max_windows, int seq_len, int C, const sn_ops *ops) {
  const size_t T = (size_t)max_windows * seq_len;
  return sn_tokens_bytes((int)T, max_windows) + T * sizeof(int32_t) + T * C * ops->storage_size + sizeof(float);
}

void sn_stage0_plan(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world) {
  const sn_cfg_stage0 *s0 = &cfg->stage0;
  sn_model_config mc;
  sn_trainer_model_config(s0->model, s0->model_desc, "stage0.model", &mc);
  sn_model *m = sn_model_plan(&mc, ops, 0);
  m->trains_lm_head = 1;
  const size_t N = m->num_elements, es = ops->storage_size;
  const int zero = world > 1 ? cfg->dist.zero : 0;
  const int B = SN_MAX(s0->batch_seqs / world, 1), T = B * s0->seq_len;
  const char *dtype = sn_dtype_name(ops->storage);
  sn_plan_phase *ph = sn_plan_phase_new(p, "stage 0 training", 0);
  sn_plan_add(ph, "weights", N * es, "%.3gB parameters x %s", (double)N / 1e9, dtype);
  sn_optimizer_plan op = sn_optimizer_plan_bytes(m, world, zero, &s0->optim);
  sn_plan_add(ph, "gradients", op.grads, "%s, %s", dtype, zero == 2 ? "working buffers (ZeRO-2)" : "full buffer");
  if (op.master) sn_plan_add(ph, "master weights", op.master, "fp32%s", zero ? ", 1/world slice" : "");
  sn_plan_add(ph, "Adam moments", op.moments, "%s%s", op.moments_desc, zero ? ", 1/world slice" : "");
  if (op.exchange) sn_plan_add(ph, "ZeRO exchange", op.exchange, "gradient slice");
  sn_plan_add(ph, "activations", sn_model_plan_acts_bytes(m, T, B, 1, recompute_mode(s0)),
              "%d windows x %d tokens%s", B, s0->seq_len, recompute_mode(s0) == SN_RECOMPUTE_LAYER ? ", recompute = layer" : "");
  sn_plan_add(ph, "loss buffers", stage_buffer_bytes(B, s0->seq_len, mc.hidden, ops), "tokens, targets, dhidden");
  sn_workspace_shape ws = {.max_tokens = T, .n_heads = mc.n_heads, .head_dim = mc.head_dim,
                           .widest = sn_model_widest_row(m), .max_span_count = m->nparams,
                           .lm_vocab = mc.vocab, .lm_width = mc.hidden};
  sn_plan_add(ph, "backend workspaces", ops->workspace_bytes(&ws), "scratch of the ops (LM-head blocks) and cuBLASLt");
  sn_model_free(m);
}

int sn_train_stage0(sn_trainer *t) {
  const sn_cfg_stage0 *s0 = &t->cfg.stage0;
  const sn_ops *ops = t->ops;
  const int resuming = t->resume_dir[0] != '\0';
  if (s0->batch_seqs % t->world != 0)
    sn_bad_input("stage0.batch_seqs (%d) must be a multiple of the number of ranks (%d)", s0->batch_seqs, t->world);
  stage0_ctx c = {.t = t};
  char ckpt_dir[SN_TRAIN_PATH_MAX + 32];
  snprintf(ckpt_dir, sizeof ckpt_dir, "%s/" SN_STAGE0_FINAL_NAME, t->resume_dir);
  c.model = resuming ? sn_model_load(ckpt_dir, ops)
                     : sn_trainer_load_model(t, s0->model, s0->model_desc, t->cfg.seed, "stage0.model");
  sn_model *m = c.model;
  const void *w_unused;
  void *g_unused;
  if (sn_model_lm_head(m, &w_unused, &g_unused) != 0)
    sn_bad_input("stage0.model: %s has no LM head (a decoder with lm_head.weight, or tie_word_embeddings = true); "
                 "an exported embedding tower has none", s0->model[0] ? s0->model : "the model");
  m->trains_lm_head = 1;
  char err[256];
  if (sn_config_check_seq_len(&m->cfg, "stage0.model", s0->seq_len, "stage0.seq_len", err, sizeof err) != 0)
    sn_bad_input("%s", err);
  sn_log("stage 0 model: %s, %d layers, hidden %d, %d heads (%d kv), vocab %d%s, %.1fM parameters",
         sn_arch_name(m->cfg.arch), m->cfg.n_layers, m->cfg.hidden, m->cfg.n_heads, m->cfg.n_kv_heads, m->cfg.vocab,
         m->cfg.tie_embeddings ? " (tied head)" : "", (double)m->num_elements / 1e6);
  sn_tokenizer *tok = sn_trainer_load_tokenizer(s0->tokenizer, s0->model, "stage0.tokenizer");
  sn_trainer_check_vocab(tok, m, "stage0.tokenizer");
  char tok_dir[SN_TRAIN_PATH_MAX];
  sn_tokenizer_dir_of(s0->tokenizer, s0->model, tok_dir, sizeof tok_dir);

  // Data: the windows, sampled as stage 2 samples queries (no documents): an "example" per window.
  const char *paths[SN_CFG_MAX_TRAIN_FILES];
  for (int i = 0; i < s0->n_data; i++) paths[i] = s0->data[i];
  sn_token_set docs, windows;
  const int64_t n_windows = text_windows(t, tok, paths, s0->n_data, "stage0-text", "stage0.data", &docs, &windows);
  if (n_windows < s0->batch_seqs)
    sn_bad_input("stage0.data: %lld tokens make %lld windows of stage0.seq_len %d, fewer than stage0.batch_seqs %d",
                 (long long)docs.n_tokens, (long long)n_windows, s0->seq_len, s0->batch_seqs);
  sn_train_examples ex;
  sn_train_examples_init(&ex);
  ex.examples = callocCheck((size_t)n_windows, sizeof *ex.examples);
  ex.n_examples = ex.cap_examples = n_windows;
  sn_sampler_config sc = {.global_batch_queries = s0->batch_seqs, .seed = t->cfg.seed ^ SN_STAGE0_SEED_SALT,
                          .world_size = t->world, .rank = t->rank, .queries_only = 1};
  sn_sampler *sampler = sn_sampler_init(&sc, &ex, &windows, NULL);
  const int64_t per_epoch = sn_sampler_steps_in_epoch(sampler, 0);
  const int64_t total = sn_trainer_total_steps(s0->steps, s0->epochs, per_epoch, s0->grad_accum);
  const int B = s0->batch_seqs / t->world, T = B * s0->seq_len;
  sn_log("stage 0: %lld documents, %lld tokens, %lld windows of %d, %lld batches per epoch, %lld steps, %d windows "
         "per rank", (long long)docs.n_seqs, (long long)docs.n_tokens, (long long)n_windows, s0->seq_len,
         (long long)per_epoch, (long long)total, B);

  // Buffers, as sn_stage0_plan counts them.
  c.acts = sn_acts_new(m, T, B);
  sn_acts_set_recompute(c.acts, recompute_mode(s0));
  sn_tokens_alloc(&c.tok, ops, T, B);
  c.targets_host = mallocCheck((size_t)T * sizeof(int32_t));
  c.targets = ops->alloc((size_t)T * sizeof(int32_t));
  c.dhidden = ops->alloc((size_t)T * m->cfg.hidden * ops->storage_size);
  c.loss = ops->alloc(sizeof(float));
  c.scale = 1.0f / ((float)s0->batch_seqs * (float)(s0->seq_len - 1));

  sn_optimizer opt;
  sn_trainer_optimizer_init(t, &opt, m, &s0->optim, total, 0);
  c.opt = &opt;
  final_lm fin = {.t = t, .model = m, .tokenizer_dir = tok_dir};
  sn_stage stage = {.number = 0, .grad_accum = s0->grad_accum, .total_steps = total, .sampler = sampler,
                    .n_models = 1, .models = {m}, .optimizers = {{"lm", &opt}},
                    .n_towers = 1, .n_ckpt_towers = 1,
                    .towers = {{SN_STAGE0_FINAL_NAME, m, tok_dir, .base_name = s0->model}},
                    .n_terms = 1, .term_names = {"lm"}, .micro_step = micro_step, .ctx = &c,
                    .save_final = save_final_lm, .save_final_ctx = &fin};
  int rc = sn_train_loop(t, &stage, resuming);
  if (rc == 0 && s0->eval_data[0]) eval_perplexity(t, &c, tok, B);

  ops->free(c.loss);
  ops->free(c.dhidden);
  ops->free(c.targets);
  free(c.targets_host);
  sn_tokens_free(&c.tok, ops);
  sn_acts_free(c.acts);
  sn_optimizer_free(&opt);
  sn_model_free(m);
  sn_sampler_free(sampler);
  sn_train_examples_free(&ex);
  sn_token_windows_close(&windows);
  sn_token_set_close(&docs);
  sn_tokenizer_free(tok);
  return rc;
}
