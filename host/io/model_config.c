// Model architecture from a Hugging Face config.json or a small description, and back to a
// config.json that transformers loads. Every field is type- and range-checked; a message names the
// file, the field and what was expected. The parsers never exit (the fuzz target drives them).
#define _GNU_SOURCE
#include "model_config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cJSON.h"
#include "common.h"

// Range limits: generous for real models (the largest have hidden 16k, intermediate 53k, vocab
// 256k, 128 layers), small enough that products of them cannot overflow int64.
#define CFG_MAX_LAYERS 4096
#define CFG_MAX_WIDTH (1 << 20)      // hidden, intermediate, heads, head_dim
#define CFG_MAX_VOCAB (1 << 24)
#define CFG_MAX_POSITIONS (1 << 24)
#define CFG_MAX_TYPE_VOCAB 1024
#define CFG_MAX_TOKEN_ID (1 << 30)
#define CFG_MAX_ROPE_THETA 1e12
#define CFG_MAX_NORM_EPS 1.0

#define CFG_DEFAULT_ROPE_THETA 10000.0f
#define CFG_DECODER_NORM_EPS 1e-6f    // transformers' Qwen2Config / LlamaConfig rms_norm_eps
#define CFG_BERT_NORM_EPS 1e-12f      // BertConfig layer_norm_eps
#define CFG_BERT_TYPE_VOCAB 2
#define CFG_BERT_MAX_POSITIONS 512
#define CFG_QWEN2_MAX_POSITIONS 32768 // Qwen2Config default
#define CFG_LLAMA_MAX_POSITIONS 2048  // LlamaConfig default
#define CFG_DESC_MAX_POSITIONS 512
#define CFG_BERT_FFN_MULT 4           // BERT intermediate = 4 x hidden
#define CFG_SWIGLU_MULTIPLE_OF 64     // SwiGLU width: 8/3 x hidden rounded up to a multiple of this
#define CFG_FLOAT_MAX_DIGITS 9        // enough decimal digits to round-trip any float

// ---- messages and typed field access -----------------------------------------------------------

typedef struct {
  const char *path;
  char *err;
  size_t errlen;
} cfg_ctx;

static int cfg_fail(const cfg_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int cfg_fail(const cfg_ctx *c, const char *fmt, ...) {
  if (!c->err || !c->errlen) return -1;
  int n = snprintf(c->err, c->errlen, "%s: ", c->path);
  if (n >= 0 && (size_t)n < c->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

static const char *json_kind(const cJSON *v) {
  if (cJSON_IsNumber(v)) return "a number";
  if (cJSON_IsString(v)) return "a string";
  if (cJSON_IsBool(v)) return "a boolean";
  if (cJSON_IsNull(v)) return "null";
  if (cJSON_IsArray(v)) return "an array";
  if (cJSON_IsObject(v)) return "an object";
  return "invalid";
}

// Absent or null: the field keeps its default.
static const cJSON *field(const cJSON *obj, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  return cJSON_IsNull(v) ? NULL : v;
}

static int missing(const cfg_ctx *c, const char *key, const char *what) {
  return cfg_fail(c, "missing required field \"%s\" (%s)", key, what);
}

// The value v of field `key` as an integer in [min, max].
static int int_value(const cfg_ctx *c, const char *key, const cJSON *v, int min, int max, int *out) {
  double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
  if (!(d >= min && d <= max) || d != floor(d)) {
    if (cJSON_IsNumber(v)) return cfg_fail(c, "\"%s\" is %g; expected an integer in [%d, %d]", key, d, min, max);
    return cfg_fail(c, "\"%s\" is %s; expected an integer in [%d, %d]", key, json_kind(v), min, max);
  }
  *out = (int)d;
  return 0;
}

// Integer field in [min, max]; absent/null keeps *out unless required.
static int get_int(const cfg_ctx *c, const cJSON *obj, const char *key, int required, int min, int max, int *out) {
  const cJSON *v = field(obj, key);
  if (!v) return required ? cfg_fail(c, "missing required field \"%s\" (an integer in [%d, %d])", key, min, max) : 0;
  return int_value(c, key, v, min, max, out);
}

// Number in (0, max]; absent/null keeps *out.
static int get_positive_float(const cfg_ctx *c, const cJSON *obj, const char *key, double max, float *out) {
  const cJSON *v = field(obj, key);
  if (!v) return 0;
  if (!cJSON_IsNumber(v)) return cfg_fail(c, "\"%s\" is %s; expected a number", key, json_kind(v));
  if (!(v->valuedouble > 0 && v->valuedouble <= max) || (float)v->valuedouble <= 0)
    return cfg_fail(c, "\"%s\" is %g; expected a positive number no larger than %g", key, v->valuedouble, max);
  *out = (float)v->valuedouble;
  return 0;
}

static int get_bool(const cfg_ctx *c, const cJSON *obj, const char *key, int *out) {
  const cJSON *v = field(obj, key);
  if (!v) return 0;
  if (!cJSON_IsBool(v)) return cfg_fail(c, "\"%s\" is %s; expected true or false", key, json_kind(v));
  *out = cJSON_IsTrue(v);
  return 0;
}

// String field; absent/null leaves *out untouched.
static int get_string(const cfg_ctx *c, const cJSON *obj, const char *key, const char **out) {
  const cJSON *v = field(obj, key);
  if (!v) return 0;
  if (!cJSON_IsString(v) || !v->valuestring) return cfg_fail(c, "\"%s\" is %s; expected a string", key, json_kind(v));
  *out = v->valuestring;
  return 0;
}

// Special token id: absent, null or -1 → -1; a list (several eos ids) → its first entry.
static int get_token_id(const cfg_ctx *c, const cJSON *obj, const char *key, int *out) {
  *out = -1;
  const cJSON *v = field(obj, key);
  if (cJSON_IsArray(v)) v = v->child;  // empty list: no id
  if (!v || cJSON_IsNull(v)) return 0;
  return int_value(c, key, v, -1, CFG_MAX_TOKEN_ID, out);
}

static cJSON *parse_root(const cfg_ctx *c, const char *json, size_t len) {
  const char *end = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
  if (!root) {
    size_t at = (end && end >= json && end <= json + len) ? (size_t)(end - json) : 0;
    cfg_fail(c, "not valid JSON (error near byte %zu of %zu; truncated file?)", at, len);
    return NULL;
  }
  if (!cJSON_IsObject(root)) {
    cfg_fail(c, "expected a JSON object at the top level, found %s", json_kind(root));
    cJSON_Delete(root);
    return NULL;
  }
  return root;
}

// ---- architectures ------------------------------------------------------------------------------

typedef struct {
  const char *name;
  sn_arch arch;
} arch_name;

static const arch_name MODEL_TYPES[] = {{"qwen2", SN_ARCH_QWEN2}, {"llama", SN_ARCH_LLAMA}, {"bert", SN_ARCH_BERT}};
#define SUPPORTED_MODEL_TYPES "qwen2, llama, bert"

static const arch_name ARCHITECTURES[] = {
    {"Qwen2Model", SN_ARCH_QWEN2}, {"Qwen2ForCausalLM", SN_ARCH_QWEN2},
    {"Qwen2ForSequenceClassification", SN_ARCH_QWEN2}, {"Qwen2ForTokenClassification", SN_ARCH_QWEN2},
    {"LlamaModel", SN_ARCH_LLAMA}, {"LlamaForCausalLM", SN_ARCH_LLAMA},
    {"LlamaForSequenceClassification", SN_ARCH_LLAMA}, {"BertModel", SN_ARCH_BERT},
    {"BertForMaskedLM", SN_ARCH_BERT}, {"BertForPreTraining", SN_ARCH_BERT},
    {"BertForSequenceClassification", SN_ARCH_BERT}, {"BertForTokenClassification", SN_ARCH_BERT},
    {"BertForQuestionAnswering", SN_ARCH_BERT}, {"BertForNextSentencePrediction", SN_ARCH_BERT},
};
#define SUPPORTED_ARCHITECTURES "Qwen2Model, Qwen2ForCausalLM, LlamaModel, LlamaForCausalLM, BertModel, BertForMaskedLM, ..."

static int lookup_arch(const arch_name *table, size_t n, const char *name, sn_arch *out) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(table[i].name, name) == 0) {
      *out = table[i].arch;
      return 0;
    }
  return -1;
}

const char *sn_arch_name(sn_arch arch) {
  for (size_t i = 0; i < SN_ARRAY_LEN(MODEL_TYPES); i++)
    if (MODEL_TYPES[i].arch == arch) return MODEL_TYPES[i].name;
  return "unknown";
}

// model_type wins; without it, architectures[0].
static int detect_arch(const cfg_ctx *c, const cJSON *root, sn_arch *out) {
  const char *model_type = NULL;
  if (get_string(c, root, "model_type", &model_type)) return -1;
  if (model_type) {
    if (lookup_arch(MODEL_TYPES, SN_ARRAY_LEN(MODEL_TYPES), model_type, out) == 0) return 0;
    return cfg_fail(c, "\"model_type\" is \"%.64s\", which is not supported (supported: " SUPPORTED_MODEL_TYPES ")",
                    model_type);
  }
  const cJSON *archs = field(root, "architectures");
  if (!archs) return cfg_fail(c, "neither \"model_type\" nor \"architectures\" is present: cannot tell the model "
                              "architecture (supported model_type: " SUPPORTED_MODEL_TYPES ")");
  if (!cJSON_IsArray(archs) || !cJSON_IsString(archs->child) || !archs->child->valuestring)
    return cfg_fail(c, "\"architectures\" must be a non-empty array of strings");
  const char *name = archs->child->valuestring;
  if (lookup_arch(ARCHITECTURES, SN_ARRAY_LEN(ARCHITECTURES), name, out) == 0) return 0;
  return cfg_fail(c, "\"architectures\"[0] is \"%.64s\", which is not supported (supported: " SUPPORTED_ARCHITECTURES
                  ")", name);
}

// ---- fields shared by config.json and the description --------------------------------------------

typedef struct {
  const char *layers, *hidden, *heads, *kv_heads, *head_dim, *intermediate, *vocab, *max_positions;
} cfg_field_names;

static const cfg_field_names HF_FIELDS = {"num_hidden_layers", "hidden_size", "num_attention_heads",
                                          "num_key_value_heads", "head_dim", "intermediate_size",
                                          "vocab_size", "max_position_embeddings"};
static const cfg_field_names DESC_FIELDS = {"layers", "hidden", "heads", "kv_heads",
                                            "head_dim", "intermediate", "vocab", "max_positions"};

// Defaults that depend only on the architecture (the caller overrides them from the file).
static void set_arch_defaults(sn_model_config *cfg, sn_arch arch) {
  memset(cfg, 0, sizeof *cfg);
  cfg->arch = arch;
  cfg->rope_theta = CFG_DEFAULT_ROPE_THETA;
  cfg->bos_id = cfg->eos_id = cfg->pad_id = -1;
  if (arch == SN_ARCH_BERT) {
    cfg->max_positions = CFG_BERT_MAX_POSITIONS;
    cfg->type_vocab = CFG_BERT_TYPE_VOCAB;
    cfg->norm_eps = CFG_BERT_NORM_EPS;
    cfg->tie_embeddings = 1;  // PretrainedConfig's default; BertModel has no LM head anyway
    cfg->attn_bias = cfg->mlp_bias = 1;
    snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "gelu");
  } else {
    cfg->max_positions = arch == SN_ARCH_QWEN2 ? CFG_QWEN2_MAX_POSITIONS : CFG_LLAMA_MAX_POSITIONS;
    cfg->norm_eps = CFG_DECODER_NORM_EPS;
    cfg->attn_bias = arch == SN_ARCH_QWEN2;  // Qwen2 always has q/k/v biases
    snprintf(cfg->hidden_act, sizeof cfg->hidden_act, "silu");
  }
}

// Sizes common to both formats. intermediate_required = 0 leaves the caller to default it.
static int read_sizes(const cfg_ctx *c, const cJSON *obj, const cfg_field_names *f, int intermediate_required,
                      sn_model_config *cfg, int *head_dim_given) {
  cfg->head_dim = 0;
  cfg->n_kv_heads = 0;
  if (get_int(c, obj, f->layers, 1, 1, CFG_MAX_LAYERS, &cfg->n_layers) ||
      get_int(c, obj, f->hidden, 1, 1, CFG_MAX_WIDTH, &cfg->hidden) ||
      get_int(c, obj, f->heads, 1, 1, CFG_MAX_WIDTH, &cfg->n_heads) ||
      get_int(c, obj, f->kv_heads, 0, 1, CFG_MAX_WIDTH, &cfg->n_kv_heads) ||
      get_int(c, obj, f->head_dim, 0, 1, CFG_MAX_WIDTH, &cfg->head_dim) ||
      get_int(c, obj, f->intermediate, intermediate_required, 1, CFG_MAX_WIDTH, &cfg->intermediate) ||
      get_int(c, obj, f->vocab, 1, 1, CFG_MAX_VOCAB, &cfg->vocab) ||
      get_int(c, obj, f->max_positions, 0, 1, CFG_MAX_POSITIONS, &cfg->max_positions))
    return -1;
  *head_dim_given = cfg->head_dim != 0;
  if (!cfg->n_kv_heads) cfg->n_kv_heads = cfg->n_heads;
  return 0;
}

// Cross-field checks; fills head_dim when it was not given.
static int validate_shapes(const cfg_ctx *c, const cfg_field_names *f, sn_model_config *cfg, int head_dim_given) {
  if (head_dim_given && cfg->arch == SN_ARCH_BERT)
    return cfg_fail(c, "\"%s\" is not supported for bert (it is %s / %s)", f->head_dim, f->hidden, f->heads);
  if (!head_dim_given) {
    if (cfg->hidden % cfg->n_heads)
      return cfg_fail(c, "\"%s\" (%d) must be divisible by \"%s\" (%d)", f->hidden, cfg->hidden, f->heads, cfg->n_heads);
    cfg->head_dim = cfg->hidden / cfg->n_heads;
  }
  if (cfg->arch == SN_ARCH_BERT && cfg->n_kv_heads != cfg->n_heads)
    return cfg_fail(c, "\"%s\" (%d) must equal \"%s\" (%d) for bert", f->kv_heads, cfg->n_kv_heads, f->heads,
                    cfg->n_heads);
  if (cfg->n_heads % cfg->n_kv_heads)
    return cfg_fail(c, "\"%s\" (%d) must be divisible by \"%s\" (%d)", f->heads, cfg->n_heads, f->kv_heads,
                    cfg->n_kv_heads);
  if (sn_arch_is_decoder(cfg->arch) && cfg->head_dim % 2)
    return cfg_fail(c, "head dimension %d (\"%s\") must be even for rotary embeddings", cfg->head_dim,
                    head_dim_given ? f->head_dim : "hidden / heads");
  if ((int64_t)cfg->n_heads * cfg->head_dim > CFG_MAX_WIDTH)
    return cfg_fail(c, "\"%s\" x head dimension (%d x %d) is too large", f->heads, cfg->n_heads, cfg->head_dim);
  return 0;
}

// ---- config.json --------------------------------------------------------------------------------

static int read_activation(const cfg_ctx *c, const cJSON *root, sn_model_config *cfg) {
  const char *act = NULL;
  if (get_string(c, root, "hidden_act", &act)) return -1;
  if (!act) return 0;
  int decoder = sn_arch_is_decoder(cfg->arch);
  int ok = decoder ? (strcmp(act, "silu") == 0 || strcmp(act, "swish") == 0) : strcmp(act, "gelu") == 0;
  if (!ok)
    return cfg_fail(c, "\"hidden_act\" is \"%.32s\", which is not supported for %s (expected \"%s\")", act,
                    sn_arch_name(cfg->arch), decoder ? "silu" : "gelu");
  return 0;  // "swish" is transformers' other name for SiLU: the default stays
}

// Plain RoPE only: rope_scaling must be null, rope_parameters (newer transformers) of type default.
static int read_rope(const cfg_ctx *c, const cJSON *root, sn_model_config *cfg) {
  if (field(root, "rope_scaling"))
    return cfg_fail(c, "\"rope_scaling\" is set; only plain RoPE is supported (expected null)");
  if (get_positive_float(c, root, "rope_theta", CFG_MAX_ROPE_THETA, &cfg->rope_theta)) return -1;
  const cJSON *params = field(root, "rope_parameters");
  if (!params) return 0;
  if (!cJSON_IsObject(params)) return cfg_fail(c, "\"rope_parameters\" is %s; expected an object", json_kind(params));
  const char *type = NULL;
  if (get_string(c, params, "rope_type", &type)) return cfg_fail(c, "\"rope_parameters.rope_type\" must be a string");
  if (type && strcmp(type, "default") != 0)
    return cfg_fail(c, "\"rope_parameters.rope_type\" is \"%.32s\"; only \"default\" RoPE is supported", type);
  if (get_positive_float(c, params, "rope_theta", CFG_MAX_ROPE_THETA, &cfg->rope_theta))
    return cfg_fail(c, "\"rope_parameters.rope_theta\" must be a positive number no larger than %g", CFG_MAX_ROPE_THETA);
  return 0;
}

static int read_decoder_options(const cfg_ctx *c, const cJSON *root, sn_model_config *cfg) {
  if (read_rope(c, root, cfg) ||
      get_positive_float(c, root, "rms_norm_eps", CFG_MAX_NORM_EPS, &cfg->norm_eps))
    return -1;
  if (cfg->arch == SN_ARCH_LLAMA)
    return get_bool(c, root, "attention_bias", &cfg->attn_bias) || get_bool(c, root, "mlp_bias", &cfg->mlp_bias);
  int sliding = 0;
  if (get_bool(c, root, "use_sliding_window", &sliding)) return -1;
  if (sliding) return cfg_fail(c, "\"use_sliding_window\" is true; sliding-window attention is not supported");
  return 0;
}

static int read_bert_options(const cfg_ctx *c, const cJSON *root, sn_model_config *cfg) {
  const char *position_type = NULL;
  if (get_int(c, root, "type_vocab_size", 0, 1, CFG_MAX_TYPE_VOCAB, &cfg->type_vocab) ||
      get_positive_float(c, root, "layer_norm_eps", CFG_MAX_NORM_EPS, &cfg->norm_eps) ||
      get_string(c, root, "position_embedding_type", &position_type))
    return -1;
  if (position_type && strcmp(position_type, "absolute") != 0)
    return cfg_fail(c, "\"position_embedding_type\" is \"%.32s\"; only \"absolute\" is supported", position_type);
  return 0;
}

int sn_config_parse_hf(sn_model_config *cfg, const char *json, size_t len, const char *path, char *err,
                       size_t errlen) {
  cfg_ctx c = {path, err, errlen};
  cJSON *root = parse_root(&c, json, len);
  if (!root) return -1;
  sn_arch arch = SN_ARCH_QWEN2;
  int head_dim_given = 0;
  int rc = detect_arch(&c, root, &arch);
  if (rc == 0) {
    set_arch_defaults(cfg, arch);
    rc = read_sizes(&c, root, &HF_FIELDS, 1, cfg, &head_dim_given) || validate_shapes(&c, &HF_FIELDS, cfg,
                                                                                        head_dim_given) ||
         read_activation(&c, root, cfg) || get_bool(&c, root, "tie_word_embeddings", &cfg->tie_embeddings) ||
         (sn_arch_is_decoder(arch) ? read_decoder_options(&c, root, cfg) : read_bert_options(&c, root, cfg)) ||
         get_token_id(&c, root, "bos_token_id", &cfg->bos_id) || get_token_id(&c, root, "eos_token_id", &cfg->eos_id) ||
         get_token_id(&c, root, "pad_token_id", &cfg->pad_id);
  }
  cJSON_Delete(root);
  return rc ? -1 : 0;
}

// ---- description for fresh models ---------------------------------------------------------------

static const char *const DESC_KEYS[] = {"arch",  "layers",        "hidden",     "heads", "kv_heads", "intermediate",
                                        "vocab", "max_positions", "rope_theta", "tie",   "head_dim"};
#define DESC_KEYS_TEXT "arch, layers, hidden, heads, kv_heads, intermediate, vocab, max_positions, rope_theta, tie, head_dim"

static int check_desc_keys(const cfg_ctx *c, const cJSON *root) {
  for (const cJSON *kv = root->child; kv; kv = kv->next) {
    int known = 0;
    for (size_t i = 0; i < SN_ARRAY_LEN(DESC_KEYS) && !known; i++) known = strcmp(kv->string, DESC_KEYS[i]) == 0;
    if (!known) return cfg_fail(c, "unknown key \"%.64s\" (allowed: " DESC_KEYS_TEXT ")", kv->string);
  }
  return 0;
}

// SwiGLU keeps the MLP's parameter count near BERT's 4x by using 8/3 x hidden for each of gate/up.
static int default_intermediate(const sn_model_config *cfg) {
  if (cfg->arch == SN_ARCH_BERT) return CFG_BERT_FFN_MULT * cfg->hidden;
  int width = (int)((8LL * cfg->hidden) / 3);
  return SN_CEIL_DIV(width, CFG_SWIGLU_MULTIPLE_OF) * CFG_SWIGLU_MULTIPLE_OF;
}

static int read_desc_arch(const cfg_ctx *c, const cJSON *root, sn_arch *arch) {
  const char *name = NULL;
  if (get_string(c, root, "arch", &name)) return -1;
  if (!name) return missing(c, "arch", "one of " SUPPORTED_MODEL_TYPES);
  if (lookup_arch(MODEL_TYPES, SN_ARRAY_LEN(MODEL_TYPES), name, arch) == 0) return 0;
  return cfg_fail(c, "\"arch\" is \"%.64s\", which is not supported (supported: " SUPPORTED_MODEL_TYPES ")", name);
}

int sn_config_parse_desc(sn_model_config *cfg, const char *json, size_t len, const char *path, char *err,
                         size_t errlen) {
  cfg_ctx c = {path, err, errlen};
  cJSON *root = parse_root(&c, json, len);
  if (!root) return -1;
  sn_arch arch = SN_ARCH_QWEN2;
  int head_dim_given = 0;
  int rc = check_desc_keys(&c, root) || read_desc_arch(&c, root, &arch);
  if (rc == 0) {
    set_arch_defaults(cfg, arch);
    cfg->max_positions = CFG_DESC_MAX_POSITIONS;
    cfg->tie_embeddings = 1;
    rc = read_sizes(&c, root, &DESC_FIELDS, 0, cfg, &head_dim_given) ||
         validate_shapes(&c, &DESC_FIELDS, cfg, head_dim_given) ||
         get_positive_float(&c, root, "rope_theta", CFG_MAX_ROPE_THETA, &cfg->rope_theta) ||
         get_bool(&c, root, "tie", &cfg->tie_embeddings);
  }
  if (rc == 0 && cfg->intermediate == 0) cfg->intermediate = default_intermediate(cfg);
  if (rc == 0 && cfg->intermediate > CFG_MAX_WIDTH)
    rc = cfg_fail(&c, "default \"intermediate\" (%d) is too large; give it explicitly", cfg->intermediate);
  cJSON_Delete(root);
  return rc ? -1 : 0;
}

// ---- loading and writing ------------------------------------------------------------------------

static int is_description(const char *json, size_t len) {
  cJSON *root = cJSON_ParseWithLength(json, len);
  int desc = cJSON_IsObject(root) && cJSON_GetObjectItemCaseSensitive(root, "arch") &&
             !cJSON_GetObjectItemCaseSensitive(root, "model_type");
  cJSON_Delete(root);
  return desc;
}

int sn_config_load_hf_dir_try(sn_model_config *cfg, const char *dir, char *err, size_t errlen) {
  struct stat st;
  char path[4096];
  int is_dir = stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
  if (snprintf(path, sizeof path, is_dir ? "%s/config.json" : "%s", dir) >= (int)sizeof path)
    return sn_errorf(err, errlen, "%s: path too long", dir);
  size_t len;
  char *text = sn_read_file(path, &len);
  if (!text) return sn_errorf(err, errlen, "%s: cannot read the model config: %s", path, strerror(errno));
  int rc = is_description(text, len) ? sn_config_parse_desc(cfg, text, len, path, err, errlen)
                                     : sn_config_parse_hf(cfg, text, len, path, err, errlen);
  free(text);
  return rc ? -1 : 0;
}

void sn_config_load_hf_dir(sn_model_config *cfg, const char *dir) {
  char err[1024];
  if (sn_config_load_hf_dir_try(cfg, dir, err, sizeof err) != 0) sn_bad_input("%s", err);
}

// The shortest decimal that reads back as the same float, so 1e-6f is written "1e-06", not
// "9.99999997e-07".
static double shortest_decimal(float f) {
  char buf[32];
  for (int digits = 1; digits <= CFG_FLOAT_MAX_DIGITS; digits++) {
    snprintf(buf, sizeof buf, "%.*g", digits, (double)f);
    if (strtof(buf, NULL) == f) break;
  }
  return strtod(buf, NULL);
}

static void add_token_id(cJSON *o, const char *key, int id) {
  if (id < 0) cJSON_AddNullToObject(o, key);
  else cJSON_AddNumberToObject(o, key, id);
}

static void add_common_fields(cJSON *o, const sn_model_config *cfg) {
  cJSON_AddNumberToObject(o, "hidden_size", cfg->hidden);
  cJSON_AddNumberToObject(o, "num_hidden_layers", cfg->n_layers);
  cJSON_AddNumberToObject(o, "num_attention_heads", cfg->n_heads);
  cJSON_AddNumberToObject(o, "intermediate_size", cfg->intermediate);
  cJSON_AddNumberToObject(o, "vocab_size", cfg->vocab);
  cJSON_AddNumberToObject(o, "max_position_embeddings", cfg->max_positions);
  cJSON_AddStringToObject(o, "hidden_act", cfg->hidden_act);
  cJSON_AddBoolToObject(o, "tie_word_embeddings", cfg->tie_embeddings);
  cJSON_AddNumberToObject(o, "initializer_range", 0.02);
  add_token_id(o, "bos_token_id", cfg->bos_id);
  add_token_id(o, "eos_token_id", cfg->eos_id);
  add_token_id(o, "pad_token_id", cfg->pad_id);
  // transformers <= 4.55 reads torch_dtype, newer ones dtype; weights are read as fp32 either way
  cJSON_AddStringToObject(o, "torch_dtype", "float32");
  cJSON_AddStringToObject(o, "dtype", "float32");
}

static void add_decoder_fields(cJSON *o, const sn_model_config *cfg) {
  cJSON_AddNumberToObject(o, "num_key_value_heads", cfg->n_kv_heads);
  cJSON_AddNumberToObject(o, "head_dim", cfg->head_dim);
  cJSON_AddNumberToObject(o, "rope_theta", shortest_decimal(cfg->rope_theta));
  cJSON_AddNullToObject(o, "rope_scaling");
  cJSON_AddNumberToObject(o, "rms_norm_eps", shortest_decimal(cfg->norm_eps));
  cJSON_AddNumberToObject(o, "attention_dropout", 0.0);
  if (cfg->arch == SN_ARCH_QWEN2) {
    cJSON_AddFalseToObject(o, "use_sliding_window");
    cJSON_AddNumberToObject(o, "sliding_window", cfg->max_positions);
    cJSON_AddNumberToObject(o, "max_window_layers", cfg->n_layers);
  } else {
    cJSON_AddBoolToObject(o, "attention_bias", cfg->attn_bias);
    cJSON_AddBoolToObject(o, "mlp_bias", cfg->mlp_bias);
    cJSON_AddNumberToObject(o, "pretraining_tp", 1);
  }
}

static void add_bert_fields(cJSON *o, const sn_model_config *cfg) {
  cJSON_AddNumberToObject(o, "type_vocab_size", cfg->type_vocab);
  cJSON_AddNumberToObject(o, "layer_norm_eps", shortest_decimal(cfg->norm_eps));
  cJSON_AddStringToObject(o, "position_embedding_type", "absolute");
  cJSON_AddNumberToObject(o, "hidden_dropout_prob", 0.1);
  cJSON_AddNumberToObject(o, "attention_probs_dropout_prob", 0.1);
}

char *sn_config_to_hf_json(const sn_model_config *cfg) {
  static const char *const base_model[] = {[SN_ARCH_QWEN2] = "Qwen2Model", [SN_ARCH_LLAMA] = "LlamaModel",
                                           [SN_ARCH_BERT] = "BertModel"};
  cJSON *o = cJSON_CreateObject();
  cJSON *archs = cJSON_AddArrayToObject(o, "architectures");
  cJSON_AddItemToArray(archs, cJSON_CreateString(base_model[cfg->arch]));
  cJSON_AddStringToObject(o, "model_type", sn_arch_name(cfg->arch));
  add_common_fields(o, cfg);
  if (sn_arch_is_decoder(cfg->arch)) add_decoder_fields(o, cfg);
  else add_bert_fields(o, cfg);
  char *text = cJSON_Print(o);
  cJSON_Delete(o);
  if (!text) sn_fatal("cJSON_Print failed: out of memory");
  // cJSON allocates with malloc by default, so the caller's free() matches
  return text;
}

// Parameters of the base model as transformers builds it (Qwen2Model / LlamaModel / BertModel): no
// LM head (the towers pool hidden states) and no BERT pooler.
int64_t sn_config_num_params(const sn_model_config *cfg) {
  int64_t C = cfg->hidden, I = cfg->intermediate, V = cfg->vocab;
  int64_t q = (int64_t)cfg->n_heads * cfg->head_dim, kv = (int64_t)cfg->n_kv_heads * cfg->head_dim;
  int64_t attn = C * (q + 2 * kv) + q * C;
  if (cfg->attn_bias) attn += q + 2 * kv;
  if (cfg->arch == SN_ARCH_BERT) {
    int64_t layer = attn + C /* output bias */ + 2 * C /* LayerNorm */ + C * I + I + I * C + C + 2 * C;
    int64_t embeddings = (V + cfg->max_positions + cfg->type_vocab) * C + 2 * C;
    return embeddings + cfg->n_layers * layer;
  }
  if (cfg->arch == SN_ARCH_LLAMA && cfg->attn_bias) attn += C;  // Llama's attention_bias covers o_proj too
  int64_t mlp = 3 * C * I + (cfg->mlp_bias ? 2 * I + C : 0);
  int64_t layer = attn + mlp + 2 * C /* RMSNorm weights */;
  return V * C + cfg->n_layers * layer + C /* final norm */;
}

int sn_config_check_seq_len(const sn_model_config *cfg, const char *model, int len, const char *len_name,
                            char *err, size_t errlen) {
  if (cfg->max_positions <= 0 || len <= cfg->max_positions) return 0;
  snprintf(err, errlen, "%s %d is more than the %d positions of %s (its max_position_embeddings): use at most %d",
           len_name, len, cfg->max_positions, model, cfg->max_positions);
  return -1;
}
