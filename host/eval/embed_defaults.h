// What an exported tower embeds with when the caller sets nothing: its sentence-transformers files
// (export_read.c) completed by the architecture's defaults. sn_embed and the encoder library
// (host/serve/) both resolve their settings here, so a folder embeds the same through either.
#pragma once
#include <stddef.h>

#include "model.h"

// Token limit of a text for towers without a position table (RoPE decoders that state none).
#define SN_DEFAULT_TEXT_MAX_LEN 8192

typedef struct {
  sn_pooling pooling;  // the export's 1_Pooling, else last for decoders, cls for encoders
  int pooling_from_export;
  int normalize;       // 1 unless the export's modules.json has no Normalize module
  int max_len;         // tokens of a text, specials included: the export's max_seq_length, else
  int max_len_from_export;  //   the tower's max_position_embeddings, else SN_DEFAULT_TEXT_MAX_LEN
  char *prompt;        // the template the tower was trained with (its role's), NULL: "{text}"
} sn_embed_defaults;

// Reads dir's side files for cfg's tower. 0, or -1 with err naming the malformed file and key
// (never exits). Free with sn_embed_defaults_free.
int sn_embed_defaults_read(const char *dir, const sn_model_config *cfg, sn_embed_defaults *out, char *err,
                           size_t errlen);
void sn_embed_defaults_free(sn_embed_defaults *d);
