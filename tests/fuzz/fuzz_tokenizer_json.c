// libFuzzer target for the tokenizer.json loader: any bytes must give a tokenizer or an error
// message, never a crash, leak or undefined behaviour. A file that loads is also used to encode a
// few texts (and the input itself), which exercises the normalizer/pre-tokenizer/model it built.
// Seeds: tests/fuzz/corpus_tokenizer_json/. Run: fuzz_tokenizer_json -max_total_time=60 CORPUS
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

// Inputs past this size only slow the fuzzer down; real structure fits in far less.
#define FUZZ_MAX_INPUT (1 << 16)

static const char *const TEXTS[] = {"Hello world", "It's  12345\n\n x", "中文 😀 e\xcc\x81", "[CLS] <|endoftext|>",
                                    "\xff\xfe bad \xe2\x82"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > FUZZ_MAX_INPUT) return 0;
  char err[512];
  sn_tokenizer *tok = sn_tokenizer_load_json((const char *)data, size, "fuzz.json", err, sizeof(err));
  if (!tok) {
    if (!err[0]) abort();  // a failure must say why
    return 0;
  }
  int32_t *ids = NULL;
  size_t n = 0, cap = 0;
  for (size_t i = 0; i < sizeof(TEXTS) / sizeof(TEXTS[0]); i++)
    for (int special = 0; special < 2; special++) sn_tokenizer_encode(tok, TEXTS[i], strlen(TEXTS[i]), special, &ids, &n, &cap);
  sn_tokenizer_encode(tok, (const char *)data, size, 1, &ids, &n, &cap);
  (void)sn_tokenizer_vocab_size(tok);
  (void)sn_tokenizer_fingerprint(tok);
  free(ids);
  sn_tokenizer_free(tok);
  return 0;
}
