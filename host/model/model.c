// The parameter table (Hugging Face names and shapes → slices of one flat buffer), fresh seeded
// models, gradients, optimizer spans and token batches. Loading/saving: model_io.c; activations,
// forward/backward dispatch and pooling: model_acts.c; the passes: model_decoder.c, model_encoder.c.
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "counter_rng.h"
#include "model_internal.h"

// ---- parameter table ----------------------------------------------------------------------------

size_t sn_param_add(sn_param_builder *pb, int no_decay, int64_t d0, int64_t d1, const char *fmt, ...) {
  sn_model *m = pb->m;
  if (m->nparams == pb->cap) {
    pb->cap = pb->cap ? 2 * pb->cap : 64;
    m->params = reallocCheck(m->params, (size_t)pb->cap * sizeof(sn_param));
  }
  sn_param *p = &m->params[m->nparams++];
  memset(p, 0, sizeof *p);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(p->name, sizeof p->name, fmt, ap);
  va_end(ap);
  if (n < 0 || n >= (int)sizeof p->name) sn_fatal("parameter name too long: %s", p->name);
  p->ndim = d1 > 0 ? 2 : 1;
  p->shape[0] = d0;
  p->shape[1] = d1 > 0 ? d1 : 0;
  p->count = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
  p->offset = m->num_elements;
  p->no_decay = no_decay;
  m->num_elements += p->count;
  return p->offset;
}

#define VECTOR 0  // second dimension of a 1-D tensor
#define DECAY 0
#define NO_DECAY 1

static void build_decoder_params(sn_param_builder *pb, sn_layer_params *L, int has_lm_head) {
  const sn_model_config *c = &pb->m->cfg;
  struct sn_model_layout *lay = pb->m->layout;
  const int C = c->hidden, D = c->head_dim, I = c->intermediate;
  const int q_out = c->n_heads * D, kv_out = c->n_kv_heads * D;
  // Qwen2: q/k/v biases, none on o_proj. Llama: attention_bias covers q/k/v/o, mlp_bias the MLP.
  const int o_bias = c->attn_bias && c->arch == SN_ARCH_LLAMA;
  lay->tok_embed = sn_param_add(pb, DECAY, c->vocab, C, "embed_tokens.weight");
  for (int l = 0; l < c->n_layers; l++) {
    sn_layer_params *p = &L[l];
    p->norm_attn_w = sn_param_add(pb, NO_DECAY, C, VECTOR, "layers.%d.input_layernorm.weight", l);
    p->qkv_w = sn_param_add(pb, DECAY, q_out, C, "layers.%d.self_attn.q_proj.weight", l);
    sn_param_add(pb, DECAY, kv_out, C, "layers.%d.self_attn.k_proj.weight", l);
    sn_param_add(pb, DECAY, kv_out, C, "layers.%d.self_attn.v_proj.weight", l);
    if (c->attn_bias) {
      p->qkv_b = sn_param_add(pb, NO_DECAY, q_out, VECTOR, "layers.%d.self_attn.q_proj.bias", l);
      sn_param_add(pb, NO_DECAY, kv_out, VECTOR, "layers.%d.self_attn.k_proj.bias", l);
      sn_param_add(pb, NO_DECAY, kv_out, VECTOR, "layers.%d.self_attn.v_proj.bias", l);
    }
    p->o_w = sn_param_add(pb, DECAY, C, q_out, "layers.%d.self_attn.o_proj.weight", l);
    if (o_bias) p->o_b = sn_param_add(pb, NO_DECAY, C, VECTOR, "layers.%d.self_attn.o_proj.bias", l);
    p->norm_mlp_w = sn_param_add(pb, NO_DECAY, C, VECTOR, "layers.%d.post_attention_layernorm.weight", l);
    p->up_w = sn_param_add(pb, DECAY, I, C, "layers.%d.mlp.gate_proj.weight", l);
    sn_param_add(pb, DECAY, I, C, "layers.%d.mlp.up_proj.weight", l);
    if (c->mlp_bias) {
      p->up_b = sn_param_add(pb, NO_DECAY, I, VECTOR, "layers.%d.mlp.gate_proj.bias", l);
      sn_param_add(pb, NO_DECAY, I, VECTOR, "layers.%d.mlp.up_proj.bias", l);
    }
    p->down_w = sn_param_add(pb, DECAY, C, I, "layers.%d.mlp.down_proj.weight", l);
    if (c->mlp_bias) p->down_b = sn_param_add(pb, NO_DECAY, C, VECTOR, "layers.%d.mlp.down_proj.bias", l);
  }
  lay->final_norm_w = sn_param_add(pb, NO_DECAY, C, VECTOR, "norm.weight");
  if (has_lm_head) lay->lm_head = sn_param_add(pb, DECAY, c->vocab, C, "lm_head.weight");
}

static void build_encoder_params(sn_param_builder *pb, sn_layer_params *L, int has_pooler) {
  const sn_model_config *c = &pb->m->cfg;
  struct sn_model_layout *lay = pb->m->layout;
  const int C = c->hidden, I = c->intermediate;
  lay->tok_embed = sn_param_add(pb, DECAY, c->vocab, C, "embeddings.word_embeddings.weight");
  lay->pos_embed = sn_param_add(pb, DECAY, c->max_positions, C, "embeddings.position_embeddings.weight");
  lay->type_embed = sn_param_add(pb, DECAY, c->type_vocab, C, "embeddings.token_type_embeddings.weight");
  lay->emb_norm_w = sn_param_add(pb, NO_DECAY, C, VECTOR, "embeddings.LayerNorm.weight");
  lay->emb_norm_b = sn_param_add(pb, NO_DECAY, C, VECTOR, "embeddings.LayerNorm.bias");
  for (int l = 0; l < c->n_layers; l++) {
    sn_layer_params *p = &L[l];
    const char *pre = "encoder.layer";
    p->qkv_w = sn_param_add(pb, DECAY, C, C, "%s.%d.attention.self.query.weight", pre, l);
    sn_param_add(pb, DECAY, C, C, "%s.%d.attention.self.key.weight", pre, l);
    sn_param_add(pb, DECAY, C, C, "%s.%d.attention.self.value.weight", pre, l);
    p->qkv_b = sn_param_add(pb, NO_DECAY, C, VECTOR, "%s.%d.attention.self.query.bias", pre, l);
    sn_param_add(pb, NO_DECAY, C, VECTOR, "%s.%d.attention.self.key.bias", pre, l);
    sn_param_add(pb, NO_DECAY, C, VECTOR, "%s.%d.attention.self.value.bias", pre, l);
    p->o_w = sn_param_add(pb, DECAY, C, C, "%s.%d.attention.output.dense.weight", pre, l);
    p->o_b = sn_param_add(pb, NO_DECAY, C, VECTOR, "%s.%d.attention.output.dense.bias", pre, l);
    p->norm_attn_w = sn_param_add(pb, NO_DECAY, C, VECTOR, "%s.%d.attention.output.LayerNorm.weight", pre, l);
    p->norm_attn_b = sn_param_add(pb, NO_DECAY, C, VECTOR, "%s.%d.attention.output.LayerNorm.bias", pre, l);
    p->up_w = sn_param_add(pb, DECAY, I, C, "%s.%d.intermediate.dense.weight", pre, l);
    p->up_b = sn_param_add(pb, NO_DECAY, I, VECTOR, "%s.%d.intermediate.dense.bias", pre, l);
    p->down_w = sn_param_add(pb, DECAY, C, I, "%s.%d.output.dense.weight", pre, l);
    p->down_b = sn_param_add(pb, NO_DECAY, C, VECTOR, "%s.%d.output.dense.bias", pre, l);
    p->norm_mlp_w = sn_param_add(pb, NO_DECAY, C, VECTOR, "%s.%d.output.LayerNorm.weight", pre, l);
    p->norm_mlp_b = sn_param_add(pb, NO_DECAY, C, VECTOR, "%s.%d.output.LayerNorm.bias", pre, l);
  }
  if (has_pooler) {
    lay->pooler_w = sn_param_add(pb, DECAY, C, C, "pooler.dense.weight");
    lay->pooler_b = sn_param_add(pb, NO_DECAY, C, VECTOR, "pooler.dense.bias");
  }
}

int sn_model_config_check(const sn_model_config *c, char *err, size_t errlen) {
  if (c->n_layers < 0 || c->hidden <= 0 || c->n_heads <= 0 || c->n_kv_heads <= 0 ||
      c->head_dim <= 0 || c->intermediate <= 0 || c->vocab <= 0)
    return sn_errorf(err, errlen, "model config: non-positive size (layers %d, hidden %d, heads %d, kv_heads %d, "
                     "head_dim %d, intermediate %d, vocab %d)", c->n_layers, c->hidden, c->n_heads,
                     c->n_kv_heads, c->head_dim, c->intermediate, c->vocab);
  if (c->n_heads % c->n_kv_heads != 0)
    return sn_errorf(err, errlen, "model config: heads %d not a multiple of kv_heads %d", c->n_heads, c->n_kv_heads);
  if (c->arch == SN_ARCH_BERT) {
    if (c->n_kv_heads != c->n_heads || c->n_heads * c->head_dim != c->hidden)
      return sn_errorf(err, errlen, "model config: BERT needs kv_heads == heads and heads*head_dim == hidden "
                       "(heads %d, kv_heads %d, head_dim %d, hidden %d)", c->n_heads, c->n_kv_heads,
                       c->head_dim, c->hidden);
    if (c->max_positions <= 0 || c->type_vocab <= 0)
      return sn_errorf(err, errlen, "model config: BERT needs max_position_embeddings > 0 and type_vocab_size > 0 "
                       "(got %d, %d)", c->max_positions, c->type_vocab);
  }
  return 0;
}

static void check_config(const sn_model_config *c) {
  char err[512];
  if (sn_model_config_check(c, err, sizeof err) != 0) sn_bad_input("%s", err);
}

void sn_model_build_params(sn_model *m, int has_lm_head, int has_pooler, int proj_dim) {
  check_config(&m->cfg);
  struct sn_model_layout *lay = m->layout;
  sn_layer_params *layers = lay->layers;
  // Every optional tensor starts absent; the builders fill in what this model has.
  memset(lay, 0, sizeof *lay);
  lay->layers = layers;
  size_t *model_slots[] = {&lay->tok_embed, &lay->final_norm_w, &lay->lm_head, &lay->pos_embed,
                           &lay->type_embed, &lay->emb_norm_w, &lay->emb_norm_b, &lay->pooler_w,
                           &lay->pooler_b, &lay->proj_w, &lay->proj_b};
  for (size_t i = 0; i < SN_ARRAY_LEN(model_slots); i++) *model_slots[i] = SN_NO_PARAM;
  static const sn_layer_params no_layer_params = {
      .norm_attn_w = SN_NO_PARAM, .norm_attn_b = SN_NO_PARAM, .qkv_w = SN_NO_PARAM,
      .qkv_b = SN_NO_PARAM,       .o_w = SN_NO_PARAM,         .o_b = SN_NO_PARAM,
      .norm_mlp_w = SN_NO_PARAM,  .norm_mlp_b = SN_NO_PARAM,  .up_w = SN_NO_PARAM,
      .up_b = SN_NO_PARAM,        .down_w = SN_NO_PARAM,      .down_b = SN_NO_PARAM};
  for (int l = 0; l < m->cfg.n_layers; l++) layers[l] = no_layer_params;
  const sn_model_config *c = &m->cfg;
  lay->qkv_dim = (c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
  lay->attn_dim = c->n_heads * c->head_dim;
  lay->up_dim = sn_arch_is_decoder(c->arch) ? 2 * c->intermediate : c->intermediate;

  sn_param_builder pb = {.m = m, .cap = 0};
  free(m->params);
  m->params = NULL;
  m->nparams = 0;
  m->num_elements = 0;
  if (sn_arch_is_decoder(c->arch)) {
    lay->has_lm_head = has_lm_head;
    build_decoder_params(&pb, layers, has_lm_head);
  } else {
    lay->has_pooler = has_pooler;
    build_encoder_params(&pb, layers, has_pooler);
  }
  if (proj_dim > 0) {
    lay->proj_dim = proj_dim;
    lay->proj_w = sn_param_add(&pb, DECAY, proj_dim, c->hidden, "projection.weight");
    lay->proj_b = sn_param_add(&pb, NO_DECAY, proj_dim, VECTOR, "projection.bias");
  }
}

sn_model *sn_model_shell(const sn_model_config *cfg, const sn_ops *ops) {
  sn_model *m = callocCheck(1, sizeof(sn_model));
  m->cfg = *cfg;
  m->ops = ops;
  m->layout = callocCheck(1, sizeof(struct sn_model_layout));
  m->layout->layers = callocCheck((size_t)SN_MAX(cfg->n_layers, 1), sizeof(sn_layer_params));
  return m;
}

void sn_model_free(sn_model *m) {
  if (!m) return;
  if (m->is_view) {  // a LoRA tower: the base and the adapter are freed by their owners
    free(m);
    return;
  }
  if (m->weights) m->ops->free(m->weights);
  if (m->grads) m->ops->free(m->grads);
  free(m->params);
  if (m->layout) free(m->layout->layers);
  free(m->layout);
  free(m);
}

const sn_param *sn_model_find_param(const sn_model *m, const char *name) {
  for (int i = 0; i < m->nparams; i++)
    if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
  return NULL;
}

// ---- fresh models -------------------------------------------------------------------------------

#define SN_INIT_STD 0.02f  // normal(0, 0.02), as transformers' initializer_range

static int is_norm_weight(const sn_param *p) {
  size_t n = strlen(p->name);
  const char *suffix = ".weight";
  size_t ns = strlen(suffix);
  return p->ndim == 1 && n >= ns && strcmp(p->name + n - ns, suffix) == 0;
}

void sn_model_init_params(sn_model *m, int first, uint64_t seed) {
  const sn_ops *ops = m->ops;
  for (int i = first; i < m->nparams; i++) {
    const sn_param *p = &m->params[i];
    void *x = sn_wptr(m, p->offset);
    // 2-D tensors (matrices, tables) are normal(0, 0.02), one stream each; 1-D tensors are norm
    // weights (ones) or biases (zeros).
    if (p->ndim == 2) ops->fill_normal(x, p->count, sn_rng_stream_key(seed, (uint64_t)i), SN_INIT_STD);
    else ops->fill(x, p->count, is_norm_weight(p) ? 1.0f : 0.0f);
  }
  ops->synchronize();
}

sn_model *sn_model_plan(const sn_model_config *cfg, const sn_ops *ops, int proj_dim) {
  sn_model *m = sn_model_shell(cfg, ops);
  sn_model_build_params(m, !cfg->tie_embeddings && sn_arch_is_decoder(cfg->arch), 0, proj_dim);
  return m;
}

sn_model *sn_model_new(const sn_model_config *cfg, const sn_ops *ops, uint64_t seed) {
  sn_model *m = sn_model_plan(cfg, ops, 0);
  m->weights = ops->alloc(m->num_elements * ops->storage_size);
  sn_model_init_params(m, 0, seed);
  return m;
}

sn_model *sn_model_add_projection(sn_model *m, int out_dim, uint64_t seed) {
  if (out_dim <= 0) sn_fatal("sn_model_add_projection: out_dim %d must be positive", out_dim);
  if (m->layout->proj_dim) sn_fatal("sn_model_add_projection: the model already has a projection");
  const sn_ops *ops = m->ops;
  sn_model *p = sn_model_shell(&m->cfg, ops);
  sn_model_build_params(p, m->layout->has_lm_head, m->layout->has_pooler, out_dim);
  p->weights = ops->alloc(p->num_elements * ops->storage_size);
  // The projection comes after every other tensor: the old buffer is a prefix of the new one.
  ops->copy(p->weights, m->weights, m->num_elements * ops->storage_size);
  sn_model_init_params(p, m->nparams, seed);
  if (m->grads) sn_model_alloc_grads(p);
  sn_model_free(m);
  return p;
}

int sn_model_out_dim(const sn_model *m) {
  return m->layout->proj_dim ? m->layout->proj_dim : m->cfg.hidden;
}

// ---- gradients and optimizer spans --------------------------------------------------------------

void sn_model_alloc_grads(sn_model *m) {
  if (!m->grads) m->grads = m->ops->alloc(m->num_elements * m->ops->storage_size);
  sn_model_zero_grads(m);
}

void sn_model_zero_grads(sn_model *m) {
  if (!m->grads) sn_fatal("sn_model_zero_grads: gradients not allocated (call sn_model_alloc_grads)");
  m->ops->memset_zero(m->grads, m->num_elements * m->ops->storage_size);
}

// Tensors kept only so that a save writes the checkpoint back whole (an untied lm_head, BERT's
// pooler): the forward never reads them, so their gradient is zero.
static int is_unused_by_forward(const sn_model *m, const sn_param *p) {
  const struct sn_model_layout *lay = m->layout;
  return (p->offset == lay->lm_head && !m->trains_lm_head) || p->offset == lay->pooler_w || p->offset == lay->pooler_b;
}

int sn_model_lm_head(const sn_model *m, const void **weight, void **grad) {
  const struct sn_model_layout *lay = m->layout;
  if (!sn_arch_is_decoder(m->cfg.arch)) return -1;
  size_t offset = lay->has_lm_head ? lay->lm_head : m->cfg.tie_embeddings ? lay->tok_embed : SN_NO_PARAM;
  if (offset == SN_NO_PARAM) return -1;
  *weight = sn_wptr(m, offset);
  *grad = sn_gptr(m, offset);
  return 0;
}

sn_param_span *sn_model_param_spans(const sn_model *m, float wd, int *nspans) {
  sn_param_span *spans = mallocCheck((size_t)SN_MAX(m->nparams, 1) * sizeof(sn_param_span));
  int n = 0;
  // Neighbouring tensors with the same decay merge into one span: fewer spans, same update.
  for (int i = 0; i < m->nparams; i++) {
    const sn_param *p = &m->params[i];
    // Unused tensors get no span: weight decay alone would otherwise shrink them every step.
    if (is_unused_by_forward(m, p)) continue;
    float w = p->no_decay ? 0.0f : wd;
    if (n > 0 && spans[n - 1].weight_decay == w && spans[n - 1].offset + spans[n - 1].count == p->offset) {
      spans[n - 1].count += p->count;
    } else {
      spans[n++] = (sn_param_span){.offset = p->offset, .count = p->count, .weight_decay = w};
    }
  }
  *nspans = n;
  return spans;
}

// ---- token batches ------------------------------------------------------------------------------

// Elements of an int32 array of n padded to 16 bytes (where the next array of sn_tokens starts).
#define TOKENS_ALIGN 4
static size_t tokens_padded(size_t n) { return (n + TOKENS_ALIGN - 1) / TOKENS_ALIGN * TOKENS_ALIGN; }

void sn_tokens_alloc(sn_tokens *t, const sn_ops *ops, int capacity_tokens, int capacity_seqs) {
  if (capacity_tokens <= 0 || capacity_seqs <= 0)
    sn_fatal("sn_tokens_alloc: capacities must be positive (%d tokens, %d seqs)", capacity_tokens,
             capacity_seqs);
  memset(t, 0, sizeof *t);
  const size_t bytes = sn_tokens_bytes(capacity_tokens, capacity_seqs);
  t->packed = ops->alloc(bytes);
  t->capacity_tokens = capacity_tokens;
  t->capacity_seqs = capacity_seqs;
  t->staging = ops->host_alloc(bytes);
}

size_t sn_tokens_bytes(int capacity_tokens, int capacity_seqs) {
  return (2 * tokens_padded((size_t)capacity_tokens) + (size_t)capacity_seqs + 1) * sizeof(int32_t);
}

void sn_tokens_free(sn_tokens *t, const sn_ops *ops) {
  if (t->packed) ops->free(t->packed);
  if (t->staging) {
    if (t->copies_pending) ops->synchronize();
    ops->host_free(t->staging);
  }
  memset(t, 0, sizeof *t);
}

void sn_tokens_upload(sn_tokens *t, const sn_ops *ops, const int32_t *ids_host,
                      const int32_t *cu_seqlens_host, int B, int vocab, const char *what) {
  if (B <= 0 || B > t->capacity_seqs)
    sn_fatal("%s: %d sequences, capacity %d", what, B, t->capacity_seqs);
  if (cu_seqlens_host[0] != 0) sn_fatal("%s: cu_seqlens[0] = %d, expected 0", what, cu_seqlens_host[0]);
  const int T = cu_seqlens_host[B];
  if (T > t->capacity_tokens) sn_fatal("%s: %d tokens, capacity %d", what, T, t->capacity_tokens);
  if (t->copies_pending) ops->synchronize();  // the staging may still be read by the last upload
  // (ids | pos | cu_seqlens) packed for this T, the same offsets in the staging and on the backend
  const size_t pos_at = tokens_padded((size_t)T), cu_at = pos_at + tokens_padded((size_t)T);
  int32_t *ids = t->staging, *pos = ids + pos_at, *cu = ids + cu_at;
  int max_seqlen = 0;
  for (int b = 0; b < B; b++) {
    const int start = cu_seqlens_host[b], end = cu_seqlens_host[b + 1];
    if (end <= start) sn_bad_input("%s: sequence %d is empty", what, b);
    for (int i = start; i < end; i++) {
      if (ids_host[i] < 0 || ids_host[i] >= vocab)
        sn_bad_input("%s: sequence %d, token %d: id %d outside the vocabulary [0, %d)", what, b,
                     i - start, ids_host[i], vocab);
      pos[i] = i - start;
    }
    max_seqlen = SN_MAX(max_seqlen, end - start);
  }
  memcpy(ids, ids_host, (size_t)T * sizeof(int32_t));
  memcpy(cu, cu_seqlens_host, (size_t)(B + 1) * sizeof(int32_t));
  // one copy: a serving call is ~100 µs, and each small copy costs a few of them
  ops->upload_async(t->packed, t->staging, (cu_at + (size_t)B + 1) * sizeof(int32_t));
  t->ids = t->packed;
  t->pos = t->packed + pos_at;
  t->cu_seqlens = t->packed + cu_at;
  t->copies_pending = 1;
  t->B = B;
  t->T = T;
  t->max_seqlen = max_seqlen;
}

// ---- linear layers ------------------------------------------------------------------------------

// An environment switch of the inference paths: 0 or 1, `fallback` when unset. Another value is
// warned about once and read as the fallback rather than fatal: the encoder library never exits on
// bad input, and the paths give the same embeddings either way.
static int env_switch(const char *name, int fallback, int *warned) {
  const char *v = getenv(name);
  if (!v) return fallback;
  if (!strcmp(v, "0") || !strcmp(v, "1")) return v[0] == '1';
  if (!*warned) {
    *warned = 1;
    fprintf(stderr, "warning: environment variable %s='%s' is neither 0 nor 1; read as %d\n", name, v, fallback);
  }
  return fallback;
}

// SN_SMALL_BATCH: the small-batch ops at all. Off by default: on the H100 the path measured slower
// than the general one (docs/PERFORMANCE.md, "Serving queries").
static int small_batch_allowed(void) {
  static int warned;
  return env_switch("SN_SMALL_BATCH", 0, &warned);
}

// SN_SHORT_ATTENTION=1 runs a decoder's inference attention over short sequences as
// attention_rope_forward (RoPE while the flash kernel loads q and k) instead of rope +
// attention_forward. Off by default: on the H100 the 0.5B query took 0.972 ms with it against 0.955
// and 0.948 without (docs/PERFORMANCE.md): the rope pass's launch overlaps the projection's tail
// (programmatic dependent launch), while the fused rotation's sincosf sits on the attention's path.
int sn_short_attention_path(const sn_model *m, const sn_tokens *tok, int for_backward) {
  static int warned;
  const sn_model_config *c = &m->cfg;
  const int head_fits = c->head_dim % 2 == 0 && c->head_dim <= SN_ATTENTION_SHORT_MAX_HEAD_DIM;
  return !for_backward && !m->lora && m->ops->attention_rope_forward && tok->max_seqlen >= 1 &&
         tok->max_seqlen <= SN_ATTENTION_SHORT_MAX_SEQLEN && head_fits &&
         env_switch("SN_SHORT_ATTENTION", 0, &warned);
}

// SN_FUSED_DECODER=1 runs a decoder's inference forward over a few tokens as one op
// (decoder_fused_forward) where the backend takes the shape. Off by default: slower than the
// unfused path on the H100 (docs/PERFORMANCE.md).
int sn_fused_decoder_path(const sn_model *m, const sn_tokens *tok, int for_backward) {
  static int warned;
  return !for_backward && !m->lora && m->ops->decoder_fused_forward && m->cfg.n_layers >= 1 &&
         m->cfg.n_layers <= SN_DECODER_FUSED_MAX_LAYERS && tok->T >= 1 && tok->T <= SN_DECODER_FUSED_MAX_ROWS &&
         env_switch("SN_FUSED_DECODER", 0, &warned);
}

// SN_FULL_LAST_BLOCK=1 runs a pooled decoder's last block on every row, as the forward that keeps
// the hidden state does: to time what the pooled rows save (docs/PERFORMANCE.md).
int sn_pooled_rows_path(const sn_model *m, const sn_acts *a, const sn_tokens *tok, sn_pooling pooling) {
  static int warned;
  const int one_row_a_sequence = pooling == SN_POOL_LAST || pooling == SN_POOL_FIRST;
  return sn_arch_is_decoder(m->cfg.arch) && m->cfg.n_layers > 0 && one_row_a_sequence && tok->T > tok->B &&
         !(m->lora && a->lora_dropout_on) && !env_switch("SN_FULL_LAST_BLOCK", 0, &warned);
}

int sn_small_batch_path(const sn_model *m, const sn_tokens *tok, int for_backward) {
  const sn_model_config *c = &m->cfg;
  const struct sn_model_layout *lay = m->layout;
  const int widths_packed = c->hidden % 8 == 0 && c->intermediate % 8 == 0 && lay->attn_dim % 8 == 0;
  _Static_assert(SN_LINEAR_SMALL_MAX_ROWS <= SN_ATTENTION_SHORT_MAX_SEQLEN,
                 "a batch small enough for linear_small may take the short attention");
  return m->ops->linear_small && tok->T >= 1 && tok->T <= SN_LINEAR_SMALL_MAX_ROWS && widths_packed &&
         !for_backward && !m->lora && small_batch_allowed();
}

void sn_linear_forward(const sn_ops *ops, void *y, const void *x, const void *w, const void *b,
                       int T, int in, int out) {
  ops->matmul(y, x, w, b, T, out, in, 0, 1, 0);  // (T, out) = (T, in) @ (out, in)^T
}

void sn_linear_backward(const sn_ops *ops, void *dx, void *dw, void *db, const void *dy,
                        const void *x, const void *w, int T, int in, int out, int accumulate_dx) {
  if (dx) ops->matmul(dx, dy, w, NULL, T, in, out, 0, 0, accumulate_dx);  // (T, in) = (T, out) @ (out, in)
  if (dw) ops->matmul(dw, dy, x, NULL, out, in, T, 1, 0, 1);  // (out, in) += dy^T @ x; none when frozen
  if (db) ops->bias_backward(db, dy, T, out);
}

// ---- pooling names -------------------------------------------------------------------------------

int sn_pooling_parse(const char *name, sn_pooling *out) {
  if (!strcmp(name, "last")) *out = SN_POOL_LAST;
  else if (!strcmp(name, "mean")) *out = SN_POOL_MEAN;
  else if (!strcmp(name, "cls") || !strcmp(name, "first")) *out = SN_POOL_FIRST;
  else return -1;
  return 0;
}

sn_pooling sn_pooling_from_name(const char *name, const char *what) {
  sn_pooling p;
  if (sn_pooling_parse(name, &p) != 0) sn_bad_input("%s: unknown pooling '%s' (valid: last|mean|cls)", what, name);
  return p;
}

const char *sn_pooling_name(sn_pooling p) {
  switch (p) {
    case SN_POOL_LAST: return "last";
    case SN_POOL_MEAN: return "mean";
    case SN_POOL_FIRST: return "cls";
  }
  return "?";
}
