// An exported tower's embedding settings: the export's side files, else the architecture's.
#include <string.h>

#include "common.h"
#include "embed_defaults.h"
#include "export.h"

int sn_embed_defaults_read(const char *dir, const sn_model_config *cfg, sn_embed_defaults *out, char *err,
                           size_t errlen) {
  memset(out, 0, sizeof *out);
  sn_export_settings st;
  if (sn_export_read_try(dir, NULL, &st, err, errlen) != 0) return -1;
  out->pooling = sn_arch_is_decoder(cfg->arch) ? SN_POOL_LAST : SN_POOL_FIRST;
  if (st.pooling[0] && sn_pooling_parse(st.pooling, &out->pooling) == 0) out->pooling_from_export = 1;
  out->normalize = st.normalize != 0;
  out->max_len_from_export = st.max_seq_length > 0;
  out->max_len = st.max_seq_length > 0 ? st.max_seq_length
                 : cfg->max_positions > 0 ? cfg->max_positions : SN_DEFAULT_TEXT_MAX_LEN;
  out->prompt = st.prompt;  // handed over
  return 0;
}

void sn_embed_defaults_free(sn_embed_defaults *d) {
  free(d->prompt);
  d->prompt = NULL;
}
