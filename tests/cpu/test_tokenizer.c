// Tokenizer unit tests that need no shared data: UTF-8 decoding of invalid bytes, NFC/NFD, the
// pre-tokenizer state machines against splits that `tokenizers` produces, a tiny byte-level BPE
// and WordPiece written here, errors for malformed files; plus, when ../shared is present, known
// ids for Qwen3 and GPT-2 and thread safety under OpenMP.
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "test_util.h"
#include "tokenizer.h"
#include "tokenizer_internal.h"
#include "unicode.h"

static void test_utf8(void) {
  // Python: b"...".decode("utf-8", "replace") gives one U+FFFD per maximal ill-formed subpart.
  struct { const char *bytes; size_t n_cps; uint32_t cps[6]; } cases[] = {
      {"a\xc3\xa9", 2, {'a', 0xE9}},
      {"\xe2\x82", 1, {0xFFFD}},                  // truncated: one replacement
      {"\xf0\x80\x80\x80", 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}},  // overlong: each byte
      {"\xed\xa0\x80", 3, {0xFFFD, 0xFFFD, 0xFFFD}},              // surrogate
      {"\xf0\x9f\x98x", 2, {0xFFFD, 'x'}},
      {"\xf4\x90\x80\x80", 4, {0xFFFD, 0xFFFD, 0xFFFD, 0xFFFD}},  // past U+10FFFF
      {"\xf0\x9f\x98\x80", 1, {0x1F600}},
  };
  for (size_t c = 0; c < SN_ARRAY_LEN(cases); c++) {
    uint32_t *cps;
    size_t n;
    sn_utf8_to_cps(cases[c].bytes, strlen(cases[c].bytes), &cps, &n);
    CHECK(n == cases[c].n_cps, "utf8 case %zu: %zu code points, want %zu", c, n, cases[c].n_cps);
    for (size_t i = 0; i < n && i < cases[c].n_cps; i++)
      CHECK(cps[i] == cases[c].cps[i], "utf8 case %zu[%zu]: U+%04X, want U+%04X", c, i, cps[i], cases[c].cps[i]);
    free(cps);
  }
}

static void test_normalization(void) {
  uint32_t *cps = mallocCheck(8 * sizeof(uint32_t));
  size_t n = 5, cap = 8;
  uint32_t in[] = {'e', 0x301, 0x1100, 0x1161, 0x11A8};  // e + acute, Hangul L V T
  memcpy(cps, in, sizeof(in));
  sn_unicode_nfc(&cps, &n, &cap);
  CHECK(n == 2 && cps[0] == 0xE9 && cps[1] == 0xAC01, "NFC: n=%zu %04X %04X", n, cps[0], cps[1]);
  sn_unicode_nfd(&cps, &n, &cap);
  CHECK(n == 5 && cps[0] == 'e' && cps[1] == 0x301 && cps[4] == 0x11A8, "NFD round trip: n=%zu", n);
  free(cps);
  uint32_t lower[3];
  CHECK(sn_unicode_lower(0x130, lower) == 2 && lower[0] == 'i' && lower[1] == 0x307, "lower(U+0130)");
  CHECK(sn_unicode_is_letter(0x4E2D) && sn_unicode_is_number(0x663) && sn_unicode_is_white_space(0x3000),
        "categories");
}

// Pieces of text under a pre-tokenizer, joined with '|'.
static void split_pieces(sn_split_kind kind, const char *text, char *out, size_t outlen) {
  uint32_t *cps;
  size_t n, pos = 0, start, end, o = 0;
  sn_utf8_to_cps(text, strlen(text), &cps, &n);
  while (sn_pretok_next(kind, cps, n, &pos, &start, &end)) {
    if (o && o + 1 < outlen) out[o++] = '|';
    for (size_t i = start; i < end && o + 4 < outlen; i++) o += sn_utf8_encode(cps[i], out + o);
  }
  out[o] = 0;
  free(cps);
}

static void test_pretokenizers(void) {
  // Expected splits are what `tokenizers` pre_tokenizers.Split(Regex(pattern), "isolated") gives.
  struct { sn_split_kind kind; const char *text, *want; } cases[] = {
      {SN_SPLIT_QWEN2, "I'M here  now\n\n  x 1234!!\n", "I|'M| here| | now|\n\n| | x| |1|2|3|4|!!\n"},
      {SN_SPLIT_GPT2, "I'M here  now\n\n  x 1234!!\n", "I|'|M| here| | now|\n\n | x| 1234|!!|\n"},
      {SN_SPLIT_QWEN2, "  \t\r\n end   ", "  \t\r\n| end|   "},
      {SN_SPLIT_QWEN2, "(a) ...\r\nb", "(a|)| ...\r\n|b"},
      {SN_SPLIT_GPT2, "(a) ...\r\nb", "(|a|)| ...|\r|\n|b"},
      {SN_SPLIT_LLAMA3, "x 1234567", "x| |123|456|7"},
      {SN_SPLIT_BERT, "Hello, world!  a.b", "Hello|,|world|!|a|.|b"},
  };
  for (size_t c = 0; c < SN_ARRAY_LEN(cases); c++) {
    char got[256];
    split_pieces(cases[c].kind, cases[c].text, got, sizeof(got));
    CHECK(strcmp(got, cases[c].want) == 0, "split case %zu: got \"%s\", want \"%s\"", c, got, cases[c].want);
  }
}

// Writes text to dir/name; returns the path (static buffer).
static const char *write_file(const char *dir, const char *name, const char *text) {
  static char path[512];
  snprintf(path, sizeof(path), "%s/%s", dir, name);
  FILE *f = fopenCheck(path, "wb");
  fwriteCheck(text, 1, strlen(text), f, path);
  fcloseCheck(f, path);
  return path;
}

// A byte-level vocabulary (ids 0..255) plus the given tokens, as a JSON object body.
static char *byte_level_vocab_json(const char *const *extra, int n_extra) {
  char *json = mallocCheck(16384), *p = json;
  p += sprintf(p, "{");
  for (int b = 0; b < 256; b++) {
    char ch[2];
    size_t len = sn_byte_level_char((unsigned char)b, ch);
    if (ch[0] == '"' || ch[0] == '\\') p += sprintf(p, "\"\\%c\": %d,", ch[0], b);
    else p += sprintf(p, "\"%.*s\": %d,", (int)len, ch, b);
  }
  for (int i = 0; i < n_extra; i++) p += sprintf(p, "\"%s\": %d%s", extra[i], 256 + i, i + 1 < n_extra ? "," : "");
  sprintf(p, "}");
  return json;
}

static void expect_ids(const sn_tokenizer *tok, const char *text, int add_special, const int32_t *want, size_t n_want) {
  int32_t *ids = NULL;
  size_t n = 0, cap = 0;
  sn_tokenizer_encode(tok, text, strlen(text), add_special, &ids, &n, &cap);
  int same = n == n_want;
  for (size_t i = 0; same && i < n; i++) same = ids[i] == want[i];
  CHECK(same, "encode(\"%s\"): %zu ids (first %d), want %zu (first %d)", text, n, n ? ids[0] : -1, n_want,
        n_want ? want[0] : -1);
  free(ids);
}

static void test_tiny_bpe(const char *dir) {
  const char *extra[] = {"he", "ll", "hell", "hello", "<|end|>"};
  char *vocab = byte_level_vocab_json(extra, 5);
  char *json = mallocCheck(32768);
  snprintf(json, 32768,
           "{\"added_tokens\": [{\"id\": 260, \"content\": \"<|end|>\", \"special\": true}],"
           " \"normalizer\": {\"type\": \"NFC\"},"
           " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},"
           " \"post_processor\": null,"
           " \"model\": {\"type\": \"BPE\", \"vocab\": %s, \"merges\": [\"h e\", [\"l\", \"l\"], \"he ll\", \"hell o\"]}}",
           vocab);
  const char *path = write_file(dir, "tiny_bpe.json", json);
  char err[512];
  sn_tokenizer *tok = sn_tokenizer_load(path, err, sizeof(err));
  CHECK(tok, "tiny BPE: %s", err);
  if (tok) {
    int32_t space = sn_tokenizer_token_to_id(tok, "\xc4\xa0");  // "Ġ": the byte-level space
    const int32_t want[] = {259, space, 259, 260, 256};  // hello Ġ hello <|end|> he
    expect_ids(tok, "hello hello<|end|>he", 1, want, 5);
    CHECK(sn_tokenizer_vocab_size(tok) == 261, "vocab size %d", sn_tokenizer_vocab_size(tok));
    sn_tokenizer_free(tok);
  }
  free(vocab);
  free(json);
}

static void test_tiny_wordpiece(const char *dir) {
  const char *vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nun\n##aff\n##able\n,\nhello\n";
  char sub[512];
  snprintf(sub, sizeof(sub), "%s/bert", dir);
  sn_mkdir_p(sub);
  write_file(sub, "vocab.txt", vocab);
  char err[512];
  sn_tokenizer *tok = sn_tokenizer_load(sub, err, sizeof(err));
  CHECK(tok, "tiny WordPiece: %s", err);
  if (tok) {
    const int32_t want[] = {2, 5, 6, 7, 8, 9, 1, 3};  // [CLS] un ##aff ##able , hello [UNK] [SEP]
    expect_ids(tok, "UNAFFÄBLE, Hello unknown", 1, want, 8);  // Ä strips to A: "unaffable"
    const int32_t want2[] = {2, 5, 6, 7, 8, 9, 1, 3};
    expect_ids(tok, "unaffable, hello xyz", 1, want2, 8);
    const int32_t want3[] = {5, 6, 7, 3};
    expect_ids(tok, "unaffable[SEP]", 0, want3, 4);
    CHECK(sn_tokenizer_eos_id(tok) == 3 && sn_tokenizer_pad_id(tok) == 0 && sn_tokenizer_is_wordpiece(tok),
          "BERT special ids");
    sn_tokenizer_free(tok);
  }
}

// Loading must fail with a message that names the file and the field.
static void expect_load_error(const char *dir, const char *json, const char *field) {
  const char *path = write_file(dir, "bad.json", json);
  char err[512] = "";
  sn_tokenizer *tok = sn_tokenizer_load(path, err, sizeof(err));
  CHECK(!tok, "malformed file loaded: %s", json);
  CHECK(strstr(err, "bad.json") && strstr(err, field), "error \"%s\" should name bad.json and %s", err, field);
  sn_tokenizer_free(tok);
}

static void test_errors(const char *dir) {
  expect_load_error(dir, "{\"model\": ", "JSON");
  expect_load_error(dir, "{\"version\": \"1.0\"}", "model");
  expect_load_error(dir, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}}}", "model.merges");
  expect_load_error(dir, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": \"x\"}, \"merges\": []}}", "model.vocab");
  expect_load_error(dir, "{\"model\": {\"type\": \"Unigram\", \"vocab\": {}}}", "model.type");
  expect_load_error(dir, "{\"pre_tokenizer\": {\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\w+\"}, \"behavior\": \"Isolated\"},"
                         " \"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}", "\\w+");
  expect_load_error(dir, "{\"added_tokens\": [{\"id\": 1}], \"model\": {\"type\": \"BPE\", \"vocab\": {}, \"merges\": []}}",
                    "added_tokens[0].content");
  char err[512] = "";
  CHECK(!sn_tokenizer_load("/nonexistent/tokenizer.json", err, sizeof(err)) && strstr(err, "/nonexistent"),
        "missing file: \"%s\"", err);
}

static void test_shared(const char *shared) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/tokenizers/qwen3", shared);
  char err[1024];
  sn_tokenizer *qwen = sn_tokenizer_load(path, err, sizeof(err));
  CHECK(qwen, "qwen3: %s", err);
  if (qwen) {
    const int32_t hello[] = {9707, 1879};
    expect_ids(qwen, "Hello world", 1, hello, 2);
    const int32_t mixed[] = {2132, 594, 220, 16, 17, 18, 19, 20, 262, 151645};
    expect_ids(qwen, "It's 12345   <|im_end|>", 0, mixed, 10);
    CHECK(sn_tokenizer_vocab_size(qwen) == 151669, "qwen3 vocab size %d", sn_tokenizer_vocab_size(qwen));
    CHECK(sn_tokenizer_eos_id(qwen) == 151643 && sn_tokenizer_pad_id(qwen) == 151643, "qwen3 eos/pad");
    // Thread safety: every thread encodes the same texts; results must equal the serial ones.
    const char *texts[] = {"Hello world", "The quick brown fox 12345", "中文 emoji 😀", "It's   spaced\n\nout"};
    enum { ROUNDS = 200 };
    int32_t *serial[4] = {0};
    size_t serial_n[4] = {0};
    for (int t = 0; t < 4; t++) {
      size_t cap = 0;
      sn_tokenizer_encode(qwen, texts[t], strlen(texts[t]), 1, &serial[t], &serial_n[t], &cap);
    }
    int mismatches = 0;
#pragma omp parallel for num_threads(4) reduction(+ : mismatches)
    for (int r = 0; r < ROUNDS; r++) {
      int32_t *ids = NULL;
      size_t n = 0, cap = 0;
      int t = r % 4;
      sn_tokenizer_encode(qwen, texts[t], strlen(texts[t]), 1, &ids, &n, &cap);
      mismatches += n != serial_n[t] || memcmp(ids, serial[t], n * sizeof(int32_t)) != 0;
      free(ids);
    }
    CHECK(mismatches == 0, "%d threaded encodes differ from serial ones", mismatches);
    for (int t = 0; t < 4; t++) free(serial[t]);
    sn_tokenizer_free(qwen);
  }
  snprintf(path, sizeof(path), "%s/tokenizers/gpt2", shared);
  sn_tokenizer *gpt2 = sn_tokenizer_load(path, err, sizeof(err));
  CHECK(gpt2, "gpt2: %s", err);
  if (gpt2) {
    const int32_t hello[] = {15496, 995, 50256};
    expect_ids(gpt2, "Hello world<|endoftext|>", 1, hello, 3);
    CHECK(sn_tokenizer_eos_id(gpt2) == 50256, "gpt2 eos %d", sn_tokenizer_eos_id(gpt2));
    sn_tokenizer_free(gpt2);
  }
}

int main(void) {
  char dir[] = "/tmp/sn_test_tokenizer_XXXXXX";
  if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
  test_utf8();
  test_normalization();
  test_pretokenizers();
  test_tiny_bpe(dir);
  test_tiny_wordpiece(dir);
  test_errors(dir);
  const char *shared = sn_test_shared_dir();
  if (shared) test_shared(shared);
  else fprintf(stderr, "note: ../shared absent: Qwen3/GPT-2 checks skipped\n");
  char cmd[600];
  snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "note: could not remove %s\n", dir);
  return sn_test_finish("test_tokenizer");
}
