// sn_tokenize --tokenizer FILE_OR_DIR [--input FILE] [--no-special]
// Reads texts, one per line: a line that is a JSON object with a string "text" is that text
// (JSONL), any other line is the text itself (its bytes as they are, newline removed). Writes one
// JSON array of ids per line. --no-special: add_special_tokens=False (no BOS/EOS/CLS/SEP added;
// special tokens written in the text are still recognised). A JSONL text holding "\u0000" is cut
// there (cJSON strings end at NUL; a warning says so): pass such texts as plain lines.
#define _GNU_SOURCE  // memmem
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common.h"
#include "tokenizer.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: sn_tokenize --tokenizer FILE_OR_DIR [--input FILE] [--no-special]\n"
          "Writes one JSON array of token ids per input line.\n"
          "  --tokenizer PATH  tokenizer.json, or a model folder holding one\n"
          "  --input FILE      texts, one per line: {\"text\": ...} JSONL or plain lines (default stdin)\n"
          "  --no-special      add no BOS/EOS/CLS/SEP (add_special_tokens=False)\n"
          "  --help, -h        this text\n"
          "  --version         the scalingnote version\n");
}

// If line is {"text": "..."}, returns the parsed object (text in *text, *len); else NULL.
static cJSON *parse_jsonl(const char *line, size_t n, const char **text, size_t *len) {
  size_t i = 0;
  while (i < n && (line[i] == ' ' || line[i] == '\t')) i++;
  if (i == n || line[i] != '{') return NULL;
  cJSON *obj = cJSON_ParseWithLength(line, n);
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "text");
  if (!cJSON_IsString(t)) { cJSON_Delete(obj); return NULL; }
  *text = t->valuestring;
  *len = strlen(t->valuestring);
  return obj;
}

int main(int argc, char **argv) {
  const char *tokenizer_path = NULL, *input = NULL;
  int add_special = 1;
  sn_cli_init("sn_tokenize", usage);
  for (int i = 1; i < argc; i++) {
    sn_cli_std_flag(argv[i]);
    if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) tokenizer_path = argv[++i];
    else if (strcmp(argv[i], "--input") == 0 && i + 1 < argc) input = argv[++i];
    else if (strcmp(argv[i], "--no-special") == 0) add_special = 0;
    else sn_usage_error("unknown or incomplete argument '%s'", argv[i]);
  }
  if (!tokenizer_path) sn_usage_error("--tokenizer is required");
  sn_flag_path_kind("--input", input, 0);
  char err[1024];
  sn_tokenizer *tok = sn_tokenizer_load(tokenizer_path, err, sizeof(err));
  if (!tok) { fprintf(stderr, "error: %s\n", err); return SN_EXIT_BAD_INPUT; }
  FILE *in = stdin;
  if (input && !(in = fopen(input, "rb"))) {
    fprintf(stderr, "error: %s: cannot open\n", input);
    return SN_EXIT_BAD_INPUT;
  }
  char *line = NULL;
  size_t line_cap = 0, cap = 0, n = 0;
  int32_t *ids = NULL;
  ssize_t got;
  size_t line_no = 0;
  char *out = NULL;
  size_t out_cap = 0;
  while ((got = getline(&line, &line_cap, in)) >= 0) {
    line_no++;
    size_t len = (size_t)got;
    if (len && line[len - 1] == '\n') len--;
    if (len && line[len - 1] == '\r') len--;
    const char *text = line;
    size_t text_len = len;
    cJSON *obj = parse_jsonl(line, len, &text, &text_len);
    if (obj && memmem(line, len, "\\u0000", 6))
      fprintf(stderr, "warning: %s:%zu: the text holds \\u0000; it is cut there\n", input ? input : "<stdin>", line_no);
    n = 0;
    sn_tokenizer_encode(tok, text, text_len, add_special, &ids, &n, &cap);
    cJSON_Delete(obj);
    // "[" + up to 11 chars and a comma per id + "]\n"
    size_t need = 12 * n + 4;
    if (need > out_cap) out = reallocCheck(out, out_cap = need);
    char *p = out;
    *p++ = '[';
    for (size_t i = 0; i < n; i++) p += sprintf(p, i ? ",%d" : "%d", ids[i]);
    *p++ = ']';
    *p++ = '\n';
    fwriteCheck(out, 1, (size_t)(p - out), stdout, "<stdout>");
  }
  if (in != stdin) fclose(in);
  free(line); free(ids); free(out);
  sn_tokenizer_free(tok);
  return 0;
}
