// BM25 basics: the Porter stemmer against the paper's examples and NLTK's original-algorithm pairs
// (tests/fixtures/porter/pairs.tsv), the analyzer's words (separators, UTF-8, lower-casing, stop
// words, overlong words), and the index: one score against the formula, short lists (-1, -inf),
// the trec tie rule by id and by index, the same lists for any thread count, title + text, and the
// build's refusals. Scores against an independent reference: tests/cpu/test_bm25_reference.py.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bm25.h"
#include "common.h"
#include "test_util.h"

#define ERR_LEN 512
#define SCORE_TOL 1e-5

// ---- stemmer ------------------------------------------------------------------------------------

static void check_stem(const char *word, const char *want, const char *where) {
  char buf[SN_BM25_MAX_TERM_BYTES + 1];
  const int n = (int)strlen(word);
  memcpy(buf, word, (size_t)n);
  const int m = sn_porter_stem(buf, n);
  buf[m] = '\0';
  CHECK(m <= n && strcmp(buf, want) == 0, "%s: stem(%s) = '%s', expected '%s'", where, word, buf, want);
}

static void test_stemmer_paper(void) {
  // The examples of Porter (1980), step by step, and whole words through all steps.
  static const char *const pairs[][2] = {
      {"caresses", "caress"}, {"ponies", "poni"},       {"ties", "ti"},            {"caress", "caress"},
      {"cats", "cat"},        {"feed", "feed"},         {"agreed", "agre"},        {"plastered", "plaster"},
      {"bled", "bled"},       {"motoring", "motor"},    {"sing", "sing"},          {"conflated", "conflat"},
      {"troubled", "troubl"}, {"sized", "size"},        {"hopping", "hop"},        {"tanned", "tan"},
      {"falling", "fall"},    {"hissing", "hiss"},      {"fizzed", "fizz"},        {"failing", "fail"},
      {"filing", "file"},     {"happy", "happi"},       {"sky", "sky"},            {"relational", "relat"},
      {"conditional", "condit"}, {"rational", "ration"}, {"digitizer", "digit"},   {"vietnamization", "vietnam"},
      {"predication", "predic"}, {"operator", "oper"},  {"feudalism", "feudal"},   {"decisiveness", "decis"},
      {"hopefulness", "hope"}, {"callousness", "callous"}, {"triplicate", "triplic"}, {"formative", "form"},
      {"formalize", "formal"}, {"electrical", "electr"}, {"goodness", "good"},     {"revival", "reviv"},
      {"allowance", "allow"}, {"inference", "infer"},   {"airliner", "airlin"},    {"adjustable", "adjust"},
      {"defensible", "defens"}, {"irritant", "irrit"},  {"replacement", "replac"}, {"adjustment", "adjust"},
      {"dependent", "depend"}, {"adoption", "adopt"},   {"communism", "commun"},   {"activate", "activ"},
      {"effective", "effect"}, {"bowdlerize", "bowdler"}, {"probate", "probat"},   {"rate", "rate"},
      {"cease", "ceas"},      {"controll", "control"},  {"roll", "roll"},          {"generalization", "gener"},
      {"oscillators", "oscil"}, {"hopefully", "hopefulli"},  // the paper has no "fulli" rule
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(pairs); i++) check_stem(pairs[i][0], pairs[i][1], "paper");
}

static void test_stemmer_fixture(void) {
  char path[1024];
  snprintf(path, sizeof path, "%s/tests/fixtures/porter/pairs.tsv", sn_test_source_dir());
  FILE *f = fopen(path, "r");
  CHECK(f != NULL, "%s: missing (tests/make_porter_fixture.py writes it)", path);
  if (!f) return;
  char line[2 * SN_BM25_MAX_TERM_BYTES + 4];
  int n = 0, before = sn_test_failures;
  while (fgets(line, sizeof line, f)) {
    char *tab = strchr(line, '\t');
    if (!tab) continue;
    *tab = '\0';
    tab[1 + strcspn(tab + 1, "\r\n")] = '\0';
    check_stem(line, tab + 1, "nltk original");
    n++;
  }
  fclose(f);
  CHECK(n > 1000, "%s: only %d pairs", path, n);
  printf("stemmer: %d fixture pairs, %d wrong\n", n, sn_test_failures - before);
}

// ---- analyzer -----------------------------------------------------------------------------------

typedef struct {
  char text[4096];  // terms joined by '|'
  int count;
} joined;

static void join_term(const char *term, int len, void *ctx) {
  joined *j = ctx;
  CHECK((int)strlen(term) == len, "term '%s' is NUL-terminated at %d, not %d", term, (int)strlen(term), len);
  size_t at = strlen(j->text);
  snprintf(j->text + at, sizeof j->text - at, "%s%s", j->count++ ? "|" : "", term);
}

static void check_analyze(const char *text, const sn_bm25_opts *o, const char *want) {
  joined j = {{0}, 0};
  sn_bm25_analyze(text, o, join_term, &j);
  CHECK(strcmp(j.text, want) == 0, "analyze('%s') = '%s', expected '%s'", text, j.text, want);
}

static void test_analyzer(void) {
  sn_bm25_opts all, plain, cased;
  sn_bm25_opts_default(&all);
  plain = all;
  plain.stopwords = plain.stem = 0;
  cased = plain;
  cased.lowercase = 0;
  check_analyze("The Cats, and the DOGS: running!", &all, "cat|dog|run");
  check_analyze("The Cats, and the DOGS: running!", &plain, "the|cats|and|the|dogs|running");
  check_analyze("The Cats, and the DOGS: running!", &cased, "The|Cats|and|the|DOGS|running");
  check_analyze("IL-6 (p<0.05) x_y a1b2", &plain, "il|6|p|0|05|x|y|a1b2");
  check_analyze("", &all, "");
  check_analyze(" ,;- ", &all, "");
  // Greek, accented Latin and CJK stay in words; dashes, ±, ×, NBSP and emoji separate them.
  check_analyze("\xce\x92-catenin \xce\xb1\xc2\xb1\xce\xb2 Na\xc3\x8fVE \xe6\x9d\xb1\xe4\xba\xac", &plain,
                "\xce\xb2|catenin|\xce\xb1|\xce\xb2|na\xc3\xafve|\xe6\x9d\xb1\xe4\xba\xac");
  check_analyze("a\xe2\x80\x94" "b\xc3\x97" "c\xc2\xa0" "d\xf0\x9f\x98\x80" "e", &plain, "a|b|c|d|e");
  check_analyze("\xc5\xbb\xc3\x93\xc5\x81W \xd0\x9c\xd0\x9e\xd0\xa1\xd0\x9a\xd0\x92\xd0\x90", &plain,
                "\xc5\xbc\xc3\xb3\xc5\x82w|\xd0\xbc\xd0\xbe\xd1\x81\xd0\xba\xd0\xb2\xd0\xb0");
  // Malformed UTF-8 separates; non-ASCII words are not stemmed.
  check_analyze("ab\xff" "cd\xc3" "ef \xc3\xa9" "ducations", &all, "ab|cd|ef|\xc3\xa9" "ducations");
  // Every stop word goes; words that merely start like one stay.
  check_analyze("a an and are as at be but by for if in into is it no not of on or such that the their "
                "then there these they this to was will with",
                &all, "");
  check_analyze("theirs thee ann wither", &all, "their|thee|ann|wither");
  CHECK(sn_bm25_is_stopword("the", 3) && !sn_bm25_is_stopword("th", 2) && !sn_bm25_is_stopword("thes", 4),
        "stop word lookup");
  // A word longer than the limit goes out in pieces of at most SN_BM25_MAX_TERM_BYTES bytes.
  char long_word[600];
  memset(long_word, 'x', 599);
  long_word[599] = '\0';
  joined j = {{0}, 0};
  sn_bm25_analyze(long_word, &plain, join_term, &j);
  CHECK(j.count == 3 && strlen(j.text) == 599 + 2, "a 599-byte word: %d pieces", j.count);
}

// ---- index --------------------------------------------------------------------------------------

static const char *const DOC_IDS[] = {"d0", "d1", "d2", "d3", "d4", "d5"};
static const char *const TITLES[] = {"Apple pie", "", "Banana", "Apple pie", "", "Cherry"};
static const char *const TEXTS[] = {"apple apple banana", "nothing to see here", "banana split banana",
                                    "apple apple banana", "apple", "cherry cherry cherry cherry"};
#define NDOCS 6

static double bm25_term(double N, double df, double tf, double dl, double avgdl, double k1, double b) {
  return log(1 + (N - df + 0.5) / (df + 0.5)) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl));
}

static void test_index(void) {
  sn_bm25_opts o;
  sn_bm25_opts_default(&o);
  o.stopwords = 0;  // "to" and "here" count in lengths
  char err[ERR_LEN];
  sn_bm25_index *x = sn_bm25_build(TITLES, TEXTS, NDOCS, &o, 2, err, sizeof err);
  CHECK(x != NULL, "build: %s", err);
  if (!x) return;
  CHECK(sn_bm25_num_docs(x) == NDOCS, "num_docs %lld", (long long)sn_bm25_num_docs(x));
  // lengths (title + text): 5 4 4 5 1 5 = 24 terms; "pie" is in d0 and d3
  CHECK(sn_bm25_num_tokens(x) == 24, "tokens %lld, expected 24", (long long)sn_bm25_num_tokens(x));
  const int k = 8;  // clamped to 6
  const char *queries[] = {"pie", "apple", "durian", "Cherry cherry", "banana apple"};
  const int Q = (int)SN_ARRAY_LEN(queries);
  int32_t idx[5 * 6];
  float sc[5 * 6];
  sn_bm25_search(x, queries, Q, k, DOC_IDS, 1, idx, sc);
  const int kk = NDOCS;
  const double avgdl = 24.0 / NDOCS;
  // "pie": d0 and d3 tie exactly (same document): ids descending puts d3 first; the rest is empty.
  const double pie = bm25_term(NDOCS, 2, 1, 5, avgdl, o.k1, o.b);
  CHECK(idx[0] == 3 && idx[1] == 0 && idx[2] == -1 && isinf(sc[2]) && sc[2] < 0, "pie: %d %d %d", idx[0], idx[1],
        idx[2]);
  CHECK(fabs(sc[0] - pie) <= SCORE_TOL * pie && sc[0] == sc[1], "pie: %g %g, expected %g", sc[0], sc[1], pie);
  for (int r = 2; r < kk; r++) CHECK(idx[r] == -1 && sc[r] == -INFINITY, "pie: slot %d holds %d", r, idx[r]);
  // "apple": d0, d3 (tf 3, dl 5), d4 (tf 1, dl 1)
  const double a_long = bm25_term(NDOCS, 3, 3, 5, avgdl, o.k1, o.b), a_short = bm25_term(NDOCS, 3, 1, 1, avgdl, o.k1, o.b);
  const int32_t *ia = idx + kk;
  const float *sa = sc + kk;
  const double first = SN_MAX(a_long, a_short);
  CHECK(fabs(sa[0] - first) <= SCORE_TOL * first, "apple: best %g, expected %g", sa[0], first);
  CHECK(ia[3] == -1 && ia[0] >= 0 && ia[1] >= 0 && ia[2] >= 0, "apple: 3 documents, got %d %d %d %d", ia[0], ia[1],
        ia[2], ia[3]);
  // "durian" matches nothing: an empty list
  for (int r = 0; r < kk; r++) CHECK(idx[2 * kk + r] == -1, "durian: slot %d holds %d", r, idx[2 * kk + r]);
  // a repeated query term counts twice
  const double cherry = bm25_term(NDOCS, 1, 5, 5, avgdl, o.k1, o.b);
  CHECK(idx[3 * kk] == 5 && fabs(sc[3 * kk] - 2 * cherry) <= SCORE_TOL * cherry, "cherry cherry: %d %g, expected 5 %g",
        idx[3 * kk], sc[3 * kk], 2 * cherry);

  // Without ids, ties go by index descending; with any thread count the same lists, bit for bit.
  int32_t idx2[5 * 6];
  float sc2[5 * 6];
  sn_bm25_search(x, queries, Q, k, NULL, 3, idx2, sc2);
  CHECK(idx2[0] == 3 && idx2[1] == 0, "ties by index: %d %d", idx2[0], idx2[1]);
  sn_bm25_index *x5 = sn_bm25_build(TITLES, TEXTS, NDOCS, &o, 5, err, sizeof err);
  sn_bm25_search(x5, queries, Q, k, DOC_IDS, 4, idx2, sc2);
  CHECK(memcmp(idx, idx2, sizeof idx) == 0 && memcmp(sc, sc2, sizeof sc) == 0,
        "5 build threads and 4 search threads differ from 2 and 1");
  sn_bm25_free(x5);

  // k = 1: the best only.
  int32_t one;
  float one_score;
  sn_bm25_search(x, queries + 4, 1, 1, DOC_IDS, 0, &one, &one_score);
  CHECK(one == idx[4 * kk] && one_score == sc[4 * kk], "k=1: %d, expected %d", one, idx[4 * kk]);
  sn_bm25_free(x);

  // titles NULL: the text alone; a title is the same as its words at the front of the text.
  const char *const joined_texts[] = {"Apple pie apple apple banana"};
  const char *const title_only[] = {"Apple pie"}, *const text_only[] = {"apple apple banana"};
  sn_bm25_index *a = sn_bm25_build(NULL, joined_texts, 1, &o, 1, err, sizeof err);
  sn_bm25_index *b = sn_bm25_build(title_only, text_only, 1, &o, 1, err, sizeof err);
  CHECK(a && b && sn_bm25_num_tokens(a) == 5 && sn_bm25_num_tokens(b) == 5 && sn_bm25_num_terms(b) == 3,
        "title + text: %lld vs %lld terms", a ? (long long)sn_bm25_num_tokens(a) : -1,
        b ? (long long)sn_bm25_num_tokens(b) : -1);
  sn_bm25_free(a);
  sn_bm25_free(b);
}

static void test_refusals(void) {
  sn_bm25_opts o;
  sn_bm25_opts_default(&o);
  char err[ERR_LEN] = "";
  CHECK(sn_bm25_build(NULL, TEXTS, 0, &o, 1, err, sizeof err) == NULL && strstr(err, "empty corpus"),
        "n = 0: '%s'", err);
  o.k1 = -1;
  CHECK(sn_bm25_build(NULL, TEXTS, 1, &o, 1, err, sizeof err) == NULL && strstr(err, "k1"), "k1 -1: '%s'", err);
  o.k1 = NAN;
  CHECK(sn_bm25_opts_check(&o, "--bm25-k1", "--bm25-b", err, sizeof err) != 0 && strstr(err, "--bm25-k1"),
        "k1 NaN: '%s'", err);
  sn_bm25_opts_default(&o);
  o.b = 1.5f;
  CHECK(sn_bm25_opts_check(&o, "--bm25-k1", "--bm25-b", err, sizeof err) != 0 && strstr(err, "--bm25-b"),
        "b 1.5: '%s'", err);
  // A corpus whose every word is a stop word indexes (no postings) and finds nothing.
  sn_bm25_opts_default(&o);
  const char *const stop_only[] = {"the and of", ""};
  sn_bm25_index *x = sn_bm25_build(NULL, stop_only, 2, &o, 2, err, sizeof err);
  CHECK(x && sn_bm25_num_terms(x) == 0, "stop words only: %s", x ? "terms left" : err);
  if (x) {
    const char *q[] = {"the"};
    int32_t idx[2];
    float sc[2];
    sn_bm25_search(x, q, 1, 2, NULL, 1, idx, sc);
    CHECK(idx[0] == -1 && idx[1] == -1, "stop words only: found %d %d", idx[0], idx[1]);
  }
  sn_bm25_free(x);
}

int main(void) {
  test_stemmer_paper();
  test_stemmer_fixture();
  test_analyzer();
  test_index();
  test_refusals();
  return sn_test_finish("test_bm25");
}
