// The encoder handle behind include/scalingnote/encoder.h, shared by the files of host/serve/.
#pragma once
#include <pthread.h>

#include "eval.h"
#include "model.h"
#include "scalingnote/encoder.h"
#include "tokenizer.h"

struct sn_encoder {
  pthread_mutex_t lock;          // one call at a time per handle
  const sn_ops *ops;
  void *context;                 // the handle's execution context (its own CUDA stream), NULL on the CPU
  sn_model *model;
  sn_tokenizer *tok;             // NULL: the folder has no tokenizer.json (ids only)
  sn_embedder *embedder;
  int threads;                   // OpenMP threads of a call (0: the caller's setting)
  char error[SN_ENCODER_ERR_LEN];  // the last failed call's message, "" after a success
};

// What an open resolves from the options, the export and the architecture (encoder_settings.c).
typedef struct {
  const sn_ops *ops;
  sn_embedder_opts embed;  // template_str owned by `prompt`
  char *prompt;
} sn_encoder_settings;

// The backend of opts->device: SN_OK, or SN_ERR_ARGUMENT / SN_ERR_DEVICE with err.
sn_status sn_encoder_pick_backend(const char *device, const sn_ops **ops, char *err, size_t errlen);
// The embedding settings of m loaded from dir: the options where set, else the export's, else the
// architecture's (embed_defaults.h, as sn_embed). SN_OK, or an error status with err.
sn_status sn_encoder_resolve(const char *dir, const sn_model *m, const sn_encoder_options *o,
                             sn_encoder_settings *out, char *err, size_t errlen);
void sn_encoder_settings_free(sn_encoder_settings *s);
