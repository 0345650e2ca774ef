// BM25 retrieval: an analyzer (bm25_analyzer.c, porter.c), an inverted index and its multi-threaded
// top-k search (bm25.c).
//
// Scoring is Lucene's BM25 (BM25Similarity), with exact document lengths (Lucene stores them in a
// lossy byte): for each query term t found in document d
//   idf(t)     = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))
//   score(t,d) = idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl(d) / avgdl))
// with tf the term's count in d, dl(d) d's length in terms after analysis, avgdl the mean over the
// corpus. A query term that occurs twice counts twice (Lucene's BooleanQuery sums repeated
// clauses; Pyserini weights each term by its count). A document's text is its title, a space and
// its text, as BEIR's BM25 indexes it.
//
// Analyzer: words are maximal runs of letters and digits (UTF-8; see bm25_analyzer.c for which
// code points count), then, each step switchable, lower-casing, removal of Lucene's English stop
// words (EnglishAnalyzer's 33) and the Porter stemmer. A word longer than SN_BM25_MAX_TERM_BYTES
// bytes is cut into pieces of at most that many, as Lucene's StandardTokenizer does.
#pragma once
#include <stddef.h>
#include <stdint.h>

#define SN_BM25_DEFAULT_K1 0.9f  // Lucene's and Pyserini's defaults
#define SN_BM25_DEFAULT_B 0.4f
#define SN_BM25_MAX_TERM_BYTES 255

typedef struct {
  float k1;       // 0.9: term-frequency saturation, >= 0
  float b;        // 0.4: document-length normalisation, in [0, 1]
  int lowercase;  // 1
  int stopwords;  // 1: Lucene's English stop words removed
  int stem;       // 1: Porter stemmer
} sn_bm25_opts;

void sn_bm25_opts_default(sn_bm25_opts *o);
// 0 when k1 and b are in range, else -1 with err naming k1_name / b_name (a flag or a key).
int sn_bm25_opts_check(const sn_bm25_opts *o, const char *k1_name, const char *b_name, char *err, size_t errlen);

typedef struct sn_bm25_index sn_bm25_index;

// Indexes n documents; document i's text is titles[i] + " " + texts[i] (titles may be NULL or hold
// "" entries), as BEIR's BM25 does. threads <= 0: all cores. Returns NULL with err on failure
// (n == 0 is an error: "empty corpus"; so are options that sn_bm25_opts_check refuses and more
// than INT32_MAX documents).
sn_bm25_index *sn_bm25_build(const char *const *titles, const char *const *texts, int64_t n,
                             const sn_bm25_opts *opts, int threads, char *err, size_t errlen);
// For each of Q queries: the k best document indices and their BM25 scores, in trec order (score
// descending, ties by doc_ids descending by strcmp when doc_ids is given, else by index descending);
// k is clamped to the number of documents; documents that match no query term are never returned, so
// a query's list may be shorter: its unused slots hold index -1 and score -INFINITY.
// out_idx and out_scores hold Q * k entries. Returns 0.
int sn_bm25_search(const sn_bm25_index *index, const char *const *queries, int Q, int k,
                   const char *const *doc_ids, int threads, int32_t *out_idx, float *out_scores);
int64_t sn_bm25_num_docs(const sn_bm25_index *index);
// Distinct terms of the corpus after analysis, and their occurrences (the sum of document lengths).
int64_t sn_bm25_num_terms(const sn_bm25_index *index);
int64_t sn_bm25_num_tokens(const sn_bm25_index *index);
void sn_bm25_free(sn_bm25_index *index);

// ---- analyzer (bm25_analyzer.c) ----------------------------------------------------------------

// Receives each term of a text in order: len bytes at term (NUL-terminated, valid until the next call).
typedef void (*sn_bm25_term_fn)(const char *term, int len, void *ctx);
// Splits text (NUL-terminated UTF-8) into terms with opts' steps; k1 and b are not read.
void sn_bm25_analyze(const char *text, const sn_bm25_opts *opts, sn_bm25_term_fn emit, void *ctx);
// 1 when word (len bytes) is one of Lucene's English stop words.
int sn_bm25_is_stopword(const char *word, int len);

// ---- Porter stemmer (porter.c) -----------------------------------------------------------------

// Stems a word of lower-case ASCII letters (digits count as consonants) in place; returns its new
// length, never more than n (no NUL is written).
int sn_porter_stem(char *word, int n);
