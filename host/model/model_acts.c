// The activation workspace, the forward/backward entry points (checks, then the architecture's
// pass) and pooling.
#include <string.h>

#include "common.h"
#include "model_internal.h"
#include "model_lora.h"

void *sn_acts_alloc(sn_acts *a, size_t bytes) {
  a->bytes += bytes;
  if (a->count_only) return NULL;  // sn_model_plan: sizes only
  if (a->nallocs == a->cap_allocs) {
    a->cap_allocs = a->cap_allocs ? 2 * a->cap_allocs : 64;
    a->allocs = reallocCheck(a->allocs, (size_t)a->cap_allocs * sizeof(void *));
  }
  void *p = a->ops->alloc(bytes);
  a->allocs[a->nallocs++] = p;
  return p;
}

// The buffers of one block slot (what the architecture's pass reads and writes).
static void alloc_layer_slot(sn_acts *a, sn_layer_acts *s) {
  const size_t T = (size_t)a->max_tokens, C = (size_t)a->cfg.hidden, I = (size_t)a->cfg.intermediate;
  const size_t es = a->ops->storage_size, fs = sizeof(float);
  const int decoder = sn_arch_is_decoder(a->cfg.arch);
  memset(s, 0, sizeof *s);
  if (decoder) {
    s->norm_in = sn_acts_alloc(a, T * C * es);
    s->rstd_in = sn_acts_alloc(a, T * fs);
  }
  s->qkv = sn_acts_alloc(a, T * (size_t)a->qkv_dim * es);
  s->att = sn_acts_alloc(a, T * (size_t)a->attn_dim * es);
  s->lse = sn_acts_alloc(a, (size_t)a->cfg.n_heads * T * fs);
  s->x = sn_acts_alloc(a, T * C * es);
  s->norm_mid = sn_acts_alloc(a, T * C * es);
  s->rstd_mid = sn_acts_alloc(a, T * fs);
  s->ff_in = sn_acts_alloc(a, T * (size_t)a->up_dim * es);
  s->ff_act = sn_acts_alloc(a, T * I * es);
  if (!decoder) {
    s->mean_mid = sn_acts_alloc(a, T * fs);
    s->y = sn_acts_alloc(a, T * C * es);
    s->mean_out = sn_acts_alloc(a, T * fs);
    s->rstd_out = sn_acts_alloc(a, T * fs);
  }
}

// count_only: every buffer is counted in a->bytes and none is allocated (the memory plan).
static sn_acts *acts_new(const sn_model *m, int max_tokens, int max_seqs, int count_only) {
  if (max_tokens <= 0 || max_seqs <= 0)
    sn_fatal("sn_acts_new: max_tokens %d and max_seqs %d must be positive", max_tokens, max_seqs);
  sn_acts *a = callocCheck(1, sizeof(sn_acts));
  a->count_only = count_only;
  a->ops = m->ops;
  a->cfg = m->cfg;
  a->max_tokens = max_tokens;
  a->max_seqs = max_seqs;
  a->qkv_dim = m->layout->qkv_dim;
  a->attn_dim = m->layout->attn_dim;
  a->up_dim = m->layout->up_dim;
  const size_t T = (size_t)max_tokens, C = (size_t)m->cfg.hidden;
  const size_t es = m->ops->storage_size, fs = sizeof(float);
  const int L = m->cfg.n_layers;

  // Inference needs one block slot and one residual buffer; backward slots come on first use.
  a->layers = callocCheck((size_t)SN_MAX(L, 1), sizeof(sn_layer_acts));
  a->hidden = callocCheck((size_t)L + 1, sizeof(void *));
  if (L > 0) alloc_layer_slot(a, &a->layers[0]);
  a->hidden[0] = sn_acts_alloc(a, T * C * es);
  a->proj = sn_acts_alloc(a, T * C * es);
  if (sn_arch_is_decoder(m->cfg.arch)) {
    a->out = sn_acts_alloc(a, T * C * es);
    a->rstd_final = sn_acts_alloc(a, T * fs);
  } else {
    a->emb = sn_acts_alloc(a, T * C * es);
    a->emb_mean = sn_acts_alloc(a, T * fs);
    a->emb_rstd = sn_acts_alloc(a, T * fs);
    a->zero_ids = sn_acts_alloc(a, T * sizeof(int32_t));
    if (!count_only) m->ops->memset_zero(a->zero_ids, T * sizeof(int32_t));
  }
  a->pooled = sn_acts_alloc(a, (size_t)max_seqs * C * es);
  a->proj_dim = m->layout->proj_dim;
  if (a->proj_dim) a->projected = sn_acts_alloc(a, (size_t)max_seqs * (size_t)a->proj_dim * es);
  a->pool_norm = sn_acts_alloc(a, (size_t)max_seqs * fs);
  if (m->lora) {
    const size_t r = (size_t)m->lora->cfg.rank;
    size_t widest_in = 0;
    for (int t = 0; t < SN_LORA_NTARGETS; t++) {
      int in, out;
      sn_lora_target_dims(&m->cfg, (sn_lora_target)t, &in, &out);
      widest_in = SN_MAX(widest_in, (size_t)in);
    }
    a->lora_t = sn_acts_alloc(a, T * r * es);
    a->lora_dt = sn_acts_alloc(a, T * r * es);
    if (m->lora->cfg.dropout > 0) {
      a->lora_xd = sn_acts_alloc(a, T * widest_in * es);
      a->lora_dxd = sn_acts_alloc(a, T * widest_in * es);
    }
  }
  return a;
}

sn_acts *sn_acts_new(const sn_model *m, int max_tokens, int max_seqs) {
  return acts_new(m, max_tokens, max_seqs, 0);
}

// Per-block slots and residual buffers for backward, plus gradient scratch: allocated once, the
// first time a forward keeps activations.
static void alloc_backward_slots(sn_acts *a) {
  if (a->have_backward_slots) return;
  const size_t T = (size_t)a->max_tokens, C = (size_t)a->cfg.hidden, I = (size_t)a->cfg.intermediate;
  const size_t es = a->ops->storage_size;
  const int L = a->cfg.n_layers;
  if (a->recompute == SN_RECOMPUTE_NONE)
    for (int l = 1; l < L; l++) alloc_layer_slot(a, &a->layers[l]);
  for (int l = 1; l <= L; l++) a->hidden[l] = sn_acts_alloc(a, T * C * es);
  a->dres = sn_acts_alloc(a, T * C * es);
  a->dnorm = sn_acts_alloc(a, T * C * es);
  a->dwide = sn_acts_alloc(a, T * (size_t)SN_MAX(a->qkv_dim, a->up_dim) * es);
  a->dnarrow = sn_acts_alloc(a, T * SN_MAX((size_t)a->attn_dim, I) * es);
  a->dpooled = sn_acts_alloc(a, (size_t)a->max_seqs * C * es);
  if (a->proj_dim) a->dprojected = sn_acts_alloc(a, (size_t)a->max_seqs * (size_t)a->proj_dim * es);
  if (sn_arch_is_decoder(a->cfg.arch)) {  // the pooled last block's rows (sn_model_forward_pooled)
    const size_t S = (size_t)a->max_seqs, A = (size_t)a->attn_dim;
    a->pool_att = sn_acts_alloc(a, S * A * es);
    a->pool_h = sn_acts_alloc(a, S * C * es);
    a->pool_dres = sn_acts_alloc(a, S * C * es);
    a->pool_datt = sn_acts_alloc(a, S * A * es);
  }
  a->have_backward_slots = 1;
}

void sn_acts_free(sn_acts *a) {
  if (!a) return;
  for (int i = 0; i < a->nallocs; i++) a->ops->free(a->allocs[i]);
  free(a->allocs);
  free(a->layers);
  free(a->hidden);
  free(a);
}

size_t sn_acts_bytes(const sn_acts *a) { return a->bytes; }

int sn_model_widest_row(const sn_model *m) {
  return SN_MAX(SN_MAX(m->layout->qkv_dim, m->layout->up_dim), m->cfg.hidden);
}

void sn_acts_set_recompute(sn_acts *a, sn_recompute mode) {
  if (mode != SN_RECOMPUTE_NONE && !sn_arch_is_decoder(a->cfg.arch))
    sn_bad_input("activation recomputation is implemented for decoder towers (Qwen2, Llama), not %s",
                 sn_arch_name(a->cfg.arch));
  if (a->have_backward_slots && mode != a->recompute)
    sn_fatal("sn_acts_set_recompute: the backward slots are already allocated");
  a->recompute = mode;
}

int sn_recompute_parse(const char *name, sn_recompute *out) {
  if (strcmp(name, "none") == 0) *out = SN_RECOMPUTE_NONE;
  else if (strcmp(name, "layer") == 0) *out = SN_RECOMPUTE_LAYER;
  else return -1;
  return 0;
}

size_t sn_model_plan_acts_bytes(const sn_model *m, int max_tokens, int max_seqs, int for_backward,
                                sn_recompute recompute) {
  sn_acts *a = acts_new(m, max_tokens, max_seqs, 1);
  sn_acts_set_recompute(a, recompute);
  if (for_backward) alloc_backward_slots(a);
  size_t bytes = a->bytes;
  sn_acts_free(a);  // frees the bookkeeping only: nothing was allocated
  return bytes;
}

static void check_batch(const sn_model *m, const sn_acts *a, const sn_tokens *tok) {
  if (tok->T > a->max_tokens || tok->B > a->max_seqs)
    sn_fatal("batch of %d tokens / %d sequences exceeds the workspace (%d / %d)", tok->T, tok->B,
             a->max_tokens, a->max_seqs);
  if (a->cfg.arch != m->cfg.arch || a->cfg.hidden != m->cfg.hidden || a->cfg.n_layers != m->cfg.n_layers)
    sn_fatal("activation workspace was made for another model");
  // Learned position tables end; RoPE models have no hard limit.
  if (m->cfg.arch == SN_ARCH_BERT && tok->max_seqlen > m->cfg.max_positions)
    sn_bad_input("sequence of %d tokens is longer than the model's max_position_embeddings %d",
                 tok->max_seqlen, m->cfg.max_positions);
}

const void *sn_model_forward(sn_model *m, sn_acts *a, const sn_tokens *tok, int for_backward) {
  check_batch(m, a, tok);
  if (for_backward) alloc_backward_slots(a);
  a->last_forward_backward = for_backward;
  a->last_forward_pooled = 0;
  return sn_arch_is_decoder(m->cfg.arch) ? sn_decoder_forward(m, a, tok, for_backward, NULL)
                                         : sn_encoder_forward(m, a, tok, for_backward);
}

void sn_model_backward(sn_model *m, sn_acts *a, const sn_tokens *tok, const void *dhidden) {
  check_batch(m, a, tok);
  if (!a->last_forward_backward)
    sn_fatal("sn_model_backward needs the previous forward to run with for_backward = 1");
  if (!m->grads && !m->grad_map && !(m->lora && (m->lora->params->grads || m->lora->params->grad_map)))
    sn_fatal("sn_model_backward: gradients not allocated (call sn_model_alloc_grads)");
  if (a->last_forward_pooled && dhidden != a->dpooled)
    sn_fatal("sn_model_backward: the forward kept the pooled rows only (use sn_model_backward_pooled)");
  if (sn_arch_is_decoder(m->cfg.arch))
    sn_decoder_backward(m, a, tok, dhidden);
  else
    sn_encoder_backward(m, a, tok, dhidden);
  if (m->on_layer_grads) m->on_layer_grads(m->on_layer_grads_ctx, SN_GRADS_REST);
  if (m->lora) sn_lora_layer_done(m, SN_GRADS_REST);  // the adapters' pass ends too (ZeRO-2 settles it)
}

const void *sn_model_pool_raw(const sn_acts *a) { return a->proj_dim ? a->projected : a->pooled; }

// From the pooled rows a->pooled (B, C): the projection when the model has one, then out (B, width)
// fp32, L2-normalised or not.
static void pooled_to_embeddings(sn_model *m, sn_acts *a, int B, int normalize, float *out) {
  const struct sn_model_layout *lay = m->layout;
  const int C = m->cfg.hidden;
  if (a->proj_dim != lay->proj_dim) sn_fatal("activation workspace was made before the projection was added");
  const void *emb = a->pooled;
  int width = C;
  if (lay->proj_dim) {  // (B, P) = pooled @ W^T + b
    sn_linear_forward(m->ops, a->projected, a->pooled, sn_wptr(m, lay->proj_w), sn_wptr(m, lay->proj_b),
                      B, C, lay->proj_dim);
    emb = a->projected;
    width = lay->proj_dim;
  }
  if (normalize)
    m->ops->l2norm_forward(out, a->pool_norm, emb, B, width);
  else
    m->ops->storage_to_f32(out, emb, (size_t)B * width);
}

void sn_model_pool(sn_model *m, sn_acts *a, const sn_tokens *tok, const void *hidden,
                   sn_pooling pooling, int normalize, float *out) {
  check_batch(m, a, tok);
  m->ops->pool_forward(a->pooled, hidden, tok->cu_seqlens, tok->B, tok->T, m->cfg.hidden, pooling);  // (B, C)
  pooled_to_embeddings(m, a, tok->B, normalize, out);
}

// A decoder forward that ends at the pooled rows (B, C) in a->pooled, then the embeddings.
static void forward_pooled_rows(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_pooling pooling,
                                int for_backward, int normalize, float *out) {
  check_batch(m, a, tok);
  if (for_backward) alloc_backward_slots(a);
  a->last_forward_backward = for_backward;
  a->last_forward_pooled = for_backward;
  a->pooled_by = pooling;
  const sn_pooled_rows pooled = {pooling, a->pooled};
  sn_decoder_forward(m, a, tok, for_backward, &pooled);  // (B, C) into a->pooled
  pooled_to_embeddings(m, a, tok->B, normalize, out);
}

void sn_model_embed(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_pooling pooling, int normalize,
                    float *out) {
  if (!sn_pooled_rows_path(m, a, tok, pooling)) {
    sn_model_pool(m, a, tok, sn_model_forward(m, a, tok, 0), pooling, normalize, out);
    return;
  }
  forward_pooled_rows(m, a, tok, pooling, 0, normalize, out);
}

void sn_model_forward_pooled(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_pooling pooling, float *emb) {
  if (!sn_pooled_rows_path(m, a, tok, pooling)) {
    sn_model_pool(m, a, tok, sn_model_forward(m, a, tok, 1), pooling, 1, emb);
    return;
  }
  forward_pooled_rows(m, a, tok, pooling, 1, 1, emb);
}

// The backward of the embeddings to the pooled rows' gradient a->dpooled (B, C): the L2 norm, the
// extra raw gradient and the projection (see sn_model_pool_backward).
static void backward_to_pooled_rows(sn_model *m, sn_acts *a, const sn_tokens *tok, const float *d_emb,
                                    const float *emb, const void *d_raw_extra) {
  check_batch(m, a, tok);
  if (!a->last_forward_backward) sn_fatal("the pooling's backward needs a forward with for_backward = 1");
  const struct sn_model_layout *lay = m->layout;
  const sn_ops *ops = m->ops;
  const int B = tok->B, C = m->cfg.hidden, width = lay->proj_dim ? lay->proj_dim : C;
  void *d_raw = lay->proj_dim ? a->dprojected : a->dpooled;  // (B, width)
  ops->l2norm_backward(d_raw, d_emb, emb, a->pool_norm, B, width);
  if (d_raw_extra) ops->add(d_raw, d_raw, d_raw_extra, (size_t)B * width);
  if (lay->proj_dim)  // dpooled (B, C) = dproj @ W; dW += dproj^T @ pooled; db += column sums
    sn_linear_backward(ops, a->dpooled, sn_gptr(m, lay->proj_w), sn_gptr(m, lay->proj_b), a->dprojected,
                       a->pooled, sn_wptr(m, lay->proj_w), B, C, lay->proj_dim, 0);
}

void sn_model_pool_backward(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_pooling pooling,
                            const float *d_emb, const float *emb, const void *d_raw_extra, void *dhidden) {
  if (a->last_forward_pooled)
    sn_fatal("sn_model_pool_backward: the forward kept the pooled rows only (use sn_model_backward_pooled)");
  backward_to_pooled_rows(m, a, tok, d_emb, emb, d_raw_extra);
  m->ops->pool_backward(dhidden, a->dpooled, tok->cu_seqlens, tok->B, tok->T, m->cfg.hidden, pooling);  // (T, C)
}

void sn_model_backward_pooled(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_pooling pooling,
                              const float *d_emb, const float *emb, const void *d_raw_extra, void *dhidden) {
  if (!a->last_forward_pooled) {
    sn_model_pool_backward(m, a, tok, pooling, d_emb, emb, d_raw_extra, dhidden);
    sn_model_backward(m, a, tok, dhidden);
    return;
  }
  if (pooling != a->pooled_by) sn_fatal("sn_model_backward_pooled: another pooling than the forward's");
  backward_to_pooled_rows(m, a, tok, d_emb, emb, d_raw_extra);
  sn_model_backward(m, a, tok, a->dpooled);  // from the pooled rows (B, C)
}
