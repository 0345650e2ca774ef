// The mining core (host/eval/mine_core.c) on hand-made lists: the band counts ranks after the
// exclusions, excluded records never come out, N and the draw (a uniform draw: every candidate of
// the band is drawn about equally often over many examples; the same seed and example give the
// same draw, another seed another one), both margins, -1 padding; the shard merge against one
// trec-ordered list; positives matched to records by text, by title + " " + text and by pos_ids.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mine.h"
#include "test_util.h"

#define K 12
#define DRAWS 4000

static const int32_t RANKED[K] = {5, 3, 9, 0, 7, 1, 11, 2, 8, 4, 6, 10};
static const float SCORES[K] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, -1, -2};

static void test_band_and_exclusion(void) {
  sn_mine_opts o = {.range_lo = 1, .range_hi = 5, .negatives = 4, .seed = 1};
  const int32_t excluded[] = {3, 7};  // sorted; ranks: 5, 9, 0, 1, 11 → band [1, 5) = 9, 0, 1, 11
  int32_t neg[K];
  float ns[K];
  int n = sn_mine_pick(&o, 0, RANKED, SCORES, K, excluded, 2, NAN, neg, ns);
  CHECK(n == 4, "took %d", n);
  const int32_t want[] = {9, 0, 1, 11};
  for (int j = 0; j < n && j < 4; j++) CHECK(neg[j] == want[j], "neg[%d] = %d, expected %d (rank order)", j, neg[j], want[j]);
  // the margin: pos_score 7.5, absolute 2 → scores <= 5.5: 0 (6) is out, 1 (4) and 11 (3) stay
  o.margin_kind = SN_MINE_MARGIN_ABSOLUTE;
  o.margin = 2;
  n = sn_mine_pick(&o, 0, RANKED, SCORES, K, excluded, 2, 7.5f, neg, ns);
  CHECK(n == 2 && neg[0] == 1 && neg[1] == 11, "absolute margin: %d negatives", n);
  o.margin_kind = SN_MINE_MARGIN_RELATIVE;  // <= 10 * (1 - 0.35) = 6.5: 0 (6), 1, 11 stay
  o.margin = 0.35;
  n = sn_mine_pick(&o, 0, RANKED, SCORES, K, excluded, 2, 10.0f, neg, ns);
  CHECK(n == 3 && neg[0] == 0 && ns[0] == 6.0f, "relative margin: %d negatives", n);
  // -1 padding ends the list
  int32_t short_list[K];
  memcpy(short_list, RANKED, sizeof short_list);
  short_list[3] = -1;
  o.margin_kind = SN_MINE_MARGIN_NONE;
  n = sn_mine_pick(&o, 0, short_list, SCORES, K, NULL, 0, NAN, neg, ns);
  CHECK(n == 2 && neg[0] == 3 && neg[1] == 9, "padded list: %d negatives", n);
}

static void test_draw(void) {
  sn_mine_opts o = {.range_lo = 2, .range_hi = 10, .negatives = 3, .seed = 42};
  int counts[K] = {0};
  int32_t a[K], b[K];
  float s[K];
  int differ = 0;
  for (int e = 0; e < DRAWS; e++) {
    int n = sn_mine_pick(&o, e, RANKED, SCORES, K, NULL, 0, NAN, a, s);
    CHECK(n == 3, "example %d: %d negatives", e, n);
    for (int j = 0; j < n; j++) {
      int r = -1;
      for (int q = 0; q < K; q++)
        if (RANKED[q] == a[j]) r = q;
      CHECK(r >= 2 && r < 10, "example %d: rank %d outside 2:10", e, r);
      if (r >= 0) counts[r]++;
      if (j) CHECK(a[j] != a[j - 1], "example %d: drawn twice", e);
    }
    sn_mine_pick(&o, e, RANKED, SCORES, K, NULL, 0, NAN, b, s);
    CHECK(!memcmp(a, b, 3 * sizeof *a), "example %d: the same seed drew differently", e);
    o.seed = 43;
    sn_mine_pick(&o, e, RANKED, SCORES, K, NULL, 0, NAN, b, s);
    o.seed = 42;
    differ += memcmp(a, b, 3 * sizeof *a) != 0;
  }
  CHECK(differ > DRAWS / 2, "seeds 42 and 43 agree on %d of %d examples", DRAWS - differ, DRAWS);
  const double expected = DRAWS * 3.0 / 8.0;  // each of the 8 band ranks
  for (int r = 2; r < 10; r++)
    CHECK(fabs(counts[r] - expected) < 0.1 * expected, "rank %d drawn %d times, expected ~%.0f", r, counts[r], expected);
}

static void test_merge(void) {
  const char *ids[] = {"a", "b", "c", "d", "e", "f"};
  // shard 0 holds records 0..2, shard 1 records 3..5; a tie at 5 between c (2) and e (4): e first
  const int32_t i0[] = {2, 0, -1, -1}, i1[] = {4, 3, 5, -1};
  const float s0[] = {5, 1, -INFINITY, -INFINITY}, s1[] = {5, 4, 0, -INFINITY};
  const int32_t *idx[] = {i0, i1};
  const float *sc[] = {s0, s1};
  int32_t out[4];
  float os[4];
  sn_mine_merge(2, idx, sc, 1, 4, ids, out, os);
  const int32_t want[] = {4, 2, 3, 0};
  for (int j = 0; j < 4; j++) CHECK(out[j] == want[j], "merged[%d] = %d, expected %d", j, out[j], want[j]);
}

static void test_match(void) {
  sn_train_examples ex;
  sn_train_examples_init(&ex);
  const char *jsonl = "{\"query\": \"q0\", \"pos\": [\"alpha beta\"]}\n"
                      "{\"query\": \"q1\", \"pos\": [{\"title\": \"T\", \"text\": \"gamma\"}]}\n";
  char err[256];
  CHECK(sn_train_examples_parse(&ex, jsonl, strlen(jsonl), "mem", 0, 0, NULL, err, sizeof err) == 0, "%s", err);
  sn_beir_records c = {0};
  char *cids[] = {"r0", "r1", "r2", "r3", "r4"};
  char *titles[] = {"", "alpha", "T", "", ""};
  char *texts[] = {"alpha beta", "beta", "gamma", "T gamma", "delta"};
  c.n = 5, c.ids = cids, c.titles = titles, c.texts = texts;
  sn_id_map_init(&c.index, 8);
  for (int i = 0; i < 5; i++) sn_id_map_put(&c.index, cids[i], i);
  const int64_t id_begin[] = {0, 1, 1};
  const char *pos_ids[] = {"r4"};
  sn_mine_positives p;
  CHECK(sn_mine_match_positives(&ex, &c, id_begin, pos_ids, &p, err, sizeof err) == 0, "%s", err);
  // q0: r0 (text), r1 ("alpha" + " " + "beta"), r4 (pos_ids); q1: r2 (title, text), r3 (joined)
  CHECK(p.excl_begin[1] == 3 && p.excl[0] == 0 && p.excl[1] == 1 && p.excl[2] == 4, "q0 excludes %lld",
        (long long)p.excl_begin[1]);
  CHECK(p.excl_begin[2] - p.excl_begin[1] == 2 && p.excl[3] == 2 && p.excl[4] == 3, "q1 excludes %lld",
        (long long)(p.excl_begin[2] - p.excl_begin[1]));
  CHECK(p.match_begin[1] == 2 && p.max_excluded == 3, "positive 0 matches %lld records", (long long)p.match_begin[1]);
  sn_mine_positives_free(&p);
  const char *bad_ids[] = {"nope"};
  CHECK(sn_mine_match_positives(&ex, &c, id_begin, bad_ids, &p, err, sizeof err) != 0 && strstr(err, "mem:1") &&
            strstr(err, "'nope'"), "unknown id: %s", err);
  sn_id_map_free(&c.index);
  sn_train_examples_free(&ex);
}

int main(void) {
  test_band_and_exclusion();
  test_draw();
  test_merge();
  test_match();
  return sn_test_finish("test_mine_core");
}
