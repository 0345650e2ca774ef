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
#include "train_internal.h"

#define MINED_DIR "mined"
#define MINE_SEED_SALT 0x4D696E6552647321ull  // "MineRds!": keeps the draws apart from other streams

void sn_stage1_mining_init(const sn_trainer *t, sn_stage1_mining *m) {
  memset(m, 0, sizeof *m);
  const sn_cfg_stage1 *s1 = &t->cfg.stage1;
  m->every = s1->mine.every_steps;
  if (m->every <= 0) return;
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

void sn_stage1_mining_free(sn_stage1_mining *m) {
  if (m->every > 0) sn_beir_records_free(&m->corpus);
}

int sn_stage1_round_in_use(const sn_stage1_mining *m, int64_t steps_done) {
  if (m->every <= 0 || steps_done <= 0) return 0;
  return (int)((steps_done - 1) / m->every);
}

int sn_stage1_round_due(const sn_stage1_mining *m, int64_t steps_done, int *round) {
  if (m->every <= 0 || steps_done <= 0 || steps_done % m->every != 0) return 0;
  *round = (int)(steps_done / m->every);
  return 1;
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

void sn_stage1_mine_round(sn_trainer *t, const sn_stage1_mining *m, int round, sn_model *query, sn_model *doc,
                          const sn_tokenizer *tok) {
  char path[SN_TRAIN_PATH_MAX + 64];
  round_path(t, round, path, sizeof path);
  if (t->rank == 0) unlink(path);  // a file of a killed run: the others must wait for this one
  sn_comm_barrier(t->comm);
  if (t->rank == 0) {
    double t0 = sn_now_s();
    const int pooling = (int)sn_pooling_from_name(t->cfg.stage1.pooling, "stage1.pooling");
    sn_mine_tower qt = {.model = query, .tok = tok, .prompt = t->cfg.data.query_prompt, .pooling = pooling,
                        .max_len = t->cfg.data.max_query_len};
    sn_mine_tower dt = {.model = doc, .tok = tok, .prompt = t->cfg.data.doc_prompt, .pooling = pooling,
                        .max_len = t->cfg.data.max_doc_len};
    sn_mine_opts o = m->opts;
    o.seed = sn_rng_stream_key(t->cfg.seed ^ MINE_SEED_SALT, (uint64_t)round);
    sn_strbuf out = {0};
    int64_t n_short = 0;
    char err[1024], dir[SN_TRAIN_PATH_MAX + 16];
    if (sn_mine_dense_write(&o, &qt, &dt, &t->examples, &m->corpus, t->cfg.eval.batch, 0, &out, &n_short, err,
                            sizeof err))
      sn_bad_input("stage1.mine round %d: %s", round, err);
    snprintf(dir, sizeof dir, "%s/" MINED_DIR, t->run_dir);
    if (sn_mkdir_p(dir) || sn_write_file_atomic(path, out.s, out.len)) sn_fatal("%s: cannot write", path);
    free(out.s);
    sn_log("stage 1: mining round %d: %lld examples against %d documents, ranks %d:%d, %d negatives each, "
           "%.1f s -> %s", round, (long long)t->examples.n_examples, m->corpus.n, o.range_lo, o.range_hi,
           o.negatives, sn_now_s() - t0, path);
    if (n_short)
      sn_warn("stage 1: mining round %d: %lld example(s) got fewer than %d negatives", round, (long long)n_short,
              o.negatives);
  } else {
    sn_wait_for(path, sn_path_exists, NULL, t->rank);
  }
  sn_stage1_load_round(t, round);
}
