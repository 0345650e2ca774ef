// sn_embed's and sn_eval's defaults from an exported tower's sentence-transformers files: the
// pooling, whether a Normalize module follows, the prompt of a role and max_seq_length.
#define _GNU_SOURCE
#include <cJSON.h>
#include <errno.h>
#include <string.h>

#include "common.h"
#include "export_internal.h"

#define PLACEHOLDER_TEXT "{text}"

// dir/name parsed, NULL when the file does not exist; exits 2 when it is not a JSON value.
static cJSON *load(const char *dir, const char *name, char *path, size_t size) {
  char err[256];
  if (sn_export_join(path, size, dir, name, err, sizeof err) != 0) sn_bad_input("%s", err);
  size_t len;
  char *text = sn_read_file(path, &len);
  if (!text) {
    if (errno == ENOENT) return NULL;
    sn_bad_input("%s: cannot read: %s", path, strerror(errno));
  }
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  if (!root) sn_bad_input("%s: not valid JSON", path);
  return root;
}

static const char *module_type(const cJSON *m) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(m, "type");
  if (!cJSON_IsString(t)) return "";
  const char *dot = strrchr(t->valuestring, '.');
  return dot ? dot + 1 : t->valuestring;
}

// Pooling's config: the one mode that is on.
static void read_pooling(const char *dir, const char *sub, sn_export_settings *out) {
  static const char *const MODES[][2] = {
      {"pooling_mode_lasttoken", "last"}, {"pooling_mode_mean_tokens", "mean"}, {"pooling_mode_cls_token", "cls"}};
  char folder[SN_EXPORT_PATH_LEN], path[SN_EXPORT_PATH_LEN], err[256];
  if (sn_export_join(folder, sizeof folder, dir, sub, err, sizeof err) != 0) sn_bad_input("%s", err);
  cJSON *cfg = load(folder, "config.json", path, sizeof path);
  if (!cfg) return;
  for (size_t i = 0; i < SN_ARRAY_LEN(MODES); i++)
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cfg, MODES[i][0]))) snprintf(out->pooling, sizeof out->pooling, "%s", MODES[i][1]);
  // Newer sentence-transformers also write the mode as one string.
  static const char *const NAMED[][2] = {{"lasttoken", "last"}, {"mean", "mean"}, {"cls", "cls"}};
  const cJSON *mode = cJSON_GetObjectItemCaseSensitive(cfg, "pooling_mode");
  for (size_t i = 0; cJSON_IsString(mode) && i < SN_ARRAY_LEN(NAMED); i++)
    if (strcmp(mode->valuestring, NAMED[i][0]) == 0) snprintf(out->pooling, sizeof out->pooling, "%s", NAMED[i][1]);
  if (!out->pooling[0])
    sn_bad_input("%s: no pooling mode sn supports is on (pooling_mode_lasttoken, pooling_mode_mean_tokens or "
                 "pooling_mode_cls_token, or pooling_mode lasttoken, mean or cls)", path);
  cJSON_Delete(cfg);
}

static void read_modules(const char *dir, sn_export_settings *out) {
  char path[SN_EXPORT_PATH_LEN];
  cJSON *mods = load(dir, SN_EXPORT_MODULES, path, sizeof path);
  if (!mods) return;
  if (!cJSON_IsArray(mods)) sn_bad_input("%s: expected an array of modules", path);
  out->normalize = 0;
  const cJSON *m;
  cJSON_ArrayForEach(m, mods) {
    const char *type = module_type(m);
    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(m, "path");
    if (strcmp(type, "Normalize") == 0) out->normalize = 1;
    if (strcmp(type, "Pooling") == 0) {
      if (!cJSON_IsString(sub)) sn_bad_input("%s: the Pooling module has no string \"path\"", path);
      read_pooling(dir, sub->valuestring, out);
    }
  }
  cJSON_Delete(mods);
}

static const char *string_at(const cJSON *obj, const char *key, const char *path, const char *where) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (!v || cJSON_IsNull(v)) return NULL;
  if (!cJSON_IsString(v)) sn_bad_input("%s: %s\"%s\" must be a string", path, where, key);
  return v->valuestring;
}

// The role's template: ours when stored, else sentence-transformers' prefix followed by {text}.
static void read_prompt(const char *dir, const char *role, sn_export_settings *out) {
  char path[SN_EXPORT_PATH_LEN];
  cJSON *cfg = load(dir, SN_EXPORT_ST_CONFIG, path, sizeof path);
  if (!cfg) return;
  const char *dflt = string_at(cfg, SN_EXPORT_ROLE_KEY, path, "");
  if (!dflt) dflt = string_at(cfg, "default_prompt_name", path, "");
  if (dflt) snprintf(out->role, sizeof out->role, "%s", dflt);
  if (!role) role = dflt;
  const char *tpl = role ? string_at(cJSON_GetObjectItemCaseSensitive(cfg, SN_EXPORT_TEMPLATES_KEY), role, path,
                                     SN_EXPORT_TEMPLATES_KEY ".") : NULL;
  const char *prefix = role ? string_at(cJSON_GetObjectItemCaseSensitive(cfg, "prompts"), role, path, "prompts.") : NULL;
  if (tpl) {
    out->prompt = strdupCheck(tpl);
  } else if (prefix) {
    out->prompt = mallocCheck(strlen(prefix) + sizeof PLACEHOLDER_TEXT);
    strcpy(out->prompt, prefix);
    strcat(out->prompt, PLACEHOLDER_TEXT);
  }
  cJSON_Delete(cfg);
}

#define MAX_SEQ_LENGTH_LIMIT (1 << 30)

static void read_max_seq_length(const char *dir, sn_export_settings *out) {
  char path[SN_EXPORT_PATH_LEN];
  cJSON *cfg = load(dir, SN_EXPORT_BERT_CONFIG, path, sizeof path);
  if (!cfg) return;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, "max_seq_length");
  if (v && !cJSON_IsNull(v)) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > MAX_SEQ_LENGTH_LIMIT ||
        v->valuedouble != (double)(int)v->valuedouble)
      sn_bad_input("%s: \"max_seq_length\" must be a positive integer", path);
    out->max_seq_length = (int)v->valuedouble;
  }
  cJSON_Delete(cfg);
}

void sn_export_read(const char *dir, const char *role, sn_export_settings *out) {
  memset(out, 0, sizeof *out);
  out->normalize = -1;
  read_modules(dir, out);
  read_prompt(dir, role, out);
  read_max_seq_length(dir, out);
}

void sn_export_settings_free(sn_export_settings *s) {
  free(s->prompt);
  s->prompt = NULL;
}
