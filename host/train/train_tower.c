// Tower runners (forward/backward of embedding chains), tower and tokenizer loading, training
// token sets and the run-control helpers (stop requests, negatives, step counts) of the stages.
#define _GNU_SOURCE
#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "counter_rng.h"
#include "model_lora.h"
#include "train_internal.h"

// ---- runners --------------------------------------------------------------------------------

void sn_runner_init(sn_tower_runner *r, sn_model *m, sn_pooling pooling, int max_seqs, int max_tokens) {
  memset(r, 0, sizeof *r);
  r->model = m;
  r->ops = m->ops;
  r->pooling = pooling;
  r->max_seqs = max_seqs;
  r->max_tokens = max_tokens;
  r->out_dim = sn_model_out_dim(m);
  r->acts = sn_acts_new(m, max_tokens, max_seqs);
  sn_tokens_alloc(&r->tok, r->ops, max_tokens, max_seqs);
  r->dhidden = r->ops->alloc((size_t)max_tokens * m->cfg.hidden * r->ops->storage_size);
}

size_t sn_runner_plan_bytes(const sn_model *m, int max_seqs, int max_tokens, int for_backward,
                            sn_recompute recompute) {
  return sn_model_plan_acts_bytes(m, max_tokens, max_seqs, for_backward, recompute) +
         sn_tokens_bytes(max_tokens, max_seqs) + (size_t)max_tokens * m->cfg.hidden * m->ops->storage_size;
}

void sn_runner_free(sn_tower_runner *r) {
  const sn_ops *ops = r->ops;
  if (!ops) return;
  sn_acts_free(r->acts);
  sn_tokens_free(&r->tok, ops);
  ops->free(r->dhidden);
  memset(r, 0, sizeof *r);
}

const void *sn_runner_raw(const sn_tower_runner *r) { return sn_model_pool_raw(r->acts); }

void sn_runner_forward(sn_tower_runner *r, const int32_t *ids, const int32_t *cu_seqlens, int n,
                       int for_backward, float *emb, const char *what) {
  sn_model *m = r->model;
  if (n > r->max_seqs || cu_seqlens[n] > r->max_tokens)
    sn_fatal("%s: batch of %d sequences / %d tokens exceeds the planned %d / %d", what, n,
             cu_seqlens[n], r->max_seqs, r->max_tokens);
  sn_tokens_upload(&r->tok, r->ops, ids, cu_seqlens, n, m->cfg.vocab, what);
  if (for_backward)
    sn_model_forward_pooled(m, r->acts, &r->tok, r->pooling, emb);  // (n, out_dim)
  else
    sn_model_embed(m, r->acts, &r->tok, r->pooling, 1, emb);
}

void sn_runner_backward(sn_tower_runner *r, const float *d_emb, const float *emb,
                        const void *d_raw_extra) {
  sn_model_backward_pooled(r->model, r->acts, &r->tok, r->pooling, d_emb, emb, d_raw_extra, r->dhidden);
}

const int32_t *sn_sub_batch(const int32_t *ids, const int32_t *cu, int s0, int s1, int32_t *cu_out) {
  for (int s = s0; s <= s1; s++) cu_out[s - s0] = cu[s] - cu[s0];
  return ids + cu[s0];
}

// The dropout masks of the chunk starting at sequence s0 of the batch: the same in the gradient
// cache's first pass and in its re-run.
static void chunk_dropout(sn_tower_runner *r, int s0) {
  if (r->model->lora) sn_lora_set_dropout(r->acts, r->dropout_on, sn_rng_stream_key(r->dropout_key, (uint64_t)s0));
}

void sn_embed_batch(sn_tower_runner *r, int grad_cache, int chunk, const int32_t *ids,
                    const int32_t *cu, int n, float *emb, const char *what) {
  if (!grad_cache) {
    chunk_dropout(r, 0);
    sn_runner_forward(r, ids, cu, n, 1, emb, what);
    return;
  }
  int32_t *sub_cu = mallocCheck((size_t)(chunk + 1) * sizeof *sub_cu);
  for (int s0 = 0; s0 < n; s0 += chunk) {
    int s1 = SN_MIN(n, s0 + chunk);
    const int32_t *sub_ids = sn_sub_batch(ids, cu, s0, s1, sub_cu);
    chunk_dropout(r, s0);
    sn_runner_forward(r, sub_ids, sub_cu, s1 - s0, 0, emb + (size_t)s0 * r->out_dim, what);
  }
  free(sub_cu);
}

void sn_backward_batch(sn_tower_runner *r, int grad_cache, int chunk, const int32_t *ids,
                       const int32_t *cu, int n, const float *d_emb, const float *emb,
                       float *chunk_emb, sn_optimizer *arm, const char *what) {
  if (!grad_cache) {
    if (arm) sn_optimizer_arm_overlap(arm);
    sn_runner_backward(r, d_emb, emb, NULL);
    if (arm) sn_optimizer_flush_overlap(arm);
    return;
  }
  int32_t *sub_cu = mallocCheck((size_t)(chunk + 1) * sizeof *sub_cu);
  for (int s0 = 0; s0 < n; s0 += chunk) {
    int s1 = SN_MIN(n, s0 + chunk);
    const int32_t *sub_ids = sn_sub_batch(ids, cu, s0, s1, sub_cu);
    chunk_dropout(r, s0);
    sn_runner_forward(r, sub_ids, sub_cu, s1 - s0, 1, chunk_emb, what);
    if (arm && s1 == n) sn_optimizer_arm_overlap(arm);  // only the last chunk completes the gradients
    sn_runner_backward(r, d_emb + (size_t)s0 * r->out_dim, chunk_emb, NULL);
  }
  if (arm) sn_optimizer_flush_overlap(arm);
  free(sub_cu);
}

#define SN_ROUNDING_SALT 0x526F756E64424631ull  // "RoundBF1": the bf16 state's draws, apart from other streams

void sn_trainer_optimizer_init(const sn_trainer *t, sn_optimizer *opt, sn_model *m, const sn_cfg_optim *cfg,
                               int64_t total_steps, int stream) {
  sn_optimizer_init(opt, m, cfg, total_steps, t->comm, t->cfg.dist.zero,
                    sn_rng_stream_key(t->cfg.seed ^ SN_ROUNDING_SALT, (uint64_t)stream));
  if (t->cfg.dist.overlap) sn_optimizer_enable_overlap(opt, (size_t)(t->cfg.dist.bucket_mb * (1 << 20)));
  if (t->rank == 0 && opt->state_bf16 && stream == 0)
    sn_log("optimizer: bf16 state (the weights their own master, bf16 m and v, stochastic rounding)");
  if (t->rank == 0 && t->world > 1) {
    sn_grad_bytes b = sn_optimizer_grad_bytes(opt);
    sn_log("gradients: %s; per rank %.4g GiB held (full buffer %.4g, exchange %.4g, slice %.4g, working "
           "buffers %.4g; one full buffer is %.4g GiB)",
           opt->zero == 2 ? "summed layer by layer during the backward pass into each rank's slice (ZeRO-2: "
                            "gradients and optimizer state sharded)"
           : opt->zero    ? "reduce-scattered (ZeRO-1: optimizer state sharded)"
           : opt->overlap ? "all-reduced in buckets during the backward pass"
                          : "all-reduced after the backward pass",
           (double)(b.full + b.exchange + b.slice + b.working) / SN_GIB, (double)b.full / SN_GIB,
           (double)b.exchange / SN_GIB, (double)b.slice / SN_GIB, (double)b.working / SN_GIB,
           (double)b.full_size / SN_GIB);
  }
}

float *sn_runner_embed_set(sn_tower_runner *r, const sn_token_set *set, int verbose, const char *what) {
  const sn_ops *ops = r->ops;
  int64_t n = set->n_seqs;
  float *out = mallocCheck((size_t)n * r->out_dim * sizeof(float));
  float *emb = ops->alloc((size_t)r->max_seqs * r->out_dim * sizeof(float));
  int64_t *index = mallocCheck((size_t)r->max_seqs * sizeof *index);
  int32_t *cu = mallocCheck((size_t)(r->max_seqs + 1) * sizeof *cu);
  int32_t *ids = NULL;
  int64_t cap = 0;
  double t0 = sn_now_s(), last_report = t0;
  for (int64_t start = 0; start < n;) {
    // Greedy chunk: as many sequences as fit both budgets (at least one).
    int count = 0;
    int64_t tokens = 0;
    while (start + count < n && count < r->max_seqs) {
      int len = sn_token_set_len(set, start + count);
      if (count > 0 && tokens + len > r->max_tokens) break;
      tokens += len;
      index[count] = start + count;
      count++;
    }
    sn_token_set_pack(set, index, count, &ids, &cap, cu);
    if (r->model->lora) sn_lora_set_dropout(r->acts, 0, 0);  // embedding a set is inference
    sn_runner_forward(r, ids, cu, count, 0, emb, what);
    ops->download(out + (size_t)start * r->out_dim, emb, (size_t)count * r->out_dim * sizeof(float));
    start += count;
    if (verbose && sn_now_s() - last_report > 10) {
      last_report = sn_now_s();
      sn_log("%s: embedded %lld/%lld", what, (long long)start, (long long)n);
    }
  }
  ops->free(emb);
  free(index);
  free(cu);
  free(ids);
  return out;
}

// How often waiting ranks look for rank 0's file.
#define RANK0_POLL_US 200000

int sn_path_exists(const char *path, void *unused) {
  (void)unused;
  return sn_exists(path);
}

void sn_wait_for(const char *path, int (*ready)(const char *path, void *ctx), void *ctx, int rank) {
  for (double waited = 0; !ready(path, ctx); waited += RANK0_POLL_US * 1e-6) {
    if (waited > SN_RANK0_WAIT_S) sn_fatal("rank %d: %s was not ready within %.0f s", rank, path, SN_RANK0_WAIT_S);
    usleep(RANK0_POLL_US);
  }
}

// ---- towers and tokenizers ------------------------------------------------------------------

static void check_model_dir(const char *dir, const char *what) { sn_export_check_model_folder(dir, what); }

void sn_trainer_model_config(const char *dir, const char *desc, const char *what, sn_model_config *mc) {
  if (dir && dir[0]) {
    check_model_dir(dir, what);
    sn_config_load_hf_dir(mc, dir);
    return;
  }
  if (!desc || !desc[0]) sn_bad_input("%s: neither a model folder nor a model description is configured", what);
  char err[1024];
  int rc;
  if (desc[0] == '{') {
    rc = sn_config_parse_desc(mc, desc, strlen(desc), what, err, sizeof err);
  } else {
    size_t len = 0;
    char *text = sn_read_file(desc, &len);
    if (!text) sn_bad_input("%s: cannot read model description '%s': %s", what, desc, strerror(errno));
    rc = sn_config_parse_desc(mc, text, len, desc, err, sizeof err);
    free(text);
  }
  if (rc != 0) sn_bad_input("%s", err);
}

sn_model *sn_trainer_load_model(const sn_trainer *t, const char *dir, const char *desc, uint64_t seed,
                                const char *what) {
  if (dir && dir[0]) {
    check_model_dir(dir, what);
    return sn_model_load(dir, t->ops);
  }
  sn_model_config mc;
  sn_trainer_model_config(dir, desc, what, &mc);
  return sn_model_new(&mc, t->ops, seed);
}

sn_tokenizer *sn_trainer_load_tokenizer(const char *path, const char *fallback_dir, const char *what) {
  const char *src = (path && path[0]) ? path : fallback_dir;
  if (!src || !src[0]) sn_bad_input("%s: no tokenizer configured (set the tokenizer key)", what);
  char err[1024];
  sn_tokenizer *tok = sn_tokenizer_load(src, err, sizeof err);
  if (!tok) sn_bad_input("%s: %s", what, err);
  return tok;
}

void sn_tokenizer_dir_of(const char *path, const char *fallback, char *out, size_t size) {
  const char *src = (path && path[0]) ? path : fallback;
  snprintf(out, size, "%s", src ? src : "");
  if (out[0] && !sn_is_dir(out)) {
    char *slash = strrchr(out, '/');
    if (slash) *slash = '\0';
    else snprintf(out, size, ".");
  }
}

void sn_trainer_check_vocab(const sn_tokenizer *tok, const sn_model *m, const char *what) {
  int tv = sn_tokenizer_vocab_size(tok);
  if (tv > m->cfg.vocab)
    sn_bad_input("%s: the tokenizer has %d tokens but the model's embedding table has %d rows",
                 what, tv, m->cfg.vocab);
}

static void build_set(sn_trainer *t, const sn_tokenizer *tok, const sn_model *m, const char *name,
                      const sn_text_item *items, int64_t n, const char *template_str, int max_len,
                      sn_token_set *out) {
  int decoder = sn_arch_is_decoder(m->cfg.arch);
  sn_prompt_spec spec = {.template_str = template_str, .max_len = max_len,
                         .add_special = 1, .append_eos = decoder};
  sn_text_encoder enc = sn_text_encoder_from_tokenizer(tok);
  sn_shard_cache_opts opts = {.cache_dir = t->cache_dir, .name = name, .is_builder = t->comm->local_rank == 0,
                              .wait_timeout_s = 0};
  char err[1024];
  if (sn_token_set_load_or_build(out, items, n, &spec, &enc, &opts, err, sizeof err) != 0)
    sn_bad_input("%s: %s", name, err);
}

void sn_trainer_query_set(sn_trainer *t, const sn_tokenizer *tok, const sn_model *m, const char *name,
                          sn_token_set *out) {
  sn_text_item *items = sn_train_examples_query_items(&t->examples);
  build_set(t, tok, m, name, items, t->examples.n_examples, t->cfg.data.query_prompt,
            t->cfg.data.max_query_len, out);
  free(items);
}

void sn_trainer_query_text_set(sn_trainer *t, const sn_tokenizer *tok, const sn_model *m, const char *name,
                               const sn_text_item *items, int64_t n, sn_token_set *out) {
  build_set(t, tok, m, name, items, n, t->cfg.data.query_prompt, t->cfg.data.max_query_len, out);
}

void sn_trainer_doc_set(sn_trainer *t, const sn_tokenizer *tok, const sn_model *m, sn_token_set *out) {
  sn_text_item *items = sn_train_examples_doc_items(&t->examples);
  build_set(t, tok, m, "docs", items, t->examples.n_docs, t->cfg.data.doc_prompt,
            t->cfg.data.max_doc_len, out);
  free(items);
}

// ---- run control -------------------------------------------------------------------------

int sn_trainer_should_stop(sn_trainer *t, double requested_anywhere) {
  t->steps_this_run++;
  return requested_anywhere > 0 || (t->stop_after > 0 && t->steps_this_run >= t->stop_after);
}

void sn_trainer_check_negatives(const sn_trainer *t, int k, const char *key) {
  if ((int64_t)k >= t->examples.n_docs)
    sn_bad_input("%s (%d) asks for more negatives than the data has: %lld distinct documents in "
                 "total, so at most %lld negatives per query", key, k, (long long)t->examples.n_docs,
                 (long long)(t->examples.n_docs - 1));
}

int64_t sn_trainer_total_steps(int steps, float epochs, int64_t batches_per_epoch, int grad_accum) {
  if (steps > 0) return steps;
  int64_t total = (int64_t)((double)epochs * (double)batches_per_epoch / grad_accum);
  return total > 0 ? total : 1;
}

// ---- finite weights ----------------------------------------------------------------------------

int sn_trainer_weights_finite(const sn_ckpt_optimizer *opts, int nopts, char *err, size_t errlen) {
  for (int i = 0; i < nopts; i++) {
    const sn_optimizer *opt = opts[i].opt;
    const sn_ops *ops = opt->ops;
    float sum = 0;
    ops->memset_zero(opt->scratch, sizeof(float));
    ops->sum_squares(opt->scratch, opt->model->weights, opt->model->num_elements);
    ops->download(&sum, opt->scratch, sizeof sum);
    if (!isfinite(sum))
      return sn_errorf(err, errlen, "the trained %s weights are not finite (their sum of squares is %f)",
                       opts[i].prefix, sum);
  }
  return 0;
}

// What tpl puts before an untitled text, for sentence-transformers' prefix prompts; a warning when
// the template also puts something after the text (sentence-transformers cannot).
#define TEXT_SENTINEL "\x01"
static void prompt_prefix(const char *tpl, const char *key, char *out, size_t size) {
  const sn_text_encoder none = {.eos_id = -1};
  const sn_prompt_spec spec = {.template_str = tpl, .max_len = 1};
  char err[256];
  sn_prompt *p = sn_prompt_create(&spec, &none, err, sizeof err);
  if (!p) sn_bad_input("%s: %s", key, err);
  char *rendered = sn_prompt_render(p, "", TEXT_SENTINEL);
  char *at = strstr(rendered, TEXT_SENTINEL);
  if (at[strlen(TEXT_SENTINEL)] != '\0')
    sn_warn("%s \"%s\" puts text after {text}: the export's sentence-transformers prompt is the part "
            "before it only (sn_embed and sn_eval use the whole template)", key, tpl);
  *at = '\0';
  snprintf(out, size, "%s", rendered);
  free(rendered);
  sn_prompt_free(p);
}

void sn_trainer_export_info(const sn_trainer *t, const sn_model *m, const sn_tokenizer *tok, const char *pooling,
                            const char *role, sn_export_info *out) {
  const sn_run_config *c = &t->cfg;
  memset(out, 0, sizeof *out);
  out->decoder = sn_arch_is_decoder(m->cfg.arch);
  out->pooling = pooling;
  out->query_prompt = c->data.query_prompt;
  out->doc_prompt = c->data.doc_prompt;
  out->role = role;
  prompt_prefix(c->data.query_prompt, "data.query_prompt", out->query_prefix, sizeof out->query_prefix);
  prompt_prefix(c->data.doc_prompt, "data.doc_prompt", out->doc_prefix, sizeof out->doc_prefix);
  out->max_seq_length = strcmp(role, SN_EXPORT_ROLE_QUERY) == 0 ? c->data.max_query_len : c->data.max_doc_len;
  out->hidden = m->cfg.hidden;
  out->proj_dim = sn_model_find_param(m, "projection.weight") ? sn_model_out_dim(m) : 0;
  const int32_t eos = sn_tokenizer_eos_id(tok), pad = sn_tokenizer_pad_id(tok);
  const char *eos_token = eos >= 0 ? sn_tokenizer_id_to_token(tok, eos) : NULL;
  const char *pad_token = pad >= 0 ? sn_tokenizer_id_to_token(tok, pad) : NULL;
  out->eos_id = eos;
  if (out->decoder && eos_token) snprintf(out->eos_token, sizeof out->eos_token, "%s", eos_token);
  if (pad_token) snprintf(out->pad_token, sizeof out->pad_token, "%s", pad_token);
}
