// Stage 1: a query tower and a document tower, both initialised from the same LLM, trained with
// InfoNCE over in-batch, hard and cross-device negatives. Optional gradient caching: embed the
// whole contrastive batch without activations, take the loss gradient w.r.t. the embeddings, then
// re-run and backpropagate chunk by chunk, so the batch is not bounded by activation memory.
// With stage1.kd_weight > 0 a KL term pulls each query's distribution over its own candidates (its
// positive and hard negatives) toward the data's teacher scores (FlagEmbedding's kl_div).
// LoRA towers (stage1.lora.rank > 0): two adapters (or one shared) over one frozen base, the towers
// views of it (model_lora.h); the adapters are what the optimizers train and checkpoints hold.
#define _GNU_SOURCE
#include <math.h>
#include <string.h>

#include "common.h"
#include "counter_rng.h"
#include "eval.h"
#include "model_lora.h"
#include "train_internal.h"

// Every buffer of the contrastive loss, sized once for the largest batch.
typedef struct {
  int C;
  float *q_emb, *d_emb;      // (Bq, C), (Nd, C) this rank's embeddings
  float *q_all, *d_all;      // (Bq_global, C), (Nd_global, C) gathered (or aliases when local)
  float *dq, *dd;            // (Bq, C), (Nd, C) gradients w.r.t. this rank's embeddings
  float *dq_all, *dd_all;    // (Bq_global, C), (Nd_global, C)
  float *pos_rows, *dpos;    // (Bq, C) positives, for the symmetric term
  float *chunk_emb;          // (max chunk, C) recomputed embeddings in the gradient-cache pass
  int32_t *targets;          // (Bq) backend
  int32_t *targets_host;
  float *loss;               // (1) backend
  float *teacher;            // (Bq, 1 + k) teacher scores of each query's candidates; kd only
  float *kd_loss;            // (1) backend; kd only
} contrastive_buffers;

typedef struct {
  sn_trainer *t;
  sn_model *qmodel, *dmodel;  // dmodel == qmodel with shared towers
  sn_tower_runner qrun, drun;
  int chunk_q, chunk_d;       // sequences per forward; the whole local batch when not caching
  int grad_cache;
  contrastive_buffers buf;
  sn_optimizer *opt_q, *opt_d;  // opt_d == opt_q with shared towers
  sn_model *base;             // LoRA: the frozen base both towers view; NULL for full towers
  sn_lora *lora_q, *lora_d;   // LoRA: the adapters (lora_d == lora_q when shared)
  // The training data (replaced by each mining round) and what rebuilds it.
  const sn_tokenizer *tok;
  sn_token_set qset, dset;
  sn_sampler_config sc;
  sn_stage1_mining mining;
} stage1_ctx;

// Keeps the dropout streams apart from the initialisation streams of the same seed.
#define SN_LORA_DROPOUT_SALT 0x4C6F5241446F7570ull  // "LoRADoup"


// Allocates the buffers (ops NULL: counts them only); returns their bytes. kd: the distillation's.
static size_t buffers_init(contrastive_buffers *b, const sn_ops *ops, int C, int Bq, int Nd, int Bq_all,
                           int Nd_all, int max_chunk, int kd) {
  memset(b, 0, sizeof *b);
  b->C = C;
  size_t n = 0;
  const size_t f = sizeof(float);
  b->q_emb = sn_plan_take(ops, (size_t)Bq * C * f, &n);
  b->d_emb = sn_plan_take(ops, (size_t)Nd * C * f, &n);
  b->q_all = sn_plan_take(ops, (size_t)Bq_all * C * f, &n);
  b->d_all = sn_plan_take(ops, (size_t)Nd_all * C * f, &n);
  b->dq = sn_plan_take(ops, (size_t)Bq * C * f, &n);
  b->dd = sn_plan_take(ops, (size_t)Nd * C * f, &n);
  b->dq_all = sn_plan_take(ops, (size_t)Bq_all * C * f, &n);
  b->dd_all = sn_plan_take(ops, (size_t)Nd_all * C * f, &n);
  b->pos_rows = sn_plan_take(ops, (size_t)Bq * C * f, &n);
  b->dpos = sn_plan_take(ops, (size_t)Bq * C * f, &n);
  b->chunk_emb = sn_plan_take(ops, (size_t)max_chunk * C * f, &n);
  b->targets = sn_plan_take(ops, (size_t)Bq * sizeof(int32_t), &n);
  b->loss = sn_plan_take(ops, f, &n);
  if (kd) {
    b->teacher = sn_plan_take(ops, (size_t)Nd * f, &n);  // one score per candidate slot
    b->kd_loss = sn_plan_take(ops, f, &n);
  }
  if (ops) b->targets_host = mallocCheck((size_t)Bq * sizeof(int32_t));
  return n;
}

static void buffers_free(contrastive_buffers *b, const sn_ops *ops) {
  float *f32[] = {b->q_emb, b->d_emb, b->q_all, b->d_all, b->dq, b->dd, b->dq_all, b->dd_all,
                  b->pos_rows, b->dpos, b->chunk_emb, b->loss, b->teacher, b->kd_loss};
  for (size_t i = 0; i < SN_ARRAY_LEN(f32); i++)
    if (f32[i]) ops->free(f32[i]);
  ops->free(b->targets);
  free(b->targets_host);
}

static int sum_ints(const int *v, int n) {
  int s = 0;
  for (int i = 0; i < n; i++) s += v[i];
  return s;
}

// Gathers every rank's rows (cross-device negatives) or uses the local ones. Returns the gathered
// matrix and sets *n_all and *offset (this rank's first row in it).
static float *gather_rows(stage1_ctx *c, float *local, float *all, const int *counts, int cross,
                          int *n_all, int *offset) {
  sn_trainer *t = c->t;
  int C = c->buf.C;
  if (!cross || t->world == 1) {
    *n_all = counts[t->rank];
    *offset = 0;
    return local;
  }
  size_t sizes[t->world];
  for (int r = 0; r < t->world; r++) sizes[r] = (size_t)counts[r] * C;
  sn_comm_all_gather_v(t->comm, local, all, sizes);
  *n_all = sum_ints(counts, t->world);
  *offset = sum_ints(counts, t->rank);
  return all;
}

// The gradient w.r.t. this rank's rows: every rank's contribution to them, summed. Without
// gathering, the loss wrote it into d_local directly.
static const float *scatter_back(stage1_ctx *c, float *d_all, float *d_local, int n_all, int offset,
                                 int n_local, int gathered) {
  if (!gathered) return d_local;
  sn_comm_all_reduce_sum(c->t->comm, d_all, (size_t)n_all * c->buf.C, SN_DTYPE_F32);
  c->t->ops->copy(d_local, d_all + (size_t)offset * c->buf.C, (size_t)n_local * c->buf.C * sizeof(float));
  return d_local;
}

// One micro-batch (sn_stage.micro_step): forward, InfoNCE (+ symmetric term), backward. Adds this
// rank's share of the loss (already divided by the global query count). On the step's last
// micro-batch the gradient all-reduce is armed to start during the backward pass.
static int64_t micro_step(void *ctx, const sn_batch *b, int last_micro, double *terms) {
  stage1_ctx *c = ctx;
  sn_trainer *t = c->t;
  const sn_ops *ops = t->ops;
  const sn_cfg_stage1 *s1 = &t->cfg.stage1;
  contrastive_buffers *B = &c->buf;
  int C = B->C, Bq = b->n_queries, Nd = b->n_docs;
  int cross = s1->cross_device_negatives && t->world > 1;
  int Bq_global = sum_ints(b->rank_query_counts, t->world);
  float inv_temp = 1.0f / s1->temperature;
  // The two directions are averaged when the loss is symmetric.
  float scale = (s1->symmetric ? 0.5f : 1.0f) / (float)Bq_global;

  if (c->base && s1->lora.dropout > 0) {  // LoRA dropout: masks of this batch, rank and tower
    uint64_t key = sn_rng_stream_key(t->cfg.seed ^ SN_LORA_DROPOUT_SALT, b->step * (uint64_t)t->world + (uint64_t)t->rank);
    c->qrun.dropout_on = c->drun.dropout_on = 1;
    c->qrun.dropout_key = sn_rng_stream_key(key, 0);
    c->drun.dropout_key = sn_rng_stream_key(key, 1);
  }
  sn_embed_batch(&c->qrun, c->grad_cache, c->chunk_q, b->query_ids, b->query_cu_seqlens, Bq, B->q_emb, "queries");
  sn_embed_batch(&c->drun, c->grad_cache, c->chunk_d, b->doc_ids, b->doc_cu_seqlens, Nd, B->d_emb, "documents");

  int nd_all, d_off;
  float *docs = gather_rows(c, B->d_emb, B->d_all, b->rank_doc_counts, cross, &nd_all, &d_off);
  for (int i = 0; i < Bq; i++) B->targets_host[i] = b->pos_index[i] + d_off;
  ops->upload(B->targets, B->targets_host, (size_t)Bq * sizeof(int32_t));
  ops->memset_zero(B->loss, sizeof(float));
  ops->memset_zero(B->dq, (size_t)Bq * C * sizeof(float));
  float *dd_target = cross ? B->dd_all : B->dd;
  ops->memset_zero(dd_target, (size_t)nd_all * C * sizeof(float));
  // queries → documents
  ops->contrastive_loss(B->loss, B->dq, dd_target, B->q_emb, docs, B->targets, Bq, nd_all, C,
                        inv_temp, scale);
  if (s1->symmetric) {
    // documents (each query's positive) → queries
    for (int i = 0; i < Bq; i++)
      ops->copy(B->pos_rows + (size_t)i * C, B->d_emb + (size_t)b->pos_index[i] * C, (size_t)C * sizeof(float));
    int nq_all, q_off;
    float *queries = gather_rows(c, B->q_emb, B->q_all, b->rank_query_counts, cross, &nq_all, &q_off);
    for (int i = 0; i < Bq; i++) B->targets_host[i] = q_off + i;
    ops->upload(B->targets, B->targets_host, (size_t)Bq * sizeof(int32_t));
    ops->memset_zero(B->dpos, (size_t)Bq * C * sizeof(float));
    float *dq_target = cross ? B->dq_all : B->dq;
    if (cross) ops->memset_zero(B->dq_all, (size_t)nq_all * C * sizeof(float));
    ops->contrastive_loss(B->loss, B->dpos, dq_target, B->pos_rows, queries, B->targets, Bq, nq_all,
                          C, inv_temp, scale);
    if (cross) {
      // dq_all holds only the symmetric term's gradient; add this rank's slice to dq.
      scatter_back(c, B->dq_all, B->pos_rows /* scratch */, nq_all, q_off, Bq, 1);
      ops->add_f32(B->dq, B->dq, B->pos_rows, (size_t)Bq * C);
    }
    // The positives' rows get dpos added to their document gradient (in dd_target's local slice).
    for (int i = 0; i < Bq; i++) {
      float *row = dd_target + (size_t)(d_off + b->pos_index[i]) * C;
      ops->add_f32(row, row, B->dpos + (size_t)i * C, (size_t)C);
    }
  }
  if (s1->kd_weight > 0) {
    // Each query against its own candidates, local rows [i (k+1), (i+1)(k+1)) even when the
    // InfoNCE gathered every rank's; its document gradient goes into this rank's slice.
    int G = s1->negatives_per_query + 1;
    ops->upload(B->teacher, b->teacher_scores, (size_t)Nd * sizeof(float));
    ops->memset_zero(B->kd_loss, sizeof(float));
    ops->kl_distill_loss(B->kd_loss, B->dq, dd_target + (size_t)d_off * C, B->q_emb, B->d_emb, B->teacher, Bq,
                         G, C, inv_temp, 1.0f / s1->kd_temperature, s1->kd_weight / (float)Bq_global);
  }
  const float *dd = scatter_back(c, B->dd_all, B->dd, nd_all, d_off, Nd, cross);

  // With shared towers the query pass is not the model's last: only the document pass arms.
  int shared = c->qmodel == c->dmodel;
  sn_backward_batch(&c->qrun, c->grad_cache, c->chunk_q, b->query_ids, b->query_cu_seqlens, Bq, B->dq, B->q_emb,
                    B->chunk_emb, last_micro && !shared ? c->opt_q : NULL, "queries");
  sn_backward_batch(&c->drun, c->grad_cache, c->chunk_d, b->doc_ids, b->doc_cu_seqlens, Nd, dd, B->d_emb,
                    B->chunk_emb, last_micro ? c->opt_d : NULL, "documents");
  float loss = 0;
  ops->download(&loss, B->loss, sizeof loss);
  terms[0] += loss;
  if (s1->kd_weight > 0) {
    ops->download(&loss, B->kd_loss, sizeof loss);
    terms[1] += loss;
  }
  return b->n_query_tokens + b->n_doc_tokens;
}

// Distillation needs a teacher score for every candidate: each line's pos_scores, and neg_scores
// over hard negatives (random negatives from other lines have no score).
static void check_teacher_scores(const sn_train_examples *ex, int negatives_per_query) {
  for (int64_t i = 0; i < ex->n_examples; i++) {
    const sn_train_example *e = &ex->examples[i];
    if (!e->has_scores)
      sn_bad_input("%s: missing \"%s\" (stage1.kd_weight > 0 distils teacher scores: expected "
                   "\"pos_scores\" and \"neg_scores\", one number per \"pos\" / \"neg\" entry)",
                   sn_train_example_where(ex, i), isnan(sn_example_pos_scores(ex, i)[0]) ? "pos_scores" : "neg_scores");
    if (e->n_neg == 0 && negatives_per_query > 0)
      sn_bad_input("%s: \"neg\" is empty (stage1.kd_weight > 0 with negatives_per_query %d needs scored hard "
                   "negatives on every line: random negatives have no teacher score)",
                   sn_train_example_where(ex, i), negatives_per_query);
  }
}

static void log_model(const char *what, const sn_model *m) {
  sn_log("%s: %s, %d layers, hidden %d, %d heads (%d kv), vocab %d, %.1fM parameters", what,
         sn_arch_name(m->cfg.arch), m->cfg.n_layers, m->cfg.hidden, m->cfg.n_heads,
         m->cfg.n_kv_heads, m->cfg.vocab, (double)m->num_elements / 1e6);
}

// ---- the memory plan of this stage (what sn_train_stage1 allocates) ----------------------------

// Sequences per forward: the gradient-cache chunk, or the whole local batch.
static void chunk_sizes(const sn_cfg_stage1 *s1, int Bq, int Nd, int *chunk_q, int *chunk_d) {
  const int grad_cache = s1->grad_cache_chunk > 0;
  *chunk_q = grad_cache ? SN_MIN(s1->grad_cache_chunk, Bq) : Bq;
  *chunk_d = grad_cache ? SN_MIN(s1->grad_cache_chunk, Nd) : Nd;
}

static sn_recompute recompute_mode(const sn_cfg_stage1 *s1) {
  sn_recompute mode = SN_RECOMPUTE_NONE;
  sn_recompute_parse(s1->recompute, &mode);  // validated by the config schema
  return mode;
}

void sn_stage1_plan(sn_memory_plan *p, const sn_run_config *cfg, const sn_ops *ops, int world) {
  const sn_cfg_stage1 *s1 = &cfg->stage1;
  sn_model_config mc;
  sn_trainer_model_config(s1->model, s1->model_desc, "stage1.model", &mc);
  sn_model *m = sn_model_plan(&mc, ops, 0);
  const size_t N = m->num_elements, es = ops->storage_size;
  const int zero = world > 1 ? cfg->dist.zero : 0;
  const int Bq = SN_MAX(s1->batch_queries / world, 1), Nd = Bq * (s1->negatives_per_query + 1);
  const int cross = s1->cross_device_negatives && world > 1;
  const int len_q = cfg->data.max_query_len, len_d = cfg->data.max_doc_len;
  int chunk_q, chunk_d;
  chunk_sizes(s1, Bq, Nd, &chunk_q, &chunk_d);
  const sn_recompute rc = recompute_mode(s1);
  const char *dtype = sn_dtype_name(ops->storage);
  // LoRA: one frozen base and the adapters, which are what has gradients and optimizer state.
  sn_lora *lora = NULL;
  sn_model *tower = m;
  int trained_sets = s1->shared_towers ? 1 : 2;
  size_t trained = N;  // elements of each trained parameter set
  if (s1->lora.rank > 0) {
    sn_lora_config lc = sn_run_config_lora(cfg);
    lora = sn_lora_plan(m, &lc, "stage1.lora");
    tower = sn_lora_tower(m, lora);
    trained = lora->params->num_elements;
    trained_sets = s1->lora.shared ? 1 : 2;
  }

  sn_plan_phase *ph = sn_plan_phase_new(p, "stage 1 training", 1);
  if (lora)
    sn_plan_add(ph, "weights", (N + trained_sets * trained) * es, "frozen base %.3gB + %d adapter%s of %.3gM, %s",
                (double)N / 1e9, trained_sets, trained_sets > 1 ? "s" : "", (double)trained / 1e6, dtype);
  else
    sn_plan_add(ph, "weights", trained_sets * N * es, "%d tower%s x %.3gB parameters x %s", trained_sets,
                trained_sets > 1 ? "s" : "", (double)N / 1e9, dtype);
  sn_optimizer_plan op = sn_optimizer_plan_bytes(lora ? lora->params : m, world, zero, &s1->optim);
  const char *shard = zero ? (zero == 2 ? ", 1/world slice (ZeRO-2)" : ", 1/world slice (ZeRO-1)") : "";
  sn_plan_add(ph, "gradients", trained_sets * op.grads, "%s, %s%s", dtype,
              zero == 2 ? "two layers' working buffers + embeddings (ZeRO-2)" : "full buffer", lora ? ", adapters only" : "");
  if (op.master) sn_plan_add(ph, "master weights", trained_sets * op.master, "fp32%s", shard);
  sn_plan_add(ph, "Adam moments", trained_sets * op.moments, "%s%s", op.moments_desc, shard);
  if (op.exchange) sn_plan_add(ph, "ZeRO exchange", trained_sets * op.exchange, "gradient slice%s", zero == 1 ? ", all-gather buffer" : "");
  const size_t acts_q = sn_runner_plan_bytes(tower, chunk_q, chunk_q * len_q, 1, rc);
  const size_t acts_d = sn_runner_plan_bytes(tower, chunk_d, chunk_d * len_d, 1, rc);
  sn_plan_add(ph, "activations", acts_q + acts_d, "queries %d x %d tokens, documents %d x %d%s", chunk_q, len_q,
              chunk_d, len_d, rc == SN_RECOMPUTE_LAYER ? ", recompute = layer" : "");
  contrastive_buffers counted;
  const int Bq_all = cross ? Bq * world : Bq, Nd_all = cross ? Nd * world : Nd;
  sn_plan_add(ph, "loss buffers",
              buffers_init(&counted, NULL, sn_model_out_dim(m), Bq, Nd, Bq * world, Nd * world,
                           SN_MAX(chunk_q, chunk_d), s1->kd_weight > 0),  // as sn_train_stage1 sizes them
              "%d queries x %d documents per rank", Bq, Nd);
  if (s1->mine.every_steps > 0 || s1->mine.rounds > 0) {  // while the training buffers stay allocated
    const int batch = cfg->eval.batch, len = SN_MAX(len_q, len_d);
    sn_plan_add(ph, "mining embedder", sn_embedder_plan_bytes(tower, batch, len),
                "a mining round's encode batch, %d x %d tokens", batch, len);
    if (strcmp(ops->name, "cpu"))  // the CPU searches in host blocks
      sn_plan_add(ph, "mining search", sn_topk_device_bound(sn_model_out_dim(m)),
                  "exact top-k over %d-wide vectors, at most, + 4 bytes a corpus document", sn_model_out_dim(m));
  }
  sn_workspace_shape ws = {.max_tokens = SN_MAX(chunk_q * len_q, chunk_d * len_d),
                           .n_heads = mc.n_heads, .head_dim = mc.head_dim, .widest = sn_model_widest_row(m),
                           .loss_rows = Bq, .loss_cols = SN_MAX(Nd_all, Bq_all),
                           .max_span_count = lora ? lora->params->nparams : m->nparams};
  sn_plan_add(ph, "backend workspaces", ops->workspace_bytes(&ws), "scratch of the ops and cuBLASLt");
  if (lora) {
    free(tower);  // a view (sn_lora_tower)
    sn_lora_free(lora);
  }
  sn_model_free(m);
}

// LoRA towers: the base always from the LLM (a resume restores only the adapters, from the
// optimizer state), both adapters from the same seed, so both towers start as the base.
static void lora_towers(sn_trainer *t, stage1_ctx *c) {
  const sn_cfg_stage1 *s1 = &t->cfg.stage1;
  sn_lora_config lc = sn_run_config_lora(&t->cfg);
  c->base = sn_trainer_load_model(t, s1->model, s1->model_desc, t->cfg.seed, "stage1.model");
  c->lora_q = sn_lora_new(c->base, &lc, t->cfg.seed, "stage1.lora");
  c->lora_d = s1->lora.shared ? c->lora_q : sn_lora_new(c->base, &lc, t->cfg.seed, "stage1.lora");
  c->qmodel = sn_lora_tower(c->base, c->lora_q);
  c->dmodel = s1->lora.shared ? c->qmodel : sn_lora_tower(c->base, c->lora_d);
  sn_log("stage 1 LoRA: rank %d, alpha %g (scale %g), targets %s, %s, %.3fM trainable parameters per adapter",
         lc.rank, (double)lc.alpha, (double)c->lora_q->scale, s1->lora.targets,
         s1->lora.shared ? "one shared adapter" : "two adapters over one frozen base",
         (double)c->lora_q->params->num_elements / 1e6);
}

static void build_data(stage1_ctx *c) {
  sn_trainer_query_set(c->t, c->tok, c->qmodel, "query-stage1", &c->qset);
  sn_trainer_doc_set(c->t, c->tok, c->dmodel, &c->dset);
}

// The sampler over mining round `round`'s data (mined now when `mine`, else read back), continuing
// from the old sampler's cursor: the same path for a running stage and for a resume.
static sn_sampler *switch_round(stage1_ctx *c, sn_sampler *old, int round, int mine) {
  sn_data_cursor cursor;
  sn_sampler_get_cursor(old, &cursor);
  sn_sampler_free(old);
  sn_token_set_close(&c->qset);
  sn_token_set_close(&c->dset);
  if (mine) sn_stage1_mine_round(c->t, &c->mining, round, c->qmodel, c->dmodel, c->tok);
  else sn_stage1_load_round(c->t, round);
  build_data(c);
  sn_sampler *s = sn_sampler_init(&c->sc, &c->t->examples, &c->qset, &c->dset);
  char err[1024];
  if (sn_sampler_set_cursor(s, &cursor, err, sizeof err))
    sn_fatal("stage 1: mining round %d: the data cursor does not carry over: %s", round, err);
  return s;
}

static void before_step(void *ctx, sn_stage *s, int64_t steps_done) {
  stage1_ctx *c = ctx;
  int round;
  if (sn_stage1_round_due(&c->mining, steps_done, &round)) s->sampler = switch_round(c, s->sampler, round, 1);
}

int sn_train_stage1(sn_trainer *t) {
  const sn_cfg_stage1 *s1 = &t->cfg.stage1;
  const sn_ops *ops = t->ops;
  if (t->resume_stage > 1) {
    sn_log("stage 1: done in an earlier run (resuming stage %d)", t->resume_stage);
    return 0;
  }
  int resuming = (t->resume_stage == 1);
  stage1_ctx c = {.t = t};

  // Towers: both from the same LLM (or from the checkpoint being resumed).
  char qdir[SN_TRAIN_PATH_MAX + 32], ddir[SN_TRAIN_PATH_MAX + 32];
  snprintf(qdir, sizeof qdir, "%s/query_tower", t->resume_dir);
  snprintf(ddir, sizeof ddir, "%s/doc_tower", t->resume_dir);
  const int lora = s1->lora.rank > 0;
  if (lora) {
    lora_towers(t, &c);
  } else {
    c.qmodel = resuming ? sn_model_load(qdir, ops)
                        : sn_trainer_load_model(t, s1->model, s1->model_desc, t->cfg.seed, "stage1.model");
    c.dmodel = s1->shared_towers ? c.qmodel
               : resuming        ? sn_model_load(ddir, ops)
                                 : sn_trainer_load_model(t, s1->model, s1->model_desc, t->cfg.seed, "stage1.model");
  }
  log_model("stage 1 towers", c.qmodel);
  sn_tokenizer *tok = sn_trainer_load_tokenizer(s1->tokenizer, s1->model, "stage1.tokenizer");
  sn_trainer_check_vocab(tok, c.qmodel, "stage1.tokenizer");
  char tok_dir[SN_TRAIN_PATH_MAX];
  sn_tokenizer_dir_of(s1->tokenizer, s1->model, tok_dir, sizeof tok_dir);

  // Data: the configured files (which size the epochs), then, on a resume past a mining round,
  // that round's file.
  c.tok = tok;
  sn_stage1_mining_init(t, &c.mining);
  build_data(&c);
  sn_token_set *const qset = &c.qset, *const dset = &c.dset;
  c.sc = (sn_sampler_config){.global_batch_queries = s1->batch_queries,
                          .negatives_per_query = s1->negatives_per_query,
                          .seed = t->cfg.seed,
                          .world_size = t->world,
                          .rank = t->rank,
                          .max_tokens_per_rank = s1->max_tokens_per_rank,
                          .forbid_random_negatives = !t->cfg.data.allow_random_negatives};
  const sn_sampler_config sc = c.sc;
  if (s1->kd_weight > 0) check_teacher_scores(&t->examples, s1->negatives_per_query);
  if (s1->batch_queries % t->world != 0)
    sn_bad_input("stage1.batch_queries (%d) must be a multiple of the number of ranks (%d)",
                 s1->batch_queries, t->world);
  sn_sampler *sampler = sn_sampler_init(&sc, &t->examples, qset, dset);
  int64_t per_epoch = sn_sampler_steps_in_epoch(sampler, 0);
  int64_t total = sn_trainer_total_steps(s1->steps, s1->epochs, per_epoch, s1->grad_accum);
  sn_stage1_mining_space(&c.mining, total);
  const int resume_round = resuming ? sn_stage1_round_in_use(&c.mining, t->resume_step) : 0;
  if (resume_round > 0) sampler = switch_round(&c, sampler, resume_round, 0);
  int Bq = s1->batch_queries / t->world, k = s1->negatives_per_query, Nd = Bq * (k + 1);
  sn_log("stage 1: %lld examples, %lld documents, %lld batches per epoch, %lld steps, %d queries x %d docs per rank",
         (long long)t->examples.n_examples, (long long)t->examples.n_docs, (long long)per_epoch,
         (long long)total, Bq, Nd);

  // Runners and loss buffers, planned once.
  c.grad_cache = s1->grad_cache_chunk > 0;
  chunk_sizes(s1, Bq, Nd, &c.chunk_q, &c.chunk_d);
  sn_pooling pooling = sn_pooling_from_name(s1->pooling, "stage1.pooling");
  // Mining rounds bring other documents: size the document runner for the longest allowed.
  const int doc_len = c.mining.on ? t->cfg.data.max_doc_len : SN_MAX(dset->max_seq_len, 1);
  sn_runner_init(&c.qrun, c.qmodel, pooling, c.chunk_q, c.chunk_q * SN_MAX(qset->max_seq_len, 1));
  sn_runner_init(&c.drun, c.dmodel, pooling, c.chunk_d, c.chunk_d * doc_len);
  sn_acts_set_recompute(c.qrun.acts, recompute_mode(s1));
  sn_acts_set_recompute(c.drun.acts, recompute_mode(s1));
  if (c.qrun.out_dim != c.drun.out_dim) sn_bad_input("stage 1: query and document towers differ in width");
  buffers_init(&c.buf, ops, c.qrun.out_dim, Bq, Nd, s1->batch_queries, Nd * t->world, SN_MAX(c.chunk_q, c.chunk_d),
               s1->kd_weight > 0);

  // What is trained: the towers, or their adapters (the base has no gradients or optimizer state).
  sn_model *train_q = lora ? c.lora_q->params : c.qmodel, *train_d = lora ? c.lora_d->params : c.dmodel;
  int two = c.dmodel != c.qmodel;  // the optimizers allocate the gradients (or ZeRO-2's working buffers)
  sn_optimizer opt_q, opt_d;
  sn_trainer_optimizer_init(t, &opt_q, train_q, &s1->optim, total, 0);
  if (two) sn_trainer_optimizer_init(t, &opt_d, train_d, &s1->optim, total, 1);
  c.opt_q = &opt_q;
  c.opt_d = two ? &opt_d : &opt_q;

  const char *base_name = s1->model[0] ? s1->model : "";
  sn_export_info query_export, doc_export;
  sn_trainer_export_info(t, c.qmodel, tok, s1->pooling, SN_EXPORT_ROLE_QUERY, &query_export);
  sn_trainer_export_info(t, c.dmodel, tok, s1->pooling, SN_EXPORT_ROLE_DOCUMENT, &doc_export);
  sn_stage stage = {.number = 1, .grad_accum = s1->grad_accum, .total_steps = total, .sampler = sampler,
                    .n_models = 1 + two, .models = {train_q, train_d},
                    .optimizers = {{"query", &opt_q}, {"doc", &opt_d}},
                    .n_towers = 2, .n_ckpt_towers = 1 + two,
                    .towers = {{"query_tower", c.qmodel, tok_dir, "query_adapter", base_name, &query_export},
                               {"doc_tower", c.dmodel, tok_dir, "doc_adapter", base_name, &doc_export}},
                    .n_terms = s1->kd_weight > 0 ? 2 : 1, .term_names = {"infonce", "kd"},
                    .micro_step = micro_step, .before_step = before_step, .ctx = &c};
  int rc = sn_train_loop(t, &stage, resuming);
  buffers_free(&c.buf, ops);
  sn_runner_free(&c.qrun);
  sn_runner_free(&c.drun);
  sn_optimizer_free(&opt_q);
  if (two) {
    sn_optimizer_free(&opt_d);
    sn_model_free(c.dmodel);
  }
  sn_model_free(c.qmodel);  // a LoRA tower: the view only
  if (lora) {
    if (c.lora_d != c.lora_q) sn_lora_free(c.lora_d);
    sn_lora_free(c.lora_q);
    sn_model_free(c.base);
  }
  sn_sampler_free(stage.sampler);
  sn_token_set_close(&c.qset);
  sn_token_set_close(&c.dset);
  sn_stage1_mining_free(&c.mining);
  sn_tokenizer_free(tok);
  return rc;
}
