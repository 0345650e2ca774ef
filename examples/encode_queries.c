// encode_queries: the encoder library's example. Embeds each line of stdin (or each argument after
// the folder) with an exported tower and prints, per text, its norm and first values.
//   encode_queries MODEL_DIR [--device cpu|cuda] [TEXT ...]   (no TEXT: one text per stdin line)
// Build against an installed package:
//   cc encode_queries.c $(pkg-config --cflags --libs scalingnote) -lm -o encode_queries
// Exit status: 0, 1 when the library reports an error (its message on stderr), 2 on a usage error.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <scalingnote/encoder.h>

#define MAX_LINE 65536
#define SHOWN_VALUES 4  // leading values printed per embedding

static void usage(FILE *f) {
  fprintf(f, "usage: encode_queries MODEL_DIR [--device cpu|cuda] [TEXT ...]\n"
             "  MODEL_DIR       an exported tower (sn_train's run/final/query_tower, student, ...)\n"
             "  --device DEV    cpu | cuda (default cpu)\n"
             "  TEXT ...        texts to embed (default: one per line of stdin)\n");
}

// The texts: the arguments, else stdin's lines (caller frees the array and, from stdin, the lines).
static char **read_texts(int argc, char **argv, int first, int *n, int *owned) {
  *owned = first >= argc;
  if (!*owned) {
    *n = argc - first;
    return argv + first;
  }
  char **texts = NULL, line[MAX_LINE];
  *n = 0;
  while (fgets(line, sizeof line, stdin)) {
    line[strcspn(line, "\r\n")] = '\0';
    texts = realloc(texts, (size_t)(*n + 1) * sizeof *texts);
    texts[(*n)++] = strdup(line);
  }
  return texts;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  sn_encoder_options opts;
  sn_encoder_options_init(&opts);
  int first = 2;
  if (argc > 3 && strcmp(argv[2], "--device") == 0) {
    opts.device = argv[3];
    first = 4;
  }
  sn_encoder *enc;
  char err[SN_ENCODER_ERR_LEN];
  sn_status st = sn_encoder_open(argv[1], &opts, &enc, err, sizeof err);
  if (st != SN_OK) {
    fprintf(stderr, "encode_queries: %s error: %s\n", sn_status_name(st), err);
    return 1;
  }
  int n, owned;
  char **texts = read_texts(argc, argv, first, &n, &owned);
  const int dim = sn_encoder_dim(enc);
  float *out = malloc((size_t)(n > 0 ? n : 1) * dim * sizeof *out);
  st = sn_encode(enc, (const char *const *)texts, n, out);
  if (st != SN_OK) fprintf(stderr, "encode_queries: %s error: %s\n", sn_status_name(st), sn_encoder_last_error(enc));
  for (int i = 0; st == SN_OK && i < n; i++) {
    const float *row = out + (size_t)i * dim;
    double norm = 0;
    for (int k = 0; k < dim; k++) norm += (double)row[k] * row[k];
    printf("%d\tdim %d\tnorm %.6f\t", i, dim, sqrt(norm));
    for (int k = 0; k < dim && k < SHOWN_VALUES; k++) printf("%s%.6f", k ? " " : "", row[k]);
    printf("\n");
  }
  free(out);
  if (owned) {
    for (int i = 0; i < n; i++) free(texts[i]);
    free(texts);
  }
  sn_encoder_close(enc);
  return st == SN_OK ? 0 : 1;
}
