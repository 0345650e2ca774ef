// LoRA export and import: the merged tower as a Hugging Face folder, and peft adapter folders
// (adapter_config.json + adapter_model.safetensors) written and read.
#define _GNU_SOURCE
#include <cJSON.h>
#include <errno.h>
#include <string.h>

#include "common.h"
#include "model_internal.h"
#include "model_lora.h"
#include "safetensors.h"

#define PATH_LEN 4096
#define NAME_LEN 256
// peft's state-dict prefix of a PeftModel over transformers' AutoModel (our towers' class), and
// the one over a *ForCausalLM (whose decoder sits under "model."): written, then both read.
#define PEFT_PREFIX "base_model.model."
#define PEFT_PREFIX_CAUSAL_LM "base_model.model.model."
#define PEFT_CONFIG_FILE "adapter_config.json"
#define PEFT_WEIGHTS_FILE "adapter_model.safetensors"

// The base tensor an adapter updates: "layers.<l>.self_attn.q_proj.weight".
static const sn_param *target_weight(const sn_model *m, int layer, sn_lora_target t) {
  char name[NAME_LEN];
  snprintf(name, sizeof name, "layers.%d.%s.%s.weight", layer, t <= SN_LORA_O ? "self_attn" : "mlp",
           sn_lora_module_name(t));
  const sn_param *p = sn_model_find_param(m, name);
  if (!p) sn_fatal("LoRA: the base has no tensor '%s'", name);
  return p;
}

// A merged export's reader (sn_weight_reader): the base weights, plus s·B·A on the adapted ones. A
// target's update is made on the backend when the writer reaches its tensor (the tensors come one
// after the other, so one (out, in) buffer serves them all) and added a chunk at a time.
typedef struct {
  sn_weight_reader base;
  const sn_lora *lora;
  const sn_param **targets;  // (n_layers, SN_LORA_NTARGETS) the base tensor each adapter updates, or NULL
  const sn_param *in_delta;  // the target whose update `delta` holds, or NULL
  void *scaled_b, *delta;    // backend (widest out, r) s·B, (largest out·in) s·B A
  float *chunk;              // host, chunk_len floats: a chunk of the update
  size_t chunk_len;
} merge_reader;

static void read_merged(sn_weight_reader *r, const sn_model *tower, const sn_param *p, int64_t start,
                        int64_t count, float *dst) {
  merge_reader *mr = (merge_reader *)r;
  sn_weight_read_backend(r, tower, p, start, count, dst);
  const sn_lora *l = mr->lora;
  const int n = l->n_layers * SN_LORA_NTARGETS;
  int k = 0;
  while (k < n && mr->targets[k] != p) k++;
  if (k == n) return;  // not adapted: the base as it is
  const sn_ops *ops = tower->ops;
  if (mr->in_delta != p) {
    const int layer = k / SN_LORA_NTARGETS, t = k % SN_LORA_NTARGETS, rank = l->cfg.rank;
    int in, out;
    sn_lora_target_dims(&tower->cfg, (sn_lora_target)t, &in, &out);
    ops->axpy_2d(mr->scaled_b, rank, sn_wptr(l->params, l->b[layer][t]), rank, out, rank, l->scale, 0);
    // (out, r) @ (r, in)
    ops->matmul(mr->delta, mr->scaled_b, sn_wptr(l->params, l->a[layer][t]), NULL, out, in, rank, 0, 0, 0);
    mr->in_delta = p;
  }
  if ((size_t)count > mr->chunk_len) {
    mr->chunk_len = (size_t)count;
    mr->chunk = reallocCheck(mr->chunk, mr->chunk_len * sizeof(float));
  }
  ops->download_f32(mr->chunk, (const char *)mr->delta + (size_t)start * ops->storage_size, (size_t)count);
  ops->synchronize();
  for (int64_t i = 0; i < count; i++) dst[i] += mr->chunk[i];
}

int sn_lora_save_merged(const sn_model *tower, const char *dir, sn_dtype dtype, char *err, size_t errlen) {
  const sn_lora *l = tower->lora;
  if (!l) return sn_model_export(tower, dir, dtype, err, errlen);
  const sn_ops *ops = tower->ops;
  merge_reader mr = {.base = {read_merged}, .lora = l};
  mr.targets = callocCheck((size_t)SN_MAX(l->n_layers, 1) * SN_LORA_NTARGETS, sizeof *mr.targets);
  size_t widest = 0, largest = 0;
  for (int t = 0; t < SN_LORA_NTARGETS; t++) {
    int in, out;
    sn_lora_target_dims(&tower->cfg, (sn_lora_target)t, &in, &out);
    widest = SN_MAX(widest, (size_t)out);
    largest = SN_MAX(largest, (size_t)out * in);
    for (int layer = 0; layer < l->n_layers; layer++)
      if (l->a[layer][t] != SN_NO_PARAM)
        mr.targets[layer * SN_LORA_NTARGETS + t] = target_weight(tower, layer, (sn_lora_target)t);
  }
  mr.scaled_b = ops->alloc(widest * l->cfg.rank * ops->storage_size);
  mr.delta = ops->alloc(largest * ops->storage_size);
  const int rc = sn_model_save_from(tower, &mr.base, dir, dtype, SN_SAVE_DROP_LM_HEAD, err, errlen);
  ops->free(mr.scaled_b);
  ops->free(mr.delta);
  free(mr.chunk);
  free(mr.targets);
  return rc;
}

// ---- peft folders -------------------------------------------------------------------------------

static char *peft_config_json(const sn_lora *l, const char *base_name) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "peft_type", "LORA");
  cJSON_AddNullToObject(root, "task_type");
  cJSON_AddStringToObject(root, "base_model_name_or_path", base_name ? base_name : "");
  cJSON_AddNumberToObject(root, "r", l->cfg.rank);
  cJSON_AddNumberToObject(root, "lora_alpha", l->cfg.alpha);
  cJSON_AddNumberToObject(root, "lora_dropout", l->cfg.dropout);
  cJSON *mods = cJSON_AddArrayToObject(root, "target_modules");
  for (int t = 0; t < SN_LORA_NTARGETS; t++)
    if (l->cfg.targets & (1u << t)) cJSON_AddItemToArray(mods, cJSON_CreateString(sn_lora_module_name(t)));
  cJSON_AddStringToObject(root, "bias", "none");
  cJSON_AddFalseToObject(root, "fan_in_fan_out");
  cJSON_AddFalseToObject(root, "use_rslora");
  cJSON_AddTrueToObject(root, "inference_mode");
  cJSON_AddTrueToObject(root, "init_lora_weights");
  cJSON_AddNullToObject(root, "modules_to_save");
  cJSON_AddNullToObject(root, "layers_to_transform");
  char *printed = cJSON_Print(root);
  cJSON_Delete(root);
  if (!printed) sn_fatal("out of memory printing %s", PEFT_CONFIG_FILE);
  char *json = strdupCheck(printed);
  cJSON_free(printed);
  return json;
}

int sn_lora_save_peft(const sn_lora *l, const char *dir, const char *base_name, char *err, size_t errlen) {
  if (sn_mkdir_p(dir) != 0) {
    snprintf(err, errlen, "%s: cannot create folder: %s", dir, strerror(errno));
    return -1;
  }
  char path[PATH_LEN];
  char *json = peft_config_json(l, base_name);
  snprintf(path, sizeof path, "%s/%s", dir, PEFT_CONFIG_FILE);
  int rc = sn_write_file_atomic(path, json, strlen(json));
  free(json);
  if (rc != 0) {
    snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    return -1;
  }
  const sn_model *p = l->params;
  float *host = mallocCheck(SN_MAX(p->num_elements, (size_t)1) * sizeof(float));
  p->ops->download_f32(host, p->weights, p->num_elements);
  p->ops->synchronize();
  char (*names)[NAME_LEN] = mallocCheck((size_t)SN_MAX(p->nparams, 1) * NAME_LEN);  // kept until write
  sn_st_writer *w = sn_st_writer_new();
  sn_st_writer_metadata(w, "format", "pt");
  for (int i = 0; i < p->nparams; i++) {
    snprintf(names[i], NAME_LEN, PEFT_PREFIX "%s", p->params[i].name);
    sn_st_writer_add(w, names[i], SN_DTYPE_F32, p->params[i].ndim, p->params[i].shape, host + p->params[i].offset);
  }
  snprintf(path, sizeof path, "%s/%s", dir, PEFT_WEIGHTS_FILE);
  rc = sn_st_writer_write(w, path, err, errlen);
  sn_st_writer_free(w);
  free(names);
  free(host);
  if (rc != 0) return -1;
  if (sn_fsync_dir(dir) != 0) {
    snprintf(err, errlen, "%s: fsync of the folder failed: %s", dir, strerror(errno));
    return -1;
  }
  return 0;
}

// Options of peft's LoraConfig that change the computation and that we do not implement: they
// must be absent, null, false or empty.
static void reject_unsupported(const cJSON *root, const char *path) {
  const char *flags[] = {"use_rslora", "use_dora", "fan_in_fan_out"};
  for (size_t i = 0; i < SN_ARRAY_LEN(flags); i++)
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, flags[i])))
      sn_bad_input("%s: \"%s\": true is not supported", path, flags[i]);
  const char *empties[] = {"rank_pattern", "alpha_pattern", "layers_to_transform", "modules_to_save"};
  for (size_t i = 0; i < SN_ARRAY_LEN(empties); i++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, empties[i]);
    if (v && !cJSON_IsNull(v) && !((cJSON_IsObject(v) || cJSON_IsArray(v)) && cJSON_GetArraySize(v) == 0))
      sn_bad_input("%s: \"%s\" is not supported (must be null or empty)", path, empties[i]);
  }
  const cJSON *bias = cJSON_GetObjectItemCaseSensitive(root, "bias");
  if (bias && !(cJSON_IsString(bias) && strcmp(bias->valuestring, "none") == 0))
    sn_bad_input("%s: \"bias\" must be \"none\"", path);
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "peft_type");
  if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "LORA") == 0))
    sn_bad_input("%s: \"peft_type\" must be \"LORA\"", path);
}

static double number_or(const cJSON *root, const char *key, double fallback, const char *path) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (!v || cJSON_IsNull(v)) return fallback;
  if (!cJSON_IsNumber(v)) sn_bad_input("%s: \"%s\" must be a number", path, key);
  return v->valuedouble;
}

// peft's defaults where adapter_config.json leaves a key out.
#define PEFT_DEFAULT_ALPHA 8.0

static sn_lora_config read_peft_config(const char *dir) {
  char path[PATH_LEN];
  snprintf(path, sizeof path, "%s/%s", dir, PEFT_CONFIG_FILE);
  size_t len;
  char *text = sn_read_file(path, &len);
  if (!text) sn_bad_input("%s: cannot read: %s", path, strerror(errno));
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  if (!root || !cJSON_IsObject(root)) sn_bad_input("%s: not a JSON object", path);
  reject_unsupported(root, path);
  sn_lora_config c = {0};
  double r = number_or(root, "r", 0, path);
  if (r < 1 || r != (double)(int)r) sn_bad_input("%s: \"r\" must be a positive integer", path);
  c.rank = (int)r;
  c.alpha = (float)number_or(root, "lora_alpha", PEFT_DEFAULT_ALPHA, path);
  c.dropout = (float)number_or(root, "lora_dropout", 0, path);
  const cJSON *mods = cJSON_GetObjectItemCaseSensitive(root, "target_modules"), *item;
  if (cJSON_IsString(mods)) {  // one module name (peft also takes a regex here: not supported)
    int t = sn_lora_target_from_module(mods->valuestring);
    if (t < 0) sn_bad_input("%s: \"target_modules\" '%s' is not one of q_proj, k_proj, v_proj, o_proj, "
                            "gate_proj, up_proj, down_proj", path, mods->valuestring);
    c.targets = 1u << t;
  } else if (cJSON_IsArray(mods)) {
    cJSON_ArrayForEach(item, mods) {
      int t = cJSON_IsString(item) ? sn_lora_target_from_module(item->valuestring) : -1;
      if (t < 0) sn_bad_input("%s: \"target_modules\" entry %s is not one of q_proj, k_proj, v_proj, o_proj, "
                              "gate_proj, up_proj, down_proj", path, cJSON_IsString(item) ? item->valuestring : "?");
      c.targets |= 1u << t;
    }
  }
  if (!c.targets) sn_bad_input("%s: \"target_modules\" names no module", path);
  cJSON_Delete(root);
  return c;
}

sn_lora *sn_lora_load_peft(const char *dir, const sn_model *base) {
  sn_lora_config cfg = read_peft_config(dir);
  sn_lora *l = sn_lora_new(base, &cfg, 0, dir);
  sn_model *p = l->params;
  char path[PATH_LEN], err[1024];
  snprintf(path, sizeof path, "%s/%s", dir, PEFT_WEIGHTS_FILE);
  sn_st_archive ar;
  memset(&ar, 0, sizeof ar);
  if (sn_st_open(&ar, path, err, sizeof err) != 0) sn_bad_input("%s", err);
  size_t max_count = 1;
  for (int i = 0; i < p->nparams; i++) max_count = SN_MAX(max_count, p->params[i].count);
  float *host = mallocCheck(max_count * sizeof(float));
  for (int i = 0; i < p->nparams; i++) {
    const sn_param *q = &p->params[i];
    char name[NAME_LEN];
    snprintf(name, sizeof name, PEFT_PREFIX "%s", q->name);
    const sn_st_tensor *t = sn_st_find(&ar, name);
    if (!t) {
      snprintf(name, sizeof name, PEFT_PREFIX_CAUSAL_LM "%s", q->name);
      t = sn_st_find(&ar, name);
    }
    if (!t) sn_bad_input("%s: missing tensor '" PEFT_PREFIX "%s' (adapter_config.json targets it)", path, q->name);
    if (t->ndim != 2 || t->shape[0] != q->shape[0] || t->shape[1] != q->shape[1])
      sn_bad_input("%s: tensor '%s' has shape [%lld, %lld], expected [%lld, %lld] (r %d and the base's shape)",
                   path, t->name, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
                   (long long)q->shape[0], (long long)q->shape[1], cfg.rank);
    if (sn_st_read_f32_finite(&ar, t, host, err, sizeof err) != 0) sn_bad_input("%s", err);
    base->ops->upload_f32(sn_wptr(p, q->offset), host, q->count);
    base->ops->synchronize();  // host is reused for the next tensor
  }
  if (ar.ntensors != p->nparams)
    sn_warn("%s: %d tensors, the adapter uses %d (extra ones ignored)", path, ar.ntensors, p->nparams);
  free(host);
  sn_st_close(&ar);
  return l;
}
