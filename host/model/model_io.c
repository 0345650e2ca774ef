// Loading a Hugging Face model folder into the flat parameter buffer and saving it back in the
// names transformers' *Model classes use.
#define _GNU_SOURCE
#include <cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "export.h"
#include "model_internal.h"
#include "safetensors.h"

#define ERR_LEN 1024
#define PATH_LEN 4096

static void format_shape(char *buf, size_t len, int ndim, const int64_t *shape) {
  int n = snprintf(buf, len, "[");
  for (int i = 0; i < ndim && n < (int)len; i++)
    n += snprintf(buf + n, len - (size_t)n, "%s%lld", i ? ", " : "", (long long)shape[i]);
  if (n < (int)len) snprintf(buf + n, len - (size_t)n, "]");
}

static int same_shape(const sn_param *p, const sn_st_tensor *t) {
  if (t->ndim != p->ndim) return 0;
  for (int i = 0; i < p->ndim; i++)
    if (t->shape[i] != p->shape[i]) return 0;
  return 1;
}

// Tensors that may be in a checkpoint without being part of the tower: rotary caches some old
// exports carry, BERT's position_ids buffer. Not worth a warning.
static int is_known_buffer(const char *name) {
  const char *known[] = {"rotary_emb.inv_freq", "embeddings.position_ids"};
  for (size_t i = 0; i < SN_ARRAY_LEN(known); i++)
    if (strstr(name, known[i])) return 1;
  return 0;
}

// Our config.json keys beyond transformers': the output projection's width (0: none), and whether
// the pooler in model.safetensors is only there for transformers (see export_extras). -1 with err
// for an unreadable or malformed file.
static int read_projection_dim(const char *dir, int *pooler_placeholder, char *err, size_t errlen) {
  char path[PATH_LEN];
  if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
    return sn_errorf(err, errlen, "%s: path too long", dir);
  size_t len;
  char *text = sn_read_file(path, &len);
  if (!text) return sn_errorf(err, errlen, "%s: cannot read: %s", path, strerror(errno));
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  if (!root) return sn_errorf(err, errlen, "%s: not valid JSON", path);
  int dim = 0;
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, SN_PROJECTION_CONFIG_KEY);
  if (v && !cJSON_IsNull(v)) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 1 || v->valuedouble > INT32_MAX ||
        v->valuedouble != (double)(int)v->valuedouble)
      dim = sn_errorf(err, errlen, "%s: \"%s\" must be a positive integer", path, SN_PROJECTION_CONFIG_KEY);
    else
      dim = (int)v->valuedouble;
  }
  *pooler_placeholder = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, SN_POOLER_PLACEHOLDER_KEY));
  cJSON_Delete(root);
  return dim;
}

// An encoder without a pooler gets a zero one in its export: transformers' BertModel builds one
// and would warn that its weights are missing. sn does not load it back.
static int needs_pooler_placeholder(const sn_model *m) {
  return !sn_arch_is_decoder(m->cfg.arch) && !m->layout->has_pooler;
}

// config.json text with the projection width added when the model has one (caller frees); a
// causal LM names its *ForCausalLM class.
static char *config_json(const sn_model *m, int causal_lm) {
  char *json = sn_config_to_hf_json(&m->cfg);
  if (!m->layout->proj_dim && !needs_pooler_placeholder(m) && !causal_lm) return json;
  cJSON *root = cJSON_Parse(json);
  if (!root) sn_fatal("sn_config_to_hf_json produced invalid JSON");
  free(json);
  if (m->layout->proj_dim) cJSON_AddNumberToObject(root, SN_PROJECTION_CONFIG_KEY, m->layout->proj_dim);
  if (needs_pooler_placeholder(m)) cJSON_AddTrueToObject(root, SN_POOLER_PLACEHOLDER_KEY);
  if (causal_lm) {
    cJSON *archs = cJSON_CreateArray();
    cJSON_AddItemToArray(archs, cJSON_CreateString(m->cfg.arch == SN_ARCH_LLAMA ? "LlamaForCausalLM" : "Qwen2ForCausalLM"));
    cJSON_ReplaceItemInObject(root, "architectures", archs);
  }
  char *printed = cJSON_Print(root);
  cJSON_Delete(root);
  if (!printed) sn_fatal("out of memory printing config.json");
  json = strdupCheck(printed);  // cJSON's allocator may differ from ours: hand back our own copy
  cJSON_free(printed);
  return json;
}

// Where parameter p is stored: model.safetensors, or for the projection of a newer export, 2_Dense
// under sentence-transformers' name (*src: the archive holding it; NULL when missing).
static const sn_st_tensor *find_stored(const sn_param *p, const sn_st_archive *ar, const sn_st_archive *dense,
                                       int in_dense, const sn_st_archive **src, const char **stored_name) {
  const int from_dense = in_dense && sn_export_is_dense_tensor(p->name);
  *src = from_dense ? dense : ar;
  *stored_name = from_dense ? sn_export_dense_name(p->name) : p->name;
  return sn_st_find(*src, *stored_name);
}

// Every tensor of the tower present with its shape (unused ones are warned about); *max_count the
// largest. 0, or -1 with err.
static int check_stored_shapes(const sn_model *m, const sn_st_archive *ar, const sn_st_archive *dense, int in_dense,
                               int pooler_placeholder, const char *dir, size_t *max_count, char *err, size_t errlen) {
  unsigned char *used = callocCheck((size_t)SN_MAX(ar->ntensors, 1), 1);
  *max_count = 0;
  for (int i = 0; i < m->nparams; i++) {
    const sn_param *p = &m->params[i];
    const sn_st_archive *src;
    const char *stored_name;
    const sn_st_tensor *t = find_stored(p, ar, dense, in_dense, &src, &stored_name);
    char want[96], got[96];
    format_shape(want, sizeof want, p->ndim, p->shape);
    if (!t) {
      free(used);
      return sn_errorf(err, errlen, "%s: missing tensor '%s' (expected shape %s)",
                       src == dense ? dense->files[0] : dir, stored_name, want);
    }
    if (!same_shape(p, t)) {
      format_shape(got, sizeof got, t->ndim, t->shape);
      free(used);
      return sn_errorf(err, errlen, "%s: tensor '%s' in %s has shape %s, expected %s (from config.json)", dir,
                       t->name, src->files[t->file_index], got, want);
    }
    if (src == ar) used[t - ar->tensors] = 1;
    *max_count = SN_MAX(*max_count, p->count);
  }
  int unknown = 0;
  const char *first_unknown = NULL;
  for (int i = 0; i < ar->ntensors; i++) {
    if (used[i] || is_known_buffer(ar->tensors[i].name)) continue;
    if (pooler_placeholder && strncmp(ar->tensors[i].name, "pooler.", strlen("pooler.")) == 0) continue;
    if (!first_unknown) first_unknown = ar->tensors[i].name;
    unknown++;
  }
  if (unknown)
    sn_warn("%s: ignoring %d tensor(s) the %s tower does not use (first: '%s')", dir, unknown,
            sn_arch_name(m->cfg.arch), first_unknown);
  free(used);
  return 0;
}

// The weights into m->weights (allocated here), fp32 through one host buffer. 0, or -1 with err.
static int upload_weights(sn_model *m, const sn_st_archive *ar, const sn_st_archive *dense, int in_dense,
                          size_t max_count, char *err, size_t errlen) {
  const sn_ops *ops = m->ops;
  m->weights = ops->alloc(m->num_elements * ops->storage_size);
  float *host = mallocCheck(SN_MAX(max_count, (size_t)1) * sizeof(float));
  int rc = 0;
  for (int i = 0; i < m->nparams && rc == 0; i++) {
    const sn_param *p = &m->params[i];
    const sn_st_archive *src;
    const char *stored_name;
    const sn_st_tensor *t = find_stored(p, ar, dense, in_dense, &src, &stored_name);
    ops->synchronize();  // the previous upload may still read host (asynchronous backends)
    rc = sn_st_read_f32_finite(src, t, host, err, errlen);
    if (rc == 0) ops->upload_f32(sn_wptr(m, p->offset), host, p->count);
  }
  ops->synchronize();  // the host buffer is freed next; uploads may be asynchronous
  free(host);
  return rc ? -1 : 0;
}

sn_model *sn_model_load_try(const char *dir, const sn_ops *ops, char *err, size_t errlen) {
  sn_model_config cfg;
  if (sn_config_load_hf_dir_try(&cfg, dir, err, errlen) != 0) return NULL;
  if (sn_model_config_check(&cfg, err, errlen) != 0) return NULL;
  int pooler_placeholder = 0;
  const int proj_dim = read_projection_dim(dir, &pooler_placeholder, err, errlen);
  if (proj_dim < 0) return NULL;
  sn_st_archive ar, dense;
  memset(&ar, 0, sizeof ar);
  memset(&dense, 0, sizeof dense);
  if (sn_st_open(&ar, dir, err, errlen) != 0) return NULL;

  // Optional tensors follow the checkpoint: an untied lm_head, BERT's pooler.
  const int decoder = sn_arch_is_decoder(cfg.arch);
  const int has_lm_head = decoder && !cfg.tie_embeddings && sn_st_find(&ar, "lm_head.weight") != NULL;
  const int has_pooler = !decoder && !pooler_placeholder && sn_st_find(&ar, "pooler.dense.weight") != NULL;
  sn_model *m = sn_model_shell(&cfg, ops);
  sn_model_build_params(m, has_lm_head, has_pooler, proj_dim);
  // The projection: in 2_Dense (sentence-transformers' Dense) since exports put it there, in
  // model.safetensors in older ones.
  const int in_dense = proj_dim > 0 && !sn_st_find(&ar, "projection.weight");
  int rc = 0;
  if (in_dense) {
    char dense_dir[PATH_LEN];
    snprintf(dense_dir, sizeof dense_dir, "%s/" SN_EXPORT_DENSE_DIR, dir);
    rc = sn_st_open(&dense, dense_dir, err, errlen);
    if (rc != 0) {
      size_t n = strlen(err);
      snprintf(err + n, errlen > n ? errlen - n : 0, " (config.json has a projection)");
    }
  }
  // Shapes first: a wrong checkpoint fails before any memory is spent on it.
  size_t max_count = 0;
  if (rc == 0) rc = check_stored_shapes(m, &ar, &dense, in_dense, pooler_placeholder, dir, &max_count, err, errlen);
  if (rc == 0) rc = upload_weights(m, &ar, &dense, in_dense, max_count, err, errlen);
  sn_st_close(&ar);
  if (in_dense) sn_st_close(&dense);
  if (rc != 0) {
    sn_model_free(m);
    return NULL;
  }
  return m;
}

sn_model *sn_model_load(const char *dir, const sn_ops *ops) {
  char err[ERR_LEN];
  sn_model *m = sn_model_load_try(dir, ops, err, sizeof err);
  if (!m) sn_bad_input("%s", err);
  return m;
}

static int save_model(const sn_model *m, const char *dir, sn_dtype dtype, int mode, char *err,
                      size_t errlen) {
  return sn_model_save_from(m, NULL, dir, dtype, mode, err, errlen);
}

int sn_model_save(const sn_model *m, const char *dir, sn_dtype dtype, char *err, size_t errlen) {
  return save_model(m, dir, dtype, SN_SAVE_WHOLE, err, errlen);
}

int sn_model_save_causal_lm(const sn_model *m, const char *dir, sn_dtype dtype, char *err, size_t errlen) {
  if (!sn_arch_is_decoder(m->cfg.arch) || m->layout->proj_dim || m->lora) {
    snprintf(err, errlen, "%s: only a plain decoder saves as a causal LM", dir);
    return -1;
  }
  return save_model(m, dir, dtype, SN_SAVE_CAUSAL_LM, err, errlen);
}

int sn_model_export(const sn_model *m, const char *dir, sn_dtype dtype, char *err, size_t errlen) {
  return save_model(m, dir, dtype, SN_SAVE_DROP_LM_HEAD, err, errlen);
}

void sn_weight_read_backend(sn_weight_reader *r, const sn_model *m, const sn_param *p, int64_t start,
                            int64_t count, float *dst) {
  (void)r;
  const sn_ops *ops = m->ops;
  ops->download_f32(dst, (const char *)m->weights + (p->offset + (size_t)start) * ops->storage_size, (size_t)count);
  ops->synchronize();
}

// One tensor of a save (a sn_st_source): its values from the save's reader while the file is written.
typedef struct {
  const sn_model *m;
  const sn_param *p;
  sn_weight_reader *reader;
} tensor_source;
static void read_tensor(const void *ctx, int64_t start, int64_t count, float *dst) {
  const tensor_source *src = ctx;
  src->reader->read(src->reader, src->m, src->p, start, count, dst);
}

// What an export holds beyond the tower's own tensors (see export.h): the projection as
// 2_Dense, a zero pooler for an encoder without one. *zeros (the pooler's data, kept until w is
// written) is freed by the caller.
static int export_extras(const sn_model *m, sn_weight_reader *reader, const char *dir, sn_dtype dtype,
                         sn_st_writer *w, float **zeros, char *err, size_t errlen) {
  static const char *const POOLER[2] = {"pooler.dense.weight", "pooler.dense.bias"};
  const int64_t C = m->cfg.hidden, shapes[2][2] = {{C, C}, {C, 0}};
  *zeros = NULL;
  if (needs_pooler_placeholder(m)) {
    *zeros = callocCheck((size_t)(C * C), sizeof(float));
    for (int k = 0; k < 2; k++) sn_st_writer_add(w, POOLER[k], dtype, 2 - k, shapes[k], *zeros);
  }
  if (!m->layout->proj_dim) return 0;
  const sn_param *pw = sn_model_find_param(m, "projection.weight"), *pb = sn_model_find_param(m, "projection.bias");
  if (!pw || !pb) sn_fatal("a model with a projection has no projection tensors");
  float *dense = mallocCheck((pw->count + pb->count) * sizeof(float));  // (out, in) weight, then (out) bias
  reader->read(reader, m, pw, 0, (int64_t)pw->count, dense);
  reader->read(reader, m, pb, 0, (int64_t)pb->count, dense + pw->count);
  const int rc = sn_export_write_dense(dir, (int)pw->shape[1], (int)pw->shape[0], dtype, dense, dense + pw->count,
                                       err, errlen);
  free(dense);
  return rc;
}

int sn_model_save_from(const sn_model *m, sn_weight_reader *reader, const char *dir, sn_dtype dtype, int mode,
                       char *err, size_t errlen) {
  sn_weight_reader backend = {sn_weight_read_backend};
  if (!reader) reader = &backend;
  if (dtype != SN_DTYPE_F32 && dtype != SN_DTYPE_BF16) {
    snprintf(err, errlen, "%s: save dtype must be F32 or BF16", dir);
    return -1;
  }
  if (sn_mkdir_p(dir) != 0) {
    snprintf(err, errlen, "%s: cannot create folder: %s", dir, strerror(errno));
    return -1;
  }
  char path[PATH_LEN];
  // config.json
  char *json = config_json(m, mode == SN_SAVE_CAUSAL_LM);
  snprintf(path, sizeof path, "%s/config.json", dir);
  int rc = sn_write_file_atomic(path, json, strlen(json));
  free(json);
  if (rc != 0) {
    snprintf(err, errlen, "%s: cannot write: %s", path, strerror(errno));
    return -1;
  }
  sn_st_writer *w = sn_st_writer_new();
  sn_st_writer_metadata(w, "format", "pt");  // transformers expects the PyTorch marker
  tensor_source *sources = mallocCheck(SN_MAX(m->nparams, 1) * sizeof *sources);
  for (int i = 0; i < m->nparams; i++) {
    const sn_param *p = &m->params[i];
    const int is_lm_head = p->offset == m->layout->lm_head;
    if (mode == SN_SAVE_DROP_LM_HEAD && is_lm_head) continue;
    if (sn_export_is_dense_tensor(p->name)) continue;  // written into 2_Dense by export_extras
    char prefixed[SN_PARAM_NAME_MAX + 8];
    snprintf(prefixed, sizeof prefixed, "model.%s", p->name);
    const int prefix = mode == SN_SAVE_CAUSAL_LM && !is_lm_head;
    const char *name = prefix ? prefixed : p->name;
    sources[i] = (tensor_source){m, p, reader};
    sn_st_writer_add_source(w, name, dtype, p->ndim, p->shape, read_tensor, &sources[i]);
  }
  float *zeros;
  rc = export_extras(m, reader, dir, dtype, w, &zeros, err, errlen);
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  if (rc == 0) rc = sn_st_writer_write(w, path, err, errlen);
  sn_st_writer_free(w);
  free(sources);
  free(zeros);
  if (rc != 0) return -1;
// A shard index left from an earlier, sharded save would shadow the new single file.
  snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
  if (unlink(path) != 0 && errno != ENOENT) {
    snprintf(err, errlen, "%s: cannot remove stale shard index: %s", path, strerror(errno));
    return -1;
  }
  if (sn_fsync_dir(dir) != 0) {
    snprintf(err, errlen, "%s: fsync of the folder failed: %s", dir, strerror(errno));
    return -1;
  }
  return 0;
}
