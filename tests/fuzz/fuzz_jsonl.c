// libFuzzer target for the JSONL training-data reader (strict and skip modes) and, on whatever it
// accepts, the prompt renderer and truncating encoder. Nothing here may exit or leak.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "data.h"

#define FUZZ_MAX_LINE_BYTES 4096  // small, so the line-length check is reached too
#define FUZZ_MAX_LEN 12           // tight, so most items are cut

// One token per byte: enough to drive the prompt code without a tokenizer file.
static size_t byte_encode(const void *ctx, const char *text, size_t len, int add_special,
                          int32_t **ids, size_t *n, size_t *cap) {
  if (*n + len + 2 > *cap) {
    *cap = *n + len + 2;
    *ids = realloc(*ids, *cap * sizeof **ids);
    if (!*ids) abort();
  }
  if (add_special) (*ids)[(*n)++] = 1;
  for (size_t i = 0; i < len; i++) (*ids)[(*n)++] = (unsigned char)text[i] + 3;
  if (add_special) (*ids)[(*n)++] = 2;
  return len + (add_special ? 2 : 0);
}

static void check_examples(const sn_train_examples *ex) {
  for (int64_t i = 0; i < ex->n_examples; i++) {
    const sn_train_example *e = &ex->examples[i];
    if (e->n_pos < 1 || e->n_neg < 0 || e->query[0] == '\0') abort();
    for (int32_t j = 0; j < e->n_pos + e->n_neg; j++) {
      int64_t d = ex->doc_refs[e->refs_begin + j];
      if (d < 0 || d >= ex->n_docs) abort();
    }
  }
}

static void encode_docs(const sn_train_examples *ex) {
  static const sn_text_encoder enc = {byte_encode, NULL, 2, "fuzz"};
  static const sn_prompt_spec spec = {"Title: {title}\nText: {text}\nEnd", FUZZ_MAX_LEN, 1, 1};
  char err[SN_DATA_ERR_LEN];
  sn_prompt *p = sn_prompt_create(&spec, &enc, err, sizeof err);
  if (!p) abort();
  int32_t *ids = NULL;
  size_t n = 0, cap = 0;
  for (int64_t d = 0; d < ex->n_docs; d++) {
    int truncated;
    sn_prompt_encode(p, ex->docs[d].title, ex->docs[d].text, &ids, &n, &cap, &truncated);
    if (n > FUZZ_MAX_LEN || ids[n - 1] != 2) abort();
  }
  free(ids);
  sn_prompt_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  for (int skip = 0; skip <= 1; skip++) {
    sn_train_examples ex;
    sn_train_examples_init(&ex);
    char err[SN_DATA_ERR_LEN];
    int rc = sn_train_examples_parse(&ex, (const char *)data, size, "fuzz.jsonl", skip,
                                     FUZZ_MAX_LINE_BYTES, NULL, err, sizeof err);
    if (rc != 0 && strncmp(err, "fuzz.jsonl", 10) != 0) abort();  // errors name the file
    check_examples(&ex);
    if (rc == 0 && skip) encode_docs(&ex);
    sn_train_examples_free(&ex);
  }
  return 0;
}
