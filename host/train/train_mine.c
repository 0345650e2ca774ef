// Stage 1's mining rounds (train_internal.h): the towers being trained mine new negatives for the
// training examples with the mining core of host/eval/mine.h, through a JSONL file in the run
// folder that the data layer reads back like any training file.
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "counter_rng.h"
#include "eval.h"
#include "train.h"
#include "train_internal.h"

#define MINED_DIR "mined"
#define MERGE_CHUNK_QUERIES 1024  // queries per host all-reduce when gathering the ranks' lists
#define MINE_SEED_SALT 0x4D696E6552647321ull  // "MineRds!": keeps the draws apart from other streams

// A host sum of zero-padded per-rank slots: exact for int32 indices and fp32 scores, and available
// on every communicator. In chunks of queries, to bound the buffer.
void sn_mine_gather_merge(sn_comm *comm, const char *const *doc_ids, int Q, int k, int32_t *idx, float *scores) {
  const int R = comm->world_size;
  double *slots = mallocCheck((size_t)R * 2 * MERGE_CHUNK_QUERIES * k * sizeof(double));
  int32_t **ri = mallocCheck((size_t)R * sizeof *ri);
  float **rs = mallocCheck((size_t)R * sizeof *rs);
  for (int r = 0; r < R; r++) {
    ri[r] = mallocCheck((size_t)MERGE_CHUNK_QUERIES * k * sizeof(int32_t));
    rs[r] = mallocCheck((size_t)MERGE_CHUNK_QUERIES * k * sizeof(float));
  }
  for (int q0 = 0; q0 < Q; q0 += MERGE_CHUNK_QUERIES) {
    const int nq = SN_MIN(MERGE_CHUNK_QUERIES, Q - q0);
    const size_t per = (size_t)nq * k;
    memset(slots, 0, (size_t)R * 2 * per * sizeof(double));
    double *mine = slots + (size_t)comm->rank * 2 * per;
    for (size_t j = 0; j < per; j++) {
      mine[j] = idx[(size_t)q0 * k + j];
      mine[per + j] = scores[(size_t)q0 * k + j];
    }
    sn_comm_all_reduce_f64_host(comm, slots, (int)(R * 2 * per));
    for (int r = 0; r < R; r++)
      for (size_t j = 0; j < per; j++) {
        ri[r][j] = (int32_t)slots[(size_t)r * 2 * per + j];
        rs[r][j] = (float)slots[(size_t)r * 2 * per + per + j];
      }
    sn_mine_merge(R, (const int32_t *const *)ri, (const float *const *)rs, nq, k,
                  doc_ids, idx + (size_t)q0 * k, scores + (size_t)q0 * k);
  }
  for (int r = 0; r < R; r++) {
    free(ri[r]);
    free(rs[r]);
  }
  free(ri);
  free(rs);
  free(slots);
}

void sn_stage1_mining_init(const sn_trainer *t, sn_stage1_mining *m) {
  memset(m, 0, sizeof *m);
  const sn_cfg_stage1 *s1 = &t->cfg.stage1;
  m->on = s1->mine.every_steps > 0 || s1->mine.rounds > 0;
  m->every = s1->mine.every_steps;
  m->max_rounds = s1->mine.rounds;
  if (!m->on) return;
  m->opts = (sn_mine_opts){.range_lo = s1->mine.range_lo, .range_hi = s1->mine.range_hi,
                           .negatives = s1->mine.negatives, .margin = s1->mine.margin,
                           .margin_kind = !strcmp(s1->mine.margin_kind, "absolute")   ? SN_MINE_MARGIN_ABSOLUTE
                                          : !strcmp(s1->mine.margin_kind, "relative") ? SN_MINE_MARGIN_RELATIVE
                                                                                      : SN_MINE_MARGIN_NONE};
  char err[1024];
  if (s1->mine.corpus[0]) {
    if (sn_beir_corpus_load(s1->mine.corpus, &m->corpus, err, sizeof err)) sn_bad_input("stage1.mine.corpus: %s", err);
  } else {
    sn_mine_corpus_of_examples(&t->examples, &m->corpus);
  }
  if (sn_mine_check_opts(&m->opts, m->corpus.n, "stage1.mine.range_lo:range_hi", "stage1.mine.negatives",
                         "stage1.mine.margin", err, sizeof err))
    sn_bad_input("%s (%s)", err, s1->mine.corpus[0] ? s1->mine.corpus : "the training data's documents");
}

void sn_stage1_mining_space(sn_stage1_mining *m, int64_t total_steps) {
  if (m->on && m->max_rounds > 0) m->every = (int)SN_MAX(1, total_steps / (m->max_rounds + 1));
}

void sn_stage1_mining_free(sn_stage1_mining *m) {
  if (m->on) sn_beir_records_free(&m->corpus);
}

int sn_stage1_round_in_use(const sn_stage1_mining *m, int64_t steps_done) {
  if (!m->on || m->every <= 0 || steps_done <= 0) return 0;
  int64_t r = (steps_done - 1) / m->every;
  return (int)(m->max_rounds > 0 ? SN_MIN(r, m->max_rounds) : r);
}

int sn_stage1_round_due(const sn_stage1_mining *m, int64_t steps_done, int *round) {
  if (!m->on || m->every <= 0 || steps_done <= 0 || steps_done % m->every != 0) return 0;
  *round = (int)(steps_done / m->every);
  return m->max_rounds <= 0 || *round <= m->max_rounds;
}

static void round_path(const sn_trainer *t, int round, char *out, size_t size) {
  snprintf(out, size, "%s/" MINED_DIR "/round_%d.jsonl", t->run_dir, round);
}

void sn_stage1_load_round(sn_trainer *t, int round) {
  char path[SN_TRAIN_PATH_MAX + 64];
  round_path(t, round, path, sizeof path);
  if (!sn_exists(path))
    sn_bad_input("%s is missing: the checkpoint trains on mining round %d (stage1.mine), written by the run "
                 "that made it; resume in the same run folder", path, round);
  sn_train_examples_free(&t->examples);
  const char *paths[] = {path};
  sn_train_examples_load(&t->examples, paths, 1, 0, (size_t)t->cfg.data.max_line_bytes);
}

// Every rank embeds the queries and its slice of the corpus and searches it; the lists are merged
// on every rank; rank 0 scores the positives, draws and writes the file, which the others wait for.
void sn_stage1_mine_round(sn_trainer *t, const sn_stage1_mining *m, int round, sn_model *query, sn_model *doc,
                          const sn_tokenizer *tok) {
  char path[SN_TRAIN_PATH_MAX + 64], err[1024];
  round_path(t, round, path, sizeof path);
  if (t->rank == 0) unlink(path);  // a file of a killed run: the others must wait for this one
  sn_comm_barrier(t->comm);
  const double t0 = sn_now_s();
  const int pooling = (int)sn_pooling_from_name(t->cfg.stage1.pooling, "stage1.pooling");
  const int batch = t->cfg.eval.batch;
  sn_mine_tower qt = {.model = query, .tok = tok, .prompt = t->cfg.data.query_prompt, .pooling = pooling,
                      .max_len = t->cfg.data.max_query_len};
  sn_mine_tower dt = {.model = doc, .tok = tok, .prompt = t->cfg.data.doc_prompt, .pooling = pooling,
                      .max_len = t->cfg.data.max_doc_len};
  sn_mine_opts o = m->opts;
  o.seed = sn_rng_stream_key(t->cfg.seed ^ MINE_SEED_SALT, (uint64_t)round);
  const sn_train_examples *ex = &t->examples;
  sn_mine_positives pos;
  if (sn_mine_match_positives(ex, &m->corpus, NULL, NULL, &pos, err, sizeof err))
    sn_bad_input("stage1.mine round %d: %s", round, err);
  const int Q = (int)ex->n_examples, k = sn_mine_search_depth(&o, &pos, m->corpus.n);
  int32_t *idx = mallocCheck((size_t)Q * k * sizeof *idx);
  float *scores = mallocCheck((size_t)Q * k * sizeof *scores);
  float *q_emb = sn_mine_embed_queries(&qt, ex, batch, 0, err, sizeof err);
  const int64_t n = m->corpus.n, lo = t->rank * n / t->world, hi = (t->rank + 1) * n / t->world;
  if (!q_emb || sn_mine_dense_shard(&dt, &m->corpus, lo, hi, q_emb, Q, k, batch, 0, idx, scores, err, sizeof err))
    sn_bad_input("stage1.mine round %d: %s", round, err);
  if (t->world > 1) sn_mine_gather_merge(t->comm, (const char *const *)m->corpus.ids, Q, k, idx, scores);
  if (t->rank == 0) {
    float *pos_scores = mallocCheck((size_t)(pos.n_positives + 1) * sizeof *pos_scores);
    if (sn_mine_dense_positive_scores(&dt, ex, q_emb, batch, 0, pos_scores, err, sizeof err))
      sn_bad_input("stage1.mine round %d: %s", round, err);
    sn_strbuf out = {0};
    const int64_t n_short = sn_mine_write_lines(&o, ex, &m->corpus, &pos, k, idx, scores, pos_scores, NULL, &out);
    char dir[SN_TRAIN_PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/" MINED_DIR, t->run_dir);
    if (sn_mkdir_p(dir) || sn_write_file_atomic(path, out.s, out.len)) sn_fatal("%s: cannot write", path);
    free(out.s);
    free(pos_scores);
    sn_log("stage 1: mining round %d: %lld examples against %d documents%s, ranks %d:%d, %d negatives each, "
           "%.1f s -> %s", round, (long long)ex->n_examples, m->corpus.n, t->world > 1 ? " (sliced over the ranks)" : "",
           o.range_lo, o.range_hi, o.negatives, sn_now_s() - t0, path);
    if (n_short)
      sn_warn("stage 1: mining round %d: %lld example(s) got fewer than %d negatives", round, (long long)n_short,
              o.negatives);
  } else {
    sn_wait_for(path, sn_path_exists, NULL, t->rank);
  }
  free(q_emb);
  free(idx);
  free(scores);
  sn_mine_positives_free(&pos);
  sn_stage1_load_round(t, round);
}
