// BM25 lexical retrieval over a corpus held in memory (Lucene's formula): an index built once,
// searched by many queries in parallel, results in the same trec order as sn_topk_exact.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct { float k1; float b; int lowercase; int stopwords; int stem; } sn_bm25_opts;  // 0.9, 0.4, 1, 1, 1
void sn_bm25_opts_default(sn_bm25_opts *o);
typedef struct sn_bm25_index sn_bm25_index;
// Indexes n documents; document i's text is titles[i] + " " + texts[i] (titles may be NULL). threads <= 0: all cores. NULL with err on failure (n == 0: "empty corpus").
sn_bm25_index *sn_bm25_build(const char *const *titles, const char *const *texts, int64_t n, const sn_bm25_opts *opts, int threads, char *err, size_t errlen);
// For each of Q queries: the k best document indices and BM25 scores in trec order (score desc, ties by doc_ids desc by strcmp when given, else index desc); k clamped to the number of documents; documents matching no query term are never returned: unused slots hold index -1 and score -INFINITY. out_idx/out_scores hold Q*k entries. Returns 0.
int sn_bm25_search(const sn_bm25_index *index, const char *const *queries, int Q, int k, const char *const *doc_ids, int threads, int32_t *out_idx, float *out_scores);
int64_t sn_bm25_num_docs(const sn_bm25_index *index);
void sn_bm25_free(sn_bm25_index *index);
