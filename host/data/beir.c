// BEIR loader: JSONL records, qrels TSV (or TREC qrels), and the checks that tie them together.
#define _GNU_SOURCE
#include "beir.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cJSON.h"
#include "common.h"

#define SN_PATH_MAX 4096
#define ID_MAP_MIN_CAP 64
#define SN_EXAMPLE_ID_MAX 128  // an id quoted in a warning
#define INITIAL_CAPACITY 1024  // record and judgment arrays grow by doubling from here
#define INT64_RANGE_LIMIT 0x1p63  // doubles of smaller magnitude convert to int64_t

// ---- id map ------------------------------------------------------------------------------------

// FNV-1a: short ids, no adversary; good enough spread for open addressing.
static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ULL;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
  return h;
}

void sn_id_map_init(sn_id_map *m, size_t expected) {
  size_t cap = ID_MAP_MIN_CAP;
  while (cap < 2 * expected) cap *= 2;  // load factor <= 1/2
  m->cap = cap;
  m->count = 0;
  m->keys = callocCheck(cap, sizeof *m->keys);
  m->values = mallocCheck(cap * sizeof *m->values);
}

void sn_id_map_free(sn_id_map *m) {
  free(m->keys);
  free(m->values);
  memset(m, 0, sizeof *m);
}

static size_t id_map_slot(const sn_id_map *m, const char *key) {
  size_t i = hash_str(key) & (m->cap - 1);
  while (m->keys[i] && strcmp(m->keys[i], key) != 0) i = (i + 1) & (m->cap - 1);
  return i;
}

int32_t sn_id_map_put(sn_id_map *m, const char *key, int32_t value) {
  if (2 * (m->count + 1) > m->cap) {
    sn_id_map bigger;
    sn_id_map_init(&bigger, m->cap);
    for (size_t i = 0; i < m->cap; i++)
      if (m->keys[i]) sn_id_map_put(&bigger, m->keys[i], m->values[i]);
    sn_id_map_free(m);
    *m = bigger;
  }
  size_t i = id_map_slot(m, key);
  if (m->keys[i]) return m->values[i];
  m->keys[i] = key;
  m->values[i] = value;
  m->count++;
  return -1;
}

int32_t sn_id_map_get(const sn_id_map *m, const char *key) {
  if (!m->cap) return -1;
  size_t i = id_map_slot(m, key);
  return m->keys[i] ? m->values[i] : -1;
}

// ---- helpers -----------------------------------------------------------------------------------


static void strip_eol(char *line, ssize_t *len) {
  while (*len > 0 && (line[*len - 1] == '\n' || line[*len - 1] == '\r')) line[--*len] = '\0';
}

static int is_blank(const char *s) {
  for (; *s; s++)
    if (!isspace((unsigned char)*s)) return 0;
  return 1;
}

// ---- qrels -------------------------------------------------------------------------------------

typedef struct {
  char *qid, *did;
  int rel;
  int line;
} qrel_line;

static int cmp_qrel_line(const void *a, const void *b) {
  const qrel_line *x = a, *y = b;
  int c = strcmp(x->qid, y->qid);
  if (c) return c;
  c = strcmp(x->did, y->did);
  return c ? c : x->line - y->line;
}

static int parse_int_field(const char *s, int *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (end == s || *end != '\0' || errno || v < -1000000 || v > 1000000) return 0;
  *out = (int)v;
  return 1;
}

// Splits line in place on tabs when it has any, else on runs of whitespace. Returns field count.
static int split_fields(char *line, char **fields, int max_fields) {
  int n = 0;
  if (strchr(line, '\t')) {
    for (char *p = line;;) {
      if (n == max_fields) return max_fields + 1;
      fields[n++] = p;
      char *tab = strchr(p, '\t');
      if (!tab) return n;
      *tab = '\0';
      p = tab + 1;
    }
  }
  char *save = NULL;
  for (char *tok = strtok_r(line, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
    if (n == max_fields) return max_fields + 1;
    fields[n++] = tok;
  }
  return n;
}

#define QRELS_MAX_FIELDS 4

int sn_qrels_load(const char *path, sn_qrels *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "r");
  if (!f) return sn_errorf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  qrel_line *lines = NULL;
  size_t n = 0, cap = 0;
  char *buf = NULL;
  size_t bufcap = 0;
  ssize_t len;
  int lineno = 0, rc = 0;
  while ((len = getline(&buf, &bufcap, f)) >= 0) {
    lineno++;
    strip_eol(buf, &len);
    if (is_blank(buf)) continue;
    char *fields[QRELS_MAX_FIELDS + 1];
    int nf = split_fields(buf, fields, QRELS_MAX_FIELDS);
    // BEIR: qid doc rel; TREC: qid iteration doc rel
    const char *qid = fields[0], *did = NULL, *rel_s = NULL;
    if (nf == 3) did = fields[1], rel_s = fields[2];
    if (nf == 4) did = fields[2], rel_s = fields[3];
    int rel;
    if (did && parse_int_field(rel_s, &rel)) {
      if (n == cap) lines = reallocCheck(lines, (cap = cap ? 2 * cap : INITIAL_CAPACITY) * sizeof *lines);
      lines[n++] = (qrel_line){strdupCheck(qid), strdupCheck(did), rel, lineno};
      continue;
    }
    if (did && n == 0 && lineno == 1) continue;  // the header "query-id corpus-id score"
    if (did)
      rc = sn_errorf(err, errlen, "%s:%d: expected an integer relevance score, got '%s'", path, lineno, rel_s);
    else
      rc = sn_errorf(err, errlen,
                "%s:%d: expected 'query-id<TAB>corpus-id<TAB>score' (or TREC 'qid 0 docid rel'), got "
                "%s%d field(s)", path, lineno, nf > QRELS_MAX_FIELDS ? "more than " : "",
                nf > QRELS_MAX_FIELDS ? QRELS_MAX_FIELDS : nf);
    break;
  }
  free(buf);
  fclose(f);
  if (rc == 0 && n == 0) rc = sn_errorf(err, errlen, "%s: no judgments (expected 'query-id<TAB>corpus-id<TAB>score' lines)", path);
  if (rc == 0) {
    qsort(lines, n, sizeof *lines, cmp_qrel_line);
    for (size_t i = 1; i < n; i++)
      if (!strcmp(lines[i].qid, lines[i - 1].qid) && !strcmp(lines[i].did, lines[i - 1].did)) {
        rc = sn_errorf(err, errlen, "%s:%d: query '%s' judges document '%s' again (first at line %d); expected one judgment per pair",
                  path, lines[i].line, lines[i].qid, lines[i].did, lines[i - 1].line);
        break;
      }
  }
  if (rc == 0) {
    size_t positive = 0;
    for (size_t i = 0; i < n; i++) positive += lines[i].rel > 0;
    // Every metric would be 0 over no query at all: a qrels file of only zero grades is not usable.
    if (positive == 0)
      rc = sn_errorf(err, errlen, "%s: none of its %zu judgments has a positive score; expected relevant "
                     "documents (score > 0) for at least one query", path, n);
  }
  if (rc == 0) {
    // group runs of equal query ids; lines own the strings, which move into the queries
    out->queries = callocCheck(n, sizeof *out->queries);
    for (size_t i = 0; i < n;) {
      size_t j = i;
      while (j < n && !strcmp(lines[j].qid, lines[i].qid)) j++;
      sn_qrels_query *q = &out->queries[out->nqueries++];
      q->query_id = lines[i].qid;
      q->ndocs = (int)(j - i);
      q->doc_ids = mallocCheck((j - i) * sizeof *q->doc_ids);
      q->rels = mallocCheck((j - i) * sizeof *q->rels);
      for (size_t t = i; t < j; t++) {
        if (t > i) free(lines[t].qid);
        q->doc_ids[t - i] = lines[t].did;
        q->rels[t - i] = lines[t].rel;
        q->num_rel += lines[t].rel > 0;
      }
      i = j;
    }
  } else {
    for (size_t i = 0; i < n; i++) free(lines[i].qid), free(lines[i].did);
  }
  free(lines);
  return rc;
}

static void free_qrels_query(sn_qrels_query *x) {
  free(x->query_id);
  for (int j = 0; j < x->ndocs; j++) free(x->doc_ids[j]);
  free(x->doc_ids);
  free(x->rels);
}

void sn_qrels_free(sn_qrels *q) {
  for (int i = 0; i < q->nqueries; i++) free_qrels_query(&q->queries[i]);
  free(q->queries);
  memset(q, 0, sizeof *q);
}

static int cmp_qrels_query_key(const void *key, const void *elem) {
  return strcmp((const char *)key, ((const sn_qrels_query *)elem)->query_id);
}

const sn_qrels_query *sn_qrels_find(const sn_qrels *q, const char *query_id) {
  if (!q->nqueries) return NULL;
  return bsearch(query_id, q->queries, (size_t)q->nqueries, sizeof *q->queries, cmp_qrels_query_key);
}

static int cmp_str_key(const void *key, const void *elem) {
  return strcmp((const char *)key, *(char *const *)elem);
}

int sn_qrels_rel(const sn_qrels_query *q, const char *doc_id) {
  char **hit = bsearch(doc_id, q->doc_ids, (size_t)q->ndocs, sizeof *q->doc_ids, cmp_str_key);
  return hit ? q->rels[hit - q->doc_ids] : 0;
}

// ---- JSONL records -----------------------------------------------------------------------------

// A required (or optional) string field of one record. Returns the string, or NULL with err set
// (optional fields that are absent give "").
static const char *record_string(const cJSON *obj, const char *key, int required, const char *path,
                                 int lineno, char *err, size_t errlen) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) {
    if (!required) return "";
    sn_errorf(err, errlen, "%s:%d: missing field \"%s\" (expected a string)", path, lineno, key);
    return NULL;
  }
  if (cJSON_IsString(v)) return v->valuestring;
  // BEIR ids are strings, but some dumps write numeric ids; accept integers losslessly (the range
  // test first: casting a double outside int64's range is undefined).
  if (!strcmp(key, "_id") && cJSON_IsNumber(v) && fabs(v->valuedouble) < INT64_RANGE_LIMIT &&
      v->valuedouble == (double)(int64_t)v->valuedouble) {
    static _Thread_local char num[32];
    snprintf(num, sizeof num, "%lld", (long long)v->valuedouble);
    return num;
  }
  sn_errorf(err, errlen, "%s:%d: field \"%s\" must be a string", path, lineno, key);
  return NULL;
}

// keep (optional): only records whose id it judges are kept (queries of the split); *skipped (may
// be NULL) counts the others.
static int load_records(const char *path, int with_title, const sn_qrels *keep, sn_beir_records *out,
                        int *skipped, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "r");
  if (!f) return sn_errorf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
  size_t cap = 0;
  char *buf = NULL;
  size_t bufcap = 0;
  ssize_t len;
  int lineno = 0, rc = 0;
  int *first_line = NULL;  // line of each record, for duplicate-id messages
  sn_id_map_init(&out->index, INITIAL_CAPACITY);
  while (rc == 0 && (len = getline(&buf, &bufcap, f)) >= 0) {
    lineno++;
    strip_eol(buf, &len);
    if (is_blank(buf)) continue;
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithLengthOpts(buf, (size_t)len, &end, 0);
    if (!obj || !cJSON_IsObject(obj)) {
      if (obj)
        rc = sn_errorf(err, errlen, "%s:%d: expected a JSON object with \"_id\" and \"text\"", path, lineno);
      else
        rc = sn_errorf(err, errlen, "%s:%d: malformed JSON near byte %ld (expected one object per line)",
                  path, lineno, cJSON_GetErrorPtr() ? (long)(cJSON_GetErrorPtr() - buf) + 1 : 1L);
      cJSON_Delete(obj);
      break;
    }
    const char *id = record_string(obj, "_id", 1, path, lineno, err, errlen);
    char *id_copy = id ? strdupCheck(id) : NULL;
    const char *text = id ? record_string(obj, "text", 1, path, lineno, err, errlen) : NULL;
    const char *title = (text && with_title) ? record_string(obj, "title", 0, path, lineno, err, errlen) : "";
    if (!id || !text || !title) {
      rc = -1;
    } else if (keep && !sn_qrels_find(keep, id_copy)) {
      if (skipped) ++*skipped;
    } else {
      if ((size_t)out->n == cap) {
        cap = cap ? 2 * cap : INITIAL_CAPACITY;
        out->ids = reallocCheck(out->ids, cap * sizeof *out->ids);
        out->texts = reallocCheck(out->texts, cap * sizeof *out->texts);
        if (with_title) out->titles = reallocCheck(out->titles, cap * sizeof *out->titles);
        first_line = reallocCheck(first_line, cap * sizeof *first_line);
      }
      first_line[out->n] = lineno;
      out->ids[out->n] = id_copy;
      out->texts[out->n] = strdupCheck(text);
      if (with_title) out->titles[out->n] = strdupCheck(title);
      id_copy = NULL;
      // the map keeps pointers into ids[], which realloc does not move (strings are separate)
      int32_t prev = sn_id_map_put(&out->index, out->ids[out->n], out->n);
      if (prev >= 0) {
        rc = sn_errorf(err, errlen, "%s:%d: duplicate _id '%s' (already defined at line %d); expected unique ids",
                  path, lineno, out->ids[out->n], first_line[prev]);
        free(out->texts[out->n]);
        if (with_title) free(out->titles[out->n]);
        free(out->ids[out->n]);
      } else {
        out->n++;
      }
    }
    free(id_copy);
    cJSON_Delete(obj);
  }
  free(buf);
  free(first_line);
  fclose(f);
  if (rc == 0 && out->n == 0)
    rc = sn_errorf(err, errlen, "%s: no records%s (expected JSON lines with \"_id\" and \"text\")", path,
              keep ? " for the queries judged in the qrels" : "");
  return rc;
}

void sn_beir_records_free(sn_beir_records *r) {
  for (int i = 0; i < r->n; i++) {
    free(r->ids[i]);
    free(r->texts[i]);
    if (r->titles) free(r->titles[i]);
  }
  free(r->ids);
  free(r->texts);
  free(r->titles);
  sn_id_map_free(&r->index);
  memset(r, 0, sizeof *r);
}

int sn_beir_corpus_load(const char *path, sn_beir_records *out, char *err, size_t errlen) {
  return load_records(path, 1, NULL, out, NULL, err, errlen);
}

// ---- the dataset -------------------------------------------------------------------------------

int sn_beir_load(const char *dir, const char *split, sn_beir *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  char path[SN_PATH_MAX];
  snprintf(path, sizeof path, "%s/qrels/%s.tsv", dir, split);
  if (sn_qrels_load(path, &out->qrels, err, errlen)) return -1;
  char qpath[SN_PATH_MAX];
  snprintf(qpath, sizeof qpath, "%s/queries.jsonl", dir);
  if (load_records(qpath, 0, &out->qrels, &out->queries, &out->num_queries_unjudged, err, errlen)) goto fail;
  snprintf(path, sizeof path, "%s/corpus.jsonl", dir);
  if (load_records(path, 1, NULL, &out->corpus, NULL, err, errlen)) goto fail;

  // Judgments of unknown queries cannot be evaluated (no text): drop them. Unknown documents stay.
  int kept = 0;
  char first_unknown_query[SN_EXAMPLE_ID_MAX] = "";
  char first_unknown_doc[SN_EXAMPLE_ID_MAX] = "";
  for (int i = 0; i < out->qrels.nqueries; i++) {
    sn_qrels_query *q = &out->qrels.queries[i];
    if (sn_id_map_get(&out->queries.index, q->query_id) < 0) {
      out->num_qrels_unknown_queries += q->ndocs;
      if (!first_unknown_query[0]) snprintf(first_unknown_query, sizeof first_unknown_query, "%s", q->query_id);
      free_qrels_query(q);
      continue;
    }
    for (int j = 0; j < q->ndocs; j++)
      if (sn_id_map_get(&out->corpus.index, q->doc_ids[j]) < 0) {
        out->num_qrels_unknown_docs++;
        if (!first_unknown_doc[0]) snprintf(first_unknown_doc, sizeof first_unknown_doc, "%s", q->doc_ids[j]);
      }
    out->qrels.queries[kept++] = *q;
  }
  out->qrels.nqueries = kept;
  int with_relevant = 0;
  for (int i = 0; i < kept; i++) with_relevant += out->qrels.queries[i].num_rel > 0;
  if (out->num_qrels_unknown_queries)
    sn_warn("%s/qrels/%s.tsv: %d judgment(s) name queries absent from %s (e.g. '%s'); they are "
            "not evaluated", dir, split, out->num_qrels_unknown_queries, qpath, first_unknown_query);
  if (out->num_qrels_unknown_docs)
    sn_warn("%s/qrels/%s.tsv: %d judgment(s) name documents absent from %s/corpus.jsonl (e.g. '%s'); "
            "kept as relevant but unretrievable, as pytrec_eval would count them",
            dir, split, out->num_qrels_unknown_docs, dir, first_unknown_doc);
  if (kept == 0) {
    snprintf(err, errlen, "%s/qrels/%s.tsv: no judged query is present in %s", dir, split, qpath);
    goto fail;
  }
  if (with_relevant == 0) {
    snprintf(err, errlen, "%s/qrels/%s.tsv: none of the %d judged queries present in %s has a relevant document "
             "(score > 0); expected at least one", dir, split, kept, qpath);
    goto fail;
  }
  if (out->num_queries_unjudged)  // usual for BEIR: queries.jsonl holds every split's queries
    sn_log("%s: %d of its %d queries are not judged in qrels/%s.tsv and are not evaluated", qpath,
           out->num_queries_unjudged, out->num_queries_unjudged + out->queries.n, split);
  return 0;
fail:
  sn_beir_free(out);
  return -1;
}

void sn_beir_free(sn_beir *b) {
  sn_beir_records_free(&b->corpus);
  sn_beir_records_free(&b->queries);
  sn_qrels_free(&b->qrels);
  memset(b, 0, sizeof *b);
}
