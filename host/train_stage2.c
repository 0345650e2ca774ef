// Stage 2: the stage-1 query tower, frozen, is the teacher; a small student query encoder learns
// to reproduce its query embeddings with α·MSE + β·(1 − cos), through a learned projection when
// the widths differ, plus optionally γ·InfoNCE against the frozen stage-1 document embeddings.
// Teacher (and document) embeddings are computed once and cached in the run folder.
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
  if (!s2->student[0] && !s2->student_desc[0])
    sn_bad_input("stage 2: set 'stage2.student' (a model folder) or 'stage2.student_desc'");

  // Teacher (frozen) and its tokenizer (copied into its folder by stage 1).
  sn_model *teacher = sn_model_load(teacher_dir, ops);
  sn_tokenizer *teacher_tok = sn_trainer_load_tokenizer(NULL, teacher_dir, "stage-1 query tower tokenizer");
  int Ct = teacher->cfg.hidden;

  // Student: fresh or from a folder; a projection to the teacher's width when they differ.
  char sdir[SN_TRAIN_PATH_MAX + 32];
  snprintf(sdir, sizeof sdir, "%s/student", t->resume_dir);
  sn_model *student = resuming ? sn_model_load(sdir, ops)
                               : sn_trainer_load_model(t, s2->student, s2->student_desc,
                                                       t->cfg.seed + 1, "stage2.student");
  if (!resuming && student->cfg.hidden != Ct) student = sn_model_add_projection(student, Ct, t->cfg.seed + 2);
  sn_tokenizer *student_tok = sn_trainer_load_tokenizer(s2->tokenizer, s2->student, "stage2.tokenizer");
  sn_trainer_check_vocab(student_tok, student, "stage2.tokenizer");
  char student_tok_dir[SN_TRAIN_PATH_MAX];
  sn_tokenizer_dir_of(s2->tokenizer, s2->student, student_tok_dir, sizeof student_tok_dir);
  sn_log("stage 2 student: %s, %d layers, hidden %d%s, %.1fM parameters", sn_arch_name(student->cfg.arch),
         student->cfg.n_layers, student->cfg.hidden,
         sn_model_find_param(student, "projection.weight") ? " + projection" : "",
         (double)student->num_elements / 1e6);

  // Data: the student's own tokenization of the queries; the teacher's embeddings of them.
  sn_token_set student_set, teacher_set, doc_set = {0};
  sn_trainer_query_set(t, student_tok, student, "query-student", &student_set);
  sn_trainer_query_set(t, teacher_tok, teacher, "query-stage1", &teacher_set);
  emb_cache teacher_emb = {0}, doc_emb = {0};
  cached_embeddings(t, teacher, sn_pooling_from_name(t->cfg.stage1.pooling, "stage1.pooling"), &teacher_set, "teacher-queries",
                    tower_key(teacher_dir, teacher_set.cache_key), &teacher_emb);
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

  sn_tower_runner run;
  sn_runner_init(&run, student, sn_pooling_from_name(s2->pooling, "stage2.pooling"), Bq, Bq * SN_MAX(student_set.max_seq_len, 1));
  if (run.out_dim != Ct) sn_bad_input("stage 2: the student's output width %d differs from the teacher's %d", run.out_dim, Ct);
  float *s_emb = ops->alloc((size_t)Bq * Ct * sizeof(float));     // normalised student
  float *s_raw = ops->alloc((size_t)Bq * Ct * sizeof(float));     // raw student, fp32
  float *ds_raw = ops->alloc((size_t)Bq * Ct * sizeof(float));
  void *ds_raw_storage = ops->alloc((size_t)Bq * Ct * ops->storage_size);
  float *ds_emb = ops->alloc((size_t)Bq * Ct * sizeof(float));
  float *t_rows = ops->alloc((size_t)Bq * Ct * sizeof(float));
  float *d_rows = use_docs ? ops->alloc((size_t)Nd * Ct * sizeof(float)) : NULL;
  float *dd_rows = use_docs ? ops->alloc((size_t)Nd * Ct * sizeof(float)) : NULL;
  int32_t *targets = use_docs ? ops->alloc((size_t)Bq * sizeof(int32_t)) : NULL;
  float *terms = ops->alloc(3 * sizeof(float));  // mse, cos, infonce
  float *host_rows = mallocCheck((size_t)SN_MAX(Bq, Nd) * Ct * sizeof(float));

  sn_model_alloc_grads(student);
  sn_optimizer opt;
  sn_trainer_optimizer_init(t, &opt, student, &s2->optim, total);
  int64_t step = 0;
  double elapsed_before = 0;
  sn_ckpt_optimizer opts[1] = {{"student", &opt}};
  if (resuming) step = sn_trainer_restore(t, 2, sampler, opts, 1, &elapsed_before);

  // Each rank's means are over its own queries; dividing by the world size makes the sum over
  // ranks (the gradient all-reduce) the mean over the global batch.
  float per_rank = 1.0f / (float)t->world;
  double t0 = sn_now_s();
  int stopped = 0;
  while (step < total && !stopped) {
    sn_model_zero_grads(student);
    double totals[5] = {0};  // mse, cos, infonce, tokens, stop
    for (int micro = 0; micro < s2->grad_accum; micro++) {
      const sn_batch *b = sn_sampler_next_or_die(sampler);
      int n = b->n_queries;
      float micro_scale = per_rank / (float)s2->grad_accum;
      sn_runner_forward(&run, b->query_ids, b->query_cu_seqlens, n, 1, s_emb, "student queries");
      upload_rows(ops, t_rows, &teacher_emb, b->example_index, n, host_rows);
      ops->memset_zero(terms, 3 * sizeof(float));
      ops->storage_to_f32(s_raw, sn_runner_raw(&run), (size_t)n * Ct);
      ops->distill_loss(terms, ds_raw, s_raw, t_rows, n, Ct, s2->alpha * micro_scale, s2->beta * micro_scale);
      ops->f32_to_storage(ds_raw_storage, ds_raw, (size_t)n * Ct);
      ops->memset_zero(ds_emb, (size_t)n * Ct * sizeof(float));
      if (use_docs) {
        upload_rows(ops, d_rows, &doc_emb, b->doc_index, b->n_docs, host_rows);
        ops->upload(targets, b->pos_index, (size_t)n * sizeof(int32_t));
        ops->memset_zero(dd_rows, (size_t)b->n_docs * Ct * sizeof(float));
        ops->contrastive_loss(terms + 2, ds_emb, dd_rows, s_emb, d_rows, targets, n, b->n_docs, Ct,
                              1.0f / s2->temperature, s2->gamma * micro_scale / (float)n);
      }
      if (micro == s2->grad_accum - 1) sn_optimizer_arm_overlap(&opt);
      sn_runner_backward(&run, ds_emb, s_emb, ds_raw_storage);
      float host_terms[3];
      ops->download(host_terms, terms, sizeof host_terms);
      for (int i = 0; i < 3; i++) totals[i] += host_terms[i];
      totals[3] += (double)b->n_query_tokens;
    }
    totals[4] = sn_stop_requested ? 1 : 0;
    sn_comm_all_reduce_f64_host(t->comm, totals, 5);
    sn_optimizer_sync_grads(&opt);
    sn_optimizer *const optimizers[1] = {&opt};
    double grad_norm = sn_optimizers_grad_norm(optimizers, 1, 1.0f);
    float lr = sn_optimizer_step(&opt, grad_norm, 1.0f);
    step++;
    double elapsed = elapsed_before + (sn_now_s() - t0);
    sn_step_record rec = {.stage = 2, .step = step, .total_steps = total,
                          .loss = (float)(totals[0] + totals[1] + totals[2]), .lr = lr,
                          .grad_norm = (float)grad_norm, .tokens = (int64_t)totals[3],
                          .elapsed_s = elapsed, .n_terms = use_docs ? 3 : 2,
                          .term_names = {"mse", "cos", "infonce"},
                          .terms = {(float)totals[0], (float)totals[1], (float)totals[2]}};
    if (!isfinite(rec.loss)) sn_fatal("stage 2: the loss is %f at step %lld", rec.loss, (long long)step);
    sn_trainer_check_replicas(t, &student, 1, step, &rec);
    sn_train_log_step(&t->log, &rec);
    stopped = sn_trainer_should_stop(t, totals[4]) && step < total;
    if (sn_trainer_checkpoint_due(t, step, total, stopped)) {
      sn_ckpt_tower towers[1] = {{"student", student, student_tok_dir}};
      sn_trainer_checkpoint(t, 2, step, elapsed, sampler, opts, 1, towers, 1);
    }
  }
  sn_train_log_end_stage(&t->log);
  if (!stopped && t->rank == 0) {
    char dir[SN_TRAIN_PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/final/student", t->run_dir);
    sn_trainer_save_tower(student, dir, student_tok_dir);
    sn_plot_loss_svg(t->run_dir, 2);
    sn_log("stage 2: done, student in %s", dir);
  }
  sn_comm_barrier(t->comm);  // the final student exists for every rank
  void *bufs[] = {s_emb, s_raw, ds_raw, ds_raw_storage, ds_emb, t_rows, d_rows, dd_rows, targets, terms};
  for (size_t i = 0; i < SN_ARRAY_LEN(bufs); i++)
    if (bufs[i]) ops->free(bufs[i]);
  free(host_rows);
  free(teacher_emb.emb);
  free(doc_emb.emb);
  sn_runner_free(&run);
  sn_optimizer_free(&opt);
  sn_model_free(student);
  sn_sampler_free(sampler);
  sn_token_set_close(&student_set);
  sn_token_set_close(&teacher_set);
  if (use_docs) sn_token_set_close(&doc_set);
  sn_tokenizer_free(teacher_tok);
  sn_tokenizer_free(student_tok);
  t->resume_stage = 0;
  return stopped ? -1 : 0;
}
