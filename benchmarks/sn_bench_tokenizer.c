// Encoding speed of one thread: sn_bench_tokenizer --tokenizer FILE_OR_DIR --input FILE.jsonl
// [--repeat N]. Encodes every "text" (and "title") of the JSONL file, N times (default 3; the first
// pass fills the word cache, as in training where a corpus is read repeatedly), and reports MB/s of
// text bytes for the first pass and the best of the later ones, by wall clock and by the thread's
// CPU time (the second is what one core gives when the machine is shared with other work).
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "common.h"
#include "tokenizer.h"

#define DEFAULT_REPEAT 3
#define BYTES_PER_MB 1e6

static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct { char **texts; size_t *lens; size_t count, bytes; } text_set;

static void add_text(text_set *set, const char *s) {
  set->texts = reallocCheck(set->texts, (set->count + 1) * sizeof(char *));
  set->lens = reallocCheck(set->lens, (set->count + 1) * sizeof(size_t));
  set->texts[set->count] = strdupCheck(s);
  set->lens[set->count] = strlen(s);
  set->bytes += set->lens[set->count++];
}

static text_set read_texts(const char *path) {
  text_set set = {0};
  FILE *f = fopenCheck(path, "rb");
  char *line = NULL;
  size_t cap = 0, line_no = 0;
  while (getline(&line, &cap, f) >= 0) {
    line_no++;
    cJSON *obj = cJSON_Parse(line);
    if (!obj) sn_bad_input("%s:%zu: not a JSON line", path, line_no);
    const char *fields[] = {"title", "text"};
    for (size_t k = 0; k < SN_ARRAY_LEN(fields); k++) {
      const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, fields[k]);
      if (cJSON_IsString(t) && t->valuestring[0]) add_text(&set, t->valuestring);
    }
    cJSON_Delete(obj);
  }
  free(line);
  fcloseCheck(f, path);
  return set;
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_bench_tokenizer --tokenizer FILE_OR_DIR --input FILE.jsonl [--repeat N]\n"
          "Encoding speed of one thread, in MB/s of text.\n"
          "  --tokenizer PATH   tokenizer.json, or a model folder holding one\n"
          "  --input FILE       JSONL whose \"text\" (and \"title\") fields are encoded\n"
          "  --repeat N         passes over the file (default %d; the first fills the word cache)\n"
          "  --help, -h         this text\n"
          "  --version          the scalingnote version\n",
          DEFAULT_REPEAT);
}

int main(int argc, char **argv) {
  const char *tokenizer_path = NULL, *input = NULL;
  int repeat = DEFAULT_REPEAT;
  sn_cli_init("sn_bench_tokenizer", usage);
  for (int i = 1; i < argc; i++) {
    sn_cli_std_flag(argv[i]);
    if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) tokenizer_path = argv[++i];
    else if (strcmp(argv[i], "--input") == 0 && i + 1 < argc) input = argv[++i];
    else if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) repeat = (int)sn_flag_i64("--repeat", argv[++i], 1, INT32_MAX);
    else sn_usage_error("unknown or incomplete argument '%s'", argv[i]);
  }
  if (!tokenizer_path || !input) sn_usage_error("--tokenizer and --input are required");
  char err[1024];
  double t0 = sn_now_s();
  sn_tokenizer *tok = sn_tokenizer_load(tokenizer_path, err, sizeof(err));
  if (!tok) sn_bad_input("%s", err);
  double load_s = sn_now_s() - t0;
  text_set set = read_texts(input);
  int32_t *ids = NULL;
  size_t cap = 0, total_ids = 0;
  double first_mbs = 0, best_mbs = 0, first_cpu_mbs = 0, best_cpu_mbs = 0;
  for (int r = 0; r < repeat; r++) {
    double start = sn_now_s(), cpu_start = thread_cpu_s();
    total_ids = 0;
    for (size_t i = 0; i < set.count; i++) {
      size_t n = 0;
      sn_tokenizer_encode(tok, set.texts[i], set.lens[i], 0, &ids, &n, &cap);
      total_ids += n;
    }
    double mbs = set.bytes / BYTES_PER_MB / (sn_now_s() - start);
    double cpu_mbs = set.bytes / BYTES_PER_MB / (thread_cpu_s() - cpu_start);
    if (r == 0) { first_mbs = mbs; first_cpu_mbs = cpu_mbs; }
    else {
      best_mbs = SN_MAX(best_mbs, mbs);
      best_cpu_mbs = SN_MAX(best_cpu_mbs, cpu_mbs);
    }
  }
  printf("tokenizer %s (%s), loaded in %.2f s\n", tokenizer_path, sn_tokenizer_fingerprint(tok), load_s);
  printf("%zu texts, %.2f MB, %zu ids (%.2f bytes/id)\n", set.count, set.bytes / BYTES_PER_MB, total_ids,
         (double)set.bytes / (double)(total_ids ? total_ids : 1));
  printf("single thread, wall clock: first pass %.2f MB/s", first_mbs);
  if (repeat > 1) printf(", best later pass %.2f MB/s", best_mbs);
  printf("\nsingle thread, CPU time:   first pass %.2f MB/s", first_cpu_mbs);
  if (repeat > 1) printf(", best later pass %.2f MB/s", best_cpu_mbs);
  printf("\n");
  for (size_t i = 0; i < set.count; i++) free(set.texts[i]);
  free(set.texts); free(set.lens); free(ids);
  sn_tokenizer_free(tok);
  return 0;
}
