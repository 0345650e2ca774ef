// JSONL training examples: line splitting, strict validation (UTF-8, JSON, field types), document
// deduplication. The parser never exits (the fuzz target drives it); sn_train_examples_load is the
// CLI-level wrapper that exits 2 on bad input.
#define _GNU_SOURCE
#include "data.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cJSON.h"
#include "common.h"

#define DEDUP_TABLE_MIN_CAP 1024   // slots; grows ×2 at half load
#define MAX_NAME_IN_MESSAGE 200   // characters of a file name quoted in a message
#define MAX_SKIP_WARNINGS 10       // skipped lines warned one by one; the rest only counted
#define HASH_SEED_DOC 0x646f63u    // "doc": separates doc hashes from other uses of sn_hash64
#define TEXT_PLACEHOLDER "{text}"  // a line's "prompt" with it is a template, else a prefix

void sn_data_errorf(char *err, size_t errlen, const char *fmt, ...) {
  if (!err || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
}

void sn_train_examples_init(sn_train_examples *ex) { memset(ex, 0, sizeof *ex); }

void sn_train_examples_free(sn_train_examples *ex) {
  for (int64_t i = 0; i < ex->n_examples; i++) {
    free(ex->examples[i].query);
    free(ex->examples[i].query_template);
  }
  for (int64_t i = 0; i < ex->n_docs; i++) {
    free(ex->docs[i].title);
    free(ex->docs[i].text);
  }
  for (int i = 0; i < ex->n_files; i++) free(ex->files[i]);
  free(ex->examples);
  free(ex->docs);
  free(ex->doc_refs);
  free(ex->ref_scores);
  free(ex->files);
  free(ex->doc_table);
  memset(ex, 0, sizeof *ex);
}

// ---- UTF-8 ---------------------------------------------------------------------------------------

// Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF) and no NUL byte, which
// would silently cut a C string. Returns the offset of the first bad byte, or len when all is well.
size_t sn_first_bad_utf8(const unsigned char *s, size_t len, int *is_nul) {
  size_t i = 0;
  *is_nul = 0;
  while (i < len) {
    unsigned c = s[i];
    if (c == 0) {
      *is_nul = 1;
      return i;
    }
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t need;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      need = 1;
    } else if (c >= 0xE0 && c <= 0xEF) {
      need = 2;
      if (c == 0xE0) lo = 0xA0;       // overlong
      if (c == 0xED) hi = 0x9F;       // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      need = 3;
      if (c == 0xF0) lo = 0x90;       // overlong
      if (c == 0xF4) hi = 0x8F;       // above U+10FFFF
    } else {
      return i;
    }
    if (i + need >= len) return i;  // truncated sequence
    if (s[i + 1] < lo || s[i + 1] > hi) return i;
    for (size_t k = 2; k <= need; k++)
      if ((s[i + k] & 0xC0) != 0x80) return i;
    i += need + 1;
  }
  return len;
}

// ---- documents -----------------------------------------------------------------------------------

typedef struct {
  const char *title;
  const char *text;
} doc_view;

static uint64_t doc_hash(const char *title, const char *text) {
  size_t tl = strlen(title);
  // The title's length goes into the hash so ("ab","c") and ("a","bc") differ.
  uint64_t h = sn_hash64(&tl, sizeof tl, HASH_SEED_DOC);
  h = sn_hash64(title, tl, h);
  return sn_hash64(text, strlen(text), h);
}

static void table_insert_index(int64_t *table, int64_t cap, uint64_t hash, int64_t index) {
  int64_t mask = cap - 1;
  for (int64_t slot = (int64_t)(hash & (uint64_t)mask);; slot = (slot + 1) & mask) {
    if (table[slot] < 0) {
      table[slot] = index;
      return;
    }
  }
}

static void table_grow(sn_train_examples *ex) {
  int64_t cap = ex->table_cap ? ex->table_cap * 2 : DEDUP_TABLE_MIN_CAP;
  int64_t *table = mallocCheck((size_t)cap * sizeof *table);
  for (int64_t i = 0; i < cap; i++) table[i] = -1;
  for (int64_t d = 0; d < ex->n_docs; d++) table_insert_index(table, cap, ex->docs[d].hash, d);
  free(ex->doc_table);
  ex->doc_table = table;
  ex->table_cap = cap;
}

// Index of the doc (title, text), added if new.
static int64_t intern_doc(sn_train_examples *ex, const char *title, const char *text) {
  uint64_t h = doc_hash(title, text);
  if (2 * (ex->n_docs + 1) > ex->table_cap) table_grow(ex);
  int64_t mask = ex->table_cap - 1;
  int64_t slot = (int64_t)(h & (uint64_t)mask);
  for (; ex->doc_table[slot] >= 0; slot = (slot + 1) & mask) {
    const sn_doc *d = &ex->docs[ex->doc_table[slot]];
    if (d->hash == h && strcmp(d->title, title) == 0 && strcmp(d->text, text) == 0)
      return ex->doc_table[slot];
  }
  if (ex->n_docs == ex->cap_docs) {
    ex->cap_docs = ex->cap_docs ? 2 * ex->cap_docs : 256;
    ex->docs = reallocCheck(ex->docs, (size_t)ex->cap_docs * sizeof *ex->docs);
  }
  int64_t index = ex->n_docs++;
  ex->docs[index] = (sn_doc){strdupCheck(title), strdupCheck(text), h};
  ex->doc_table[slot] = index;
  return index;
}

static void push_ref(sn_train_examples *ex, int64_t doc, float score) {
  if (ex->n_refs == ex->cap_refs) {
    ex->cap_refs = ex->cap_refs ? 2 * ex->cap_refs : 1024;
    ex->doc_refs = reallocCheck(ex->doc_refs, (size_t)ex->cap_refs * sizeof *ex->doc_refs);
    ex->ref_scores = reallocCheck(ex->ref_scores, (size_t)ex->cap_refs * sizeof *ex->ref_scores);
  }
  ex->ref_scores[ex->n_refs] = score;
  ex->doc_refs[ex->n_refs++] = doc;
}

// Whether doc is among doc_refs[begin, begin + n) (indexing, not pointer arithmetic: doc_refs may
// still be NULL).
static int refs_contain(const sn_train_examples *ex, int64_t begin, int64_t n, int64_t doc) {
  for (int64_t i = 0; i < n; i++)
    if (ex->doc_refs[begin + i] == doc) return 1;
  return 0;
}

// ---- one line ------------------------------------------------------------------------------------

// A doc is a string or {"title"?: string, "text": string}. Fills *out with pointers into the cJSON
// tree; 0, or -1 with err describing what `field`[index] should have been.
static int read_doc(const cJSON *item, const char *field, int index, doc_view *out, char *err,
                    size_t errlen) {
  static const char expected[] = "a string or an object {\"title\": string, \"text\": string}";
  if (cJSON_IsString(item)) {
    *out = (doc_view){"", item->valuestring};
    return 0;
  }
  if (!cJSON_IsObject(item)) {
    sn_data_errorf(err, errlen, "\"%s\"[%d] must be %s", field, index, expected);
    return -1;
  }
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(item, "text");
  const cJSON *title = cJSON_GetObjectItemCaseSensitive(item, "title");
  if (!cJSON_IsString(text)) {
    sn_data_errorf(err, errlen, "\"%s\"[%d].text %s (expected %s)", field, index,
            text ? "is not a string" : "is missing", expected);
    return -1;
  }
  if (title && !cJSON_IsString(title)) {
    sn_data_errorf(err, errlen, "\"%s\"[%d].title is not a string (expected %s)", field, index, expected);
    return -1;
  }
  *out = (doc_view){title ? title->valuestring : "", text->valuestring};
  return 0;
}

// Reads the array `field` into a malloc'd list of doc views. required: must exist and be non-empty.
static int read_doc_list(const cJSON *root, const char *field, int required, doc_view **out,
                         int *n_out, char *err, size_t errlen) {
  *out = NULL;
  *n_out = 0;
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, field);
  if (!arr) {
    if (!required) return 0;
    sn_data_errorf(err, errlen, "missing \"%s\" (expected a non-empty array of documents)", field);
    return -1;
  }
  if (!cJSON_IsArray(arr)) {
    sn_data_errorf(err, errlen, "\"%s\" must be an array of documents%s", field,
            required ? " (non-empty)" : "");
    return -1;
  }
  int n = cJSON_GetArraySize(arr);
  if (n == 0 && required) {
    sn_data_errorf(err, errlen, "\"%s\" is empty (expected at least one document)", field);
    return -1;
  }
  doc_view *docs = mallocCheck((size_t)(n ? n : 1) * sizeof *docs);
  int i = 0;
  for (const cJSON *item = arr->child; item; item = item->next, i++) {
    if (read_doc(item, field, i, &docs[i], err, errlen) != 0) {
      free(docs);
      return -1;
    }
  }
  *out = docs;
  *n_out = n;
  return 0;
}

// Reads the optional teacher scores `field` (FlagEmbedding's pos_scores/neg_scores): an array of
// n_docs finite numbers. *out is a malloc'd copy, or NULL when the field is absent.
static int read_scores(const cJSON *root, const char *field, const char *docs_field, int n_docs,
                       float **out, char *err, size_t errlen) {
  *out = NULL;
  const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, field);
  if (!arr) return 0;
  if (!cJSON_IsArray(arr)) {
    sn_data_errorf(err, errlen, "\"%s\" must be an array of numbers (teacher scores, one per \"%s\" entry)",
                   field, docs_field);
    return -1;
  }
  int n = cJSON_GetArraySize(arr);
  if (n != n_docs) {
    sn_data_errorf(err, errlen, "\"%s\" has %d scores but \"%s\" has %d documents (expected one score each)",
                   field, n, docs_field, n_docs);
    return -1;
  }
  float *scores = mallocCheck((size_t)(n ? n : 1) * sizeof *scores);
  int i = 0;
  for (const cJSON *item = arr->child; item; item = item->next, i++) {
    // cJSON parses overflowing literals (1e999) to inf; a teacher score must be finite as a float
    // (compared in double first: converting an out-of-range double to float is not to be relied on).
    if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble) || fabs(item->valuedouble) > FLT_MAX) {
      sn_data_errorf(err, errlen, "\"%s\"[%d] must be a finite number (a teacher score)", field, i);
      free(scores);
      return -1;
    }
    scores[i] = (float)item->valuedouble;
  }
  *out = scores;
  return 0;
}

// The line's own query template from its "prompt": the prompt itself when it holds "{text}", else
// the prompt as a prefix. *out is NULL when the line has no "prompt".
static int read_prompt(const cJSON *root, char **out, char *err, size_t errlen) {
  *out = NULL;
  const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(root, "prompt");
  if (!prompt) return 0;
  if (!cJSON_IsString(prompt) || prompt->valuestring[0] == '\0') {
    sn_data_errorf(err, errlen, "\"prompt\" must be a non-empty string (the query's instruction)");
    return -1;
  }
  const char *p = prompt->valuestring, *at = strstr(p, TEXT_PLACEHOLDER);
  if (at && strstr(at + strlen(TEXT_PLACEHOLDER), TEXT_PLACEHOLDER)) {
    sn_data_errorf(err, errlen, "\"prompt\" has \"%s\" more than once (expected a prefix or a template "
                   "with exactly one)", TEXT_PLACEHOLDER);
    return -1;
  }
  if (at) {
    *out = strdupCheck(p);
  } else {
    size_t len = strlen(p);
    *out = mallocCheck(len + sizeof TEXT_PLACEHOLDER);
    memcpy(*out, p, len);
    memcpy(*out + len, TEXT_PLACEHOLDER, sizeof TEXT_PLACEHOLDER);
  }
  return 0;
}

// Python's json.dumps writes NaN and Infinity bare, which JSON does not allow: when the parse
// stopped at one, names it and the key it belongs to (the last "key": before it). 1 when it did.
static int describe_non_json_number(const char *line, size_t at, size_t len, char *err, size_t errlen) {
  static const char *const words[] = {"NaN", "Infinity", "-Infinity"};
  const char *word = NULL;
  for (size_t i = 0; i < SN_ARRAY_LEN(words) && !word; i++)
    if (len - at >= strlen(words[i]) && memcmp(line + at, words[i], strlen(words[i])) == 0) word = words[i];
  if (!word) return 0;
  // The key: the quoted string before the last ':' ahead of the word (keys have no escapes here).
  const char *key = NULL;
  int key_len = 0;
  for (size_t i = at; i-- > 0;) {
    if (line[i] != ':') continue;
    size_t close = i;
    while (close > 0 && line[close - 1] == ' ') close--;
    if (close == 0 || line[close - 1] != '"') break;
    size_t open = close - 1;
    while (open > 0 && line[open - 1] != '"') open--;
    if (open == 0) break;
    key = line + open;
    key_len = (int)(close - 1 - open);
    break;
  }
  if (key)
    sn_data_errorf(err, errlen, "\"%.*s\": %s at byte %zu is not JSON (expected finite numbers)", key_len,
                   key, word, at + 1);
  else
    sn_data_errorf(err, errlen, "%s at byte %zu is not JSON (expected finite numbers)", word, at + 1);
  return 1;
}

// Validates one non-blank line and appends its example; nothing is appended on error.
static int parse_line(sn_train_examples *ex, const char *line, size_t len, int32_t file_index,
                      int64_t line_no, char *err, size_t errlen) {
  int is_nul;
  size_t bad = sn_first_bad_utf8((const unsigned char *)line, len, &is_nul);
  if (bad < len) {
    sn_data_errorf(err, errlen, is_nul ? "NUL byte at byte %zu (expected UTF-8 text)"
                                : "invalid UTF-8 at byte %zu",
            bad + 1);
    return -1;
  }
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(line, len, &end, 0);
  if (!root) {
    size_t at = (end && end >= line && end <= line + len) ? (size_t)(end - line) + 1 : 0;
    if (at && describe_non_json_number(line, at - 1, len, err, errlen)) return -1;
    sn_data_errorf(err, errlen, "malformed JSON near byte %zu (expected one JSON object per line)", at);
    return -1;
  }
  int rc = -1;
  doc_view *pos = NULL, *neg = NULL;
  int n_pos = 0, n_neg = 0;
  float *pos_scores = NULL, *neg_scores = NULL;
  char *query_template = NULL;
  for (const char *p = end; p < line + len; p++) {
    if (*p != ' ' && *p != '\t' && *p != '\r') {
      sn_data_errorf(err, errlen, "unexpected characters after the JSON object at byte %zu",
              (size_t)(p - line) + 1);
      goto done;
    }
  }
  if (!cJSON_IsObject(root)) {
    sn_data_errorf(err, errlen, "expected a JSON object {\"query\": …, \"pos\": […], \"neg\": […]}");
    goto done;
  }
  const cJSON *query = cJSON_GetObjectItemCaseSensitive(root, "query");
  if (!query) {
    sn_data_errorf(err, errlen, "missing \"query\" (expected a non-empty string)");
    goto done;
  }
  if (!cJSON_IsString(query) || query->valuestring[0] == '\0') {
    sn_data_errorf(err, errlen, "\"query\" must be a non-empty string");
    goto done;
  }
  if (read_doc_list(root, "pos", 1, &pos, &n_pos, err, errlen) != 0) goto done;
  if (read_doc_list(root, "neg", 0, &neg, &n_neg, err, errlen) != 0) goto done;
  if (read_scores(root, "pos_scores", "pos", n_pos, &pos_scores, err, errlen) != 0) goto done;
  if (read_scores(root, "neg_scores", "neg", n_neg, &neg_scores, err, errlen) != 0) goto done;
  if (read_prompt(root, &query_template, err, errlen) != 0) goto done;

  if (ex->n_examples == ex->cap_examples) {
    ex->cap_examples = ex->cap_examples ? 2 * ex->cap_examples : 256;
    ex->examples = reallocCheck(ex->examples, (size_t)ex->cap_examples * sizeof *ex->examples);
  }
  sn_train_example *e = &ex->examples[ex->n_examples++];
  e->query = strdupCheck(query->valuestring);
  e->query_template = query_template;
  query_template = NULL;
  e->has_scores = pos_scores && (neg_scores || n_neg == 0);
  e->refs_begin = ex->n_refs;
  e->file_index = file_index;
  e->line = line_no;
  e->n_pos = e->n_neg = 0;
  for (int i = 0; i < n_pos; i++) {
    int64_t d = intern_doc(ex, pos[i].title, pos[i].text);
    if (refs_contain(ex, e->refs_begin, e->n_pos, d)) continue;  // repeated positive
    push_ref(ex, d, pos_scores ? pos_scores[i] : NAN);
    e->n_pos++;
  }
  for (int i = 0; i < n_neg; i++) {
    int64_t d = intern_doc(ex, neg[i].title, neg[i].text);
    // A negative that is also a positive would be a false negative; a repeat adds nothing.
    if (refs_contain(ex, e->refs_begin, e->n_pos + e->n_neg, d)) continue;
    push_ref(ex, d, neg_scores ? neg_scores[i] : NAN);
    e->n_neg++;
  }
  rc = 0;
done:
  free(pos);
  free(neg);
  free(pos_scores);
  free(neg_scores);
  free(query_template);
  cJSON_Delete(root);
  return rc;
}

static int is_blank(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
  return 1;
}

int sn_train_examples_parse(sn_train_examples *ex, const char *buf, size_t len, const char *name,
                            int skip_bad_lines, size_t max_line_bytes,
                            void (*on_skip)(const char *msg), char *err, size_t errlen) {
  if (max_line_bytes == 0) max_line_bytes = SN_DATA_DEFAULT_MAX_LINE_BYTES;
  ex->files = reallocCheck(ex->files, (size_t)(ex->n_files + 1) * sizeof *ex->files);
  int32_t file_index = ex->n_files;
  ex->files[ex->n_files++] = strdupCheck(name);

  int64_t n_valid = 0, line_no = 0;
  // Room for "NAME:LINE: why": names are cut at MAX_NAME_IN_MESSAGE characters.
  char why[SN_DATA_ERR_LEN / 2], msg[SN_DATA_ERR_LEN];
  size_t at = 0;
  while (at < len) {
    const char *line = buf + at;
    const char *nl = memchr(line, '\n', len - at);
    size_t line_len = nl ? (size_t)(nl - line) : len - at;
    at += line_len + (nl ? 1 : 0);
    line_no++;
    if (line_len > 0 && line[line_len - 1] == '\r') line_len--;  // CRLF files
    if (is_blank(line, line_len)) continue;
    int rc;
    if (line_len > max_line_bytes) {
      sn_data_errorf(why, sizeof why, "line is %zu bytes, over the limit of %zu (max_line_bytes)",
              line_len, max_line_bytes);
      rc = -1;
    } else {
      rc = parse_line(ex, line, line_len, file_index, line_no, why, sizeof why);
    }
    if (rc == 0) {
      n_valid++;
      continue;
    }
    snprintf(msg, sizeof msg, "%.*s:%lld: %s", MAX_NAME_IN_MESSAGE, name, (long long)line_no, why);
    if (!skip_bad_lines) {
      sn_data_errorf(err, errlen, "%s", msg);
      return -1;
    }
    if (ex->n_lines_skipped++ == 0) snprintf(ex->first_skipped, sizeof ex->first_skipped, "%s", msg);
    if (on_skip) on_skip(msg);
  }
  if (n_valid == 0) {
    sn_data_errorf(err, errlen,
            "%s: no valid example line (expected JSONL lines {\"query\": str, \"pos\": [str, …], "
            "\"neg\": [str, …]})%s",
            name, skip_bad_lines && ex->n_lines_skipped ? "; all lines were bad and skipped" : "");
    return -1;
  }
  return 0;
}

// ---- files ---------------------------------------------------------------------------------------

static int64_t skip_warnings_left;
static void warn_skipped_line(const char *msg) {
  if (skip_warnings_left > 0) {
    sn_warn("skipping bad line: %s", msg);
    if (--skip_warnings_left == 0) sn_warn("further bad lines are only counted");
  }
}

void sn_train_examples_load(sn_train_examples *ex, const char *const *paths, int n_paths,
                            int skip_bad_lines, size_t max_line_bytes) {
  if (n_paths <= 0) sn_bad_input("no training data files given (expected one or more JSONL files)");
  sn_train_examples_init(ex);
  skip_warnings_left = MAX_SKIP_WARNINGS;
  char err[SN_DATA_ERR_LEN];
  for (int i = 0; i < n_paths; i++) {
    int fd = open(paths[i], O_RDONLY);
    if (fd < 0) sn_bad_input("cannot open training data '%s': %s", paths[i], strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) sn_fatal("fstat '%s': %s", paths[i], strerror(errno));
    size_t len = (size_t)st.st_size;
    const char *buf = "";
    void *map = NULL;
    if (len > 0) {
      map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
      if (map == MAP_FAILED) sn_fatal("mmap '%s': %s", paths[i], strerror(errno));
      madvise(map, len, MADV_SEQUENTIAL);
      buf = map;
    }
    close(fd);
    int rc = sn_train_examples_parse(ex, buf, len, paths[i], skip_bad_lines, max_line_bytes,
                                     warn_skipped_line, err, sizeof err);
    if (map) munmap(map, len);
    if (rc != 0) sn_bad_input("%s", err);
  }
  if (ex->n_lines_skipped > 0)
    sn_warn("skipped %lld bad training lines (first: %s)", (long long)ex->n_lines_skipped,
            ex->first_skipped);
  sn_log("data: %lld examples, %lld unique documents from %d file(s)", (long long)ex->n_examples,
         (long long)ex->n_docs, n_paths);
  int64_t n_prompted = 0, n_scored = 0;
  for (int64_t i = 0; i < ex->n_examples; i++) {
    n_prompted += ex->examples[i].query_template != NULL;
    n_scored += ex->examples[i].has_scores;
  }
  if (n_prompted || n_scored)
    sn_log("data: %lld examples with their own \"prompt\", %lld with teacher scores", (long long)n_prompted,
           (long long)n_scored);
}

const char *sn_train_example_where(const sn_train_examples *ex, int64_t i) {
  static _Thread_local char where[SN_DATA_ERR_LEN];
  const sn_train_example *e = &ex->examples[i];
  snprintf(where, sizeof where, "%s:%lld", ex->files[e->file_index], (long long)e->line);
  return where;
}
