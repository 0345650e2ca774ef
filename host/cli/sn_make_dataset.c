// sn_make_dataset: a real retrieval dataset from Debian's package descriptions, for the built-in
// default run. Each package's English translation entry gives a pair:
//   query = the short description (the Description-en line itself)
//   doc   = the long description (its continuation lines)
// Outputs, under --out DIR:
//   train.jsonl                 {"query": short, "pos": [long]} (FlagEmbedding format, no "neg":
//                               stage 1 uses in-batch and cross-device negatives)
//   test/corpus.jsonl           {"_id": package, "title": "", "text": long}
//   test/queries.jsonl          {"_id": package, "text": short}
//   test/qrels/test.tsv         query-id corpus-id score (1 for the query's own package)
//   pretrain.jsonl              {"text": short + "\n" + long} per training package: in-domain text
//                               for stage 0 (sn_train --stage 0, stage0.data)
//   stats.json                  counts and the options used
// Choices, and why:
// - The package name is the id but never part of the text (title ""): short descriptions often
//   contain the name, so a titled document would be found by name matching alone.
// - Identical long descriptions (library variants, -dbg/-doc siblings) are kept once: the first
//   package in name order; otherwise a test query would have unjudged exact duplicates of its
//   positive. Test queries are drawn only among short descriptions that are unique (ignoring
//   case and spacing), so each test query has exactly one right answer in its own terms.
// - Test packages are excluded from training. The test corpus holds every test positive plus
//   distractors drawn from the other packages (which are training positives too: they are
//   distractors here, never judged, so seeing them in training leaks nothing about the answers).
//   Near-duplicates (libfoo1 vs libfoo-dev share a first paragraph) stay; they make the task
//   harder, not easier.
// - The pretraining text is the training packages' descriptions only: the test packages (their
//   short and long descriptions both) are left out entirely, so a model pretrained on it has
//   never read a test query or a test positive. Exact duplicates after whitespace is collapsed are
//   kept once. Other text on a Debian machine was considered and left out: the Packages lists'
//   own Description fields repeat the translations, and /usr/share/doc's copyright files are
//   mostly the same few licences.
// - Everything is deterministic for a given set of input files and --seed.
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "beir.h"
#include "cJSON.h"
#include "common.h"

#define DEFAULT_APT_LISTS "/var/lib/apt/lists"
#define DEFAULT_TEST_QUERIES 1000
#define DEFAULT_CORPUS_MAX 10000
#define DEFAULT_MIN_DOC_CHARS 80    // shorter long descriptions say too little to retrieve by
#define DEFAULT_MAX_DOC_CHARS 2000  // longer ones are cut at a word boundary (≈ 512 tokens)
#define TRANSLATION_MARK "_i18n_Translation-en"
#define FETCH_HINT                                                                              \
  "fetch them with: apt-get update -o Acquire::Languages=en (Debian's Docker images set "      \
  "Acquire::Languages \"none\" in /etc/apt/apt.conf.d/docker-no-languages, so a plain "        \
  "apt-get update skips them)"
#define SN_PATH_MAX 4096
#define INITIAL_PAIRS 4096  // grows by doubling

// ---- options -----------------------------------------------------------------------------------

typedef struct {
  const char *apt_lists, *out;
  int test_queries, corpus_max, min_doc_chars, max_doc_chars;
  uint64_t seed;
} options;

static void usage(FILE *f) {
  fprintf(f,
          "usage: sn_make_dataset --out DIR [--apt-lists %s] [--test-queries %d]\n"
          "                       [--corpus-max %d] [--seed 0] [--min-doc-chars %d]\n"
          "                       [--max-doc-chars %d]\n"
          "Reads <apt-lists>/*%s* (plain, .gz, .xz, .lz4, .zst, .bz2); %s.\n"
          "Writes DIR/train.jsonl (query-document pairs), a BEIR test set DIR/test/ (corpus.jsonl,\n"
          "queries.jsonl, qrels/test.tsv), DIR/pretrain.jsonl (the training packages' descriptions\n"
          "as {\"text\"} lines, stage 0's input; no test package's text) and DIR/stats.json.\n"
          "  --out DIR            the dataset folder (required)\n"
          "  --apt-lists DIR      where apt keeps its package lists\n"
          "  --test-queries N     test queries held out of training\n"
          "  --corpus-max N       documents of the test corpus at most (positives + distractors)\n"
          "  --seed N             seed of the split and the shuffle\n"
          "  --min-doc-chars N    shorter descriptions are skipped\n"
          "  --max-doc-chars N    longer descriptions are cut at a word boundary\n"
          "  --help, -h           this text\n"
          "  --version            the scalingnote version\n",
          DEFAULT_APT_LISTS, DEFAULT_TEST_QUERIES, DEFAULT_CORPUS_MAX, DEFAULT_MIN_DOC_CHARS,
          DEFAULT_MAX_DOC_CHARS, TRANSLATION_MARK, FETCH_HINT);
}

#define MAX_FLAG_COUNT (1L << 30)

static long parse_count(const char *flag, const char *v, long min) { return (long)sn_flag_i64(flag, v, min, MAX_FLAG_COUNT); }

static void parse_args(int argc, char **argv, options *o) {
  *o = (options){DEFAULT_APT_LISTS, NULL, DEFAULT_TEST_QUERIES, DEFAULT_CORPUS_MAX,
                 DEFAULT_MIN_DOC_CHARS, DEFAULT_MAX_DOC_CHARS, 0};
  sn_cli_init("sn_make_dataset", usage);
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    sn_cli_std_flag(f);
    if (i + 1 >= argc) sn_usage_error("%s: expected a value after it", f);
    const char *v = argv[++i];
    if (!strcmp(f, "--apt-lists")) o->apt_lists = v;
    else if (!strcmp(f, "--out")) o->out = v;
    else if (!strcmp(f, "--test-queries")) o->test_queries = (int)parse_count(f, v, 1);
    else if (!strcmp(f, "--corpus-max")) o->corpus_max = (int)parse_count(f, v, 1);
    else if (!strcmp(f, "--seed")) o->seed = (uint64_t)parse_count(f, v, 0);
    else if (!strcmp(f, "--min-doc-chars")) o->min_doc_chars = (int)parse_count(f, v, 1);
    else if (!strcmp(f, "--max-doc-chars")) o->max_doc_chars = (int)parse_count(f, v, 1);
    else sn_usage_error("unknown option '%s'", f);
  }
  if (!o->out) sn_usage_error("expected --out DIR");
  if (o->max_doc_chars < o->min_doc_chars)
    sn_usage_error("--max-doc-chars %d is below --min-doc-chars %d", o->max_doc_chars, o->min_doc_chars);
}

// ---- finding and opening the Translation files -------------------------------------------------

typedef struct {
  const char *suffix;
  const char *decompressor;  // NULL: read as is
} compression;

static const compression COMPRESSIONS[] = {
    {"", NULL}, {".gz", "gzip -dc"}, {".xz", "xz -dc"}, {".lz4", "lz4 -dc"}, {".zst", "zstd -dc"}, {".bz2", "bzip2 -dc"},
};

static const compression *translation_kind(const char *name) {
  const char *mark = strstr(name, TRANSLATION_MARK);
  if (!mark) return NULL;
  const char *rest = mark + strlen(TRANSLATION_MARK);
  for (size_t i = 0; i < SN_ARRAY_LEN(COMPRESSIONS); i++)
    if (!strcmp(rest, COMPRESSIONS[i].suffix)) return &COMPRESSIONS[i];
  return NULL;  // partial downloads, diff indexes, other languages
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

// Sorted paths (name order: deterministic across directory orders).
static char **find_translation_files(const char *dir, int *n) {
  DIR *d = opendir(dir);
  if (!d) sn_bad_input("--apt-lists %s: cannot open the folder: %s; %s", dir, strerror(errno), FETCH_HINT);
  char **paths = NULL;
  *n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (!translation_kind(e->d_name)) continue;
    paths = reallocCheck(paths, (size_t)(*n + 1) * sizeof *paths);
    size_t len = strlen(dir) + strlen(e->d_name) + 2;
    paths[*n] = mallocCheck(len);
    snprintf(paths[(*n)++], len, "%s/%s", dir, e->d_name);
  }
  closedir(d);
  if (*n == 0) sn_bad_input("no *%s* files in %s; %s", TRANSLATION_MARK, dir, FETCH_HINT);
  qsort(paths, (size_t)*n, sizeof *paths, cmp_str);
  return paths;
}

typedef struct {
  FILE *f;
  int is_pipe;
} input;

// Compressed lists are read through the decompressor (apt keeps them compressed when
// Acquire::GzipIndexes is set, as Debian's Docker images do). The path is single-quoted.
static input open_input(const char *path) {
  const compression *c = translation_kind(strrchr(path, '/') ? strrchr(path, '/') + 1 : path);
  if (!c->decompressor) return (input){fopenCheck(path, "r"), 0};
  size_t cap = 2 * strlen(path) + 64, len = 0;
  char *cmd = mallocCheck(cap);
  len += (size_t)snprintf(cmd, cap, "%s -- '", c->decompressor);
  for (const char *p = path; *p; p++) {
    if (*p == '\'') {
      memcpy(cmd + len, "'\\''", 4);
      len += 4;
    } else {
      cmd[len++] = *p;
    }
  }
  snprintf(cmd + len, cap - len, "'");
  FILE *f = popen(cmd, "r");
  if (!f) sn_fatal("%s: cannot start '%s': %s", path, c->decompressor, strerror(errno));
  free(cmd);
  return (input){f, 1};
}

static void close_input(input in, const char *path) {
  if (!in.is_pipe) {
    fclose(in.f);
    return;
  }
  int status = pclose(in.f);
  if (status != 0)
    sn_bad_input("%s: decompression failed (status %d): is the file complete, and is the "
                 "decompressor (gzip, xz, lz4, zstd, bzip2) installed?", path, status);
}

// ---- parsing deb822 paragraphs -----------------------------------------------------------------

typedef struct {
  char *package;
  char *short_desc;
  char *long_desc;
  int order;  // position in the input: ties of the package sort keep file order
} pair;

typedef struct {
  pair *items;
  int n, cap;
} pair_list;

typedef sn_strbuf text_buf;

static void text_append(text_buf *b, const char *s, size_t n) { sn_strbuf_append(b, s, n); }

static char *trim_copy(const char *s, size_t n) {
  while (n > 0 && isspace((unsigned char)*s)) s++, n--;
  while (n > 0 && isspace((unsigned char)s[n - 1])) n--;
  return strndup(s, n);
}

// One long-description line (leading space removed): " ." lines are paragraph breaks, lines that
// still start with a space are verbatim (kept on their own line), the rest is wrapped prose.
static void append_long_line(text_buf *b, const char *line, size_t n) {
  if (n == 1 && line[0] == '.') {
    if (b->len) text_append(b, "\n", 1);
    return;
  }
  int verbatim = n > 0 && (line[0] == ' ' || line[0] == '\t');
  if (b->len && b->s[b->len - 1] != '\n') text_append(b, verbatim ? "\n" : " ", 1);
  if (!verbatim)
    while (n > 0 && isspace((unsigned char)*line)) line++, n--;
  text_append(b, line, n);
}

typedef struct {
  char *package, *short_desc;
  text_buf long_desc;
  int package_line, desc_line;
  int in_description;
} paragraph;

static void paragraph_reset(paragraph *p) {
  free(p->package);
  free(p->short_desc);
  free(p->long_desc.s);
  memset(p, 0, sizeof *p);
}

// Moves a complete paragraph into the list; a paragraph without Description-en (other fields
// only) is skipped, one without Package is bad input.
static void paragraph_finish(paragraph *p, pair_list *out, const char *path) {
  if (p->short_desc && !p->package)
    sn_bad_input("%s:%d: paragraph has Description-en but no Package field (expected deb822 "
                 "paragraphs with Package, Description-md5, Description-en)", path, p->desc_line);
  if (p->package && p->short_desc) {
    if (out->n == out->cap) {
      out->cap = out->cap ? 2 * out->cap : INITIAL_PAIRS;
      out->items = reallocCheck(out->items, (size_t)out->cap * sizeof *out->items);
    }
    char *long_desc = p->long_desc.s ? trim_copy(p->long_desc.s, p->long_desc.len) : strdupCheck("");
    out->items[out->n] = (pair){p->package, p->short_desc, long_desc, out->n};
    out->n++;
    p->package = p->short_desc = NULL;
  }
  paragraph_reset(p);
}

static void parse_translation(const char *path, pair_list *out) {
  input in = open_input(path);
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int lineno = 0, before = out->n;
  paragraph p = {0};
  while ((len = getline(&line, &cap, in.f)) >= 0) {
    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
    if (len == 0) {
      paragraph_finish(&p, out, path);
      continue;
    }
    if (line[0] == ' ' || line[0] == '\t') {  // continuation of the previous field
      if (p.in_description) append_long_line(&p.long_desc, line + 1, (size_t)len - 1);
      continue;
    }
    char *colon = strchr(line, ':');
    if (!colon)
      sn_bad_input("%s:%d: expected 'Field: value' or a continuation line starting with a space, got '%.60s'",
                   path, lineno, line);
    *colon = '\0';
    const char *value = colon + 1;
    p.in_description = 0;
    if (!strcmp(line, "Package")) {
      if (p.package) sn_bad_input("%s:%d: second Package field in one paragraph (expected a blank line between packages)", path, lineno);
      p.package = trim_copy(value, strlen(value));
      p.package_line = lineno;
      if (!p.package[0]) sn_bad_input("%s:%d: empty Package name", path, lineno);
    } else if (!strcmp(line, "Description-en")) {
      if (p.short_desc) sn_bad_input("%s:%d: second Description-en field in one paragraph", path, lineno);
      p.short_desc = trim_copy(value, strlen(value));
      p.desc_line = lineno;
      p.in_description = 1;
    }
  }
  paragraph_finish(&p, out, path);
  free(line);
  close_input(in, path);
  sn_log("%s: %d descriptions", path, out->n - before);
}

// ---- selection ---------------------------------------------------------------------------------

// Spaces collapsed (runs of whitespace become one space, none at the ends) and, with fold_case,
// lower-cased: the key under which two texts count as the same.
static char *normalized_text(const char *s, int fold_case) {
  char *k = mallocCheck(strlen(s) + 1);
  size_t n = 0;
  for (; *s; s++) {
    if (isspace((unsigned char)*s)) {
      if (n && k[n - 1] != ' ') k[n++] = ' ';
    } else {
      k[n++] = fold_case ? (char)tolower((unsigned char)*s) : *s;
    }
  }
  while (n && k[n - 1] == ' ') n--;
  k[n] = '\0';
  return k;
}

// Cuts at the last whitespace at or before max_chars (a word boundary keeps UTF-8 intact).
static void truncate_words(char *s, int max_chars) {
  size_t n = strlen(s);
  if (n <= (size_t)max_chars) return;
  size_t cut = (size_t)max_chars;
  while (cut > 0 && !isspace((unsigned char)s[cut])) cut--;
  if (cut == 0) {  // one enormous word: cut before a UTF-8 continuation byte
    cut = (size_t)max_chars;
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80) cut--;
  }
  while (cut > 0 && isspace((unsigned char)s[cut - 1])) cut--;
  s[cut] = '\0';
}

static int cmp_pair_package(const void *a, const void *b) {
  const pair *x = a, *y = b;
  int c = strcmp(x->package, y->package);
  return c ? c : x->order - y->order;
}

static void free_pair(pair *p) {
  free(p->package);
  free(p->short_desc);
  free(p->long_desc);
}

typedef struct {
  int dropped_same_package, dropped_short_doc, dropped_same_doc, truncated;
} clean_stats;

// Sorts by package; keeps the first entry of each package and of each long description; applies
// the length limits.
static void clean_pairs(pair_list *l, const options *o, clean_stats *st) {
  memset(st, 0, sizeof *st);
  qsort(l->items, (size_t)l->n, sizeof *l->items, cmp_pair_package);
  sn_id_map seen_docs;
  sn_id_map_init(&seen_docs, (size_t)l->n);
  int kept = 0;
  for (int i = 0; i < l->n; i++) {
    pair *p = &l->items[i];
    // Same package in several lists (main, -updates, -security): the first file in name order wins.
    if (kept && !strcmp(l->items[kept - 1].package, p->package)) {
      st->dropped_same_package++;
      free_pair(p);
      continue;
    }
    if (strlen(p->long_desc) < (size_t)o->min_doc_chars || !p->short_desc[0]) {
      st->dropped_short_doc++;
      free_pair(p);
      continue;
    }
    if (strlen(p->long_desc) > (size_t)o->max_doc_chars) {
      truncate_words(p->long_desc, o->max_doc_chars);
      st->truncated++;
    }
    l->items[kept] = *p;
    if (sn_id_map_put(&seen_docs, l->items[kept].long_desc, kept) >= 0) {
      st->dropped_same_doc++;
      free_pair(&l->items[kept]);
      continue;
    }
    kept++;
  }
  sn_id_map_free(&seen_docs);
  l->n = kept;
}

// splitmix64: a seeded stream for the shuffles, same on every platform.
static uint64_t next_random(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

static void shuffle(int *a, int n, uint64_t *state) {
  for (int i = n - 1; i > 0; i--) {
    int j = (int)(next_random(state) % (uint64_t)(i + 1));
    int t = a[i];
    a[i] = a[j];
    a[j] = t;
  }
}

// ---- output ------------------------------------------------------------------------------------

static void write_json_line(FILE *f, cJSON *obj, const char *path) {
  char *s = cJSON_PrintUnformatted(obj);
  if (!s) sn_fatal("%s: cannot format a JSON line", path);
  fputs(s, f);
  fputc('\n', f);
  free(s);
  cJSON_Delete(obj);
  if (ferror(f)) sn_fatal("%s: write failed: %s", path, strerror(errno));
}

// Each output is written to "<path>.tmp" and renamed into place when complete, train.jsonl last:
// an interrupted run never leaves a train.jsonl that looks finished (sn_default_run skips the
// build when it exists).
static FILE *open_out(char *tmp_path, size_t cap, const char *dir, const char *name) {
  snprintf(tmp_path, cap, "%s/%s.tmp", dir, name);
  return fopenCheck(tmp_path, "w");
}

static void close_out(FILE *f, char *tmp_path) {
  fcloseCheck(f, tmp_path);
  char final_path[SN_PATH_MAX];
  snprintf(final_path, sizeof final_path, "%.*s", (int)(strlen(tmp_path) - strlen(".tmp")), tmp_path);
  if (rename(tmp_path, final_path) != 0) sn_fatal("rename %s → %s: %s", tmp_path, final_path, strerror(errno));
}

typedef struct {
  int documents, dropped_duplicates, excluded_test;
  size_t chars;  // bytes of UTF-8 text
} pretrain_stats;

// pretrain.jsonl: each training package's short and long description as one document, in
// package order; test packages excluded; exact duplicates (whitespace collapsed) kept once.
static void write_pretrain(const options *o, const pair *P, int n, const char *is_test, pretrain_stats *ps) {
  memset(ps, 0, sizeof *ps);
  char path[SN_PATH_MAX];
  FILE *f = open_out(path, sizeof path, o->out, "pretrain.jsonl");
  sn_id_map seen;
  sn_id_map_init(&seen, (size_t)n);
  char **keys = callocCheck((size_t)n, sizeof *keys);  // the map borrows them
  for (int i = 0; i < n; i++) {
    if (is_test[i]) {
      ps->excluded_test++;
      continue;
    }
    size_t len = strlen(P[i].short_desc) + 1 + strlen(P[i].long_desc);
    char *text = mallocCheck(len + 1);
    snprintf(text, len + 1, "%s\n%s", P[i].short_desc, P[i].long_desc);
    keys[i] = normalized_text(text, 0);
    if (sn_id_map_put(&seen, keys[i], i) >= 0) {
      ps->dropped_duplicates++;
    } else {
      cJSON *j = cJSON_CreateObject();
      cJSON_AddStringToObject(j, "text", text);
      write_json_line(f, j, path);
      ps->documents++;
      ps->chars += len;
    }
    free(text);
  }
  close_out(f, path);
  sn_id_map_free(&seen);
  for (int i = 0; i < n; i++) free(keys[i]);
  free(keys);
}

static int cmp_int_by_package(const void *a, const void *b, void *items) {
  const pair *p = items;
  return strcmp(p[*(const int *)a].package, p[*(const int *)b].package);
}

int main(int argc, char **argv) {
  options o;
  parse_args(argc, argv, &o);
  int nfiles;
  char **files = find_translation_files(o.apt_lists, &nfiles);
  pair_list pairs = {0};
  for (int i = 0; i < nfiles; i++) parse_translation(files[i], &pairs);
  int parsed = pairs.n;
  clean_stats cs;
  clean_pairs(&pairs, &o, &cs);
  const pair *P = pairs.items;

  // Short descriptions that occur once (normalized): the only candidates for test queries.
  sn_id_map key_count;
  sn_id_map_init(&key_count, (size_t)pairs.n);
  char **keys = mallocCheck((size_t)pairs.n * sizeof *keys);
  int *ambiguous = callocCheck((size_t)pairs.n, sizeof *ambiguous);
  for (int i = 0; i < pairs.n; i++) {
    keys[i] = normalized_text(P[i].short_desc, 1);  // short descriptions: case ignored too
    int32_t prev = sn_id_map_put(&key_count, keys[i], i);
    if (prev >= 0) ambiguous[prev] = ambiguous[i] = 1;
  }
  int *candidates = mallocCheck((size_t)pairs.n * sizeof *candidates), ncand = 0;
  for (int i = 0; i < pairs.n; i++)
    if (!ambiguous[i]) candidates[ncand++] = i;

  int ntest = SN_MIN(o.test_queries, ncand);
  if (ntest < o.test_queries)
    sn_warn("only %d packages have a unique short description; --test-queries %d lowered", ncand, o.test_queries);
  if (pairs.n - ntest < 1)
    sn_bad_input("%s: %d usable descriptions leave nothing to train on after %d test queries "
                 "(expected more packages, or a smaller --test-queries)", o.apt_lists, pairs.n, ntest);
  uint64_t rng = o.seed;
  shuffle(candidates, ncand, &rng);
  char *is_test = callocCheck((size_t)pairs.n, 1);
  for (int i = 0; i < ntest; i++) is_test[candidates[i]] = 1;

  // Training pairs in a seeded order; distractors are the first of them up to --corpus-max.
  int *train = mallocCheck((size_t)pairs.n * sizeof *train), ntrain = 0;
  for (int i = 0; i < pairs.n; i++)
    if (!is_test[i]) train[ntrain++] = i;
  shuffle(train, ntrain, &rng);
  int ndistract = SN_MAX(0, SN_MIN(ntrain, o.corpus_max - ntest));
  int ncorpus = ntest + ndistract;
  int *corpus = mallocCheck((size_t)ncorpus * sizeof *corpus);
  for (int i = 0; i < ntest; i++) corpus[i] = candidates[i];
  for (int i = 0; i < ndistract; i++) corpus[ntest + i] = train[i];
  // name order, so positives are not all at the front
  qsort_r(corpus, (size_t)ncorpus, sizeof *corpus, cmp_int_by_package, (void *)P);
  int *test_q = mallocCheck((size_t)ntest * sizeof *test_q);
  memcpy(test_q, candidates, (size_t)ntest * sizeof *test_q);
  qsort_r(test_q, (size_t)ntest, sizeof *test_q, cmp_int_by_package, (void *)P);

  char dir[SN_PATH_MAX], path[SN_PATH_MAX];
  snprintf(dir, sizeof dir, "%s/test/qrels", o.out);
  if (sn_mkdir_p(dir)) sn_fatal("%s: cannot create: %s", dir, strerror(errno));

  FILE *f = open_out(path, sizeof path, o.out, "test/corpus.jsonl");
  for (int i = 0; i < ncorpus; i++) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "_id", P[corpus[i]].package);
    cJSON_AddStringToObject(j, "title", "");
    cJSON_AddStringToObject(j, "text", P[corpus[i]].long_desc);
    write_json_line(f, j, path);
  }
  close_out(f, path);

  f = open_out(path, sizeof path, o.out, "test/queries.jsonl");
  for (int i = 0; i < ntest; i++) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "_id", P[test_q[i]].package);
    cJSON_AddStringToObject(j, "text", P[test_q[i]].short_desc);
    write_json_line(f, j, path);
  }
  close_out(f, path);

  f = open_out(path, sizeof path, o.out, "test/qrels/test.tsv");
  fprintf(f, "query-id\tcorpus-id\tscore\n");
  for (int i = 0; i < ntest; i++) fprintf(f, "%s\t%s\t1\n", P[test_q[i]].package, P[test_q[i]].package);
  close_out(f, path);

  pretrain_stats ps;
  write_pretrain(&o, P, pairs.n, is_test, &ps);

  cJSON *st = cJSON_CreateObject();
  cJSON_AddStringToObject(st, "apt_lists", o.apt_lists);
  cJSON_AddNumberToObject(st, "translation_files", nfiles);
  cJSON_AddNumberToObject(st, "descriptions_parsed", parsed);
  cJSON_AddNumberToObject(st, "dropped_same_package", cs.dropped_same_package);
  cJSON_AddNumberToObject(st, "dropped_short_doc", cs.dropped_short_doc);
  cJSON_AddNumberToObject(st, "dropped_same_doc", cs.dropped_same_doc);
  cJSON_AddNumberToObject(st, "truncated_docs", cs.truncated);
  cJSON_AddNumberToObject(st, "pairs", pairs.n);
  cJSON_AddNumberToObject(st, "unique_short_descriptions", ncand);
  cJSON_AddNumberToObject(st, "train_pairs", ntrain);
  cJSON_AddNumberToObject(st, "test_queries", ntest);
  cJSON_AddNumberToObject(st, "test_corpus", ncorpus);
  cJSON_AddNumberToObject(st, "pretrain_documents", ps.documents);
  cJSON_AddNumberToObject(st, "pretrain_chars", (double)ps.chars);
  cJSON_AddNumberToObject(st, "pretrain_dropped_duplicates", ps.dropped_duplicates);
  cJSON_AddNumberToObject(st, "pretrain_excluded_test", ps.excluded_test);
  cJSON_AddNumberToObject(st, "seed", (double)o.seed);
  cJSON_AddNumberToObject(st, "min_doc_chars", o.min_doc_chars);
  cJSON_AddNumberToObject(st, "max_doc_chars", o.max_doc_chars);
  char *text = cJSON_Print(st);
  size_t text_len = strlen(text);
  text = reallocCheck(text, text_len + 2);
  text[text_len++] = '\n';
  snprintf(path, sizeof path, "%s/stats.json", o.out);
  if (sn_write_file_atomic(path, text, text_len)) sn_fatal("%s: cannot write: %s", path, strerror(errno));
  free(text);
  cJSON_Delete(st);

  f = open_out(path, sizeof path, o.out, "train.jsonl");
  for (int i = 0; i < ntrain; i++) {
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "query", P[train[i]].short_desc);
    cJSON *pos = cJSON_AddArrayToObject(j, "pos");
    cJSON_AddItemToArray(pos, cJSON_CreateString(P[train[i]].long_desc));
    write_json_line(f, j, path);
  }
  close_out(f, path);

  sn_log("%d descriptions parsed from %d file(s); %d pairs after dedup and length limits "
         "(dropped: %d repeated packages, %d too short, %d identical long descriptions; %d truncated)",
         parsed, nfiles, pairs.n, cs.dropped_same_package, cs.dropped_short_doc, cs.dropped_same_doc, cs.truncated);
  char shown[PATH_MAX];
  snprintf(shown, sizeof shown, "%s", o.out);
  sn_log("wrote %s: %d training pairs, test: %d queries over a corpus of %d; pretraining text: %d "
         "documents, %zu bytes (%d duplicates dropped, %d test packages left out)", sn_path_normalize(shown),
         ntrain, ntest, ncorpus, ps.documents, ps.chars, ps.dropped_duplicates, ps.excluded_test);

  for (int i = 0; i < pairs.n; i++) {
    free_pair(&pairs.items[i]);
    free(keys[i]);
  }
  for (int i = 0; i < nfiles; i++) free(files[i]);
  free(files);
  free(pairs.items);
  free(keys);
  free(ambiguous);
  free(candidates);
  free(is_test);
  free(train);
  free(corpus);
  free(test_q);
  sn_id_map_free(&key_count);
  return 0;
}
