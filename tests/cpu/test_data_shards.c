// Prompt templates and truncation, token sets, shard files and the cache: a stub byte-level encoder
// (one token per byte) makes every expected sequence easy to write down.
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "data.h"
#include "test_util.h"

// ---- stub encoder --------------------------------------------------------------------------------
// Token of byte b: b + BYTE_ID_BASE. "bert" mode wraps text in CLS … SEP when add_special.
enum { STUB_CLS = 1, STUB_SEP = 2, STUB_EOS = 3, BYTE_ID_BASE = 10 };
typedef struct {
  int bert;
  long calls;  // encode calls (atomic): tells a cache hit from a rebuild
} stub_ctx;

static void push_id(int32_t **ids, size_t *n, size_t *cap, int32_t id) {
  if (*n == *cap) {
    *cap = *cap ? 2 * *cap : 16;
    *ids = reallocCheck(*ids, *cap * sizeof **ids);
  }
  (*ids)[(*n)++] = id;
}

static size_t stub_encode(const void *ctx, const char *text, size_t len, int add_special,
                          int32_t **ids, size_t *n, size_t *cap) {
  stub_ctx *c = (stub_ctx *)ctx;
  __atomic_fetch_add(&c->calls, 1, __ATOMIC_RELAXED);
  size_t before = *n;
  if (c->bert && add_special) push_id(ids, n, cap, STUB_CLS);
  for (size_t i = 0; i < len; i++) push_id(ids, n, cap, (unsigned char)text[i] + BYTE_ID_BASE);
  if (c->bert && add_special) push_id(ids, n, cap, STUB_SEP);
  return *n - before;
}

static sn_text_encoder stub_encoder(stub_ctx *ctx) {
  sn_text_encoder e = {stub_encode, ctx, ctx->bert ? STUB_SEP : STUB_EOS,
                       ctx->bert ? "stub-bert" : "stub-decoder"};
  return e;
}

// Expected ids: lead?, bytes of s, then the given trailing ids (terminated by 0).
static int ids_equal(const int32_t *ids, size_t n, int lead, const char *s, const int32_t *trail) {
  size_t k = 0;
  if (lead && (k >= n || ids[k++] != lead)) return 0;
  for (const char *p = s; *p; p++)
    if (k >= n || ids[k++] != (unsigned char)*p + BYTE_ID_BASE) return 0;
  for (; *trail; trail++)
    if (k >= n || ids[k++] != *trail) return 0;
  return k == n;
}

// ---- prompts -------------------------------------------------------------------------------------

static void check_render(const char *tpl, const char *title, const char *text, const char *want) {
  stub_ctx ctx = {0, 0};
  sn_text_encoder enc = stub_encoder(&ctx);
  sn_prompt_spec spec = {tpl, 64, 0, 0};
  char err[SN_DATA_ERR_LEN];
  sn_prompt *p = sn_prompt_create(&spec, &enc, err, sizeof err);
  CHECK(p != NULL, "template \"%s\": %s", tpl ? tpl : "(null)", err);
  if (!p) return;
  char *got = sn_prompt_render(p, title, text);
  CHECK(strcmp(got, want) == 0, "template \"%s\" title \"%s\": got \"%s\", want \"%s\"",
        tpl ? tpl : "(null)", title, got, want);
  free(got);
  sn_prompt_free(p);
}

static void test_render(void) {
  check_render("Title: {title}\nText: {text}", "T", "x", "Title: T\nText: x");
  check_render("Title: {title}\nText: {text}", "", "x", "Text: x");  // untitled: line left out
  check_render("{text}\nTitle: {title}", "", "x", "x");
  check_render("A\nTitle: {title}\n\nText: {text}\nEnd {title}", "", "x", "A\n\nText: x");
  check_render("{title} {text}", "", "x", " x");  // "{title}" on the text's line becomes ""
  check_render("{title}: {text} ({title})", "T", "x", "T: x (T)");
  check_render(NULL, "T", "x", "x");
  check_render("", "", "x", "x");
  check_render("Query: {text}{title", "", "x", "Query: x{title");  // only exact placeholders

  stub_ctx ctx = {0, 0};
  sn_text_encoder enc = stub_encoder(&ctx);
  char err[SN_DATA_ERR_LEN];
  sn_prompt_spec no_text = {"Query: {title}", 64, 0, 0};
  CHECK(!sn_prompt_create(&no_text, &enc, err, sizeof err) && strstr(err, "exactly one"),
        "template without {text}: %s", err);
  sn_prompt_spec two_text = {"{text} {text}", 64, 0, 0};
  CHECK(!sn_prompt_create(&two_text, &enc, err, sizeof err), "template with two {text}");
  sn_prompt_spec tiny = {"{text}", 1, 0, 1};
  CHECK(!sn_prompt_create(&tiny, &enc, err, sizeof err) && strstr(err, "cannot hold"),
        "max_len 1 with EOS: %s", err);
  sn_text_encoder no_eos = enc;
  no_eos.eos_id = -1;
  sn_prompt_spec eos = {"{text}", 8, 0, 1};
  CHECK(!sn_prompt_create(&eos, &no_eos, err, sizeof err) && strstr(err, "no EOS"), "no EOS: %s", err);
}

static void check_encode(int bert, const char *tpl, int max_len, int add_special, int append_eos,
                         const char *title, const char *text, int lead, const char *want_body,
                         const int32_t *want_trail, int want_truncated) {
  stub_ctx ctx = {bert, 0};
  sn_text_encoder enc = stub_encoder(&ctx);
  sn_prompt_spec spec = {tpl, max_len, add_special, append_eos};
  char err[SN_DATA_ERR_LEN];
  sn_prompt *p = sn_prompt_create(&spec, &enc, err, sizeof err);
  CHECK(p != NULL, "create: %s", err);
  if (!p) return;
  int32_t *ids = NULL;
  size_t n = 0, cap = 0;
  int truncated = -1;
  sn_prompt_encode(p, title, text, &ids, &n, &cap, &truncated);
  CHECK(n <= (size_t)max_len, "length %zu over max %d", n, max_len);
  CHECK(truncated == want_truncated, "truncated flag %d (tpl \"%s\", text \"%s\")", truncated, tpl, text);
  CHECK(ids_equal(ids, n, lead, want_body, want_trail), "ids differ (tpl \"%s\", text \"%s\", max %d)",
        tpl, text, max_len);
  free(ids);
  sn_prompt_free(p);
}

static void test_encode_truncation(void) {
  const int32_t eos[] = {STUB_EOS, 0}, sep[] = {STUB_SEP, 0}, none[] = {0};
  // Decoder tower: EOS appended; fits.
  check_encode(0, "Q: {text}!", 100, 0, 1, "", "hello", 0, "Q: hello!", eos, 0);
  // Cut: room for 7 prompt tokens = "Q: hel" + the template's tail "!" ; EOS last.
  check_encode(0, "Q: {text}!", 8, 0, 1, "", "hello", 0, "Q: hel!", eos, 1);
  // Exactly fits: no cut.
  check_encode(0, "Q: {text}!", 10, 0, 1, "", "hello", 0, "Q: hello!", eos, 0);
  // No EOS asked: nothing appended.
  check_encode(0, "{text}", 3, 0, 0, "", "hello", 0, "hel", none, 1);
  // Encoder tower: CLS … SEP from the tokenizer; SEP is its EOS, so append_eos adds nothing.
  check_encode(1, "q: {text}", 6, 1, 1, "", "hello", STUB_CLS, "q: h", sep, 1);
  check_encode(1, "q: {text}", 60, 1, 1, "", "hello", STUB_CLS, "q: hello", sep, 0);
  // Encoder without specials asked but EOS asked: SEP appended as EOS.
  check_encode(1, "{text}", 4, 0, 1, "", "hello", 0, "hel", sep, 1);
  // A tail longer than the room keeps the tail's end (and EOS).
  check_encode(0, "{text} SUFFIXLONG", 5, 0, 1, "", "abc", 0, "LONG", eos, 1);
  // Titles in the prefix are kept when the text is cut.
  check_encode(0, "Title: {title}\nText: {text}", 20, 0, 1, "T", "abcdefghijklmnop", 0,
               "Title: T\nText: abcd", eos, 1);
  check_encode(0, "Title: {title}\nText: {text}", 20, 0, 1, "", "abcdefghijklmnop", 0,
               "Text: abcdefghijklm", eos, 1);
}

// ---- token sets ----------------------------------------------------------------------------------

static const sn_text_item ITEMS[] = {
    {"", "alpha", NULL}, {"T", "beta", NULL}, {"", "", NULL},
    {"Long", "a text that is longer than the max", NULL},
};
#define N_ITEMS ((int64_t)SN_ARRAY_LEN(ITEMS))
static const sn_prompt_spec DOC_SPEC = {"Title: {title}\nText: {text}", 24, 0, 1};

static int sets_equal(const sn_token_set *a, const sn_token_set *b) {
  if (a->n_seqs != b->n_seqs || a->n_tokens != b->n_tokens) return 0;
  return memcmp(a->offsets, b->offsets, (size_t)(a->n_seqs + 1) * sizeof *a->offsets) == 0 &&
         memcmp(a->ids, b->ids, (size_t)a->n_tokens * sizeof *a->ids) == 0;
}

// An item's own template (a line's "prompt"): changes the key and that item's ids only, which are
// those of a set built with the template as the spec's.
static void test_item_template(const sn_token_set *plain, const sn_text_encoder *enc, uint64_t k0) {
  static const char own_template[] = "Q: {text}";
  char err[SN_DATA_ERR_LEN];
  sn_text_item own[N_ITEMS];
  memcpy(own, ITEMS, sizeof own);
  own[1].template_str = own_template;
  uint64_t k_own = sn_token_set_cache_key(own, N_ITEMS, &DOC_SPEC, enc);
  CHECK(k_own != k0, "an item's own template is not in the key");
  own[1].template_str = "Q:{text}";
  CHECK(sn_token_set_cache_key(own, N_ITEMS, &DOC_SPEC, enc) != k_own, "the item template's text is not in the key");
  own[1].template_str = own_template;
  sn_token_set with, ref;
  CHECK(sn_token_set_build(&with, own, N_ITEMS, &DOC_SPEC, enc, err, sizeof err) == 0, "%s", err);
  sn_prompt_spec as_spec = DOC_SPEC;
  as_spec.template_str = own_template;
  CHECK(sn_token_set_build(&ref, ITEMS, N_ITEMS, &as_spec, enc, err, sizeof err) == 0, "%s", err);
  CHECK(with.cache_key == k_own, "built set's key");
  for (int64_t i = 0; i < N_ITEMS; i++) {
    const sn_token_set *want = i == 1 ? &ref : plain;
    int n = sn_token_set_len(&with, i);
    CHECK(n == sn_token_set_len(want, i) &&
              memcmp(with.ids + with.offsets[i], want->ids + want->offsets[i], (size_t)n * sizeof(int32_t)) == 0,
          "item %lld: ids not those of %s", (long long)i, i == 1 ? "its own template" : "the spec's template");
  }
  sn_token_set_close(&with);
  sn_token_set_close(&ref);
}

static void test_build_write_map(const char *dir) {
  stub_ctx ctx = {0, 0};
  sn_text_encoder enc = stub_encoder(&ctx);
  char err[SN_DATA_ERR_LEN], path[700];
  sn_token_set mem, mapped;
  CHECK(sn_token_set_build(&mem, ITEMS, N_ITEMS, &DOC_SPEC, &enc, err, sizeof err) == 0, "%s", err);
  CHECK(mem.n_seqs == N_ITEMS && mem.n_truncated == 1, "seqs %lld truncated %lld",
        (long long)mem.n_seqs, (long long)mem.n_truncated);
  CHECK(mem.max_seq_len == DOC_SPEC.max_len, "longest %d", mem.max_seq_len);
  for (int64_t i = 0; i < mem.n_seqs; i++)
    CHECK(mem.ids[mem.offsets[i + 1] - 1] == STUB_EOS, "seq %lld does not end with EOS", (long long)i);
  snprintf(path, sizeof path, "%s/roundtrip.snshard", dir);
  CHECK(sn_token_set_write(&mem, path, err, sizeof err) == 0, "write: %s", err);
  CHECK(sn_token_set_map(&mapped, path, mem.cache_key, err, sizeof err) == 0, "map: %s", err);
  CHECK(sets_equal(&mem, &mapped), "mapped set differs");
  CHECK(mapped.max_seq_len == mem.max_seq_len, "mapped longest");
  sn_token_set_close(&mapped);
  CHECK(sn_token_set_map(&mapped, path, mem.cache_key ^ 1, err, sizeof err) == -1 && strstr(err, "stale"),
        "other key: %s", err);

  // Packing.
  int64_t index[2] = {2, 0}, cap = 0;
  int32_t *ids = NULL, cu[3];
  int64_t n = sn_token_set_pack(&mem, index, 2, &ids, &cap, cu);
  CHECK(n == sn_token_set_len(&mem, 2) + sn_token_set_len(&mem, 0), "packed %lld", (long long)n);
  CHECK(cu[0] == 0 && cu[1] == sn_token_set_len(&mem, 2) && cu[2] == n, "cu_seqlens");
  CHECK(memcmp(ids + cu[1], mem.ids + mem.offsets[0], (size_t)(cu[2] - cu[1]) * 4) == 0, "packed ids");
  free(ids);

  // Keys: same inputs same key; any ingredient changed, another key.
  uint64_t k0 = sn_token_set_cache_key(ITEMS, N_ITEMS, &DOC_SPEC, &enc);
  CHECK(k0 == mem.cache_key && k0 == sn_token_set_cache_key(ITEMS, N_ITEMS, &DOC_SPEC, &enc), "stable key");
  sn_prompt_spec s2 = DOC_SPEC;
  s2.max_len++;
  CHECK(sn_token_set_cache_key(ITEMS, N_ITEMS, &s2, &enc) != k0, "max_len in key");
  s2 = DOC_SPEC;
  s2.append_eos = 0;
  CHECK(sn_token_set_cache_key(ITEMS, N_ITEMS, &s2, &enc) != k0, "append_eos in key");
  s2 = DOC_SPEC;
  s2.template_str = "{text}";
  CHECK(sn_token_set_cache_key(ITEMS, N_ITEMS, &s2, &enc) != k0, "template in key");
  sn_text_encoder e2 = enc;
  e2.fingerprint = "stub-other";
  CHECK(sn_token_set_cache_key(ITEMS, N_ITEMS, &DOC_SPEC, &e2) != k0, "fingerprint in key");
  CHECK(sn_token_set_cache_key(ITEMS, N_ITEMS - 1, &DOC_SPEC, &enc) != k0, "item count in key");
  sn_text_item moved[N_ITEMS];
  memcpy(moved, ITEMS, sizeof moved);
  moved[0] = (sn_text_item){"alph", "a", NULL};  // same bytes, other split between title and text
  CHECK(sn_token_set_cache_key(moved, N_ITEMS, &DOC_SPEC, &enc) != k0, "title/text split in key");
  test_item_template(&mem, &enc, k0);
  sn_token_set_close(&mem);
  unlink(path);
}

static void flip_byte(const char *path, long at) {
  int fd = open(path, O_RDWR);
  if (fd < 0) sn_fatal("open %s", path);
  unsigned char b;
  if (pread(fd, &b, 1, at) != 1) sn_fatal("pread");
  b ^= 0x5a;
  if (pwrite(fd, &b, 1, at) != 1) sn_fatal("pwrite");
  close(fd);
}

static void test_cache(const char *dir) {
  stub_ctx ctx = {0, 0};
  sn_text_encoder enc = stub_encoder(&ctx);
  char err[SN_DATA_ERR_LEN], cache_dir[700];
  snprintf(cache_dir, sizeof cache_dir, "%s/cache/sub", dir);  // created on demand
  sn_shard_cache_opts opts = {cache_dir, "docs", 1, 0};
  sn_token_set a, b;
  CHECK(sn_token_set_load_or_build(&a, ITEMS, N_ITEMS, &DOC_SPEC, &enc, &opts, err, sizeof err) == 0,
        "build: %s", err);
  long calls_after_build = ctx.calls;
  CHECK(calls_after_build > 0 && a.map != NULL && a.path != NULL, "built and mapped");
  CHECK(sn_token_set_load_or_build(&b, ITEMS, N_ITEMS, &DOC_SPEC, &enc, &opts, err, sizeof err) == 0,
        "reuse: %s", err);
  CHECK(ctx.calls == calls_after_build, "cache hit must not encode (calls %ld → %ld)",
        calls_after_build, ctx.calls);
  CHECK(sets_equal(&a, &b) && b.n_truncated == -1, "cached set equal");
  char path[800];
  snprintf(path, sizeof path, "%s", a.path);
  sn_token_set_close(&b);
  sn_token_set_close(&a);

  // A flipped payload byte, a flipped header byte, a truncated file, a foreign file: all rebuilt.
  struct stat st;
  stat(path, &st);
  const long corruptions[] = {(long)st.st_size - 2, (long)SN_SHARD_HEADER_BYTES + 3, 20, 0};
  const char *expect[] = {"checksum", "checksum", "checksum", "magic"};
  fprintf(stderr, "(the 'rebuilding' warnings below are expected)\n");
  for (size_t c = 0; c < SN_ARRAY_LEN(corruptions); c++) {
    flip_byte(path, corruptions[c]);
    CHECK(sn_token_set_map(&a, path, 0, err, sizeof err) == -1 && strstr(err, expect[c]),
          "corruption %zu not detected: %s", c, err);
    long before = ctx.calls;
    CHECK(sn_token_set_load_or_build(&a, ITEMS, N_ITEMS, &DOC_SPEC, &enc, &opts, err, sizeof err) == 0,
          "rebuild: %s", err);
    CHECK(ctx.calls > before, "corrupt shard %zu was not rebuilt", c);
    sn_token_set_close(&a);
  }
  CHECK(truncate(path, st.st_size - 4) == 0, "truncate");
  CHECK(sn_token_set_map(&a, path, 0, err, sizeof err) == -1 && strstr(err, "size"), "truncated: %s", err);
  CHECK(sn_token_set_load_or_build(&a, ITEMS, N_ITEMS, &DOC_SPEC, &enc, &opts, err, sizeof err) == 0 &&
            a.n_seqs == N_ITEMS,
        "rebuilt after truncation: %s", err);
  sn_token_set_close(&a);

  // Another template: another file next to the first.
  sn_prompt_spec other = DOC_SPEC;
  other.template_str = "{text}";
  CHECK(sn_token_set_load_or_build(&a, ITEMS, N_ITEMS, &other, &enc, &opts, err, sizeof err) == 0 &&
            strcmp(a.path, path) != 0,
        "other template, other file");
  unlink(a.path);
  sn_token_set_close(&a);
  unlink(path);
}

// Non-builder ranks wait for the builder's rename; they time out when it never comes.
static void test_builder_and_waiters(const char *dir) {
  char cache_dir[700], err[SN_DATA_ERR_LEN];
  snprintf(cache_dir, sizeof cache_dir, "%s/ranks", dir);
  sn_shard_cache_opts waiter = {cache_dir, "q", 0, 0.3};
  stub_ctx ctx = {0, 0};
  sn_text_encoder enc = stub_encoder(&ctx);
  sn_token_set s;
  double t0 = sn_now_s();
  CHECK(sn_token_set_load_or_build(&s, ITEMS, N_ITEMS, &DOC_SPEC, &enc, &waiter, err, sizeof err) == -1 &&
            strstr(err, "waited"),
        "waiter without builder: %s", err);
  CHECK(sn_now_s() - t0 >= 0.3, "waited the timeout");

  enum { N_WAITERS = 3 };
  pid_t kids[N_WAITERS];
  for (int w = 0; w < N_WAITERS; w++) {
    fflush(stderr);
    kids[w] = fork();
    if (kids[w] == 0) {
      sn_shard_cache_opts o = {cache_dir, "q", 0, 20.0};
      stub_ctx c = {0, 0};
      sn_text_encoder e = stub_encoder(&c);
      sn_token_set got;
      char msg[SN_DATA_ERR_LEN];
      int rc = sn_token_set_load_or_build(&got, ITEMS, N_ITEMS, &DOC_SPEC, &e, &o, msg, sizeof msg);
      int ok = rc == 0 && got.n_seqs == N_ITEMS && c.calls == 0;  // mapped, never encoded
      if (rc == 0) sn_token_set_close(&got);
      _exit(ok ? 0 : 1);
    }
  }
  struct timespec pause = {0, 300 * 1000 * 1000};
  nanosleep(&pause, NULL);  // the waiters are polling by now
  sn_shard_cache_opts builder = {cache_dir, "q", 1, 0};
  CHECK(sn_token_set_load_or_build(&s, ITEMS, N_ITEMS, &DOC_SPEC, &enc, &builder, err, sizeof err) == 0,
        "builder: %s", err);
  for (int w = 0; w < N_WAITERS; w++) {
    int status = 0;
    waitpid(kids[w], &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "waiter %d failed", w);
  }
  unlink(s.path);
  sn_token_set_close(&s);
}

int main(void) {
  test_render();
  test_encode_truncation();
  char dir[] = "/tmp/sn_test_shards_XXXXXX";
  if (!mkdtemp(dir)) sn_fatal("mkdtemp");
  test_build_write_map(dir);
  test_cache(dir);
  test_builder_and_waiters(dir);
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return sn_test_finish("test_data_shards");
}
