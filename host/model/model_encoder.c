// Encoder tower (BERT) from ops: learned positions, post-LayerNorm blocks, bidirectional
// attention, GELU (erf) MLP.
//   h = LayerNorm(word[ids] + position[pos] + token_type[0])
//   per block: a = LayerNorm(h + dense(attn(qkv(h))))
//              h = LayerNorm(a + output(gelu(intermediate(a))))
// Each residual add is fused with the LayerNorm that follows it (add_layernorm_forward). An inference
// forward of a few tokens (sn_small_batch_path) runs the linears through linear_small instead: the
// residual adds in the projections' epilogues (a plain LayerNorm follows), GELU in intermediate's.
#include <math.h>

#include "common.h"
#include "model_internal.h"

#define ENCODER_CAUSAL 0

// The blocks of an inference forward of a small batch (sn_small_batch_path), after the embeddings:
//   x = h + dense(attn(qkv(h)));  a = LN(x);  y = a + output(gelu(intermediate(a)));  h = LN(y)
// The CPU's fused ops are the unfused ones in the same order: the same bits.
static const void *encoder_forward_small(sn_model *m, sn_acts *a, const sn_tokens *tok) {
  const sn_ops *ops = m->ops;
  const sn_model_config *c = &m->cfg;
  const struct sn_model_layout *lay = m->layout;
  const int T = tok->T, C = c->hidden, I = c->intermediate, D = c->head_dim, L = c->n_layers;
  const int H = c->n_heads;
  void *h = sn_acts_hidden(a, 0, 0);  // the block's input and output
  sn_layer_acts *s = sn_acts_layer(a, 0, 0);
  for (int l = 0; l < L; l++) {
    const sn_layer_params *p = &lay->layers[l];
    ops->linear_small(s->qkv, h, NULL, 0.0f, sn_wptr(m, p->qkv_w), sn_wptr(m, p->qkv_b), NULL, T, lay->qkv_dim, C,
                      SN_EPILOGUE_NONE);  // (T, 3C)
    ops->attention_forward(s->att, s->lse, s->qkv, tok->cu_seqlens, tok->B, T, tok->max_seqlen, H, H, D,
                           ENCODER_CAUSAL, 1.0f / sqrtf((float)D));  // (T, C)
    ops->linear_small(s->x, s->att, NULL, 0.0f, sn_wptr(m, p->o_w), sn_wptr(m, p->o_b), h, T, C, lay->attn_dim,
                      SN_EPILOGUE_RESIDUAL);
    ops->layernorm_forward(s->norm_mid, s->mean_mid, s->rstd_mid, s->x, sn_wptr(m, p->norm_attn_w),
                           sn_wptr(m, p->norm_attn_b), T, C, c->norm_eps);
    ops->linear_small(s->ff_act, s->norm_mid, NULL, 0.0f, sn_wptr(m, p->up_w), sn_wptr(m, p->up_b), NULL, T, I, C,
                      SN_EPILOGUE_GELU);  // (T, I)
    ops->linear_small(s->y, s->ff_act, NULL, 0.0f, sn_wptr(m, p->down_w), sn_wptr(m, p->down_b), s->norm_mid, T, C,
                      I, SN_EPILOGUE_RESIDUAL);
    ops->layernorm_forward(h, s->mean_out, s->rstd_out, s->y, sn_wptr(m, p->norm_mlp_w), sn_wptr(m, p->norm_mlp_b),
                           T, C, c->norm_eps);
  }
  return h;
}

const void *sn_encoder_forward(sn_model *m, sn_acts *a, const sn_tokens *tok, int for_backward) {
  const sn_ops *ops = m->ops;
  const sn_model_config *c = &m->cfg;
  const struct sn_model_layout *lay = m->layout;
  const int T = tok->T, C = c->hidden, I = c->intermediate, D = c->head_dim, L = c->n_layers;
  const int H = c->n_heads;
  const float scale = 1.0f / sqrtf((float)D);

  // embeddings: every token has type 0 (single-segment inputs)
  ops->embedding_forward(a->emb, tok->ids, sn_wptr(m, lay->tok_embed), T, C, 0);  // (T, C)
  ops->embedding_forward(a->emb, tok->pos, sn_wptr(m, lay->pos_embed), T, C, 1);
  ops->embedding_forward(a->emb, a->zero_ids, sn_wptr(m, lay->type_embed), T, C, 1);
  ops->layernorm_forward(sn_acts_hidden(a, 0, for_backward), a->emb_mean, a->emb_rstd, a->emb,
                         sn_wptr(m, lay->emb_norm_w), sn_wptr(m, lay->emb_norm_b), T, C, c->norm_eps);
  if (sn_small_batch_path(m, tok, for_backward)) return encoder_forward_small(m, a, tok);
  for (int l = 0; l < L; l++) {
    const sn_layer_params *p = &lay->layers[l];
    sn_layer_acts *s = sn_acts_layer(a, l, for_backward);
    const void *h = sn_acts_hidden(a, l, for_backward);
    sn_linear_forward(ops, s->qkv, h, sn_wptr(m, p->qkv_w), sn_wptr(m, p->qkv_b), T, C,
                      lay->qkv_dim);  // (T, 3C)
    ops->attention_forward(s->att, s->lse, s->qkv, tok->cu_seqlens, tok->B, T, tok->max_seqlen, H, H,
                           D, ENCODER_CAUSAL, scale);  // (T, C)
    sn_linear_forward(ops, a->proj, s->att, sn_wptr(m, p->o_w), sn_wptr(m, p->o_b), T, lay->attn_dim, C);
    ops->add_layernorm_forward(s->x, s->norm_mid, s->mean_mid, s->rstd_mid, h, a->proj,
                               sn_wptr(m, p->norm_attn_w), sn_wptr(m, p->norm_attn_b), T, C, c->norm_eps);
    sn_linear_forward(ops, s->ff_in, s->norm_mid, sn_wptr(m, p->up_w), sn_wptr(m, p->up_b), T, C, I);
    ops->gelu_forward(s->ff_act, s->ff_in, (size_t)T * I);  // (T, I)
    sn_linear_forward(ops, a->proj, s->ff_act, sn_wptr(m, p->down_w), sn_wptr(m, p->down_b), T, I, C);
    ops->add_layernorm_forward(s->y, sn_acts_hidden(a, l + 1, for_backward), s->mean_out, s->rstd_out,
                               s->norm_mid, a->proj, sn_wptr(m, p->norm_mlp_w),
                               sn_wptr(m, p->norm_mlp_b), T, C, c->norm_eps);
  }
  return sn_acts_hidden(a, L, for_backward);
}

void sn_encoder_backward(sn_model *m, sn_acts *a, const sn_tokens *tok, const void *dhidden) {
  const sn_ops *ops = m->ops;
  const sn_model_config *c = &m->cfg;
  const struct sn_model_layout *lay = m->layout;
  const int T = tok->T, C = c->hidden, I = c->intermediate, D = c->head_dim, L = c->n_layers;
  const int H = c->n_heads;
  const float scale = 1.0f / sqrtf((float)D);
  const int for_backward = 1;
  const void *dh = dhidden;  // gradient of the current block's output (T, C)
  for (int l = L - 1; l >= 0; l--) {
    const sn_layer_params *p = &lay->layers[l];
    sn_layer_acts *s = sn_acts_layer(a, l, for_backward);
    const void *h = sn_acts_hidden(a, l, for_backward);
    // MLP half: out = LN(y), y = norm_mid + dense(gelu(intermediate(norm_mid)))
    void *dy = a->dnorm, *dgelu_out = a->dnarrow, *dff_in = a->dwide;
    ops->layernorm_backward(dy, sn_gptr(m, p->norm_mlp_w), sn_gptr(m, p->norm_mlp_b), dh, s->y,
                            sn_wptr(m, p->norm_mlp_w), s->mean_out, s->rstd_out, T, C, 0);
    sn_linear_backward(ops, dgelu_out, sn_gptr(m, p->down_w), sn_gptr(m, p->down_b), dy, s->ff_act,
                       sn_wptr(m, p->down_w), T, I, C, 0);
    ops->gelu_backward(dff_in, dgelu_out, s->ff_in, (size_t)T * I);
    // the residual's gradient dy is already in a->dnorm: the MLP path accumulates onto it
    sn_linear_backward(ops, dy, sn_gptr(m, p->up_w), sn_gptr(m, p->up_b), dff_in, s->norm_mid,
                       sn_wptr(m, p->up_w), T, C, I, 1);  // dy is now d norm_mid
    // attention half: norm_mid = LN(x), x = h + dense(attn(qkv(h)))
    void *dx = a->dres, *datt = a->dnarrow, *dqkv = a->dwide;
    ops->layernorm_backward(dx, sn_gptr(m, p->norm_attn_w), sn_gptr(m, p->norm_attn_b), dy, s->x,
                            sn_wptr(m, p->norm_attn_w), s->mean_mid, s->rstd_mid, T, C, 0);
    sn_linear_backward(ops, datt, sn_gptr(m, p->o_w), sn_gptr(m, p->o_b), dx, s->att,
                       sn_wptr(m, p->o_w), T, lay->attn_dim, C, 0);
    ops->attention_backward(dqkv, datt, s->qkv, s->att, s->lse, tok->cu_seqlens, tok->B, T,
                            tok->max_seqlen, H, H, D, ENCODER_CAUSAL, scale);
    sn_linear_backward(ops, dx, sn_gptr(m, p->qkv_w), sn_gptr(m, p->qkv_b), dqkv, h,
                       sn_wptr(m, p->qkv_w), T, C, lay->qkv_dim, 1);  // dx is now d h
    dh = dx;
    if (m->on_layer_grads) m->on_layer_grads(m->on_layer_grads_ctx, l);
  }
  // embeddings
  void *demb = a->dnorm;
  ops->layernorm_backward(demb, sn_gptr(m, lay->emb_norm_w), sn_gptr(m, lay->emb_norm_b), dh, a->emb,
                          sn_wptr(m, lay->emb_norm_w), a->emb_mean, a->emb_rstd, T, C, 0);
  ops->embedding_backward(sn_gptr(m, lay->tok_embed), demb, tok->ids, T, C, c->vocab);
  ops->embedding_backward(sn_gptr(m, lay->pos_embed), demb, tok->pos, T, C, c->max_positions);
  ops->embedding_backward(sn_gptr(m, lay->type_embed), demb, a->zero_ids, T, C, c->type_vocab);
}
