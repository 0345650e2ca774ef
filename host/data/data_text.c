// Pretraining text for stage 0: documents from JSONL {"text"} lines or whole plain-text files, and
// the windows of packed tokens the causal-LM loss trains on (data.h: Pretraining text).
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#include "cJSON.h"
#include "common.h"
#include "data.h"

static void add_doc(sn_text_docs *d, const char *text) {
  if (d->n == d->cap) {
    d->cap = d->cap ? 2 * d->cap : 256;
    d->items = reallocCheck(d->items, (size_t)d->cap * sizeof *d->items);
  }
  d->items[d->n++] = (sn_text_item){.title = "", .text = text, .template_str = NULL};
}

static int check_utf8(const char *s, size_t len, const char *name, int64_t line, char *err, size_t errlen) {
  int is_nul;
  size_t bad = sn_first_bad_utf8((const unsigned char *)s, len, &is_nul);
  if (bad == len) return 0;
  if (line > 0)
    sn_data_errorf(err, errlen, "%s:%lld: expected UTF-8 text, found %s at byte %zu of the line", name,
                   (long long)line, is_nul ? "a NUL byte" : "an invalid byte", bad + 1);
  else
    sn_data_errorf(err, errlen, "%s: expected UTF-8 text, found %s at byte %zu", name,
                   is_nul ? "a NUL byte" : "an invalid byte", bad + 1);
  return -1;
}

// One JSONL line (NUL-terminated in place): its "text" is copied into the buffer list.
static int parse_line(sn_text_docs *d, char *line, size_t len, const char *name, int64_t lineno, char *err,
                      size_t errlen) {
  if (check_utf8(line, len, name, lineno, err, errlen) != 0) return -1;
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithOpts(line, &end, 1);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    sn_data_errorf(err, errlen, "%s:%lld: expected a JSON object {\"text\": \"...\"}", name, (long long)lineno);
    return -1;
  }
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(root, "text");
  if (!cJSON_IsString(text)) {
    cJSON_Delete(root);
    sn_data_errorf(err, errlen, "%s:%lld: expected a string \"text\" field", name, (long long)lineno);
    return -1;
  }
  char *copy = strdupCheck(text->valuestring);
  cJSON_Delete(root);
  d->buffers = reallocCheck(d->buffers, (size_t)(d->n_buffers + 1) * sizeof *d->buffers);
  d->buffers[d->n_buffers++] = copy;
  add_doc(d, copy);
  return 0;
}

static int only_space(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
  return 1;
}

int sn_text_docs_parse(sn_text_docs *d, char *buf, size_t len, const char *name, int jsonl, char *err,
                       size_t errlen) {
  d->buffers = reallocCheck(d->buffers, (size_t)(d->n_buffers + 1) * sizeof *d->buffers);
  d->buffers[d->n_buffers++] = buf;
  if (!jsonl) {
    if (check_utf8(buf, len, name, 0, err, errlen) != 0) return -1;
    add_doc(d, buf);
    return 0;
  }
  int64_t lineno = 0;
  for (size_t at = 0; at < len;) {
    char *line = buf + at, *nl = memchr(line, '\n', len - at);
    size_t n = nl ? (size_t)(nl - line) : len - at;
    at += n + 1;
    lineno++;
    if (nl) *nl = '\0';  // the line as a C string for the JSON parser
    if (only_space(line, n)) continue;
    if (parse_line(d, line, n, name, lineno, err, errlen) != 0) return -1;
  }
  return 0;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

void sn_text_docs_load(sn_text_docs *d, const char *const *paths, int n_paths, const char *what) {
  char err[SN_DATA_ERR_LEN];
  for (int i = 0; i < n_paths; i++) {
    size_t len = 0;
    char *buf = sn_read_file(paths[i], &len);
    if (!buf) sn_bad_input("%s: cannot read %s: %s", what, paths[i], strerror(errno));
    if (sn_text_docs_parse(d, buf, len, paths[i], ends_with(paths[i], ".jsonl"), err, sizeof err) != 0)
      sn_bad_input("%s: %s", what, err);
  }
}

void sn_text_docs_free(sn_text_docs *d) {
  for (int i = 0; i < d->n_buffers; i++) free(d->buffers[i]);
  free(d->buffers);
  free(d->items);
  memset(d, 0, sizeof *d);
}

int64_t sn_token_windows(const sn_token_set *docs, int seq_len, sn_token_set *out) {
  memset(out, 0, sizeof *out);
  const int64_t n = seq_len > 0 ? docs->n_tokens / seq_len : 0;
  int64_t *offsets = mallocCheck((size_t)(n + 1) * sizeof *offsets);
  for (int64_t w = 0; w <= n; w++) offsets[w] = w * seq_len;
  out->n_seqs = n;
  out->n_tokens = n * seq_len;
  out->offsets = offsets;
  out->ids = docs->ids;
  out->max_seq_len = n > 0 ? seq_len : 0;
  out->n_truncated = 0;
  out->cache_key = docs->cache_key;
  return n;
}

void sn_token_windows_close(sn_token_set *windows) {
  free((void *)windows->offsets);
  memset(windows, 0, sizeof *windows);
}
