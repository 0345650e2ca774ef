// The sentence-transformers side of an exported tower: modules.json (Transformer, Pooling, the
// projection as Dense, Normalize), the pooling config, the prompts the tower was trained with and
// its max_seq_length, so SentenceTransformer(dir) computes sn_embed's embeddings.
#define _GNU_SOURCE
#include <cJSON.h>
#include <errno.h>
#include <string.h>

#include "common.h"
#include "export.h"
#include "export_internal.h"

#define PLACEHOLDER_TEXT "{text}"
#define POOLING_DIR "1_Pooling"
#define NORMALIZE_DIR_WITH_DENSE "3_Normalize"
#define NORMALIZE_DIR "2_Normalize"
#define ST_MODULE_PREFIX "sentence_transformers.models."

int sn_export_join(char *out, size_t size, const char *dir, const char *name, char *err, size_t errlen) {
  if (snprintf(out, size, "%s/%s", dir, name) >= (int)size) return sn_errorf(err, errlen, "%s: path too long", dir);
  return 0;
}

int sn_export_write_json(const char *dir, const char *name, const cJSON *root, char *err, size_t errlen) {
  char path[SN_EXPORT_PATH_LEN];
  if (sn_export_join(path, sizeof path, dir, name, err, errlen) != 0) return -1;
  char *text = cJSON_Print(root);
  if (!text) sn_fatal("out of memory printing %s", path);
  int rc = sn_write_file_atomic(path, text, strlen(text));
  cJSON_free(text);
  if (rc != 0) return sn_errorf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
  return 0;
}

static int make_subdir(const char *dir, const char *name, char *out, size_t size, char *err, size_t errlen) {
  if (sn_export_join(out, size, dir, name, err, errlen) != 0) return -1;
  if (sn_mkdir_p(out) != 0) return sn_errorf(err, errlen, "%s: cannot create folder: %s", out, strerror(errno));
  return 0;
}

static void add_module(cJSON *list, const char *path, const char *type) {
  cJSON *m = cJSON_CreateObject();
  int idx = cJSON_GetArraySize(list);
  char name[16];
  snprintf(name, sizeof name, "%d", idx);
  cJSON_AddNumberToObject(m, "idx", idx);
  cJSON_AddStringToObject(m, "name", name);
  cJSON_AddStringToObject(m, "path", path);
  char full[96];
  snprintf(full, sizeof full, ST_MODULE_PREFIX "%s", type);
  cJSON_AddStringToObject(m, "type", full);
  cJSON_AddItemToArray(list, m);
}

// sentence-transformers' Pooling: exactly one mode on, the prompt tokens included (training pools
// over the whole templated sequence).
static int write_pooling(const char *dir, const sn_export_info *info, char *err, size_t errlen) {
  char sub[SN_EXPORT_PATH_LEN];
  if (make_subdir(dir, POOLING_DIR, sub, sizeof sub, err, errlen) != 0) return -1;
  cJSON *root = cJSON_CreateObject();
  cJSON_AddNumberToObject(root, "word_embedding_dimension", info->hidden);
  cJSON_AddBoolToObject(root, "pooling_mode_cls_token", strcmp(info->pooling, "cls") == 0);
  cJSON_AddBoolToObject(root, "pooling_mode_mean_tokens", strcmp(info->pooling, "mean") == 0);
  cJSON_AddBoolToObject(root, "pooling_mode_max_tokens", 0);
  cJSON_AddBoolToObject(root, "pooling_mode_mean_sqrt_len_tokens", 0);
  cJSON_AddBoolToObject(root, "pooling_mode_weightedmean_tokens", 0);
  cJSON_AddBoolToObject(root, "pooling_mode_lasttoken", strcmp(info->pooling, "last") == 0);
  cJSON_AddBoolToObject(root, "include_prompt", 1);
  int rc = sn_export_write_json(sub, "config.json", root, err, errlen);
  cJSON_Delete(root);
  return rc;
}

static const char *template_or_default(const char *tpl) { return tpl && tpl[0] ? tpl : PLACEHOLDER_TEXT; }

static int write_st_config(const char *dir, const sn_export_info *info, char *err, size_t errlen) {
  cJSON *root = cJSON_CreateObject();
  cJSON *prompts = cJSON_AddObjectToObject(root, "prompts");
  cJSON_AddStringToObject(prompts, SN_EXPORT_ROLE_QUERY, info->query_prefix);
  cJSON_AddStringToObject(prompts, SN_EXPORT_ROLE_DOCUMENT, info->doc_prefix);
  cJSON_AddStringToObject(root, SN_EXPORT_ROLE_KEY, info->role);
  cJSON_AddStringToObject(root, "similarity_fn_name", "cosine");
  cJSON *templates = cJSON_AddObjectToObject(root, SN_EXPORT_TEMPLATES_KEY);
  cJSON_AddStringToObject(templates, SN_EXPORT_ROLE_QUERY, template_or_default(info->query_prompt));
  cJSON_AddStringToObject(templates, SN_EXPORT_ROLE_DOCUMENT, template_or_default(info->doc_prompt));
  int rc = sn_export_write_json(dir, SN_EXPORT_ST_CONFIG, root, err, errlen);
  cJSON_Delete(root);
  if (rc != 0) return -1;
  root = cJSON_CreateObject();
  cJSON_AddNumberToObject(root, "max_seq_length", info->max_seq_length);
  cJSON_AddBoolToObject(root, "do_lower_case", 0);
  rc = sn_export_write_json(dir, SN_EXPORT_BERT_CONFIG, root, err, errlen);
  cJSON_Delete(root);
  return rc;
}

int sn_export_write(const char *dir, const sn_export_info *info, char *err, size_t errlen) {
  cJSON *modules = cJSON_CreateArray();
  add_module(modules, "", "Transformer");
  add_module(modules, POOLING_DIR, "Pooling");
  if (info->proj_dim > 0) add_module(modules, SN_EXPORT_DENSE_DIR, "Dense");
  const char *norm_dir = info->proj_dim > 0 ? NORMALIZE_DIR_WITH_DENSE : NORMALIZE_DIR;
  add_module(modules, norm_dir, "Normalize");
  int rc = sn_export_write_json(dir, SN_EXPORT_MODULES, modules, err, errlen);
  cJSON_Delete(modules);
  char sub[SN_EXPORT_PATH_LEN];
  if (rc != 0 || write_pooling(dir, info, err, errlen) != 0 ||
      make_subdir(dir, norm_dir, sub, sizeof sub, err, errlen) != 0 ||
      write_st_config(dir, info, err, errlen) != 0)
    return -1;
  return sn_export_write_tokenizer(dir, info, err, errlen);
}
