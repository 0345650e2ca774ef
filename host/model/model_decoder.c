// Decoder tower (Qwen2, Llama) from ops: pre-RMSNorm blocks with RoPE, causal GQA attention and a
// SwiGLU MLP, then the final norm.
//   h = embed(ids)
//   per block: x = h + o_proj(attn(rope(qkv_proj(rmsnorm(h)))))
//              h = x + down(swiglu(gate_up(rmsnorm(x))))
//   out = rmsnorm(h)
// Each residual add is fused with the norm that follows it (add_rmsnorm_forward). A LoRA tower
// (m->lora) adds its adapters' low-rank updates right after each base linear (model_lora.c); its
// base is frozen, so the weight gradients below are skipped (sn_gptr gives NULL). An inference
// forward of a few tokens takes the small-batch path instead (decoder_forward_small), or, with
// SN_FUSED_DECODER=1, runs as one op (decoder_fused_forward).
#include <math.h>

#include "common.h"
#include "model_internal.h"
#include "model_lora.h"

#define DECODER_CAUSAL 1

// att (T, Hq D) = attention(rope(qkv)), causal: rope in place on qkv and the flash kernel, or with
// short_attention (inference, sn_short_attention_path) both in one op that leaves qkv unrotated.
static void decoder_attention(const sn_model *m, const sn_tokens *tok, sn_layer_acts *s, int short_attention) {
  const sn_ops *ops = m->ops;
  const sn_model_config *c = &m->cfg;
  const int T = tok->T, D = c->head_dim, Hq = c->n_heads, Hkv = c->n_kv_heads;
  const float scale = 1.0f / sqrtf((float)D);
  if (short_attention) {
    ops->attention_rope_forward(s->att, s->qkv, tok->pos, tok->cu_seqlens, tok->B, T, tok->max_seqlen, Hq, Hkv, D,
                                c->rope_theta, DECODER_CAUSAL, scale);
  } else {
    ops->rope(s->qkv, tok->pos, T, Hq, Hkv, D, c->rope_theta, 0);
    ops->attention_forward(s->att, s->lse, s->qkv, tok->cu_seqlens, tok->B, T, tok->max_seqlen, Hq, Hkv, D,
                           DECODER_CAUSAL, scale);
  }
}

// Block l's attention half, from norm_in = rmsnorm(h) (already in s): qkv, then rope + attention.
// short_attention (inference, sn_short_attention_path): rope and attention in one op, qkv unrotated.
static void block_attention(sn_model *m, sn_acts *a, const sn_tokens *tok, int l, sn_layer_acts *s,
                            int short_attention) {
  const sn_layer_params *p = &m->layout->layers[l];
  const int T = tok->T;
  // one fused q|k|v projection (biases adjacent too)
  sn_linear_forward(m->ops, s->qkv, s->norm_in, sn_wptr(m, p->qkv_w), sn_wptr(m, p->qkv_b), T, m->cfg.hidden,
                    m->layout->qkv_dim);  // (T, (Hq + 2Hkv) D)
  if (m->lora) sn_lora_forward(m, a, l, SN_LORA_LINEAR_QKV, s->qkv, s->norm_in, T);
  decoder_attention(m, tok, s, short_attention);  // (T, Hq D)
}

// Block l from its attention output att and its input h, on `rows` rows: o_proj; x = h + o;
// norm_mid = rmsnorm(x); ff_in = gate|up; ff_act = swiglu. The forward then adds down(ff_act).
static void block_mlp_act(sn_model *m, sn_acts *a, int l, sn_layer_acts *s, const void *att, const void *h,
                          int rows) {
  const sn_ops *ops = m->ops;
  const sn_model_config *c = &m->cfg;
  const struct sn_model_layout *lay = m->layout;
  const sn_layer_params *p = &lay->layers[l];
  const int C = c->hidden, I = c->intermediate;
  sn_linear_forward(ops, a->proj, att, sn_wptr(m, p->o_w), sn_wptr(m, p->o_b), rows, lay->attn_dim,
                    C);  // (rows, C)
  if (m->lora) sn_lora_forward(m, a, l, SN_LORA_LINEAR_O, a->proj, att, rows);
  ops->add_rmsnorm_forward(s->x, s->norm_mid, s->rstd_mid, h, a->proj, sn_wptr(m, p->norm_mlp_w), rows, C,
                           c->norm_eps);
  // MLP: fused gate|up projection, SwiGLU
  sn_linear_forward(ops, s->ff_in, s->norm_mid, sn_wptr(m, p->up_w), sn_wptr(m, p->up_b), rows, C,
                    2 * I);  // (rows, 2I)
  if (m->lora) sn_lora_forward(m, a, l, SN_LORA_LINEAR_GATE_UP, s->ff_in, s->norm_mid, rows);
  ops->swiglu_forward(s->ff_act, s->ff_in, rows, I);  // (rows, I)
}

// a->proj (rows, C) = down(ff_act) of block l.
static void block_down(sn_model *m, sn_acts *a, int l, sn_layer_acts *s, int rows) {
  const sn_layer_params *p = &m->layout->layers[l];
  const int C = m->cfg.hidden, I = m->cfg.intermediate;
  sn_linear_forward(m->ops, a->proj, s->ff_act, sn_wptr(m, p->down_w), sn_wptr(m, p->down_b), rows, I, C);
  if (m->lora) sn_lora_forward(m, a, l, SN_LORA_LINEAR_DOWN, a->proj, s->ff_act, rows);
}

// Block l up to the MLP's activation, from its input h and norm_in = rmsnorm(h) (already in s); the
// recomputing backward needs no more than this.
static void block_to_mlp_act(sn_model *m, sn_acts *a, const sn_tokens *tok, int l, sn_layer_acts *s,
                             const void *h, int short_attention) {
  block_attention(m, a, tok, l, s, short_attention);
  block_mlp_act(m, a, l, s, s->att, h, tok->T);
}

// The last block of a forward pooled at one token a sequence (pooling last or cls), up to the MLP's
// activation: every row's keys and values are needed, so the attention half runs on all T rows, but
// with causal attention no row reads another's attention output, so o_proj, the norm, gate|up and
// SwiGLU run on the B pooled rows only, gathered from the attention output and the block's input h
// into att_rows (B, Hq D) and h_rows (B, C), in sequence order. ~1/L of the forward's work less at
// T >> B, and of the backward's: the other rows' outputs reach nothing, so their gradients are zero.
static void last_block_pooled_act(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_layer_acts *s, const void *h,
                                  sn_pooling pooling, int short_attention, void *att_rows, void *h_rows) {
  const sn_ops *ops = m->ops;
  const int B = tok->B, T = tok->T, l = m->cfg.n_layers - 1;
  block_attention(m, a, tok, l, s, short_attention);
  ops->pool_forward(att_rows, s->att, tok->cu_seqlens, B, T, m->layout->attn_dim, pooling);  // (B, Hq D)
  ops->pool_forward(h_rows, h, tok->cu_seqlens, B, T, m->cfg.hidden, pooling);              // (B, C)
  block_mlp_act(m, a, l, s, att_rows, h_rows, B);
}

// The pooled last block (above), its down projection and the final norm: out (B, C). Inference
// gathers into buffers the attention half is done with (qkv, norm_in) and leaves the residual sum in
// h's first B rows (nothing reads h after); for backward they are kept (a->pool_att; hidden[L]).
static void last_block_pooled_rows(sn_model *m, sn_acts *a, const sn_tokens *tok, int for_backward,
                                   sn_pooling pooling, int short_attention, void *out) {
  const int B = tok->B, L = m->cfg.n_layers;
  sn_layer_acts *s = sn_acts_layer(a, L - 1, for_backward);
  const void *h = sn_acts_hidden(a, L - 1, for_backward);
  void *att_rows = for_backward ? a->pool_att : s->qkv, *h_rows = for_backward ? a->pool_h : s->norm_in;
  last_block_pooled_act(m, a, tok, s, h, pooling, short_attention, att_rows, h_rows);
  block_down(m, a, L - 1, s, B);
  m->ops->add_rmsnorm_forward(sn_acts_hidden(a, L, for_backward), out, a->rstd_final, s->x, a->proj,
                              sn_wptr(m, m->layout->final_norm_w), B, m->cfg.hidden, m->cfg.norm_eps);
}

// The inference forward of a small batch (sn_small_batch_path), from h = embed(ids): the same
// maths in six ops a block instead of nine (five with SN_SHORT_ATTENTION=1, RoPE fused into attention),
// each norm fused into the projection that reads it, each residual add into the projection that feeds it:
//   qkv = rmsnorm(h) W_qkv^T + b;  att = attn(rope(qkv));  x = h + o_proj(att)
//   ff = swiglu(rmsnorm(x) W_gate|up^T + b);  h = x + down(ff)
// then out = rmsnorm(h). The CPU's fused ops are the unfused ones in the same order: the same bits.
static const void *decoder_forward_small(sn_model *m, sn_acts *a, const sn_tokens *tok, void *h) {
  const sn_ops *ops = m->ops;
  const sn_model_config *c = &m->cfg;
  const struct sn_model_layout *lay = m->layout;
  const int T = tok->T, C = c->hidden, I = c->intermediate, L = c->n_layers;
  const float eps = c->norm_eps;
  sn_layer_acts *s = sn_acts_layer(a, 0, 0);
  const int short_attention = sn_short_attention_path(m, tok, 0);
  for (int l = 0; l < L; l++) {
    const sn_layer_params *p = &lay->layers[l];
    ops->linear_small(s->qkv, h, sn_wptr(m, p->norm_attn_w), eps, sn_wptr(m, p->qkv_w), sn_wptr(m, p->qkv_b),
                      NULL, T, lay->qkv_dim, C, SN_EPILOGUE_NONE);  // (T, (Hq + 2Hkv) D), unrotated
    decoder_attention(m, tok, s, short_attention);  // (T, Hq D)
    ops->linear_small(s->x, s->att, NULL, 0.0f, sn_wptr(m, p->o_w), sn_wptr(m, p->o_b), h, T, C, lay->attn_dim,
                      SN_EPILOGUE_RESIDUAL);  // (T, C)
    ops->linear_small(s->ff_act, s->x, sn_wptr(m, p->norm_mlp_w), eps, sn_wptr(m, p->up_w), sn_wptr(m, p->up_b),
                      NULL, T, I, C, SN_EPILOGUE_SWIGLU);  // (T, I)
    ops->linear_small(h, s->ff_act, NULL, 0.0f, sn_wptr(m, p->down_w), sn_wptr(m, p->down_b), s->x, T, C, I,
                      SN_EPILOGUE_RESIDUAL);  // (T, C)
  }
  ops->rmsnorm_forward(a->out, a->rstd_final, h, sn_wptr(m, lay->final_norm_w), T, C, eps);
  return a->out;
}

// The decoder's tensors as decoder_fused_forward takes them; blocks has room for every layer.
static sn_decoder_weights fused_weights(const sn_model *m, sn_decoder_block *blocks) {
  const sn_model_config *c = &m->cfg;
  const struct sn_model_layout *lay = m->layout;
  for (int l = 0; l < c->n_layers; l++) {
    const sn_layer_params *p = &lay->layers[l];
    blocks[l] = (sn_decoder_block){sn_wptr(m, p->norm_attn_w), sn_wptr(m, p->qkv_w), sn_wptr(m, p->qkv_b),
                                   sn_wptr(m, p->o_w), sn_wptr(m, p->o_b), sn_wptr(m, p->norm_mlp_w),
                                   sn_wptr(m, p->up_w), sn_wptr(m, p->up_b), sn_wptr(m, p->down_w),
                                   sn_wptr(m, p->down_b)};
  }
  return (sn_decoder_weights){c->n_layers, c->hidden, c->intermediate, c->n_heads, c->n_kv_heads, c->head_dim,
                              c->norm_eps, c->rope_theta, sn_wptr(m, lay->tok_embed),
                              sn_wptr(m, lay->final_norm_w), blocks};
}

// pooled->out (B, C) = the pooled rows of hidden (T, C).
static const void *pool_rows(const sn_model *m, const sn_tokens *tok, const void *hidden,
                             const sn_pooled_rows *pooled) {
  m->ops->pool_forward(pooled->out, hidden, tok->cu_seqlens, tok->B, tok->T, m->cfg.hidden, pooled->pooling);
  return pooled->out;
}

const void *sn_decoder_forward(sn_model *m, sn_acts *a, const sn_tokens *tok, int for_backward,
                               const sn_pooled_rows *pooled) {
  const sn_ops *ops = m->ops;
  const sn_model_config *c = &m->cfg;
  const struct sn_model_layout *lay = m->layout;
  const int T = tok->T, C = c->hidden, L = c->n_layers;

  if (sn_fused_decoder_path(m, tok, for_backward)) {  // the whole forward as one op
    sn_decoder_block blocks[SN_DECODER_FUSED_MAX_LAYERS];
    const sn_decoder_weights w = fused_weights(m, blocks);
    if (ops->decoder_fused_supports(&w, T)) {
      ops->decoder_fused_forward(a->out, tok->ids, tok->pos, tok->cu_seqlens, tok->B, T, &w);  // (T, C)
      return pooled ? pool_rows(m, tok, a->out, pooled) : a->out;
    }
  }
  void *h0 = sn_acts_hidden(a, 0, for_backward);
  ops->embedding_forward(h0, tok->ids, sn_wptr(m, lay->tok_embed), T, C, 0);  // (T, C)
  if (L == 0) {
    ops->rmsnorm_forward(a->out, a->rstd_final, h0, sn_wptr(m, lay->final_norm_w), T, C, c->norm_eps);
    return pooled ? pool_rows(m, tok, a->out, pooled) : a->out;
  }
  if (sn_small_batch_path(m, tok, for_backward)) {
    const void *out = decoder_forward_small(m, a, tok, h0);
    return pooled ? pool_rows(m, tok, out, pooled) : out;
  }
  const int short_attention = sn_short_attention_path(m, tok, for_backward);
  sn_layer_acts *first = sn_acts_layer(a, 0, for_backward);
  ops->rmsnorm_forward(first->norm_in, first->rstd_in, h0, sn_wptr(m, lay->layers[0].norm_attn_w),
                       T, C, c->norm_eps);
  const int last_full = pooled ? L - 1 : L;  // blocks run on every row
  for (int l = 0; l < last_full; l++) {
    sn_layer_acts *s = sn_acts_layer(a, l, for_backward);
    block_to_mlp_act(m, a, tok, l, s, sn_acts_hidden(a, l, for_backward), short_attention);
    block_down(m, a, l, s, T);
    // residual + the next norm: the next block's input norm, or the final norm
    void *h_next = sn_acts_hidden(a, l + 1, for_backward);
    if (l + 1 < L) {
      sn_layer_acts *next = sn_acts_layer(a, l + 1, for_backward);
      ops->add_rmsnorm_forward(h_next, next->norm_in, next->rstd_in, s->x, a->proj,
                               sn_wptr(m, lay->layers[l + 1].norm_attn_w), T, C, c->norm_eps);
    } else {
      ops->add_rmsnorm_forward(h_next, a->out, a->rstd_final, s->x, a->proj,
                               sn_wptr(m, lay->final_norm_w), T, C, c->norm_eps);
    }
  }
  if (!pooled) return a->out;
  last_block_pooled_rows(m, a, tok, for_backward, pooled->pooling, short_attention, pooled->out);
  return pooled->out;
}

void sn_decoder_backward(sn_model *m, sn_acts *a, const sn_tokens *tok, const void *dhidden) {
  const sn_ops *ops = m->ops;
  const sn_model_config *c = &m->cfg;
  const struct sn_model_layout *lay = m->layout;
  const int T = tok->T, B = tok->B, C = c->hidden, I = c->intermediate, D = c->head_dim, L = c->n_layers;
  const int Hq = c->n_heads, Hkv = c->n_kv_heads;
  const float scale = 1.0f / sqrtf((float)D);
  const int for_backward = 1;
  // After a pooled forward the last block's o_proj, MLP and final norm ran on the B pooled rows:
  // their backward does too, from dhidden (B, C), and the gradients go back to all T rows before
  // the attention's backward (zero at the other rows, whose outputs reached nothing).
  const int pooled = a->last_forward_pooled;
  // dres: gradient of the residual stream, carried down through the blocks. (T, C), or (B, C) in
  // the pooled last block
  void *dres = pooled ? a->pool_dres : a->dres;
  ops->rmsnorm_backward(dres, sn_gptr(m, lay->final_norm_w), dhidden, sn_acts_hidden(a, L, for_backward),
                        sn_wptr(m, lay->final_norm_w), a->rstd_final, pooled ? B : T, C, 0);
  for (int l = L - 1; l >= 0; l--) {
    const sn_layer_params *p = &lay->layers[l];
    sn_layer_acts *s = sn_acts_layer(a, l, for_backward);
    const void *h = sn_acts_hidden(a, l, for_backward);
    const int pooled_rows = pooled && l == L - 1;
    const int rows = pooled_rows ? B : T;  // of the MLP and o_proj
    if (a->recompute == SN_RECOMPUTE_LAYER) {  // re-run the block from its kept input into slot 0
      ops->rmsnorm_forward(s->norm_in, s->rstd_in, h, sn_wptr(m, p->norm_attn_w), T, C, c->norm_eps);
      if (pooled_rows)
        last_block_pooled_act(m, a, tok, s, h, a->pooled_by, 0, a->pool_att, a->pool_h);
      else
        block_to_mlp_act(m, a, tok, l, s, h, 0);  // qkv rotated in place: what the backward reads
    }
    // MLP branch: h_next = x + down(swiglu(gate_up(norm_mid)))
    void *dswiglu = a->dnarrow, *dgate_up = a->dwide;
    sn_linear_backward(ops, dswiglu, sn_gptr(m, p->down_w), sn_gptr(m, p->down_b), dres, s->ff_act,
                       sn_wptr(m, p->down_w), rows, I, C, 0);
    if (m->lora) sn_lora_backward(m, a, l, SN_LORA_LINEAR_DOWN, dres, s->ff_act, dswiglu, rows);
    ops->swiglu_backward(dgate_up, dswiglu, s->ff_in, rows, I);
    sn_linear_backward(ops, a->dnorm, sn_gptr(m, p->up_w), sn_gptr(m, p->up_b), dgate_up, s->norm_mid,
                       sn_wptr(m, p->up_w), rows, C, 2 * I, 0);
    if (m->lora) sn_lora_backward(m, a, l, SN_LORA_LINEAR_GATE_UP, dgate_up, s->norm_mid, a->dnorm, rows);
    ops->rmsnorm_backward(dres, sn_gptr(m, p->norm_mlp_w), a->dnorm, s->x, sn_wptr(m, p->norm_mlp_w),
                          s->rstd_mid, rows, C, 1);  // dres is now d x
    // attention branch: x = h + o_proj(attn(rope(qkv(norm_in))))
    const void *att = pooled_rows ? a->pool_att : s->att;
    void *datt = pooled_rows ? a->pool_datt : a->dnarrow, *dqkv = a->dwide;
    sn_linear_backward(ops, datt, sn_gptr(m, p->o_w), sn_gptr(m, p->o_b), dres, att, sn_wptr(m, p->o_w), rows,
                       lay->attn_dim, C, 0);
    if (m->lora) sn_lora_backward(m, a, l, SN_LORA_LINEAR_O, dres, att, datt, rows);
    if (pooled_rows) {  // back to every row: d att (T, Hq D) and d x (T, C), zero but at the pooled rows
      ops->pool_backward(a->dnarrow, datt, tok->cu_seqlens, B, T, lay->attn_dim, a->pooled_by);
      ops->pool_backward(a->dres, dres, tok->cu_seqlens, B, T, C, a->pooled_by);
      datt = a->dnarrow;
      dres = a->dres;
    }
    ops->attention_backward(dqkv, datt, s->qkv, s->att, s->lse, tok->cu_seqlens, tok->B, T,
                            tok->max_seqlen, Hq, Hkv, D, DECODER_CAUSAL, scale);
    ops->rope(dqkv, tok->pos, T, Hq, Hkv, D, c->rope_theta, 1);  // back to pre-rotation q, k
    sn_linear_backward(ops, a->dnorm, sn_gptr(m, p->qkv_w), sn_gptr(m, p->qkv_b), dqkv, s->norm_in,
                       sn_wptr(m, p->qkv_w), T, C, lay->qkv_dim, 0);
    if (m->lora) sn_lora_backward(m, a, l, SN_LORA_LINEAR_QKV, dqkv, s->norm_in, a->dnorm, T);
    ops->rmsnorm_backward(dres, sn_gptr(m, p->norm_attn_w), a->dnorm, h, sn_wptr(m, p->norm_attn_w),
                          s->rstd_in, T, C, 1);  // dres is now d h
    if (m->on_layer_grads) m->on_layer_grads(m->on_layer_grads_ctx, l);
    if (m->lora) sn_lora_layer_done(m, l);
  }
  void *dtable = sn_gptr(m, lay->tok_embed);  // NULL for a frozen base (LoRA towers)
  if (dtable) ops->embedding_backward(dtable, dres, tok->ids, T, C, c->vocab);
}
