// JSONL training examples: valid forms, every kind of bad line (error names file:line and what
// was expected), skip mode with counts, files without a valid line, and the exiting loader (exit 2).
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "data.h"
#include "test_util.h"

static int parse(sn_train_examples *ex, const char *text, const char *name, int skip,
                 size_t max_line, char *err) {
  err[0] = '\0';
  return sn_train_examples_parse(ex, text, strlen(text), name, skip, max_line, NULL, err,
                                 SN_DATA_ERR_LEN);
}

static void test_valid_forms(void) {
  const char *text =
      "{\"query\": \"q one\", \"pos\": [\"doc a\"], \"neg\": [\"doc b\", \"doc c\"]}\n"
      "\n"
      "   \r\n"
      "{\"query\": \"q two\", \"pos\": [{\"title\": \"T\", \"text\": \"doc a\"}, {\"text\": \"doc b\"}]}\r\n"
      "{\"query\": \"q three\", \"pos\": [\"doc a\", \"doc a\"], \"neg\": [\"doc a\", \"doc d\", \"doc d\"], "
      "\"extra\": {\"ignored\": [1, 2]}}\n"
      "{\"query\": \"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\", \"pos\": [\"\\u00e9\\ud83d\\ude00\"], \"neg\": []}";
  sn_train_examples ex;
  sn_train_examples_init(&ex);
  char err[SN_DATA_ERR_LEN];
  int rc = parse(&ex, text, "a.jsonl", 0, 0, err);
  CHECK(rc == 0, "valid buffer rejected: %s", err);
  CHECK(ex.n_examples == 4, "examples %lld", (long long)ex.n_examples);
  // docs: "doc a", "doc b", "doc c", (T, "doc a"), "doc d", "é😀"
  CHECK(ex.n_docs == 6, "unique docs %lld", (long long)ex.n_docs);
  if (ex.n_examples == 4 && ex.n_docs == 6) {
    CHECK(strcmp(ex.examples[0].query, "q one") == 0, "query 0");
    CHECK(ex.examples[0].n_pos == 1 && ex.examples[0].n_neg == 2, "counts 0");
    CHECK(strcmp(ex.docs[sn_example_pos(&ex, 0)[0]].text, "doc a") == 0, "pos 0");
    CHECK(strcmp(ex.docs[sn_example_pos(&ex, 0)[0]].title, "") == 0, "string doc has title \"\"");
    // Same text with a title is another doc; "doc b" as an object without title is the string doc.
    const int64_t *p1 = sn_example_pos(&ex, 1);
    CHECK(ex.examples[1].n_pos == 2 && ex.examples[1].n_neg == 0, "counts 1");
    CHECK(strcmp(ex.docs[p1[0]].title, "T") == 0 && p1[0] != sn_example_pos(&ex, 0)[0], "titled doc");
    CHECK(p1[1] == sn_example_neg(&ex, 0)[0], "dedup of \"doc b\" across forms");
    CHECK(ex.examples[1].line == 4, "line numbers count blank lines: %lld", (long long)ex.examples[1].line);
    // Repeated positive kept once, a negative equal to a positive dropped, repeated negative once.
    CHECK(ex.examples[2].n_pos == 1 && ex.examples[2].n_neg == 1, "counts 2: %d %d",
          ex.examples[2].n_pos, ex.examples[2].n_neg);
    CHECK(strcmp(ex.examples[3].query, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == 0, "utf-8 query");
    CHECK(strcmp(ex.docs[sn_example_pos(&ex, 3)[0]].text, "\xc3\xa9\xf0\x9f\x98\x80") == 0,
          "\\u escapes decoded to UTF-8");
    CHECK(strcmp(sn_train_example_where(&ex, 2), "a.jsonl:5") == 0, "where: %s",
          sn_train_example_where(&ex, 2));
  }
  // A second buffer appends; its examples name their own file.
  rc = parse(&ex, "{\"query\":\"q5\",\"pos\":[\"doc c\"]}", "b.jsonl", 0, 0, err);
  CHECK(rc == 0 && ex.n_examples == 5 && ex.n_docs == 6 && ex.n_files == 2, "second file: %s", err);
  CHECK(strcmp(sn_train_example_where(&ex, 4), "b.jsonl:1") == 0, "where b");
  sn_train_examples_free(&ex);
}

typedef struct {
  const char *line;
  const char *expect;  // substring of the error
} bad_case;

static const char LONG_LINE_MARK[] = "LONG";

static const bad_case bad_cases[] = {
    {"{\"query\": \"a\", \"pos\": [\"x\"]", "malformed JSON"},
    {"{\"query\": \"a\", \"pos\": [\"x\"]} trailing", "unexpected characters after"},
    {"[\"query\", \"pos\"]", "expected a JSON object"},
    {"{\"pos\": [\"x\"]}", "missing \"query\""},
    {"{\"query\": 3, \"pos\": [\"x\"]}", "\"query\" must be a non-empty string"},
    {"{\"query\": \"\", \"pos\": [\"x\"]}", "\"query\" must be a non-empty string"},
    {"{\"query\": \"a\"}", "missing \"pos\""},
    {"{\"query\": \"a\", \"pos\": []}", "\"pos\" is empty"},
    {"{\"query\": \"a\", \"pos\": \"x\"}", "\"pos\" must be an array"},
    {"{\"query\": \"a\", \"pos\": [1]}", "\"pos\"[0] must be a string or an object"},
    {"{\"query\": \"a\", \"pos\": [\"x\", null]}", "\"pos\"[1] must be"},
    {"{\"query\": \"a\", \"pos\": [{\"title\": \"t\"}]}", "\"pos\"[0].text is missing"},
    {"{\"query\": \"a\", \"pos\": [{\"text\": 5}]}", "\"pos\"[0].text is not a string"},
    {"{\"query\": \"a\", \"pos\": [{\"title\": [], \"text\": \"x\"}]}", "\"pos\"[0].title is not a string"},
    {"{\"query\": \"a\", \"pos\": [\"x\"], \"neg\": \"y\"}", "\"neg\" must be an array"},
    {"{\"query\": \"a\", \"pos\": [\"x\"], \"neg\": [false]}", "\"neg\"[0] must be"},
    {"{\"query\": \"a\xff\", \"pos\": [\"x\"]}", "invalid UTF-8 at byte 13"},
    {"{\"query\": \"\xc0\xaf\", \"pos\": [\"x\"]}", "invalid UTF-8"},          // overlong '/'
    {"{\"query\": \"\xed\xa0\x80\", \"pos\": [\"x\"]}", "invalid UTF-8"},      // surrogate
    {"{\"query\": \"\xf4\x90\x80\x80\", \"pos\": [\"x\"]}", "invalid UTF-8"},  // above U+10FFFF
    {"{\"query\": \"a\", \"pos\": [\"x\"]} \xe2\x82", "invalid UTF-8"},        // cut at the end
    {"{\"query\": \"a\", \"pos\": [\"\\ud800\"]}", "malformed JSON"},         // lone surrogate escape
    {LONG_LINE_MARK, "over the limit of 64"},
};
#define SMALL_MAX_LINE 64

// The text of a bad case (LONG_LINE_MARK: a valid example longer than SMALL_MAX_LINE).
static const char *case_text(const bad_case *c) {
  if (c->line != LONG_LINE_MARK) return c->line;
  return "{\"query\": \"a long query that goes on and on\", \"pos\": [\"and a long document\"]}";
}

// FlagEmbedding's fields: "prompt" → the query's template; pos_scores/neg_scores kept per doc
// (through dedup), and every kind of bad value named by field.
static void test_flag_fields(void) {
  const char *text =
      "{\"query\": \"q\", \"pos\": [\"a\", \"a\"], \"neg\": [\"b\", \"a\", \"c\"], \"prompt\": \"Find: \", "
      "\"pos_scores\": [1.5, 9], \"neg_scores\": [-2, 7, 0.25]}\n"
      "{\"query\": \"r\", \"pos\": [\"a\"], \"prompt\": \"<{text}>\", \"pos_scores\": [3]}\n"
      "{\"query\": \"s\", \"pos\": [\"a\"], \"neg\": [\"b\"], \"pos_scores\": [3]}\n";
  sn_train_examples ex;
  sn_train_examples_init(&ex);
  char err[SN_DATA_ERR_LEN];
  CHECK(parse(&ex, text, "f.jsonl", 0, 0, err) == 0 && ex.n_examples == 3, "flag fields: %s", err);
  if (ex.n_examples == 3) {
    CHECK(ex.examples[0].query_template && strcmp(ex.examples[0].query_template, "Find: {text}") == 0,
          "a prompt without {text} is a prefix: %s", ex.examples[0].query_template);
    CHECK(strcmp(ex.examples[1].query_template, "<{text}>") == 0, "a prompt with {text} is the template");
    CHECK(ex.examples[2].query_template == NULL, "no prompt: data.query_prompt");
    // Repeated positive and the negative equal to it dropped together with their scores.
    CHECK(ex.examples[0].n_pos == 1 && ex.examples[0].n_neg == 2, "counts");
    const float *ps = sn_example_pos_scores(&ex, 0), *ns = sn_example_neg_scores(&ex, 0);
    CHECK(ps[0] == 1.5f && ns[0] == -2.0f && ns[1] == 0.25f, "scores %g %g %g", ps[0], ns[0], ns[1]);
    CHECK(ex.examples[0].has_scores && ex.examples[1].has_scores, "scored lines");
    CHECK(!ex.examples[2].has_scores && isnan(sn_example_neg_scores(&ex, 2)[0]),
          "negatives without neg_scores have none");
  }
  sn_train_examples_free(&ex);
  static const bad_case cases[] = {
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"pos_scores\": [\"1\"]}", "\"pos_scores\"[0] must be a finite number"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"pos_scores\": 1}", "\"pos_scores\" must be an array of numbers"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"pos_scores\": [1, 2]}", "\"pos_scores\" has 2 scores but \"pos\" has 1"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"neg\": [\"y\"], \"neg_scores\": []}", "\"neg_scores\" has 0 scores"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"neg_scores\": [1]}", "\"neg_scores\" has 1 scores but \"neg\" has 0"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"pos_scores\": [NaN]}", "\"pos_scores\": NaN at byte 45 is not JSON"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"pos_scores\": [1e999]}", "\"pos_scores\"[0] must be a finite number"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"pos_scores\": [-1e300]}", "\"pos_scores\"[0] must be a finite number"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"neg\": [\"y\"], \"neg_scores\": [null]}", "\"neg_scores\"[0] must be"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"prompt\": 3}", "\"prompt\" must be a non-empty string"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"prompt\": \"\"}", "\"prompt\" must be a non-empty string"},
      {"{\"query\": \"a\", \"pos\": [\"x\"], \"prompt\": \"{text}{text}\"}", "more than once"},
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
    char buf[1024];
    snprintf(buf, sizeof buf, "{\"query\": \"fine\", \"pos\": [\"ok\"]}\n%s\n", cases[i].line);
    sn_train_examples_init(&ex);
    int rc = parse(&ex, buf, "bad.jsonl", 0, 0, err);
    CHECK(rc == -1 && strncmp(err, "bad.jsonl:2: ", 13) == 0 && strstr(err, cases[i].expect),
          "flag case %zu: expected \"%s\" in: %s", i, cases[i].expect, err);
    sn_train_examples_free(&ex);
  }
}

static void test_bad_lines(void) {
  const char *good = "{\"query\": \"fine\", \"pos\": [\"ok\"]}\n";
  char err[SN_DATA_ERR_LEN];
  for (size_t i = 0; i < SN_ARRAY_LEN(bad_cases); i++) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s%s\n%s", good, case_text(&bad_cases[i]), good);
    sn_train_examples ex;
    sn_train_examples_init(&ex);
    int rc = parse(&ex, buf, "bad.jsonl", 0, SMALL_MAX_LINE, err);
    CHECK(rc == -1, "case %zu accepted: %s", i, bad_cases[i].line);
    CHECK(strncmp(err, "bad.jsonl:2: ", 13) == 0, "case %zu: error does not name file:line: %s", i, err);
    CHECK(strstr(err, bad_cases[i].expect) != NULL, "case %zu: expected \"%s\" in: %s", i,
          bad_cases[i].expect, err);
    sn_train_examples_free(&ex);
  }
  // A NUL byte inside a line (strlen cannot carry it).
  static const char with_nul[] = "{\"query\": \"a\0b\", \"pos\": [\"x\"]}\n";
  sn_train_examples ex;
  sn_train_examples_init(&ex);
  int rc = sn_train_examples_parse(&ex, with_nul, sizeof with_nul - 1, "nul.jsonl", 0, 0, NULL,
                                   err, sizeof err);
  CHECK(rc == -1 && strstr(err, "nul.jsonl:1: NUL byte at byte 13"), "NUL byte: %s", err);
  sn_train_examples_free(&ex);
}

static int n_skip_calls;
static void count_skip(const char *msg) { n_skip_calls++; }

static void test_skip_mode(void) {
  size_t cap = 1 << 15, len = 0;
  char *buf = mallocCheck(cap);
  const char *good = "{\"query\": \"fine\", \"pos\": [\"ok\"]}\n";
  len += (size_t)snprintf(buf + len, cap - len, "%s", good);
  for (size_t i = 0; i < SN_ARRAY_LEN(bad_cases); i++)
    len += (size_t)snprintf(buf + len, cap - len, "%s\n%s", case_text(&bad_cases[i]), good);
  sn_train_examples ex;
  sn_train_examples_init(&ex);
  char err[SN_DATA_ERR_LEN];
  n_skip_calls = 0;
  int rc = sn_train_examples_parse(&ex, buf, len, "mixed.jsonl", 1, SMALL_MAX_LINE, count_skip,
                                   err, sizeof err);
  CHECK(rc == 0, "skip mode failed: %s", err);
  CHECK(ex.n_examples == (int64_t)SN_ARRAY_LEN(bad_cases) + 1, "valid lines kept: %lld",
        (long long)ex.n_examples);
  CHECK(ex.n_lines_skipped == (int64_t)SN_ARRAY_LEN(bad_cases), "skipped %lld",
        (long long)ex.n_lines_skipped);
  CHECK(n_skip_calls == (int)SN_ARRAY_LEN(bad_cases), "on_skip calls %d", n_skip_calls);
  CHECK(strncmp(ex.first_skipped, "mixed.jsonl:2: malformed JSON", 29) == 0, "first skipped: %s",
        ex.first_skipped);
  sn_train_examples_free(&ex);

  // Only bad lines: an error even when skipping. An empty file: an error.
  sn_train_examples_init(&ex);
  rc = parse(&ex, "{\"query\": 1}\nnot json\n", "allbad.jsonl", 1, 0, err);
  CHECK(rc == -1 && strstr(err, "allbad.jsonl: no valid example line"), "all bad: %s", err);
  CHECK(ex.n_lines_skipped == 2, "all bad skipped %lld", (long long)ex.n_lines_skipped);
  sn_train_examples_free(&ex);
  sn_train_examples_init(&ex);
  rc = parse(&ex, "\n  \n", "empty.jsonl", 0, 0, err);
  CHECK(rc == -1 && strstr(err, "empty.jsonl: no valid example line"), "empty: %s", err);
  sn_train_examples_free(&ex);
  free(buf);
}

// Runs sn_train_examples_load in a child; returns its exit status.
static int load_in_child(const char *path, int skip) {
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    sn_train_examples ex;
    const char *paths[1] = {path};
    sn_train_examples_load(&ex, paths, 1, skip, 0);
    int ok = ex.n_examples > 0;
    sn_train_examples_free(&ex);
    _exit(ok ? 0 : 3);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopenCheck(path, "wb");
  fwriteCheck(text, 1, strlen(text), f, path);
  fcloseCheck(f, path);
}

static void test_exiting_loader(void) {
  char dir[] = "/tmp/sn_test_jsonl_XXXXXX";
  if (!mkdtemp(dir)) sn_fatal("mkdtemp");
  char good[600], bad[600], missing[600], empty[600];
  snprintf(good, sizeof good, "%s/good.jsonl", dir);
  snprintf(bad, sizeof bad, "%s/bad.jsonl", dir);
  snprintf(missing, sizeof missing, "%s/missing.jsonl", dir);
  snprintf(empty, sizeof empty, "%s/empty.jsonl", dir);
  write_text(good, "{\"query\": \"q\", \"pos\": [\"d\"]}\n");
  write_text(bad, "{\"query\": \"q\", \"pos\": [\"d\"]}\n{\"query\": \"q\", \"pos\": []}\n");
  write_text(empty, "");
  fprintf(stderr, "(the errors and warnings below are expected)\n");
  CHECK(load_in_child(good, 0) == 0, "good file");
  CHECK(load_in_child(bad, 0) == SN_EXIT_BAD_INPUT, "bad line: exit 2");
  CHECK(load_in_child(bad, 1) == 0, "bad line skipped");
  CHECK(load_in_child(missing, 0) == SN_EXIT_BAD_INPUT, "missing file: exit 2");
  CHECK(load_in_child(empty, 1) == SN_EXIT_BAD_INPUT, "empty file: exit 2");
  unlink(good);
  unlink(bad);
  unlink(empty);
  rmdir(dir);
}

int main(void) {
  test_valid_forms();
  test_bad_lines();
  test_flag_fields();
  test_skip_mode();
  test_exiting_loader();
  return sn_test_finish("test_data_jsonl");
}
