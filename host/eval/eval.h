// Retrieval evaluation: trec_eval metrics (as pytrec_eval computes them), exact top-k search over
// embeddings, and the whole embed → search → score pipeline that sn_eval and sn_train share.
//
// Ranking rule (trec_eval's, replicated everywhere here): a query's retrieved documents are
// ordered by score descending, ties broken by document id descending (strcmp). trec_eval re-sorts
// every run this way and ignores the ranks written in the file, so our top-k does the same.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "beir.h"
#include "export.h"
#include "bm25.h"
#include "model.h"
#include "ops.h"
#include "tokenizer.h"

// ---- runs and metrics (eval_metrics.c) ---------------------------------------------------------

#define SN_EVAL_RECALL_SMALL_K 10
#define SN_EVAL_RECALL_LARGE_K 100
#define SN_EVAL_NDCG_K 10
#define SN_EVAL_MRR_K 10
// Deepest rank any metric reads: the top-k search must return at least this many.
#define SN_EVAL_MAX_METRIC_K SN_EVAL_RECALL_LARGE_K

typedef struct {
  char *doc_id;
  double score;
} sn_run_doc;

typedef struct {
  char *query_id;
  int ndocs;
  sn_run_doc *docs;
} sn_run_query;

typedef struct {
  int nqueries;
  sn_run_query *queries;  // sorted by query_id
} sn_run;

// Reads a TREC run file: "qid Q0 docid rank score [tag]" per line (rank and tag are ignored, as in
// trec_eval). A document listed twice for one query is an error, and so is a file without any
// result line. Returns 0, or -1 with err.
int sn_run_load_trec(const char *path, sn_run *out, char *err, size_t errlen);
// Writes rank = position after the trec sort; scores with 9 significant digits.
int sn_run_write_trec(const char *path, const sn_run *run, const char *tag, char *err, size_t errlen);
void sn_run_free(sn_run *run);
// Sorts one query's documents by the trec rule (score desc, doc id desc).
void sn_run_sort_query(sn_run_query *q);

typedef struct {
  double recall_10;   // relevant in the top 10 / relevant judged
  double recall_100;
  double ndcg_10;     // trec_eval ndcg_cut_10: gain = grade, discount log2(rank + 1)
  double mrr_10;      // 1 / rank of the first relevant document within the top 10, else 0
} sn_metrics;

typedef struct {
  const char *query_id;  // borrowed from the qrels
  int num_rel;
  sn_metrics m;
} sn_query_metrics;

// Metrics of one query whose documents are already in trec order.
void sn_metrics_query(const sn_qrels_query *qrels, const sn_run_query *ranked, sn_metrics *out);

// Which queries a mean covers, as trec_eval counts them.
typedef struct {
  int judged;             // qrels queries
  int evaluated;          // judged with at least one relevant document: what the mean divides by
  int no_relevant;        // judged, every grade <= 0: left out of the mean
  int missing_from_run;   // evaluated, but the run has no results for them: they count 0
  int unjudged_in_run;    // run queries the qrels do not judge: ignored
  // an example id of each kind (borrowed from the qrels or the run; NULL when the count is 0)
  const char *first_no_relevant, *first_missing_from_run, *first_unjudged_in_run;
} sn_eval_coverage;

// Scores every query of qrels (run queries absent from the qrels are ignored; qrels queries absent
// from the run score 0). The mean is over qrels queries with at least one relevant document.
// per_query (optional, caller frees) gets one entry per qrels query; *num_evaluated the count the
// mean divides by. Sorts the run's queries in place. Reports what the mean covers on stderr
// (sn_eval_log_coverage): every caller's user learns which queries were left out or counted 0.
void sn_metrics_compute(const sn_qrels *qrels, sn_run *run, sn_metrics *mean, int *num_evaluated,
                        sn_query_metrics **per_query);
// Which queries of qrels and run a mean covers.
void sn_eval_coverage_of(const sn_qrels *qrels, const sn_run *run, sn_eval_coverage *out);
// One line saying what the mean is averaged over (the exceptions in the same sentence), and a
// warning for each kind of exception: judged queries without a relevant document, judged queries
// missing from the run, run queries without judgments.
void sn_eval_log_coverage(const sn_eval_coverage *c);

// ---- exact top-k (eval_search.c) ---------------------------------------------------------------

// For each of Q queries (Q, C) against N documents (N, C), both fp32 in host memory: the k best
// document indices and their scores (inner product), in trec order (ties: doc_ids descending by
// strcmp; by index descending when doc_ids is NULL). k is clamped to N; out_idx and out_scores
// hold Q * k entries. ops chooses where the search runs: on a device backend ("cuda") queries and
// document blocks are uploaded as fp32 and scored and selected there (ops->scores_f32, fp32 GEMM;
// ops->topk_merge, ties by each id's rank in strcmp order); otherwise on the host, the CPU
// backend scoring with its own matmul and NULL with the blocked product of the CPU's scores_f32,
// selection by per-query heaps. The device path falls back to the host for k > SN_TOPK_MAX_K or
// N > INT32_MAX. Both give the same lists up to the last bits of the scores (different fp32 sum
// orders); the device stores a -0.0 score as +0.0.
void sn_topk_exact(const sn_ops *ops, const float *docs, int64_t N, const float *queries, int Q,
                   int C, int k, const char *const *doc_ids, int32_t *out_idx, float *out_scores);
// The most device memory sn_topk_exact holds on a device backend for C-wide vectors, whatever the
// number of queries (they go through in slices) and the depth, plus 4 bytes a document (the tie
// keys): the memory plan's mining term.
size_t sn_topk_device_bound(int C);
// The device search itself through any backend with scores_f32 and topk_merge (sn_topk_exact takes it
// on CUDA; the CPU twins run it in tests), `slice` queries resident at a time. 1 <= k <= N.
void sn_topk_exact_sliced(const sn_ops *ops, const float *docs, int N, const float *queries, int Q, int C, int k,
                          const char *const *doc_ids, int32_t *out_idx, float *out_scores, int slice);
// rank (N): each id's position in ascending strcmp order (duplicates by index), so that ordering by
// rank is the trec tie rule: the tie keys that topk_merge takes. Caller frees.
int32_t *sn_doc_id_ranks(const char *const *ids, int N);

// ---- embed → search → metrics (eval_embed.c, eval_run.c) ---------------------------------------

typedef struct {
  const char *split;          // for the report only; the data is already loaded
  int batch;                  // sequences per forward pass
  int max_query_len;          // tokens, special tokens included
  int max_doc_len;
  const char *query_prompt;   // NULL, or a template with {text} (else used as a prefix)
  const char *doc_prompt;     // NULL (title + " " + text), or a template with {title} and {text}
  int query_pooling;          // sn_pooling, or -1: last for decoders, first (CLS) for encoders;
  int doc_pooling;            //   set them as the towers were trained (stage 2 may differ)
  const char *save_doc_emb;   // PREFIX: writes PREFIX.npy (N, C) fp32 + PREFIX.ids.txt
  const char *load_doc_emb;   // PREFIX: reads them instead of embedding the corpus
  int k;                      // top-k depth of the search (>= SN_EVAL_MAX_METRIC_K)
  const char *run_out;        // optional TREC run file of the search
  int verbose;                // progress lines on stderr
  float contrastive_temperature;  // > 0: also the held-out contrastive loss at this tau
  // What the user calls batch and the two lengths, for messages: sn_eval's flags by default
  // ("--batch", ...), sn_train's config keys ("eval.batch", "data.max_doc_len", ...).
  const char *batch_name, *max_query_len_name, *max_doc_len_name;
} sn_eval_opts;

void sn_eval_opts_default(sn_eval_opts *o);

typedef struct {
  int num_queries;  // queries the mean divides by
  int num_docs;
  sn_metrics mean;
  double seconds;
  double seconds_embed_docs;
  double seconds_embed_queries;
  double seconds_search;
  // The held-out contrastive loss (opts->contrastive_temperature > 0, else pairs = 0): InfoNCE of
  // every judged relevant (query, document) pair against the whole corpus as negatives,
  //   mean over pairs of  logsumexp_d(q.d / tau) - q.d+ / tau,
  // the training loss with the corpus for the batch (no batch size to choose, same for every run
  // on the data). Pairs whose document is not in the corpus are left out.
  double contrastive_loss;
  int contrastive_pairs;
  float contrastive_temperature;
} sn_eval_result;

// Width of a tower's embeddings: its projection's output width when it has one (stage-2
// students: "projection.weight" (out_dim, C)), else the hidden size.
int sn_eval_embedding_dim(const sn_model *m);

// Embeds n items (titles may be NULL) with one tower: tokenized in parallel exactly as training
// tokenizes (data.h's sn_prompt: template, the tokenizer's specials, EOS appended for decoder
// towers, the text cut to max_len rather than the template's tail), run in batches of similar
// length, pooled and L2-normalised. template_str NULL: "{text}", or for titled items BEIR's
// "{title} {text}"; a template without "{text}" is a prefix. pooling -1: last token for
// decoders, first (CLS) for encoders. Returns (n, sn_eval_embedding_dim(m)) fp32 host memory
// (caller frees), or NULL with err for a template or max_len the prompt code refuses.
float *sn_embed_items(sn_model *m, const sn_tokenizer *tok, const char *const *titles,
                      const char *const *texts, int n, const char *template_str, int max_len, int batch,
                      int pooling, int verbose, const char *what, char *err, size_t errlen);

// The same pass kept open between calls (the encoder library, host/serve/): the prompts and the
// workspace of batches of up to `batch` sequences of up to max_len tokens are made once.
typedef struct {
  const char *template_str;  // as sn_embed_items' (copied)
  int max_len;               // tokens, specials included (at most the tower's max_positions)
  int batch;                 // sequences per forward pass
  int pooling;               // sn_pooling, or -1: the architecture's default
  int normalize;             // L2-normalise the pooled (projected) vectors
  int graphs;                // backends with graphs (CUDA): record each repeated batch shape's
                             //   forward once and replay it (embed_graphs.h); same results
} sn_embedder_opts;
typedef struct sn_embedder sn_embedder;
// tok NULL: token ids only (sn_embedder_ids). NULL with err for sizes the tower cannot take or a
// template the prompt code refuses. Never exits on bad input (allocation failure aborts).
sn_embedder *sn_embedder_new(sn_model *m, const sn_tokenizer *tok, const sn_embedder_opts *o, char *err,
                             size_t errlen);
void sn_embedder_free(sn_embedder *e);
// The backend bytes sn_embedder_new allocates for m (the memory plan): the inference workspace of
// `batch` sequences of up to max_len tokens, their token buffers and the pooled fp32 rows.
size_t sn_embedder_plan_bytes(const sn_model *m, int batch, int max_len);
// Width of the rows it writes: sn_eval_embedding_dim of its tower.
int sn_embedder_dim(const sn_embedder *e);
// n items (titles may be NULL) → out (n, dim) fp32 host memory, tokenized and batched as
// sn_embed_items. 0, or -1 with err (a tokenizer id outside the tower's vocabulary).
int sn_embedder_texts(sn_embedder *e, const char *const *titles, const char *const *texts, int n, float *out,
                      int verbose, const char *what, char *err, size_t errlen);
// n token sequences (ids[i] of lens[i] tokens, used as given) → out (n, dim). 0, or -1 with err
// for an empty or too long sequence or an id outside the vocabulary.
int sn_embedder_ids(sn_embedder *e, const int32_t *const *ids, const int *lens, int n, float *out,
                    const char *what, char *err, size_t errlen);

// Whether one encode batch of opts->batch sequences of the longest length fits: each length at
// most its tower's max_positions (the position table of encoders, max_position_embeddings of RoPE
// decoders), batch x length within an int token count, and the inference workspace within the
// backend's free memory. Returns 0, or -1 with err naming the flags or keys (opts' *_name).
// sn_eval_run checks this first; doc_tower NULL checks the query side only.
int sn_eval_check_sizes(const sn_eval_opts *opts, const sn_model *query_tower, const sn_model *doc_tower,
                        char *err, size_t errlen);

// Full evaluation of the towers on loaded BEIR data. Returns 0, or -1 with err (sizes that
// sn_eval_check_sizes refuses, bad saved embeddings, tower widths that differ, an unwritable output).
int sn_eval_run(const sn_eval_opts *opts, const sn_beir *data, sn_model *query_tower,
                const sn_tokenizer *query_tok, sn_model *doc_tower, const sn_tokenizer *doc_tok,
                sn_eval_result *out, char *err, size_t errlen);

// Whether Q x k ranked entries fit in this host's memory. Returns 0, or -1 with err naming --k.
int sn_eval_check_topk_sizes(const sn_eval_opts *opts, int Q, int k, char *err, size_t errlen);

// The tail of every evaluation: the (Q, k) top-k lists of data's queries as a run (an index of -1
// ends a shorter list; a query without any result is left out of the run, so it is reported as
// missing from it and counts 0), written to opts->run_out when set, scored into out->mean,
// out->num_queries and out->num_docs. Returns 0, or -1 with err when the run file cannot be written.
int sn_eval_score_topk(const sn_eval_opts *opts, const sn_beir *data, const int32_t *idx, const float *scores,
                       int k, sn_eval_result *out, char *err, size_t errlen);

// ---- BM25 (eval_bm25.c) ------------------------------------------------------------------------

// BM25 evaluation on loaded BEIR data: the corpus indexed (title + " " + text), data's queries
// searched to depth max(opts->k, SN_EVAL_MAX_METRIC_K), scored as sn_eval_run scores. Reads only
// opts' split, k, run_out and verbose; out->seconds_embed_docs is the index build,
// out->seconds_search the search. Returns 0, or -1 with err (bad options, an unwritable run file).
int sn_eval_bm25_run(const sn_eval_opts *opts, const sn_bm25_opts *bm25, const sn_beir *data, sn_eval_result *out,
                     char *err, size_t errlen);

// Adds a metrics object's keys to j (a cJSON object): ours ("recall@10", "recall@100", "ndcg@10",
// "mrr@10") and MTEB's names of the same values ("recall_at_10", "recall_at_100", "ndcg_at_10",
// "mrr_at_10", and "main_score" = ndcg_at_10, MTEB's main score of retrieval tasks), so that
// scripts written for either read our files.
struct cJSON;
void sn_metrics_add_json(struct cJSON *j, const sn_metrics *m);

// {"split", "num_queries", "num_docs", the keys of sn_metrics_add_json, "seconds", and with a
// contrastive loss "contrastive_loss", "contrastive_pairs", "contrastive_temperature"} written
// durably to path. Returns 0, or -1 with err.
int sn_eval_write_json(const char *path, const char *split, const sn_eval_result *r, char *err,
                       size_t errlen);
// What a program's flags leave unset (NULL prompt, pooling < 0, max_len 0), from the export of the
// tower in dir (its role's prompt, its pooling and length; sn_export_read), else
// sn_eval_opts_default's. *exported keeps the prompt's memory; free it with
// sn_export_settings_free once done. sn_eval and sn_mine share it.
void sn_eval_apply_export(const char *dir, const char *role, const char **prompt, int *pooling,
                          int *max_len, sn_export_settings *exported);

// A small table on stdout.
void sn_eval_print_table(const char *split, const sn_eval_result *r);
