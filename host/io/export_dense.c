// A stage-2 student's projection as sentence-transformers' Dense module (2_Dense): kept out of
// model.safetensors so transformers' BertModel loads that file without unexpected tensors.
#define _GNU_SOURCE
#include <cJSON.h>
#include <errno.h>
#include <string.h>

#include "common.h"
#include "export_internal.h"

#define PROJECTION_PREFIX "projection."
#define IDENTITY_ACTIVATION "torch.nn.modules.linear.Identity"  // y = W x + b, nothing after

int sn_export_is_dense_tensor(const char *name) { return strncmp(name, PROJECTION_PREFIX, strlen(PROJECTION_PREFIX)) == 0; }

const char *sn_export_dense_name(const char *tensor) {
  return strcmp(tensor, PROJECTION_PREFIX "bias") == 0 ? SN_EXPORT_DENSE_BIAS : SN_EXPORT_DENSE_WEIGHT;
}

int sn_export_write_dense(const char *dir, int in, int out, sn_dtype dtype, const float *weight,
                          const float *bias, char *err, size_t errlen) {
  char sub[SN_EXPORT_PATH_LEN], path[SN_EXPORT_PATH_LEN];
  if (sn_export_join(sub, sizeof sub, dir, SN_EXPORT_DENSE_DIR, err, errlen) != 0) return -1;
  if (sn_mkdir_p(sub) != 0) return sn_errorf(err, errlen, "%s: cannot create folder: %s", sub, strerror(errno));
  cJSON *cfg = cJSON_CreateObject();
  cJSON_AddNumberToObject(cfg, "in_features", in);
  cJSON_AddNumberToObject(cfg, "out_features", out);
  cJSON_AddTrueToObject(cfg, "bias");
  cJSON_AddStringToObject(cfg, "activation_function", IDENTITY_ACTIVATION);
  int rc = sn_export_write_json(sub, "config.json", cfg, err, errlen);
  cJSON_Delete(cfg);
  if (rc != 0) return -1;
  const int64_t w_shape[2] = {out, in}, b_shape[1] = {out};
  sn_st_writer *w = sn_st_writer_new();
  sn_st_writer_metadata(w, "format", "pt");
  sn_st_writer_add(w, SN_EXPORT_DENSE_WEIGHT, dtype, 2, w_shape, weight);
  sn_st_writer_add(w, SN_EXPORT_DENSE_BIAS, dtype, 1, b_shape, bias);
  if (sn_export_join(path, sizeof path, sub, "model.safetensors", err, errlen) != 0) rc = -1;
  else rc = sn_st_writer_write(w, path, err, errlen);
  sn_st_writer_free(w);
  return rc;
}
