// sn_embed's and sn_eval's defaults from an exported tower's sentence-transformers files: the
// pooling, whether a Normalize module follows, the prompt of a role and max_seq_length.
#define _GNU_SOURCE
#include <cJSON.h>
#include <errno.h>
#include <string.h>

#include "common.h"
#include "export_internal.h"

#define PLACEHOLDER_TEXT "{text}"

// dir/name parsed into *root (NULL when the file does not exist). 0, or -1 with err when it cannot be
// read or is not a JSON value.
static int load(const char *dir, const char *name, char *path, size_t size, cJSON **root, char *err, size_t errlen) {
  *root = NULL;
  if (sn_export_join(path, size, dir, name, err, errlen) != 0) return -1;
  size_t len;
  char *text = sn_read_file(path, &len);
  if (!text) return errno == ENOENT ? 0 : sn_errorf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
  *root = cJSON_ParseWithLength(text, len);
  free(text);
  return *root ? 0 : sn_errorf(err, errlen, "%s: not valid JSON", path);
}

static const char *module_type(const cJSON *m) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(m, "type");
  if (!cJSON_IsString(t)) return "";
  const char *dot = strrchr(t->valuestring, '.');
  return dot ? dot + 1 : t->valuestring;
}

// Pooling's config: the one mode that is on.
static int read_pooling(const char *dir, const char *sub, sn_export_settings *out, char *err, size_t errlen) {
  static const char *const MODES[][2] = {
      {"pooling_mode_lasttoken", "last"}, {"pooling_mode_mean_tokens", "mean"}, {"pooling_mode_cls_token", "cls"}};
  char folder[SN_EXPORT_PATH_LEN], path[SN_EXPORT_PATH_LEN];
  if (sn_export_join(folder, sizeof folder, dir, sub, err, errlen) != 0) return -1;
  cJSON *cfg;
  if (load(folder, "config.json", path, sizeof path, &cfg, err, errlen) != 0) return -1;
  if (!cfg) return 0;
  for (size_t i = 0; i < SN_ARRAY_LEN(MODES); i++)
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, MODES[i][0]))) snprintf(out->pooling, sizeof out->pooling, "%s", MODES[i][1]);
  // Newer sentence-transformers also write the mode as one string.
  static const char *const NAMED[][2] = {{"lasttoken", "last"}, {"mean", "mean"}, {"cls", "cls"}};
  const cJSON *mode = cJSON_GetObjectItemCaseSensitive(cfg, "pooling_mode");
  for (size_t i = 0; cJSON_IsString(mode) && i < SN_ARRAY_LEN(NAMED); i++)
    if (strcmp(mode->valuestring, NAMED[i][0]) == 0) snprintf(out->pooling, sizeof out->pooling, "%s", NAMED[i][1]);
  cJSON_Delete(cfg);
  if (!out->pooling[0])
    return sn_errorf(err, errlen, "%s: no pooling mode sn supports is on (pooling_mode_lasttoken, pooling_mode_mean_tokens or "
                     "pooling_mode_cls_token, or pooling_mode lasttoken, mean or cls)", path);
  return 0;
}

static int read_modules(const char *dir, sn_export_settings *out, char *err, size_t errlen) {
  char path[SN_EXPORT_PATH_LEN];
  cJSON *mods;
  if (load(dir, SN_EXPORT_MODULES, path, sizeof path, &mods, err, errlen) != 0) return -1;
  if (!mods) return 0;
  int rc = cJSON_IsArray(mods) ? 0 : sn_errorf(err, errlen, "%s: expected an array of modules", path);
  if (rc == 0) out->normalize = 0;
  const cJSON *m;
  for (m = rc == 0 ? mods->child : NULL; m && rc == 0; m = m->next) {
    const char *type = module_type(m);
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(m, "path");
    if (strcmp(type, "Normalize") == 0) out->normalize = 1;
    if (strcmp(type, "Pooling") == 0) {
      if (!cJSON_IsString(sub)) rc = sn_errorf(err, errlen, "%s: the Pooling module has no string \"path\"", path);
      else rc = read_pooling(dir, sub->valuestring, out, err, errlen);
    }
  }
  cJSON_Delete(mods);
  return rc;
}

// obj[key] into *v: NULL when absent or null; -1 with err when it is not a string.
static int string_at(const cJSON *obj, const char *key, const char *path, const char *where, const char **v,
                     char *err, size_t errlen) {
  const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
  *v = NULL;
  if (!item || cJSON_IsNull(item)) return 0;
  if (!cJSON_IsString(item)) return sn_errorf(err, errlen, "%s: %s\"%s\" must be a string", path, where, key);
  *v = item->valuestring;
  return 0;
}

// The role's template: ours when stored, else sentence-transformers' prefix followed by {text}.
static int read_prompt(const char *dir, const char *role, sn_export_settings *out, char *err, size_t errlen) {
  char path[SN_EXPORT_PATH_LEN];
  cJSON *cfg;
  if (load(dir, SN_EXPORT_ST_CONFIG, path, sizeof path, &cfg, err, errlen) != 0) return -1;
  if (!cfg) return 0;
  const char *dflt = NULL, *tpl = NULL, *prefix = NULL;
  int rc = string_at(cfg, SN_EXPORT_ROLE_KEY, path, "", &dflt, err, errlen);
  if (rc == 0 && !dflt) rc = string_at(cfg, "default_prompt_name", path, "", &dflt, err, errlen);
  if (dflt) snprintf(out->role, sizeof out->role, "%s", dflt);
  if (!role) role = dflt;
  if (rc == 0 && role)
    rc = string_at(cJSON_GetObjectItemCaseSensitive(cfg, SN_EXPORT_TEMPLATES_KEY), role, path,
                   SN_EXPORT_TEMPLATES_KEY ".", &tpl, err, errlen);
  if (rc == 0 && role)
    rc = string_at(cJSON_GetObjectItemCaseSensitive(cfg, "prompts"), role, path, "prompts.", &prefix, err, errlen);
  if (rc == 0 && tpl) {
    out->prompt = strdupCheck(tpl);
  } else if (rc == 0 && prefix) {
    out->prompt = mallocCheck(strlen(prefix) + sizeof PLACEHOLDER_TEXT);
    strcpy(out->prompt, prefix);
    strcat(out->prompt, PLACEHOLDER_TEXT);
  }
  cJSON_Delete(cfg);
  return rc;
}

#define MAX_SEQ_LENGTH_LIMIT (1 << 30)

static int read_max_seq_length(const char *dir, sn_export_settings *out, char *err, size_t errlen) {
  char path[SN_EXPORT_PATH_LEN];
  cJSON *cfg;
  if (load(dir, SN_EXPORT_BERT_CONFIG, path, sizeof path, &cfg, err, errlen) != 0) return -1;
  if (!cfg) return 0;
  int rc = 0;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "max_seq_length");
  if (v && !cJSON_IsNull(v)) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > MAX_SEQ_LENGTH_LIMIT ||
        v->valuedouble != (double)(int)v->valuedouble)
      rc = sn_errorf(err, errlen, "%s: \"max_seq_length\" must be a positive integer", path);
    else
      out->max_seq_length = (int)v->valuedouble;
  }
  cJSON_Delete(cfg);
  return rc;
}

int sn_export_read_try(const char *dir, const char *role, sn_export_settings *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  out->normalize = -1;
  int rc = read_modules(dir, out, err, errlen);
  if (rc == 0) rc = read_prompt(dir, role, out, err, errlen);
  if (rc == 0) rc = read_max_seq_length(dir, out, err, errlen);
  if (rc != 0) sn_export_settings_free(out);
  return rc;
}

#define ERR_LEN 1024

void sn_export_read(const char *dir, const char *role, sn_export_settings *out) {
  char err[ERR_LEN];
  if (sn_export_read_try(dir, role, out, err, sizeof err) != 0) sn_bad_input("%s", err);
}

void sn_export_settings_free(sn_export_settings *s) {
  free(s->prompt);
  s->prompt = NULL;
}
