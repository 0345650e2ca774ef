// Stage 2: the stage-1 query tower, frozen, is the teacher; a small student query encoder learns
// to reproduce its query embeddings with α·MSE + β·(1 − cos), through a learned projection when
// the widths differ, plus optionally γ·InfoNCE against the frozen stage-1 document embeddings.
// Teacher (and document) embeddings are computed once and cached in the run folder. Optional
// pseudo-queries (titles, first sentences of the training documents) join each batch for the
// MSE/cos terms only: more query-like text for the student to imitate the teacher on.
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "train_internal.h"

// Sequences per forward when embedding a whole set for a cache.
#define EMBED_BATCH_SEQS 64
// The pseudo-queries' order is seeded with seed + this (the samplers take seed and seed + 2).
#define PSEUDO_SEED_OFFSET 3

typedef struct {
  float *emb;  // (n, dim) host
  int64_t n;
  int dim;
} emb_cache;

typedef struct {
  uint64_t key;
  int64_t n;
  emb_cache *out;  // filled when the file is ready
} cache_probe;

// Reads a valid cache file of the expected key and size into probe->out; 0 when there is none.
static int load_cache(const char *path, void *ctx) {
  cache_probe *p = ctx;
  char err[1024];
  if (access(path, F_OK) != 0) return 0;
  sn_state_reader *r = sn_state_read(path, err, sizeof err);
  if (!r) {
    sn_warn("%s: %s", path, err);
    return 0;
  }
  int ok = sn_state_get_u64(r, "key") == p->key && (int64_t)sn_state_get_u64(r, "n") == p->n;
  if (ok) {
    emb_cache *out = p->out;
    out->n = p->n;
    out->dim = (int)sn_state_get_u64(r, "dim");
    out->emb = mallocCheck((size_t)out->n * out->dim * sizeof(float));
    sn_state_get_exact(r, "emb", out->emb, (size_t)out->n * out->dim * sizeof(float));
  }
  sn_state_reader_free(r);
  return ok;
}

// Embeddings of a whole token set by a frozen tower, cached as RUN/cache/<name>-<key>.bin (a state
// file: checksummed). Rank 0 computes and writes it; the other ranks wait for the file.
static void cached_embeddings(sn_trainer *t, sn_model *m, sn_pooling pooling, const sn_token_set *set,
                              const char *name, uint64_t key, emb_cache *out) {
  char path[SN_TRAIN_PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/%s-%016llx.bin", t->cache_dir, name, (unsigned long long)key);
  cache_probe probe = {.key = key, .n = set->n_seqs, .out = out};
  if (t->rank != 0) {
    sn_wait_for(path, load_cache, &probe, t->rank);
    return;
  }
  if (load_cache(path, &probe)) {
    sn_log("%s: %lld embeddings from the cache %s", name, (long long)out->n, path);
    return;
  }
  const int max_seqs = EMBED_BATCH_SEQS;
  sn_tower_runner r;
  sn_runner_init(&r, m, pooling, max_seqs, max_seqs * SN_MAX(set->max_seq_len, 1));
  double t0 = sn_now_s();
  out->emb = sn_runner_embed_set(&r, set, 1, name);
  out->n = set->n_seqs;
  out->dim = r.out_dim;
  sn_runner_free(&r);
  sn_log("%s: embedded %lld sequences in %.1f s", name, (long long)out->n, sn_now_s() - t0);
  sn_state_writer *w = sn_state_writer_new();
  sn_state_add_u64(w, "key", key);
  sn_state_add_u64(w, "n", (uint64_t)out->n);
  sn_state_add_u64(w, "dim", (uint64_t)out->dim);
  sn_state_add(w, "emb", out->emb, (size_t)out->n * out->dim * sizeof(float));
  if (sn_mkdir_p(t->cache_dir) != 0 || sn_state_write(w, path) != 0)
    sn_fatal("cannot write %s: %s", path, strerror(errno));
  sn_state_writer_free(w);
}

// A key for a frozen tower's embeddings: the weights' file content and the token set's key.
static uint64_t tower_key(const char *dir, uint64_t set_key) {
  char path[SN_TRAIN_PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  size_t len = 0;
  char *bytes = sn_read_file(path, &len);
  if (!bytes) sn_bad_input("cannot read %s: %s", path, strerror(errno));
  uint64_t h = sn_hash64(bytes, len, set_key);
  free(bytes);
  return h;
}

// Rows `index` of a host cache, uploaded to backend memory dst (n, dim).
static void upload_rows(const sn_ops *ops, float *dst, const emb_cache *cache, const int64_t *index,
                        int n, float *host_scratch) {
  for (int i = 0; i < n; i++)
    memcpy(host_scratch + (size_t)i * cache->dim, cache->emb + (size_t)index[i] * cache->dim,
           (size_t)cache->dim * sizeof(float));
  ops->upload(dst, host_scratch, (size_t)n * cache->dim * sizeof(float));
}

// What one micro-batch needs: the student's runner, the cached teacher (and document) embeddings
// and the loss buffers, sized once for the rank's batch.
typedef struct {
  sn_trainer *t;
  sn_tower_runner run;
  sn_optimizer *opt;
  const emb_cache *teacher_emb, *doc_emb;  // doc_emb NULL without the gamma term
  int C;
  float *s_emb, *s_raw, *ds_raw, *ds_emb;  // (Bq, C) normalised student, raw student, gradients
  void *ds_raw_storage;                    // (Bq, C) storage dtype
  float *t_rows;                           // (Bq, C) teacher rows of the batch
  float *d_rows, *dd_rows;                 // (Nd, C) frozen document rows, their (unused) gradient
  int32_t *targets;                        // (Bq) positives, for the gamma term
  float *terms;                            // (3) mse, cos, infonce
  float *host_rows;                        // (max(Bq + Pq, Nd), C) staging
  // Pseudo-queries: Pq a rank's share of stage2.pseudo_queries.per_batch (0: none).
  int Pq;
  const sn_token_set *pseudo_set;          // the student's tokens of the pseudo-queries
  const emb_cache *pseudo_emb;             // the teacher's embeddings of them
  int64_t *pseudo_index;                   // (Pq) this micro-batch's
  int32_t *pseudo_ids, *ids;               // packed pseudo-query tokens; real + pseudo tokens
  int64_t pseudo_ids_cap, ids_cap;
  int32_t *pseudo_cu, *cu;                 // (Pq + 1), (Bq + Pq + 1) cumulative lengths
} stage2_ctx;

// The batch's pseudo-queries follow its real ones: global slot g = step * per_batch + rank * Pq + j
// walks the (seeded, shuffled) set round and round, so the choice is a function of the batch's step
// alone and resuming needs no cursor of its own. Packs real + pseudo tokens into c->ids / c->cu.
static int64_t pack_with_pseudo(stage2_ctx *c, const sn_batch *b) {
  const int64_t per_batch = (int64_t)c->Pq * c->t->world, n_set = c->pseudo_set->n_seqs;
  const int64_t first = ((int64_t)b->step * per_batch + (int64_t)c->t->rank * c->Pq) % n_set;
  for (int j = 0; j < c->Pq; j++) c->pseudo_index[j] = (first + j) % n_set;
  int64_t n_pseudo_tokens = sn_token_set_pack(c->pseudo_set, c->pseudo_index, c->Pq, &c->pseudo_ids,
                                              &c->pseudo_ids_cap, c->pseudo_cu);
  int64_t total = b->n_query_tokens + n_pseudo_tokens;
  if (total > c->ids_cap) {
    c->ids_cap = SN_MAX(total, 2 * c->ids_cap);
    c->ids = reallocCheck(c->ids, (size_t)c->ids_cap * sizeof *c->ids);
  }
  memcpy(c->ids, b->query_ids, (size_t)b->n_query_tokens * sizeof *c->ids);
  memcpy(c->ids + b->n_query_tokens, c->pseudo_ids, (size_t)n_pseudo_tokens * sizeof *c->ids);
  memcpy(c->cu, b->query_cu_seqlens, (size_t)(b->n_queries + 1) * sizeof *c->cu);
  for (int j = 1; j <= c->Pq; j++) c->cu[b->n_queries + j] = (int32_t)(b->n_query_tokens + c->pseudo_cu[j]);
  return total;
}

// One micro-batch (sn_stage.micro_step): student forward, α·MSE + β·(1 − cos) against the teacher
// (+ w·(α·MSE + β·(1 − cos)) over the pseudo-queries, + γ·InfoNCE of the real queries against the
// frozen documents), backward.
static int64_t micro_step(void *ctx, const sn_batch *b, int last_micro, double *terms) {
  stage2_ctx *c = ctx;
  sn_trainer *t = c->t;
  const sn_cfg_stage2 *s2 = &t->cfg.stage2;
  const sn_ops *ops = t->ops;
  int n = b->n_queries, m = c->Pq, C = c->C;
  // Each rank's means are over its own queries; dividing by the world size makes the sum over
  // ranks (the gradient all-reduce) the mean over the global batch.
  float per_rank = 1.0f / (float)t->world;
  int64_t tokens = b->n_query_tokens;
  if (m) {
    tokens = pack_with_pseudo(c, b);
    sn_runner_forward(&c->run, c->ids, c->cu, n + m, 1, c->s_emb, "student queries");
  } else {
    sn_runner_forward(&c->run, b->query_ids, b->query_cu_seqlens, n, 1, c->s_emb, "student queries");
  }
  upload_rows(ops, c->t_rows, c->teacher_emb, b->example_index, n, c->host_rows);
  if (m) upload_rows(ops, c->t_rows + (size_t)n * C, c->pseudo_emb, c->pseudo_index, m, c->host_rows);
  ops->memset_zero(c->terms, 3 * sizeof(float));
  ops->storage_to_f32(c->s_raw, sn_runner_raw(&c->run), (size_t)(n + m) * C);
  ops->distill_loss(c->terms, c->ds_raw, c->s_raw, c->t_rows, n, C, s2->alpha * per_rank, s2->beta * per_rank);
  if (m) {
    const float w = s2->pseudo_queries.weight * per_rank;
    ops->distill_loss(c->terms, c->ds_raw + (size_t)n * C, c->s_raw + (size_t)n * C, c->t_rows + (size_t)n * C,
                      m, C, s2->alpha * w, s2->beta * w);
  }
  ops->f32_to_storage(c->ds_raw_storage, c->ds_raw, (size_t)(n + m) * C);
  ops->memset_zero(c->ds_emb, (size_t)(n + m) * C * sizeof(float));
  if (c->doc_emb) {
    upload_rows(ops, c->d_rows, c->doc_emb, b->doc_index, b->n_docs, c->host_rows);
    ops->upload(c->targets, b->pos_index, (size_t)n * sizeof(int32_t));
    ops->memset_zero(c->dd_rows, (size_t)b->n_docs * C * sizeof(float));
    ops->contrastive_loss(c->terms + 2, c->ds_emb, c->dd_rows, c->s_emb, c->d_rows, c->targets, n, b->n_docs, C,
                          1.0f / s2->temperature, s2->gamma * per_rank / (float)n);
  }
  if (last_micro) sn_optimizer_arm_overlap(c->opt);
  sn_runner_backward(&c->run, c->ds_emb, c->s_emb, c->ds_raw_storage);
  float host_terms[3];
  ops->download(host_terms, c->terms, sizeof host_terms);
  for (int i = 0; i < 3; i++) terms[i] += host_terms[i];
  return tokens;
}

// The loss buffers of a micro-batch (ops NULL: counted only, for the plan; es the storage size);
// returns their bytes. Bs student rows: Bq queries (the gamma term's rows) + the pseudo-queries.
// Without documents (gamma = 0, Nd = 0) the document rows are not allocated.
static size_t loss_buffers(stage2_ctx *c, const sn_ops *ops, size_t es, int Bs, int Bq, int Nd, int Ct) {
  size_t n = 0;
  const size_t rows = (size_t)Bs * Ct * sizeof(float), docs = (size_t)Nd * Ct * sizeof(float);
  c->s_emb = sn_plan_take(ops, rows, &n);
  c->s_raw = sn_plan_take(ops, rows, &n);
  c->ds_raw = sn_plan_take(ops, rows, &n);
  c->ds_raw_storage = sn_plan_take(ops, (size_t)Bs * Ct * es, &n);
  c->ds_emb = sn_plan_take(ops, rows, &n);
  c->t_rows = sn_plan_take(ops, rows, &n);
  c->d_rows = Nd ? sn_plan_take(ops, docs, &n) : NULL;
  c->dd_rows = Nd ? sn_plan_take(ops, docs, &n) : NULL;
  c->targets = Nd ? sn_plan_take(ops, (size_t)Bq * sizeof(int32_t), &n) : NULL;
  c->terms = sn_plan_take(ops, 3 * sizeof(float), &n);
  if (ops) c->host_rows = mallocCheck((size_t)SN_MAX(SN_MAX(Bs, Nd), 1) * Ct * sizeof(float));
  return n;
}

// ---- the student -------------------------------------------------------------------------------

// A student cut from the teacher (DistilBERT's initialisation): the teacher's architecture with its
// first `layers` blocks, each tensor a copy of the teacher's tensor of the same name.
static sn_model *student_from_teacher(const sn_model *teacher, int layers, const sn_ops *ops) {
  if (layers > teacher->cfg.n_layers)
    sn_bad_input("stage2.student_from_teacher = %d, but the stage-1 query tower has %d blocks", layers,
                 teacher->cfg.n_layers);
  sn_model_config mc = teacher->cfg;
  mc.n_layers = layers;
  sn_model *student = sn_model_new(&mc, ops, 0);
  const size_t es = ops->storage_size;
  for (int i = 0; i < student->nparams; i++) {
    const sn_param *p = &student->params[i], *from = sn_model_find_param(teacher, p->name);
    if (!from || from->count != p->count) sn_fatal("stage 2: the teacher has no tensor %s of %zu elements", p->name, p->count);
    ops->copy((char *)student->weights + p->offset * es, (const char *)teacher->weights + from->offset * es, p->count * es);
  }
  return student;
}

// ---- pseudo-queries ----------------------------------------------------------------------------

// A rank's pseudo-queries per micro-batch: 0 without them.
static int pseudo_per_rank(const sn_cfg_stage2 *s2, int world) {
  return strcmp(s2->pseudo_queries.from, "none") ? s2->pseudo_queries.per_batch / world : 0;
}

// The pseudo-query texts (stage2.pseudo_queries) and their two token sets, the student's and the
// teacher's; exits 2 when the training documents yield none.
static void pseudo_query_sets(sn_trainer *t, const sn_tokenizer *student_tok, const sn_model *student,
                              const sn_tokenizer *teacher_tok, const sn_model *teacher, sn_token_set *student_set,
                              sn_token_set *teacher_set) {
  const sn_cfg_stage2 *s2 = &t->cfg.stage2;
  const char *from = s2->pseudo_queries.from;
  unsigned sources = !strcmp(from, "titles") ? SN_PSEUDO_TITLES
                     : !strcmp(from, "short_texts") ? SN_PSEUDO_SHORT_TEXTS
                                                     : SN_PSEUDO_TITLES | SN_PSEUDO_SHORT_TEXTS;
  if (s2->pseudo_queries.per_batch % t->world != 0)
    sn_bad_input("stage2.pseudo_queries.per_batch (%d) must be a multiple of the number of ranks (%d)",
                 s2->pseudo_queries.per_batch, t->world);
  sn_pseudo_queries pq;
  sn_pseudo_queries_build(&pq, &t->examples, sources, s2->pseudo_queries.words, s2->pseudo_queries.max,
                          t->cfg.seed + PSEUDO_SEED_OFFSET);
  if (pq.n == 0)
    sn_bad_input("stage2.pseudo_queries.from = %s: the training documents have no %s", from,
                 sources == SN_PSEUDO_TITLES ? "titles" : "titles or text");
  sn_log("stage 2: %lld pseudo-queries (%s), %d a batch", (long long)pq.n, from, s2->pseudo_queries.per_batch);
  sn_trainer_query_text_set(t, student_tok, student, "pseudo-student", pq.items, pq.n, student_set);
  sn_trainer_query_text_set(t, teacher_tok, teacher, "pseudo-stage1", pq.items, pq.n, teacher_set);
  sn_pseudo_queries_free(&pq);
}

// ---- the memory plan of this stage (what sn_train_stage2 allocates) ----------------------------

void sn_stage2_plan(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world) {
  const sn_cfg_stage2 *s2 = &cfg->stage2;
  sn_model_config tc, sc;
  sn_trainer_model_config(cfg->stage1.model, cfg->stage1.model_desc, "stage1.model", &tc);
  if (s2->student_from_teacher > 0) {
    sc = tc;
    sc.n_layers = s2->student_from_teacher;
  } else {
    sn_trainer_model_config(s2->student, s2->student_desc, "stage2.student", &sc);
  }
  sn_model *teacher = sn_model_plan(&tc, ops, 0);
  sn_model *student = sn_model_plan(&sc, ops, sc.hidden != tc.hidden ? tc.hidden : 0);
  const size_t es = ops->storage_size, Nt = teacher->num_elements, Ns = student->num_elements;
  const int use_docs = s2->gamma > 0, len_q = cfg->data.max_query_len, len_d = cfg->data.max_doc_len;
  const int Bq = SN_MAX(s2->batch_queries / world, 1), Nd = use_docs ? Bq * (s2->negatives_per_query + 1) : 0;
  const int Bs = Bq + pseudo_per_rank(s2, world);  // student rows
  const int Ct = tc.hidden, zero = world > 1 ? cfg->dist.zero : 0;

  // The caches: teacher, student and (for the gamma term) document tower loaded at once, one
  // inference runner over the longest set.
  sn_plan_phase *ph = sn_plan_phase_new(p, "stage 2 embedding caches", 2);
  sn_plan_add(ph, "weights", (Nt * (1 + use_docs) + Ns) * es, "teacher%s and student", use_docs ? ", document tower" : "");
  const int len = use_docs ? SN_MAX(len_q, len_d) : len_q;
  sn_plan_add(ph, "activations", sn_runner_plan_bytes(teacher, EMBED_BATCH_SEQS, EMBED_BATCH_SEQS * len, 0,
                                                      SN_RECOMPUTE_NONE),
              "inference, %d sequences x %d tokens", EMBED_BATCH_SEQS, len);

  ph = sn_plan_phase_new(p, "stage 2 training", 2);
  sn_plan_add(ph, "weights", Ns * es, "student, %.3gM parameters x %s", (double)Ns / 1e6, sn_dtype_name(ops->storage));
  sn_optimizer_plan op = sn_optimizer_plan_bytes(student, world, zero, &s2->optim);
  sn_plan_add(ph, "gradients", op.grads, zero == 2 ? "working buffers (ZeRO-2)" : "full buffer");
  sn_plan_add(ph, "optimizer state", op.master + op.moments + op.exchange, "%s%s%s", op.master ? "fp32 master, " : "",
              op.moments_desc, zero ? ", 1/world shard (ZeRO-1)" : "");
  sn_plan_add(ph, "activations", sn_runner_plan_bytes(student, Bs, Bs * len_q, 1, SN_RECOMPUTE_NONE),
              "%d queries x %d tokens", Bs, len_q);
  stage2_ctx counted;
  sn_plan_add(ph, "loss buffers", loss_buffers(&counted, NULL, es, Bs, Bq, Nd, Ct), "%d queries, %d documents per rank",
              Bs, Nd);
  sn_workspace_shape ws = {.max_tokens = Bs * len_q, .n_heads = sc.n_heads, .head_dim = sc.head_dim,
                           .widest = sn_model_widest_row(student), .loss_rows = Bs, .loss_cols = Nd,
                           .max_span_count = student->nparams};
  sn_plan_add(ph, "backend workspaces", ops->workspace_bytes(&ws), "scratch of the ops and cuBLASLt");
  sn_model_free(teacher);
  sn_model_free(student);
}

int sn_train_stage2(sn_trainer *t) {
  const sn_cfg_stage2 *s2 = &t->cfg.stage2;
  const sn_ops *ops = t->ops;
  int resuming = (t->resume_stage == 2);
  char teacher_dir[SN_TRAIN_PATH_MAX + 32], doc_dir[SN_TRAIN_PATH_MAX + 32];
  snprintf(teacher_dir, sizeof teacher_dir, "%s/final/query_tower", t->run_dir);
  snprintf(doc_dir, sizeof doc_dir, "%s/final/doc_tower", t->run_dir);
  if (!sn_is_dir(teacher_dir))
    sn_bad_input("stage 2 needs the stage-1 teacher, but %s does not exist: run stage 1 first "
                 "(sn_train --stage 1, or --stage all)", teacher_dir);
  if (!s2->student[0] && !s2->student_desc[0] && s2->student_from_teacher == 0)
    sn_bad_input("stage 2: set 'stage2.student' (a model folder), 'stage2.student_desc' or 'stage2.student_from_teacher'");

  // Teacher (frozen) and its tokenizer (copied into its folder by stage 1).
  sn_model *teacher = sn_model_load(teacher_dir, ops);
  sn_tokenizer *teacher_tok = sn_trainer_load_tokenizer(NULL, teacher_dir, "stage-1 query tower tokenizer");
  int Ct = teacher->cfg.hidden;

  // Student: fresh, from a folder or cut from the teacher; a projection to the teacher's width when
  // they differ.
  char sdir[SN_TRAIN_PATH_MAX + 32];
  snprintf(sdir, sizeof sdir, "%s/student", t->resume_dir);
  const int from_teacher = s2->student_from_teacher > 0;
  sn_model *student = resuming       ? sn_model_load(sdir, ops)
                      : from_teacher ? student_from_teacher(teacher, s2->student_from_teacher, ops)
                                     : sn_trainer_load_model(t, s2->student, s2->student_desc,
                                                             t->cfg.seed + 1, "stage2.student");
  if (!resuming && student->cfg.hidden != Ct) student = sn_model_add_projection(student, Ct, t->cfg.seed + 2);
  const char *student_dir = from_teacher ? teacher_dir : s2->student;  // where the tokenizer lies
  sn_tokenizer *student_tok = sn_trainer_load_tokenizer(s2->tokenizer, student_dir, "stage2.tokenizer");
  sn_trainer_check_vocab(student_tok, student, "stage2.tokenizer");
  char student_tok_dir[SN_TRAIN_PATH_MAX];
  sn_tokenizer_dir_of(s2->tokenizer, student_dir, student_tok_dir, sizeof student_tok_dir);
  sn_log("stage 2 student: %s, %d layers, hidden %d%s, %.1fM parameters", sn_arch_name(student->cfg.arch),
         student->cfg.n_layers, student->cfg.hidden,
         sn_model_find_param(student, "projection.weight") ? " + projection" : "",
         (double)student->num_elements / 1e6);

  // Data: the student's own tokenization of the queries; the teacher's embeddings of them.
  sn_token_set student_set, teacher_set, doc_set = {0};
  sn_trainer_query_set(t, student_tok, student, "query-student", &student_set);
  sn_trainer_query_set(t, teacher_tok, teacher, "query-stage1", &teacher_set);
  emb_cache teacher_emb = {0}, doc_emb = {0}, pseudo_emb = {0};
  cached_embeddings(t, teacher, sn_pooling_from_name(t->cfg.stage1.pooling, "stage1.pooling"), &teacher_set, "teacher-queries",
                    tower_key(teacher_dir, teacher_set.cache_key), &teacher_emb);
  const int Pq = pseudo_per_rank(s2, t->world);
  sn_token_set pseudo_student_set = {0}, pseudo_teacher_set = {0};
  if (Pq) {
    pseudo_query_sets(t, student_tok, student, teacher_tok, teacher, &pseudo_student_set, &pseudo_teacher_set);
    cached_embeddings(t, teacher, sn_pooling_from_name(t->cfg.stage1.pooling, "stage1.pooling"), &pseudo_teacher_set,
                      "teacher-pseudo", tower_key(teacher_dir, pseudo_teacher_set.cache_key), &pseudo_emb);
  }
  int use_docs = s2->gamma > 0;
  if (use_docs) {
    sn_model *doc_tower = sn_model_load(doc_dir, ops);
    sn_trainer_doc_set(t, teacher_tok, doc_tower, &doc_set);
    cached_embeddings(t, doc_tower, sn_pooling_from_name(t->cfg.stage1.pooling, "stage1.pooling"), &doc_set, "stage1-docs",
                      tower_key(doc_dir, doc_set.cache_key), &doc_emb);
    sn_model_free(doc_tower);
  }
  sn_model_free(teacher);

  if (s2->batch_queries % t->world != 0)
    sn_bad_input("stage2.batch_queries (%d) must be a multiple of the number of ranks (%d)",
                 s2->batch_queries, t->world);
  sn_sampler_config sc = {.global_batch_queries = s2->batch_queries,
                          .negatives_per_query = use_docs ? s2->negatives_per_query : 0,
                          .seed = t->cfg.seed + 2,
                          .world_size = t->world,
                          .rank = t->rank,
                          .queries_only = !use_docs,
                          .forbid_random_negatives = !t->cfg.data.allow_random_negatives};
  sn_sampler *sampler = sn_sampler_init(&sc, &t->examples, &student_set, use_docs ? &doc_set : NULL);
  int64_t per_epoch = sn_sampler_steps_in_epoch(sampler, 0);
  int64_t total = sn_trainer_total_steps(s2->steps, s2->epochs, per_epoch, s2->grad_accum);
  int Bq = s2->batch_queries / t->world;
  int Nd = use_docs ? Bq * (s2->negatives_per_query + 1) : 0;
  sn_log("stage 2: %lld queries, %lld batches per epoch, %lld steps, %d queries per rank",
         (long long)t->examples.n_examples, (long long)per_epoch, (long long)total, Bq);

  stage2_ctx c = {.t = t, .C = Ct, .teacher_emb = &teacher_emb, .doc_emb = use_docs ? &doc_emb : NULL, .Pq = Pq};
  if (Pq) {
    c.pseudo_set = &pseudo_student_set;
    c.pseudo_emb = &pseudo_emb;
    c.pseudo_index = mallocCheck((size_t)Pq * sizeof *c.pseudo_index);
    c.pseudo_cu = mallocCheck((size_t)(Pq + 1) * sizeof *c.pseudo_cu);
    c.cu = mallocCheck((size_t)(Bq + Pq + 1) * sizeof *c.cu);
  }
  const int longest = SN_MAX(SN_MAX(student_set.max_seq_len, Pq ? pseudo_student_set.max_seq_len : 0), 1);
  sn_runner_init(&c.run, student, sn_pooling_from_name(s2->pooling, "stage2.pooling"), Bq + Pq, (Bq + Pq) * longest);
  if (c.run.out_dim != Ct) sn_bad_input("stage 2: the student's output width %d differs from the teacher's %d", c.run.out_dim, Ct);
  loss_buffers(&c, ops, ops->storage_size, Bq + Pq, Bq, Nd, Ct);

  sn_optimizer opt;
  sn_trainer_optimizer_init(t, &opt, student, &s2->optim, total, 0);
  c.opt = &opt;
  sn_export_info student_export;
  sn_trainer_export_info(t, student, student_tok, s2->pooling, SN_EXPORT_ROLE_QUERY, &student_export);
  sn_stage stage = {.number = 2, .grad_accum = s2->grad_accum, .total_steps = total, .sampler = sampler,
                    .n_models = 1, .models = {student}, .optimizers = {{"student", &opt}},
                    .n_towers = 1, .n_ckpt_towers = 1, .towers = {{"student", student, student_tok_dir, .export_info = &student_export}},
                    .n_terms = use_docs ? 3 : 2, .term_names = {"mse", "cos", "infonce"},
                    .micro_step = micro_step, .ctx = &c};
  int rc = sn_train_loop(t, &stage, resuming);
  void *bufs[] = {c.s_emb, c.s_raw, c.ds_raw, c.ds_raw_storage, c.ds_emb, c.t_rows, c.d_rows, c.dd_rows,
                  c.targets, c.terms};
  for (size_t i = 0; i < SN_ARRAY_LEN(bufs); i++)
    if (bufs[i]) ops->free(bufs[i]);
  free(c.host_rows);
  free(c.pseudo_index);
  free(c.pseudo_ids);
  free(c.ids);
  free(c.pseudo_cu);
  free(c.cu);
  free(pseudo_emb.emb);
  if (Pq) {
    sn_token_set_close(&pseudo_student_set);
    sn_token_set_close(&pseudo_teacher_set);
  }
  free(teacher_emb.emb);
  free(doc_emb.emb);
  sn_runner_free(&c.run);
  sn_optimizer_free(&opt);
  sn_model_free(student);
  sn_sampler_free(sampler);
  sn_token_set_close(&student_set);
  sn_token_set_close(&teacher_set);
  if (use_docs) sn_token_set_close(&doc_set);
  sn_tokenizer_free(teacher_tok);
  sn_tokenizer_free(student_tok);
  return rc;
}
