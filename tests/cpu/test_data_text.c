// Stage 0's text layer (host/data/data_text.c): JSONL {"text"} lines and whole plain-text files as
// documents, the errors naming FILE:LINE, and the windows cut from the packed token stream.
#define _GNU_SOURCE
#include <string.h>

#include "common.h"
#include "data.h"
#include "test_util.h"

// A heap copy of s, as sn_text_docs_parse takes over its buffer.
static char *own(const char *s) { return strdupCheck(s); }

static void check_parse(void) {
  sn_text_docs d = {0};
  char err[SN_DATA_ERR_LEN];
  const char *jsonl = "{\"text\": \"first doc\", \"id\": 3}\n\n  \n{\"text\": \"\"}\n{\"text\": \"caf\\u00e9\"}";
  CHECK(sn_text_docs_parse(&d, own(jsonl), strlen(jsonl), "a.jsonl", 1, err, sizeof err) == 0, "jsonl: %s", err);
  CHECK(d.n == 3, "jsonl: %lld documents, expected 3 (blank lines skipped, the empty text kept)", (long long)d.n);
  if (d.n == 3) {
    CHECK(strcmp(d.items[0].text, "first doc") == 0 && strcmp(d.items[0].title, "") == 0, "jsonl doc 0");
    CHECK(strcmp(d.items[1].text, "") == 0, "jsonl doc 1 should be empty");
    CHECK(strcmp(d.items[2].text, "caf\xc3\xa9") == 0, "jsonl doc 2: escapes decoded");
  }
  const char *plain = "a whole file\n{\"text\": \"is one document\"}\n";
  CHECK(sn_text_docs_parse(&d, own(plain), strlen(plain), "b.txt", 0, err, sizeof err) == 0, "plain: %s", err);
  CHECK(d.n == 4 && strcmp(d.items[3].text, plain) == 0, "plain text: one document, as it is");
  // errors name the file and line
  const char *bad[][2] = {{"{\"text\": \"ok\"}\n{\"txt\": \"x\"}\n", "c.jsonl:2"},
                          {"{\"text\": 5}\n", "c.jsonl:1"},
                          {"[\"text\"]\n", "c.jsonl:1"},
                          {"{\"text\": \"a\"} trailing\n", "c.jsonl:1"},
                          {"{\"text\": \"\xff\"}\n", "c.jsonl:1"}};
  for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
    err[0] = '\0';
    int rc = sn_text_docs_parse(&d, own(bad[i][0]), strlen(bad[i][0]), "c.jsonl", 1, err, sizeof err);
    CHECK(rc == -1 && strstr(err, bad[i][1]), "bad line %zu: rc %d, message '%s' lacks '%s'", i, rc, err, bad[i][1]);
  }
  const char nul_text[] = "text with a \0 NUL";
  char *buf = mallocCheck(sizeof nul_text);
  memcpy(buf, nul_text, sizeof nul_text);
  CHECK(sn_text_docs_parse(&d, buf, sizeof nul_text - 1, "d.txt", 0, err, sizeof err) == -1 && strstr(err, "NUL"),
        "a NUL byte in plain text: '%s'", err);
  sn_text_docs_free(&d);
}

static void check_windows(void) {
  // 3 documents of 4, 6 and 5 tokens back to back: 15 tokens
  int64_t offsets[] = {0, 4, 10, 15};
  int32_t ids[15];
  for (int i = 0; i < 15; i++) ids[i] = 100 + i;
  sn_token_set docs = {.n_seqs = 3, .n_tokens = 15, .offsets = offsets, .ids = ids, .max_seq_len = 6};
  sn_token_set w;
  int64_t n = sn_token_windows(&docs, 4, &w);
  CHECK(n == 3 && w.n_seqs == 3 && w.n_tokens == 12, "15 tokens in windows of 4: %lld windows", (long long)n);
  for (int64_t i = 0; i < n; i++) {
    CHECK(sn_token_set_len(&w, i) == 4, "window %lld has %d tokens", (long long)i, sn_token_set_len(&w, i));
    CHECK(w.ids[w.offsets[i]] == 100 + 4 * i, "window %lld starts at token %d", (long long)i, w.ids[w.offsets[i]]);
  }
  sn_token_windows_close(&w);
  CHECK(sn_token_windows(&docs, 16, &w) == 0 && w.n_seqs == 0, "less text than one window: no windows");
  sn_token_windows_close(&w);
}

int main(void) {
  check_parse();
  check_windows();
  return sn_test_finish("test_data_text");
}
