// Defaults of the embedding programs from a tower's export (eval.h).
#include <stdio.h>
#include <string.h>

#include "eval.h"

void sn_eval_apply_export(const char *dir, const char *role, const char **prompt, int *pooling, int *max_len,
                          sn_export_settings *exported) {
  sn_eval_opts defaults;
  sn_eval_opts_default(&defaults);
  sn_export_read(dir, role, exported);
  char what[4096 + 64];
  snprintf(what, sizeof what, "%s/1_Pooling/config.json", dir);
  if (!*prompt) *prompt = exported->prompt;
  if (*pooling < 0 && exported->pooling[0]) *pooling = sn_pooling_from_name(exported->pooling, what);
  if (!*max_len) *max_len = exported->max_seq_length;
  if (!*max_len) *max_len = strcmp(role, SN_EXPORT_ROLE_QUERY) == 0 ? defaults.max_query_len : defaults.max_doc_len;
}
