// trec_eval's measures as pytrec_eval reports them: recall_10, recall_100, ndcg_cut_10 and
// recip_rank within the top 10. Written from the definitions:
// - every query's run is re-sorted by score descending, then document id descending (strcmp);
//   the ranks in a run file are ignored;
// - relevant means a judgment > 0 (trec_eval's default relevance level 1 for integer grades);
// - nDCG gain is the grade itself (not 2^grade - 1) with discount log2(rank + 1), rank 1-based;
//   the ideal DCG ranks the query's judged grades in decreasing order, cut at the same depth;
// - a query without relevant documents scores 0 everywhere and is left out of the mean.
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "eval.h"

#define RUN_FIELDS 6        // qid Q0 docid rank score tag
#define RUN_MIN_FIELDS 5    // the tag may be missing
#define RUN_SCORE_DIGITS 9  // enough to round-trip an fp32 score
#define INITIAL_CAPACITY 4096  // run lines; grows by doubling


// ---- trec order --------------------------------------------------------------------------------

static int cmp_trec(const void *a, const void *b) {
  const sn_run_doc *x = a, *y = b;
  if (x->score > y->score) return -1;
  if (x->score < y->score) return 1;
  return strcmp(y->doc_id, x->doc_id);
}

void sn_run_sort_query(sn_run_query *q) { qsort(q->docs, (size_t)q->ndocs, sizeof *q->docs, cmp_trec); }

// ---- run files ---------------------------------------------------------------------------------

typedef struct {
  char *qid;
  sn_run_doc doc;
  int line;
} run_line;

static int cmp_run_line(const void *a, const void *b) {
  const run_line *x = a, *y = b;
  int c = strcmp(x->qid, y->qid);
  if (c) return c;
  c = strcmp(x->doc.doc_id, y->doc.doc_id);
  return c ? c : x->line - y->line;
}

int sn_run_load_trec(const char *path, sn_run *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "r");
  if (!f) return sn_errorf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  run_line *lines = NULL;
  size_t n = 0, cap = 0, bufcap = 0;
  char *buf = NULL;
  int lineno = 0, rc = 0;
  while (getline(&buf, &bufcap, f) >= 0) {
    lineno++;
    char *fields[RUN_FIELDS + 1], *save = NULL;
    int nf = 0;
    for (char *t = strtok_r(buf, " \t\r\n", &save); t && nf <= RUN_FIELDS; t = strtok_r(NULL, " \t\r\n", &save))
      fields[nf++] = t;
    if (nf == 0) continue;
    if (nf < RUN_MIN_FIELDS || nf > RUN_FIELDS) {
      rc = sn_errorf(err, errlen, "%s:%d: expected 'qid Q0 docid rank score [tag]', got %s%d field(s)", path,
                lineno, nf > RUN_FIELDS ? "more than " : "", nf > RUN_FIELDS ? RUN_FIELDS : nf);
      break;
    }
    char *end;
    errno = 0;
    double score = strtod(fields[4], &end);
    if (end == fields[4] || *end || errno || !isfinite(score)) {
      rc = sn_errorf(err, errlen, "%s:%d: expected a finite number as the score (field 5), got '%s'", path,
                lineno, fields[4]);
      break;
    }
    if (n == cap) lines = reallocCheck(lines, (cap = cap ? 2 * cap : INITIAL_CAPACITY) * sizeof *lines);
    lines[n++] = (run_line){strdupCheck(fields[0]), {strdupCheck(fields[2]), score}, lineno};
  }
  free(buf);
  fclose(f);
  // A run without any result would score 0 everywhere: almost surely a failed retrieval step.
  if (rc == 0 && n == 0)
    rc = sn_errorf(err, errlen, "%s: no result lines (expected 'qid Q0 docid rank score [tag]' lines)", path);
  if (rc == 0) {
    qsort(lines, n, sizeof *lines, cmp_run_line);
    for (size_t i = 1; i < n; i++)
      if (!strcmp(lines[i].qid, lines[i - 1].qid) && !strcmp(lines[i].doc.doc_id, lines[i - 1].doc.doc_id)) {
        rc = sn_errorf(err, errlen, "%s:%d: query '%s' retrieves document '%s' again (first at line %d); "
                  "expected each document once per query", path, lines[i].line, lines[i].qid,
                  lines[i].doc.doc_id, lines[i - 1].line);
        break;
      }
  }
  if (rc == 0) {
    out->queries = callocCheck(n, sizeof *out->queries);
    for (size_t i = 0; i < n;) {
      size_t j = i;
      while (j < n && !strcmp(lines[j].qid, lines[i].qid)) j++;
      sn_run_query *q = &out->queries[out->nqueries++];
      q->query_id = lines[i].qid;
      q->ndocs = (int)(j - i);
      q->docs = mallocCheck((j - i) * sizeof *q->docs);
      for (size_t t = i; t < j; t++) {
        if (t > i) free(lines[t].qid);
        q->docs[t - i] = lines[t].doc;
      }
      sn_run_sort_query(q);
      i = j;
    }
  } else {
    for (size_t i = 0; i < n; i++) free(lines[i].qid), free(lines[i].doc.doc_id);
  }
  free(lines);
  return rc;
}

int sn_run_write_trec(const char *path, const sn_run *run, const char *tag, char *err, size_t errlen) {
  FILE *f = fopen(path, "w");
  if (!f) return sn_errorf(err, errlen, "%s: cannot open for writing: %s", path, strerror(errno));
  for (int i = 0; i < run->nqueries; i++) {
    const sn_run_query *q = &run->queries[i];
    for (int r = 0; r < q->ndocs; r++)
      fprintf(f, "%s Q0 %s %d %.*g %s\n", q->query_id, q->docs[r].doc_id, r + 1, RUN_SCORE_DIGITS,
              q->docs[r].score, tag);
  }
  if (ferror(f) | (fclose(f) != 0)) return sn_errorf(err, errlen, "%s: write failed: %s", path, strerror(errno));
  return 0;
}

void sn_run_free(sn_run *run) {
  for (int i = 0; i < run->nqueries; i++) {
    sn_run_query *q = &run->queries[i];
    free(q->query_id);
    for (int r = 0; r < q->ndocs; r++) free(q->docs[r].doc_id);
    free(q->docs);
  }
  free(run->queries);
  memset(run, 0, sizeof *run);
}

// ---- metrics -----------------------------------------------------------------------------------

static int cmp_int_desc(const void *a, const void *b) {
  int x = *(const int *)a, y = *(const int *)b;
  return (x < y) - (x > y);
}

// trec_eval's discounted gain at 0-based position i.
static double discounted_gain(int grade, int i) { return (double)grade / log2((double)(i + 2)); }

static double ideal_dcg(const sn_qrels_query *qrels, int depth) {
  int *grades = mallocCheck((size_t)qrels->ndocs * sizeof *grades);
  memcpy(grades, qrels->rels, (size_t)qrels->ndocs * sizeof *grades);
  qsort(grades, (size_t)qrels->ndocs, sizeof *grades, cmp_int_desc);
  double dcg = 0.0;
  for (int i = 0; i < qrels->ndocs && i < depth && grades[i] > 0; i++) dcg += discounted_gain(grades[i], i);
  free(grades);
  return dcg;
}

void sn_metrics_query(const sn_qrels_query *qrels, const sn_run_query *ranked, sn_metrics *out) {
  memset(out, 0, sizeof *out);
  if (!qrels || qrels->num_rel == 0) return;
  int hits_small = 0, hits_large = 0;
  double dcg = 0.0;
  int n = ranked ? SN_MIN(ranked->ndocs, SN_EVAL_MAX_METRIC_K) : 0;
  for (int i = 0; i < n; i++) {
    int rel = sn_qrels_rel(qrels, ranked->docs[i].doc_id);
    if (rel <= 0) continue;
    if (i < SN_EVAL_RECALL_SMALL_K) hits_small++;
    if (i < SN_EVAL_RECALL_LARGE_K) hits_large++;
    if (i < SN_EVAL_NDCG_K) dcg += discounted_gain(rel, i);
    if (i < SN_EVAL_MRR_K && out->mrr_10 == 0.0) out->mrr_10 = 1.0 / (double)(i + 1);
  }
  out->recall_10 = (double)hits_small / (double)qrels->num_rel;
  out->recall_100 = (double)hits_large / (double)qrels->num_rel;
  double ideal = ideal_dcg(qrels, SN_EVAL_NDCG_K);
  out->ndcg_10 = ideal > 0.0 ? dcg / ideal : 0.0;
}

static int cmp_run_query_key(const void *key, const void *elem) {
  return strcmp((const char *)key, ((const sn_run_query *)elem)->query_id);
}

static sn_run_query *run_find(const sn_run *run, const char *query_id) {
  if (!run->nqueries) return NULL;
  return bsearch(query_id, run->queries, (size_t)run->nqueries, sizeof *run->queries, cmp_run_query_key);
}

void sn_eval_coverage_of(const sn_qrels *qrels, const sn_run *run, sn_eval_coverage *out) {
  memset(out, 0, sizeof *out);
  out->judged = qrels->nqueries;
  for (int i = 0; i < qrels->nqueries; i++) {
    const sn_qrels_query *q = &qrels->queries[i];
    if (q->num_rel == 0) {
      if (!out->no_relevant++) out->first_no_relevant = q->query_id;
      continue;
    }
    out->evaluated++;
    if (!run_find(run, q->query_id) && !out->missing_from_run++) out->first_missing_from_run = q->query_id;
  }
  for (int i = 0; i < run->nqueries; i++)
    if (!sn_qrels_find(qrels, run->queries[i].query_id) && !out->unjudged_in_run++)
      out->first_unjudged_in_run = run->queries[i].query_id;
}

static const char *plural(int n, const char *one, const char *many) { return n == 1 ? one : many; }

void sn_eval_log_coverage(const sn_eval_coverage *c) {
  if (c->no_relevant)
    sn_warn("%d judged %s no relevant document (every score <= 0; e.g. '%s'): left out of the means",
            c->no_relevant, plural(c->no_relevant, "query has", "queries have"), c->first_no_relevant);
  if (c->missing_from_run)
    sn_warn("%d judged %s no results in the run (e.g. '%s'): %s 0 in every mean", c->missing_from_run,
            plural(c->missing_from_run, "query has", "queries have"), c->first_missing_from_run,
            plural(c->missing_from_run, "it counts", "they count"));
  if (c->unjudged_in_run)
    sn_warn("%d %s in the run %s no judgments (e.g. '%s'): ignored", c->unjudged_in_run,
            plural(c->unjudged_in_run, "query", "queries"), plural(c->unjudged_in_run, "has", "have"),
            c->first_unjudged_in_run);
  sn_strbuf line = {0};
  sn_strbuf_printf(&line, "metrics averaged over %d %s with at least one relevant document", c->evaluated,
                   plural(c->evaluated, "query", "queries"));
  if (c->missing_from_run)
    sn_strbuf_printf(&line, " (%d of them missing from the run, counted 0)", c->missing_from_run);
  if (c->no_relevant)
    sn_strbuf_printf(&line, "; %d judged %s without one left out", c->no_relevant,
                     plural(c->no_relevant, "query", "queries"));
  if (c->unjudged_in_run)
    sn_strbuf_printf(&line, "; %d unjudged run %s ignored", c->unjudged_in_run,
                     plural(c->unjudged_in_run, "query", "queries"));
  sn_log("%s", line.s);
  free(line.s);
}

void sn_metrics_compute(const sn_qrels *qrels, sn_run *run, sn_metrics *mean, int *num_evaluated,
                        sn_query_metrics **per_query) {
  sn_eval_coverage coverage;
  sn_eval_coverage_of(qrels, run, &coverage);
  sn_eval_log_coverage(&coverage);
  sn_query_metrics *pq = per_query ? callocCheck((size_t)qrels->nqueries, sizeof *pq) : NULL;
  sn_metrics sum = {0};
  int counted = 0;
  for (int i = 0; i < qrels->nqueries; i++) {
    const sn_qrels_query *q = &qrels->queries[i];
    sn_run_query *r = run_find(run, q->query_id);
    if (r) sn_run_sort_query(r);
    sn_metrics m;
    sn_metrics_query(q, r, &m);
    if (pq) pq[i] = (sn_query_metrics){q->query_id, q->num_rel, m};
    if (q->num_rel == 0) continue;
    counted++;
    sum.recall_10 += m.recall_10;
    sum.recall_100 += m.recall_100;
    sum.ndcg_10 += m.ndcg_10;
    sum.mrr_10 += m.mrr_10;
  }
  double denom = counted ? (double)counted : 1.0;
  *mean = (sn_metrics){sum.recall_10 / denom, sum.recall_100 / denom, sum.ndcg_10 / denom, sum.mrr_10 / denom};
  if (num_evaluated) *num_evaluated = counted;
  if (per_query) *per_query = pq;
}
