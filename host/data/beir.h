// BEIR retrieval data: corpus.jsonl ({"_id", "title"?, "text"}), queries.jsonl ({"_id", "text"})
// and qrels/<split>.tsv ("query-id<TAB>corpus-id<TAB>score" with a header line, integer scores;
// relevance > 0 counts as relevant). Also the TREC qrels form ("qid 0 docid rel"), so the metric
// tool can read qrels that did not come from BEIR.
//
// Loaders never exit: they return -1 with one message in err naming FILE:LINE and what was
// expected. CLIs turn that into exit status 2.
#pragma once
#include <stddef.h>
#include <stdint.h>

// String id → index, open addressing. Ids are borrowed (the caller keeps them alive).
typedef struct {
  const char **keys;
  int32_t *values;
  size_t cap;  // power of two
  size_t count;
} sn_id_map;

void sn_id_map_init(sn_id_map *m, size_t expected);
void sn_id_map_free(sn_id_map *m);
// Returns the existing value when key is already present (and does not overwrite), else inserts
// value and returns -1.
int32_t sn_id_map_put(sn_id_map *m, const char *key, int32_t value);
int32_t sn_id_map_get(const sn_id_map *m, const char *key);  // -1 when absent

// Relevance judgments of one query. docs sorted by strcmp for bsearch.
typedef struct {
  char *query_id;
  int ndocs;
  char **doc_ids;
  int *rels;
  int num_rel;  // judgments with rel > 0
} sn_qrels_query;

typedef struct {
  int nqueries;
  sn_qrels_query *queries;  // sorted by query_id
} sn_qrels;

// Reads BEIR TSV qrels (header line optional) or TREC qrels (4 whitespace-separated fields).
// A (query, doc) pair judged twice is an error, and so is a file without any positive score (no
// query could be evaluated: every metric would be a meaningless 0).
int sn_qrels_load(const char *path, sn_qrels *out, char *err, size_t errlen);
void sn_qrels_free(sn_qrels *q);
const sn_qrels_query *sn_qrels_find(const sn_qrels *q, const char *query_id);
int sn_qrels_rel(const sn_qrels_query *q, const char *doc_id);  // 0 when unjudged

// Records of corpus.jsonl or queries.jsonl, in file order.
typedef struct {
  int n;
  char **ids;
  char **titles;  // corpus: "" when absent; queries: NULL
  char **texts;
  sn_id_map index;
} sn_beir_records;

typedef struct {
  sn_beir_records corpus;
  sn_beir_records queries;  // only the queries judged in the split's qrels, in file order
  sn_qrels qrels;           // queries unknown to queries.jsonl dropped (warned)
  int num_qrels_unknown_queries;   // judgments whose query id is not in queries.jsonl
  int num_qrels_unknown_docs;      // judgments whose doc id is not in corpus.jsonl (kept)
  int num_queries_unjudged;        // queries.jsonl records the split does not judge (not loaded)
} sn_beir;

// Loads DIR/corpus.jsonl, DIR/queries.jsonl, DIR/qrels/<split>.tsv. Unknown corpus ids in the
// qrels stay as relevant-but-unretrievable (they count in recall denominators, as in pytrec_eval);
// judgments for queries missing from queries.jsonl are dropped and counted (a warning is printed).
// An error when no judged query left has a relevant document.
int sn_beir_load(const char *dir, const char *split, sn_beir *out, char *err, size_t errlen);
void sn_beir_free(sn_beir *b);
// Loads one corpus.jsonl on its own (sn_mine's --corpus): the records as sn_beir_load reads them
// (duplicate ids and a file without records are errors). Returns 0, or -1 with err.
int sn_beir_corpus_load(const char *path, sn_beir_records *out, char *err, size_t errlen);
void sn_beir_records_free(sn_beir_records *r);
