// Options → the settings of one open: the backend, and the prompt, pooling, normalisation and
// length, each from the options when set, else from the export (embed_defaults.h, sn_embed's
// resolution), else from the architecture.
#include <string.h>

#include "common.h"
#include "embed_defaults.h"
#include "encoder_internal.h"

#define DEFAULT_MAX_BATCH 32  // sn_embed's --batch default
#define OPTION_LIMIT (1 << 30)  // max_batch, max_length, threads: beyond any real use

void sn_encoder_options_init(sn_encoder_options *o) {
  if (!o) return;
  memset(o, 0, sizeof *o);
  o->device = "cpu";
  o->normalize = -1;
  o->graphs = 1;
}

sn_status sn_encoder_pick_backend(const char *device, const sn_ops **ops, char *err, size_t errlen) {
  if (!device || strcmp(device, "cpu") == 0) {
    *ops = sn_ops_cpu();
    return SN_OK;
  }
  if (strcmp(device, "cuda") != 0) {
    sn_errorf(err, errlen, "device '%s' is unknown (valid: cpu, cuda)", device);
    return SN_ERR_ARGUMENT;
  }
  const char *why_not = "unknown reason";
  *ops = sn_ops_cuda(&why_not);
  if (*ops) return SN_OK;
  sn_errorf(err, errlen, "device 'cuda' is not available: %s (use device 'cpu')", why_not);
  return SN_ERR_DEVICE;
}

static sn_status check_counts(const sn_encoder_options *o, char *err, size_t errlen) {
  const struct {
    const char *name;
    int value;
  } counts[] = {{"max_batch", o->max_batch}, {"max_length", o->max_length}, {"threads", o->threads}};
  for (size_t i = 0; i < SN_ARRAY_LEN(counts); i++)
    if (counts[i].value < 0 || counts[i].value > OPTION_LIMIT) {
      sn_errorf(err, errlen, "option %s = %d: expected 0 (the default) to %d", counts[i].name, counts[i].value,
                OPTION_LIMIT);
      return SN_ERR_ARGUMENT;
    }
  if (o->normalize < -1 || o->normalize > 1) {
    sn_errorf(err, errlen, "option normalize = %d: expected -1 (the export's), 0 or 1", o->normalize);
    return SN_ERR_ARGUMENT;
  }
  return SN_OK;
}

sn_status sn_encoder_resolve(const char *dir, const sn_model *m, const sn_encoder_options *o,
                             sn_encoder_settings *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  sn_status st = check_counts(o, err, errlen);
  if (st != SN_OK) return st;
  sn_pooling pooling;
  if (o->pooling && sn_pooling_parse(o->pooling, &pooling) != 0) {
    sn_errorf(err, errlen, "option pooling = '%s': expected last, mean or cls", o->pooling);
    return SN_ERR_ARGUMENT;
  }
  sn_embed_defaults d;
  if (sn_embed_defaults_read(dir, &m->cfg, &d, err, errlen) != 0) return SN_ERR_MODEL;
  const int max_len = o->max_length ? o->max_length : d.max_len;
  if (m->cfg.max_positions > 0 && max_len > m->cfg.max_positions) {
    sn_errorf(err, errlen, "max_length %d%s is more than the tower's %d positions (max_position_embeddings)",
              max_len, o->max_length ? "" : " (the export's max_seq_length)", m->cfg.max_positions);
    sn_embed_defaults_free(&d);
    return o->max_length ? SN_ERR_ARGUMENT : SN_ERR_MODEL;
  }
  out->prompt = o->prompt ? strdupCheck(o->prompt) : d.prompt;
  if (o->prompt) free(d.prompt);
  out->embed = (sn_embedder_opts){.template_str = out->prompt,
                                  .max_len = max_len,
                                  .batch = o->max_batch ? o->max_batch : DEFAULT_MAX_BATCH,
                                  .pooling = o->pooling ? (int)pooling : (int)d.pooling,
                                  .normalize = o->normalize >= 0 ? o->normalize : d.normalize,
                                  .graphs = o->graphs != 0};
  return SN_OK;
}

void sn_encoder_settings_free(sn_encoder_settings *s) {
  free(s->prompt);
  s->prompt = NULL;
}

const char *sn_status_name(sn_status s) {
  switch (s) {
    case SN_OK: return "ok";
    case SN_ERR_ARGUMENT: return "argument";
    case SN_ERR_MODEL: return "model";
    case SN_ERR_DEVICE: return "device";
    case SN_ERR_INPUT: return "input";
  }
  return "unknown";
}

const char *sn_encoder_version(void) { return sn_version(); }
