// Hard-negative mining (sn_mine; stage 1's mining rounds use the same core): for each training
// example, negatives sampled from a band of ranks of its query's retrieval list, never one of its
// positives, optionally only those scoring below the positive by a margin (sentence-transformers'
// mine_hard_negatives rule).
//
// Positives and the corpus. Training lines hold positives as texts (data.h); the corpus is BEIR
// records (_id, title, text). A positive is the same document as a corpus record when its text is
// exactly the record's text, or the record's title + " " + text (BEIR's rendering of a titled
// document), or — for a positive given as {"title", "text"} — when both fields are equal. A line
// may also name corpus ids in "pos_ids" (FlagEmbedding has no ids; ours is an optional extension):
// those records count as positives too. Every record equal to a positive is excluded from that
// example's candidates, so a duplicate of a positive under another id is never a negative.
//
// Ranks. A query's list is its retrieval ranking (trec order, sn_topk_exact's or BM25's) with the
// example's excluded records removed: rank 0 is the best-scoring non-positive. Negatives come from
// ranks [range_lo, range_hi); the search is run deep enough (sn_mine_search_depth) that removing the
// positives leaves range_hi ranks. With a margin, a candidate is kept only when its score is at
// most pos_score - margin (absolute) or pos_score * (1 - margin) (relative), pos_score being the
// best score of the example's positives under the same scorer. Of the candidates left, N are
// drawn without replacement by the counter RNG (stream = the example's index under the seed), so a
// seed gives the same negatives whatever the thread count or rank layout; they are written in rank
// order. Fewer than N candidates: all of them.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "beir.h"
#include "data.h"
#include "model.h"
#include "tokenizer.h"

typedef enum { SN_MINE_MARGIN_NONE = 0, SN_MINE_MARGIN_ABSOLUTE, SN_MINE_MARGIN_RELATIVE } sn_mine_margin;

typedef struct {
  int range_lo, range_hi;  // ranks [lo, hi) of the list with the positives removed
  int negatives;           // N per example
  sn_mine_margin margin_kind;
  double margin;
  uint64_t seed;
} sn_mine_opts;

#define SN_MINE_DEFAULT_RANGE_LO 10
#define SN_MINE_DEFAULT_RANGE_HI 100
#define SN_MINE_DEFAULT_NEGATIVES 7  // FlagEmbedding's usual group of 1 positive + 7 negatives

void sn_mine_opts_default(sn_mine_opts *o);
// The options against a corpus of n_docs records: 0 <= lo < hi <= n_docs, 1 <= N <= hi - lo, a
// finite margin (relative: in [0, 1)). Returns 0, or -1 with err naming `range_name`,
// `negatives_name` and `margin_name` (the flags or config keys the user wrote).
int sn_mine_check_opts(const sn_mine_opts *o, int64_t n_docs, const char *range_name,
                       const char *negatives_name, const char *margin_name, char *err, size_t errlen);

// Which corpus records each example's positives are (see above).
typedef struct {
  int64_t n_examples, n_positives;
  int64_t *pos_begin;    // (n_examples + 1): example i's positives are [pos_begin[i], pos_begin[i+1])
  int64_t *match_begin;  // (n_positives + 1) into match: the records equal to positive p
  int32_t *match;
  int64_t *excl_begin;   // (n_examples + 1) into excl: sorted, unique records excluded for example i
  int32_t *excl;
  int max_excluded;      // the longest exclusion list
} sn_mine_positives;

// ids (optional): example i names corpus ids ids[id_begin[i] .. id_begin[i+1]) as further
// positives. An id absent from the corpus is an error naming the example's file:line.
int sn_mine_match_positives(const sn_train_examples *ex, const sn_beir_records *corpus,
                            const int64_t *id_begin, const char *const *ids, sn_mine_positives *out,
                            char *err, size_t errlen);
void sn_mine_positives_free(sn_mine_positives *p);

// Depth of the search that leaves range_hi ranks after the exclusions: range_hi + max_excluded,
// clamped to the corpus.
int sn_mine_search_depth(const sn_mine_opts *o, const sn_mine_positives *p, int64_t n_docs);

// One example's negatives from its ranked list (k entries in trec order, index -1 = no result):
// up to N records written to neg / neg_scores in rank order. excluded (sorted) is its exclusion
// list; pos_score NAN disables the margin. Returns how many were written.
int sn_mine_pick(const sn_mine_opts *o, int64_t example, const int32_t *ranked, const float *scores,
                 int k, const int32_t *excluded, int n_excluded, float pos_score, int32_t *neg,
                 float *neg_scores);

// Merges S lists of Q queries (each (Q, k) in trec order, global record indices, -1 padded) into
// one (Q, k) list in trec order (ties by doc_ids descending): the union of corpus shards.
void sn_mine_merge(int S, const int32_t *const *idx, const float *const *scores, int Q, int k,
                   const char *const *doc_ids, int32_t *out_idx, float *out_scores);

// ---- the dense scorer (mine_dense.c) -----------------------------------------------------------
// How one tower embeds (from its export, see sn_eval_apply_export).
typedef struct {
  sn_model *model;
  const sn_tokenizer *tok;
  const char *prompt;  // NULL: "{text}" for queries, "{title} {text}" for documents
  int pooling;         // sn_pooling, or -1: the architecture's default
  int max_len;
} sn_mine_tower;

// Embeds every example's query (a line's own "prompt" template replacing the tower's), (n, C).
// NULL with err when a template or length is refused. Caller frees.
float *sn_mine_embed_queries(const sn_mine_tower *t, const sn_train_examples *ex, int batch, int verbose,
                             char *err, size_t errlen);
// Inner product of each example's query with each of its positives (embedded by the document
// tower as the data gives them): pos_scores (n_positives). Returns 0, or -1 with err.
int sn_mine_dense_positive_scores(const sn_mine_tower *doc, const sn_train_examples *ex, const float *q_emb,
                                  int batch, int verbose, float *pos_scores, char *err, size_t errlen);
// Embeds corpus records [lo, hi) with the document tower and searches the Q queries (Q, C) against
// them: out_idx / out_scores (Q, k) in trec order (ties by corpus id), global record indices, -1
// and -INFINITY where the shard has fewer than k records. Returns 0, or -1 with err.
int sn_mine_dense_shard(const sn_mine_tower *doc, const sn_beir_records *corpus, int64_t lo, int64_t hi,
                        const float *q_emb, int Q, int k, int batch, int verbose, int32_t *out_idx,
                        float *out_scores, char *err, size_t errlen);

// ---- training lines (mine_write.c) --------------------------------------------------------------
// The draw for every example from its merged list (Q, k) and its positives' scores
// (p->n_positives), appended to out as one JSONL line per example, in order. base (optional): the
// examples' own parsed lines (sn_mine), kept with every field but "neg", "neg_ids", "neg_scores"
// and "pos_scores", which are replaced; without it each line is rebuilt from the example (stage
// 1's rounds): {"query", "prompt" (the line's own template, when it had one), "pos", ...}. "neg"
// holds strings, or {"title", "text"} for titled records: a file the data layer reads back.
// Returns the number of examples given fewer than N negatives.
struct cJSON;
int64_t sn_mine_write_lines(const sn_mine_opts *o, const sn_train_examples *ex, const sn_beir_records *corpus,
                            const sn_mine_positives *p, int k, const int32_t *idx, const float *scores,
                            const float *pos_scores, struct cJSON *const *base, sn_strbuf *out);
// The training data's own documents as a corpus: record i is ex->docs[i], id "doc<i>". Caller frees
// with sn_beir_records_free.
void sn_mine_corpus_of_examples(const sn_train_examples *ex, sn_beir_records *out);
