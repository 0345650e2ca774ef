// libFuzzer target: the run config as sn_train reads it, a JSON file plus `--set key=value`
// overrides. The input is split at NUL bytes: the first piece is the file's text (empty: no
// file), each further piece one override. Whatever is accepted must come back unchanged through
// the resolved dump (parse(dump(cfg)) == cfg, same hash); nothing may crash, leak or overflow.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "run_config.h"

#define ERR_LEN 1024
#define MAX_OVERRIDES 8

static void check_round_trip(const sn_run_config *cfg) {
  char *json = sn_run_config_to_json(cfg);
  sn_run_config *back = malloc(sizeof *back);
  char err[ERR_LEN];
  if (sn_run_config_parse(back, json, NULL, NULL, 0, err, sizeof err) != 0) abort();
  char *again = sn_run_config_to_json(back);
  if (strcmp(json, again) != 0 || sn_run_config_hash(cfg) != sn_run_config_hash(back)) abort();
  free(again);
  free(json);
  free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);  // NUL-terminated pieces
  memcpy(text, data, size);
  text[size] = '\0';
  const char *overrides[MAX_OVERRIDES];
  int n_overrides = 0;
  for (char *p = text; n_overrides < MAX_OVERRIDES && (p = memchr(p, '\0', (size_t)(text + size - p))) != NULL;)
    overrides[n_overrides++] = ++p;
  sn_run_config *cfg = malloc(sizeof *cfg);
  char err[ERR_LEN];
  if (sn_run_config_parse(cfg, text[0] ? text : NULL, NULL, overrides, n_overrides, err, sizeof err) == 0)
    check_round_trip(cfg);
  free(cfg);
  free(text);
  return 0;
}
