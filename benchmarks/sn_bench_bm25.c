// BM25 on the CPU: index build rate (documents/s) and search rate (queries/s, top 100), on a
// synthetic corpus of Zipf-distributed words generated here deterministically, and on a BEIR folder.
//   sn_bench_bm25 [--docs 1000000] [--data BEIR_DIR] [--threads N]
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "beir.h"
#include "bm25.h"
#include "common.h"

#define DEFAULT_DOCS 1000000
#define VOCAB_SIZE 200000    // distinct words of the synthetic corpus
#define ZIPF_EXPONENT 1.0    // word of rank r drawn with probability ~ 1 / r^s
#define DOC_MIN_WORDS 16     // document lengths uniform in [16, 112]: a mean of 64 words, about an
#define DOC_MAX_WORDS 112    //   MS MARCO passage
#define NUM_QUERIES 2000
#define QUERY_WORDS 6
#define TOP_K 100
#define MIN_SEARCH_SECONDS 1.0  // repeat the query set at least this long
#define SEED 20261206u
#define MAX_WORD_BYTES 16

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_bench_bm25 [--docs N] [--data BEIR_DIR] [--threads N]\n"
          "BM25 index build (documents/s) and search (queries/s, top 100) on the CPU with the default\n"
          "analyzer (stop words, Porter), on a synthetic corpus: N documents of 16-112 words drawn from\n"
          "a Zipf distribution over 200000 words (deterministic), queries of 6 such words. Rates per\n"
          "wall-clock second and per CPU second (all threads; steadier on a shared machine).\n"
          "  --docs N           documents of the synthetic corpus (default 1000000; 0: none)\n"
          "  --data BEIR_DIR    also a BEIR corpus and its test queries (e.g. SciFact)\n"
          "  --threads N        threads for build and search (default: all cores, OMP_NUM_THREADS)\n"
          "  --help, -h         this text\n"
          "  --version          the scalingnote version\n");
}

// CPU seconds of every thread of the process: on a shared machine the rate per CPU second is the
// steadier figure, wall-clock rates move with what else runs.
static double cpu_seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t next_random(uint64_t *s) {  // xorshift64*
  *s ^= *s >> 12, *s ^= *s << 25, *s ^= *s >> 27;
  return *s * 2685821657736338717ull;
}

static double uniform(uint64_t *s) { return (double)(next_random(s) >> 11) / 9007199254740992.0; }

// Word of rank r: consonant-vowel syllables spelling r in base 5 * 21, so every rank is distinct.
static void word_of_rank(int r, char *out) {
  static const char consonants[] = "bcdfghjklmnpqrstvwxyz", vowels[] = "aeiou";
  const int syllables = (int)(sizeof consonants - 1) * (int)(sizeof vowels - 1);
  int n = 0;
  do {
    out[n++] = consonants[(r % syllables) / 5];
    out[n++] = vowels[r % 5];
    r /= syllables;
  } while (r > 0);
  out[n] = '\0';
}

typedef struct {
  double *cdf;  // (VOCAB_SIZE)
  char (*words)[MAX_WORD_BYTES];
} zipf_words;

static zipf_words zipf_make(void) {
  zipf_words z = {mallocCheck(VOCAB_SIZE * sizeof(double)), mallocCheck(VOCAB_SIZE * MAX_WORD_BYTES)};
  double total = 0;
  for (int r = 0; r < VOCAB_SIZE; r++) z.cdf[r] = total += 1.0 / pow(r + 1, ZIPF_EXPONENT);
  for (int r = 0; r < VOCAB_SIZE; r++) {
    z.cdf[r] /= total;
    word_of_rank(r, z.words[r]);
  }
  return z;
}

static const char *zipf_draw(const zipf_words *z, uint64_t *s) {
  const double u = uniform(s);
  int lo = 0, hi = VOCAB_SIZE - 1;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (z->cdf[mid] < u) lo = mid + 1;
    else hi = mid;
  }
  return z->words[lo];
}

static char *make_text(const zipf_words *z, uint64_t *s, int nwords) {
  sn_strbuf b = {0};
  for (int w = 0; w < nwords; w++) {
    const char *word = zipf_draw(z, s);
    if (w) sn_strbuf_append(&b, " ", 1);
    sn_strbuf_append(&b, word, strlen(word));
  }
  return b.s ? b.s : strdupCheck("");
}

// Builds the index (timed once), then searches the queries again and again for MIN_SEARCH_SECONDS.
static void bench(const char *what, const char *const *titles, const char *const *texts, int64_t n,
                  const char *const *queries, int Q, int threads) {
  sn_bm25_opts o;
  sn_bm25_opts_default(&o);
  char err[512];
  double t0 = sn_now_s(), c0 = cpu_seconds();
  sn_bm25_index *x = sn_bm25_build(titles, texts, n, &o, threads, err, sizeof err);
  const double build_s = sn_now_s() - t0, build_cpu = cpu_seconds() - c0;
  if (!x) sn_fatal("%s: %s", what, err);
  const int k = (int)SN_MIN((int64_t)TOP_K, n);
  int32_t *idx = mallocCheck((size_t)Q * k * sizeof *idx);
  float *sc = mallocCheck((size_t)Q * k * sizeof *sc);
  int rounds = 0;
  t0 = sn_now_s(), c0 = cpu_seconds();
  double search_s;
  do {
    sn_bm25_search(x, queries, Q, k, NULL, threads, idx, sc);
    rounds++;
    search_s = sn_now_s() - t0;
  } while (search_s < MIN_SEARCH_SECONDS);
  const double search_cpu = cpu_seconds() - c0, searched = (double)Q * rounds;
  printf("%-10s %9lld docs %9lld terms %6.1f words/doc | build %7.2f s %9.0f docs/s %9.0f docs/cpu-s | "
         "search %8.0f queries/s %8.0f queries/cpu-s\n",
         what, (long long)n, (long long)sn_bm25_num_terms(x), (double)sn_bm25_num_tokens(x) / n, build_s,
         n / build_s, n / build_cpu, searched / search_s, searched / search_cpu);
  fflush(stdout);
  free(idx);
  free(sc);
  sn_bm25_free(x);
}

static void bench_synthetic(int64_t n, int threads) {
  zipf_words z = zipf_make();
  uint64_t s = SEED;
  char **texts = mallocCheck((size_t)n * sizeof *texts);
  for (int64_t i = 0; i < n; i++)
    texts[i] = make_text(&z, &s, DOC_MIN_WORDS + (int)(next_random(&s) % (DOC_MAX_WORDS - DOC_MIN_WORDS + 1)));
  char *queries[NUM_QUERIES];
  for (int q = 0; q < NUM_QUERIES; q++) queries[q] = make_text(&z, &s, QUERY_WORDS);
  bench("synthetic", NULL, (const char *const *)texts, n, (const char *const *)queries, NUM_QUERIES, threads);
  for (int64_t i = 0; i < n; i++) free(texts[i]);
  for (int q = 0; q < NUM_QUERIES; q++) free(queries[q]);
  free(texts);
  free(z.cdf);
  free(z.words);
}

static void bench_beir(const char *dir, int threads) {
  sn_beir data;
  char err[1024];
  if (sn_beir_load(dir, "test", &data, err, sizeof err)) sn_bad_input("%s", err);
  bench("beir", (const char *const *)data.corpus.titles, (const char *const *)data.corpus.texts, data.corpus.n,
        (const char *const *)data.queries.texts, data.queries.n, threads);
  sn_beir_free(&data);
}

int main(int argc, char **argv) {
  sn_cli_init("sn_bench_bm25", usage);
  int64_t docs = DEFAULT_DOCS;
  int threads = 0;
  const char *data = NULL;
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    sn_cli_std_flag(f);
    if (strcmp(f, "--docs") && strcmp(f, "--data") && strcmp(f, "--threads")) sn_usage_error("unknown argument '%s'", f);
    if (i + 1 >= argc) sn_usage_error("%s: expected a value after it", f);
    const char *v = argv[++i];
    if (!strcmp(f, "--docs")) docs = sn_flag_i64(f, v, 0, INT32_MAX);
    else if (!strcmp(f, "--threads")) threads = (int)sn_flag_i64(f, v, 1, 4096);
    else data = v;
  }
  sn_flag_path_kind("--data", data, 1);
  printf("bm25 on the CPU, %d threads, top %d, default analyzer\n", threads > 0 ? threads : omp_get_max_threads(),
         TOP_K);
  if (docs > 0) bench_synthetic(docs, threads);
  if (data) bench_beir(data, threads);
  return 0;
}
