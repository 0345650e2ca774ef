// Tower runners (forward/backward of embedding chains), tower and tokenizer loading, training
// token sets and checkpoint pieces shared by both stages.
#define _GNU_SOURCE
#include <errno.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "train_internal.h"

// ---- runners --------------------------------------------------------------------------------

static const sn_param *projection_of(const sn_model *m) {
  return sn_model_find_param(m, "projection.weight");
}

void sn_runner_init(sn_tower_runner *r, sn_model *m, sn_pooling pooling, int max_seqs, int max_tokens) {
  memset(r, 0, sizeof *r);
  const sn_ops *ops = m->ops;
  size_t es = ops->storage_size;
  int C = m->cfg.hidden;
  const sn_param *proj = projection_of(m);
  r->model = m;
  r->ops = ops;
  r->pooling = pooling;
  r->max_seqs = max_seqs;
  r->max_tokens = max_tokens;
  r->out_dim = proj ? (int)proj->shape[0] : C;
  r->acts = sn_acts_new(m, max_tokens, max_seqs);
  sn_tokens_alloc(&r->tok, ops, max_tokens, max_seqs);
  r->pooled = ops->alloc((size_t)max_seqs * C * es);
  r->dpooled = ops->alloc((size_t)max_seqs * C * es);
  r->norms = ops->alloc((size_t)max_seqs * sizeof(float));
  r->dhidden = ops->alloc((size_t)max_tokens * C * es);
  if (proj) {
    r->projected = ops->alloc((size_t)max_seqs * r->out_dim * es);
    r->dprojected = ops->alloc((size_t)max_seqs * r->out_dim * es);
  }
}

void sn_runner_free(sn_tower_runner *r) {
  const sn_ops *ops = r->ops;
  if (!ops) return;
  sn_acts_free(r->acts);
  sn_tokens_free(&r->tok, ops);
  ops->free(r->pooled);
  ops->free(r->dpooled);
  ops->free(r->norms);
  ops->free(r->dhidden);
  if (r->projected) ops->free(r->projected);
  if (r->dprojected) ops->free(r->dprojected);
  memset(r, 0, sizeof *r);
}

const void *sn_runner_raw(const sn_tower_runner *r) { return r->projected ? r->projected : r->pooled; }

static const void *param_ptr(const sn_model *m, const char *name) {
  const sn_param *p = sn_model_find_param(m, name);
  return p ? (const char *)m->weights + p->offset * m->ops->storage_size : NULL;
}

static void *grad_ptr(const sn_model *m, const char *name) {
  const sn_param *p = sn_model_find_param(m, name);
  return p ? (char *)m->grads + p->offset * m->ops->storage_size : NULL;
}

void sn_runner_forward(sn_tower_runner *r, const int32_t *ids, const int32_t *cu_seqlens, int n,
                       int for_backward, float *emb, const char *what) {
  const sn_ops *ops = r->ops;
  sn_model *m = r->model;
  int C = m->cfg.hidden;
  if (n > r->max_seqs || cu_seqlens[n] > r->max_tokens)
    sn_fatal("%s: batch of %d sequences / %d tokens exceeds the planned %d / %d", what, n,
             cu_seqlens[n], r->max_seqs, r->max_tokens);
  sn_tokens_upload(&r->tok, ops, ids, cu_seqlens, n, m->cfg.vocab, what);
  const void *hidden = sn_model_forward(m, r->acts, &r->tok, for_backward);  // (T, C)
  ops->pool_forward(r->pooled, hidden, r->tok.cu_seqlens, n, r->tok.T, C, r->pooling);  // (n, C)
  if (r->projected) {  // (n, out_dim) = pooled @ W^T + b
    ops->matmul(r->projected, r->pooled, param_ptr(m, "projection.weight"),
                param_ptr(m, "projection.bias"), n, r->out_dim, C, 0, 1, 0);
  }
  ops->l2norm_forward(emb, r->norms, sn_runner_raw(r), n, r->out_dim);
  r->n = n;
}

void sn_runner_backward(sn_tower_runner *r, const float *d_emb, const float *emb,
                        const void *d_raw_extra) {
  const sn_ops *ops = r->ops;
  sn_model *m = r->model;
  int C = m->cfg.hidden, n = r->n;
  void *d_raw = r->projected ? r->dprojected : r->dpooled;
  ops->l2norm_backward(d_raw, d_emb, emb, r->norms, n, r->out_dim);
  if (d_raw_extra) ops->add(d_raw, d_raw, d_raw_extra, (size_t)n * r->out_dim);
  if (r->projected) {
    // dW (out, C) += dproj^T @ pooled; db += column sums; dpooled (n, C) = dproj @ W
    ops->matmul(grad_ptr(m, "projection.weight"), r->dprojected, r->pooled, NULL, r->out_dim, C, n,
                1, 0, 1);
    ops->bias_backward(grad_ptr(m, "projection.bias"), r->dprojected, n, r->out_dim);
    ops->matmul(r->dpooled, r->dprojected, param_ptr(m, "projection.weight"), NULL, n, C,
                r->out_dim, 0, 0, 0);
  }
  ops->pool_backward(r->dhidden, r->dpooled, r->tok.cu_seqlens, n, r->tok.T, C, r->pooling);
  sn_model_backward(m, r->acts, &r->tok, r->dhidden);
}

const int32_t *sn_sub_batch(const int32_t *ids, const int32_t *cu, int s0, int s1, int32_t *cu_out) {
  for (int s = s0; s <= s1; s++) cu_out[s - s0] = cu[s] - cu[s0];
  return ids + cu[s0];
}

void sn_embed_batch(sn_tower_runner *r, int grad_cache, int chunk, const int32_t *ids,
                    const int32_t *cu, int n, float *emb, const char *what) {
  if (!grad_cache) {
    sn_runner_forward(r, ids, cu, n, 1, emb, what);
    return;
  }
  int32_t *sub_cu = mallocCheck((size_t)(chunk + 1) * sizeof *sub_cu);
  for (int s0 = 0; s0 < n; s0 += chunk) {
    int s1 = SN_MIN(n, s0 + chunk);
    const int32_t *sub_ids = sn_sub_batch(ids, cu, s0, s1, sub_cu);
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
    sn_runner_forward(r, sub_ids, sub_cu, s1 - s0, 1, chunk_emb, what);
    if (arm && s1 == n) sn_optimizer_arm_overlap(arm);  // only the last chunk completes the gradients
    sn_runner_backward(r, d_emb + (size_t)s0 * r->out_dim, chunk_emb, NULL);
  }
  if (arm) sn_optimizer_flush_overlap(arm);
  free(sub_cu);
}

void sn_trainer_optimizer_init(const sn_trainer *t, sn_optimizer *opt, sn_model *m, const sn_cfg_optim *cfg,
                               int64_t total_steps) {
  sn_optimizer_init(opt, m, cfg, total_steps, t->comm, t->cfg.dist.zero1);
  if (t->cfg.dist.overlap) sn_optimizer_enable_overlap(opt, (size_t)(t->cfg.dist.bucket_mb * (1 << 20)));
  if (t->rank == 0 && t->world > 1)
    sn_log("gradients: %s", opt->zero1     ? "reduce-scattered (ZeRO-1: optimizer state sharded)"
                            : opt->overlap ? "all-reduced in buckets during the backward pass"
                                           : "all-reduced after the backward pass");
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

sn_model *sn_trainer_load_model(const sn_trainer *t, const char *dir, const char *desc, uint64_t seed,
                                const char *what) {
  if (dir && dir[0]) {
    errno = 0;  // stat sets it when the path is missing; a plain file leaves it 0
    if (!sn_is_dir(dir))
      sn_bad_input("%s: model folder '%s' is missing or unreadable (%s)", what, dir,
                   errno ? strerror(errno) : "not a folder");
    return sn_model_load(dir, t->ops);
  }
  if (!desc || !desc[0]) sn_bad_input("%s: neither a model folder nor a model description is configured", what);
  sn_model_config mc;
  char err[1024];
  int rc;
  if (desc[0] == '{') {
    rc = sn_config_parse_desc(&mc, desc, strlen(desc), what, err, sizeof err);
  } else {
    size_t len = 0;
    char *text = sn_read_file(desc, &len);
    if (!text) sn_bad_input("%s: cannot read model description '%s': %s", what, desc, strerror(errno));
    rc = sn_config_parse_desc(&mc, text, len, desc, err, sizeof err);
    free(text);
  }
  if (rc != 0) sn_bad_input("%s", err);
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

void sn_trainer_doc_set(sn_trainer *t, const sn_tokenizer *tok, const sn_model *m, sn_token_set *out) {
  sn_text_item *items = sn_train_examples_doc_items(&t->examples);
  build_set(t, tok, m, "docs", items, t->examples.n_docs, t->cfg.data.doc_prompt,
            t->cfg.data.max_doc_len, out);
  free(items);
}

// ---- checkpoint pieces ----------------------------------------------------------------------

// fp32 safetensors: the master weights on the CPU backend, so resuming from them is exact.
static int save_tower(const sn_model *m, const char *dir, const char *tokenizer_dir, char *err,
                      size_t errlen) {
  if (sn_mkdir_p(dir) != 0) {
    snprintf(err, errlen, "cannot create %s: %s", dir, strerror(errno));
    return -1;
  }
  if (sn_model_save(m, dir, SN_DTYPE_F32, err, errlen) != 0) return -1;
  if (tokenizer_dir && tokenizer_dir[0]) return sn_copy_tokenizer_files(tokenizer_dir, dir, err, errlen);
  return 0;
}

void sn_trainer_save_tower(const sn_model *m, const char *dir, const char *tokenizer_dir) {
  char err[1024];
  if (save_tower(m, dir, tokenizer_dir, err, sizeof err) != 0) sn_fatal("%s", err);
}

static const char *const OPT_PARTS[3] = {"master", "m", "v"};
// Per-rank optimizer shards (ZeRO-1) in a checkpoint folder: state-rank<R>.bin.
#define SHARD_FILE_FORMAT "%s/state-rank%05d.bin"

// This rank's slice of an optimizer (the whole buffer when replicated): prefix.{master,m,v} and
// prefix.begin, the slice's first element. host_buffers (3) keep the downloads alive until written.
static void add_optimizer_slice(sn_state_writer *w, const char *prefix, const sn_optimizer *opt,
                                float **host_buffers) {
  char name[64];
  for (int i = 0; i < 3; i++) {
    host_buffers[i] = sn_optimizer_download(opt, i);
    snprintf(name, sizeof name, "%s.%s", prefix, OPT_PARTS[i]);
    sn_state_add(w, name, host_buffers[i], opt->shard_len * sizeof(float));
  }
  snprintf(name, sizeof name, "%s.begin", prefix);
  sn_state_add_u64(w, name, opt->shard_begin);
}

// Copies one file's slices of prefix.{master,m,v} into the full host arrays; returns the elements.
static size_t read_optimizer_slice(const sn_state_reader *r, const char *path, const char *prefix, size_t n,
                                   float *full[3]) {
  char name[64];
  snprintf(name, sizeof name, "%s.begin", prefix);
  size_t begin = sn_state_get_u64(r, name), len = 0;
  for (int i = 0; i < 3; i++) {
    snprintf(name, sizeof name, "%s.%s", prefix, OPT_PARTS[i]);
    size_t bytes = 0;
    const void *src = sn_state_get(r, name, &bytes);
    if (!src) sn_bad_input("%s: section '%s' is missing", path, name);
    len = bytes / sizeof(float);
    if (begin + len > n)
      sn_bad_input("%s: '%s' covers elements [%zu, %zu) of a model with %zu (another model?)", path, name,
                   begin, begin + len, n);
    memcpy(full[i] + begin, src, len * sizeof(float));
  }
  return len;
}

// The whole optimizer state of `prefix` from a checkpoint folder: from state.bin when one rank
// wrote it all, else assembled from every rank's shard file, whatever the world size that wrote
// them (so a run resumes on another number of ranks).
static void load_full_optimizer(const char *dir, const sn_state_reader *global, const char *prefix, size_t n,
                                float *full[3]) {
  char name[64], path[SN_TRAIN_PATH_MAX + 64], err[1024];
  snprintf(name, sizeof name, "%s.master", prefix);
  if (sn_state_get(global, name, NULL)) {
    snprintf(path, sizeof path, "%s/state.bin", dir);
    if (read_optimizer_slice(global, path, prefix, n, full) != n)
      sn_bad_input("%s: '%s' does not cover the model's %zu parameters", path, name, n);
    return;
  }
  size_t covered = 0;
  for (int rank = 0;; rank++) {
    snprintf(path, sizeof path, SHARD_FILE_FORMAT, dir, rank);
    if (access(path, F_OK) != 0) break;
    sn_state_reader *r = sn_state_read(path, err, sizeof err);
    if (!r) sn_bad_input("%s", err);
    covered += read_optimizer_slice(r, path, prefix, n, full);
    sn_state_reader_free(r);
  }
  if (covered != n)
    sn_bad_input("%s: the optimizer state of '%s' covers %zu of %zu parameters (shard files missing?)", dir,
                 prefix, covered, n);
}

// Rank 0 makes the temporary folder, every rank writes its shard (when sharded), rank 0 writes the
// towers and state.bin and commits; every rank learns the outcome.
static int write_checkpoint(sn_trainer *t, int stage, int64_t step, const sn_ckpt_tower *towers, int ntowers,
                            sn_state_writer *state, sn_state_writer *shard) {
  char tmp[SN_TRAIN_PATH_MAX], err[1024] = "";
  double failed = 0;
  if (t->rank == 0 && sn_ckpt_begin(t->run_dir, stage, step, tmp, sizeof tmp, err, sizeof err) != 0) failed = 1;
  snprintf(tmp, sizeof tmp, "%s/.tmp-ckpt-%d-%lld", t->run_dir, stage, (long long)step);
  sn_comm_all_reduce_f64_host(t->comm, &failed, 1);  // the folder exists (or not) for every rank
  if (!failed && shard) {
    char path[SN_TRAIN_PATH_MAX + 64];
    snprintf(path, sizeof path, SHARD_FILE_FORMAT, tmp, t->rank);
    if (sn_state_write(shard, path) != 0) {
      snprintf(err, sizeof err, "rank %d: cannot write %s: %s", t->rank, path, strerror(errno));
      failed = 1;
    }
    sn_comm_all_reduce_f64_host(t->comm, &failed, 1);
  }
  if (t->rank == 0) {
    int rc = failed ? -1 : 0;
    if (failed && !err[0]) snprintf(err, sizeof err, "another rank could not write its optimizer shard");
    for (int i = 0; i < ntowers && rc == 0; i++) {
      char dir[SN_TRAIN_PATH_MAX + 64];
      snprintf(dir, sizeof dir, "%s/%s", tmp, towers[i].name);
      rc = save_tower(towers[i].model, dir, towers[i].tokenizer_dir, err, sizeof err);
    }
    if (rc == 0) {
      char path[SN_TRAIN_PATH_MAX + 64];
      snprintf(path, sizeof path, "%s/state.bin", tmp);
      if (sn_state_write(state, path) != 0) {
        snprintf(err, sizeof err, "cannot write %s: %s", path, strerror(errno));
        rc = -1;
      }
    }
    if (rc == 0) rc = sn_ckpt_commit(t->run_dir, tmp, stage, step, t->cfg.checkpoint.keep, err, sizeof err);
    else sn_ckpt_abort(tmp);
    if (rc != 0)
      sn_warn("checkpoint at stage %d step %lld failed, the previous checkpoint is kept: %s", stage,
              (long long)step, err);
    failed = rc != 0;
  } else if (err[0]) {
    sn_warn("%s", err);
  }
  sn_comm_all_reduce_f64_host(t->comm, &failed, 1);
  return failed ? -1 : 0;
}

int sn_trainer_checkpoint(sn_trainer *t, int stage, int64_t step, double elapsed_s,
                          const sn_sampler *sampler, const sn_ckpt_optimizer *opts, int nopts,
                          const sn_ckpt_tower *towers, int ntowers) {
  sn_state_writer *w = sn_state_writer_new(), *shard = NULL;
  float **host = callocCheck((size_t)nopts * 3, sizeof *host);  // downloaded optimizer state
  sn_state_add_u64(w, "config_hash", t->config_hash);
  sn_state_add_u64(w, "stage", (uint64_t)stage);
  sn_state_add_u64(w, "step", (uint64_t)step);
  sn_state_add_copy(w, "elapsed_s", &elapsed_s, sizeof elapsed_s);
  sn_data_cursor cursor;
  sn_sampler_get_cursor(sampler, &cursor);
  sn_state_add_copy(w, "cursor", &cursor, sizeof cursor);
  for (int i = 0; i < nopts; i++) {
    char name[64];
    snprintf(name, sizeof name, "%s.step", opts[i].prefix);
    sn_state_add_u64(w, name, (uint64_t)opts[i].opt->step);
    if (opts[i].opt->zero1) {
      if (!shard) shard = sn_state_writer_new();
      add_optimizer_slice(shard, opts[i].prefix, opts[i].opt, host + 3 * i);
    } else if (t->rank == 0) {
      add_optimizer_slice(w, opts[i].prefix, opts[i].opt, host + 3 * i);
    }
  }
  int rc = write_checkpoint(t, stage, step, towers, ntowers, w, shard);
  sn_state_writer_free(w);
  sn_state_writer_free(shard);
  for (int i = 0; i < 3 * nopts; i++) free(host[i]);
  free(host);
  return rc;
}

int64_t sn_trainer_restore(sn_trainer *t, int stage, sn_sampler *sampler, const sn_ckpt_optimizer *opts,
                           int nopts, double *elapsed_s) {
  char path[SN_TRAIN_PATH_MAX + 32], err[1024];
  snprintf(path, sizeof path, "%s/state.bin", t->resume_dir);
  sn_state_reader *r = sn_state_read(path, err, sizeof err);
  if (!r) sn_bad_input("%s", err);
  for (int i = 0; i < nopts; i++) {
    sn_optimizer *opt = opts[i].opt;
    size_t n = opt->model->num_elements;
    float *full[3];
    for (int k = 0; k < 3; k++) full[k] = mallocCheck(n * sizeof(float));
    load_full_optimizer(t->resume_dir, r, opts[i].prefix, n, full);
    char name[64];
    snprintf(name, sizeof name, "%s.step", opts[i].prefix);
    opt->step = (int64_t)sn_state_get_u64(r, name);
    sn_optimizer_upload_full(opt, full[0], full[1], full[2]);
    for (int k = 0; k < 3; k++) free(full[k]);
  }
  sn_data_cursor cursor;
  sn_state_get_exact(r, "cursor", &cursor, sizeof cursor);
  if (sn_sampler_set_cursor(sampler, &cursor, err, sizeof err) != 0) sn_bad_input("%s: %s", path, err);
  int64_t step = (int64_t)sn_state_get_u64(r, "step");
  sn_state_get_exact(r, "elapsed_s", elapsed_s, sizeof *elapsed_s);
  sn_state_reader_free(r);
  sn_train_log_truncate_after(&t->log, stage, step);
  if (t->rank == 0) sn_log("stage %d: resumed at step %lld from %s", stage, (long long)step, t->resume_dir);
  return step;
}

int sn_trainer_checkpoint_due(const sn_trainer *t, int64_t step, int64_t total, int stopping) {
  int periodic = t->cfg.checkpoint.every > 0 && step % t->cfg.checkpoint.every == 0;
  return periodic || stopping || step == total;
}

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
