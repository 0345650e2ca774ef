// Internals shared by the model files: where each tensor lives in the flat parameter buffer
// (model.c builds it), the activation workspace (model_acts.c), and the per-architecture passes
// (model_decoder.c, model_encoder.c), which call ops only.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "model.h"

// Offset (in elements) of a tensor that this model does not have.
#define SN_NO_PARAM ((size_t)-1)

// One block's tensors, as offsets into sn_model.weights / .grads. The fields are shared by both
// architectures, under the role they play:
//   decoder                                   BERT
//   norm_attn  input_layernorm (pre-norm)     attention.output.LayerNorm (post-norm)
//   qkv        q_proj|k_proj|v_proj (fused)   query|key|value (fused)
//   o          o_proj                         attention.output.dense
//   norm_mlp   post_attention_layernorm       output.LayerNorm
//   up         gate_proj|up_proj (fused)      intermediate.dense
//   down       down_proj                      output.dense
typedef struct {
  size_t norm_attn_w, norm_attn_b;
  size_t qkv_w, qkv_b;
  size_t o_w, o_b;
  size_t norm_mlp_w, norm_mlp_b;
  size_t up_w, up_b;
  size_t down_w, down_b;
} sn_layer_params;

struct sn_model_layout {
  sn_layer_params *layers;  // (n_layers)
  size_t tok_embed;         // embed_tokens / embeddings.word_embeddings
  size_t final_norm_w;      // decoder: norm
  size_t lm_head;           // decoder with an untied head kept from the checkpoint
  size_t pos_embed, type_embed, emb_norm_w, emb_norm_b;  // BERT embeddings
  size_t pooler_w, pooler_b;                             // BERT pooler, kept for saving only
  size_t proj_w, proj_b;    // output projection after pooling (stage-2 students), if any
  int proj_dim;             // its output width; 0 without one
  int has_lm_head, has_pooler;
  int qkv_dim;              // (Hq + 2*Hkv) * D
  int attn_dim;             // Hq * D
  int up_dim;               // decoder: 2*I (gate|up); BERT: I
};

// Builds the parameter table for cfg (lm_head / pooler / a projection of width proj_dim > 0
// included as asked) into m->params and m->layout; sets m->num_elements. Does not allocate
// weights. The projection comes last, so adding one keeps every other offset.
void sn_model_build_params(sn_model *m, int has_lm_head, int has_pooler, int proj_dim);
// Seeded initialisation of params[first..nparams) (normal(0, 0.02) matrices, unit norm weights,
// zero biases).
void sn_model_init_params(sn_model *m, int first, uint64_t seed);

// Appends tensors to a parameter table: each call returns the new tensor's offset, packed right
// after the previous one (so consecutive calls give adjacent slices: q|k|v, gate|up). d1 = 0: 1-D.
typedef struct {
  sn_model *m;
  int cap;
} sn_param_builder;
size_t sn_param_add(sn_param_builder *pb, int no_decay, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
// Where a save reads a tensor's values while the file is written, a chunk at a time: elements
// [start, start + count) of parameter p into dst as fp32. A LoRA export's reader adds s·B·A to the
// targets (model_lora_io.c). A 7B tower's save thus needs a few MB of host memory, not a 30 GB copy.
typedef struct sn_weight_reader {
  void (*read)(struct sn_weight_reader *r, const sn_model *m, const sn_param *p, int64_t start, int64_t count,
               float *dst);
} sn_weight_reader;
// Reads m's own weights from its backend (the reader a NULL stands for).
void sn_weight_read_backend(sn_weight_reader *r, const sn_model *m, const sn_param *p, int64_t start,
                            int64_t count, float *dst);
// How sn_model_save_from writes a model: whole (sn_model_save), as an embedding tower without the
// untied lm_head.weight (sn_model_export), or as a *ForCausalLM (sn_model_save_causal_lm: the
// decoder's tensors under "model.", lm_head.weight at the top, architectures "Qwen2ForCausalLM").
enum { SN_SAVE_WHOLE = 0, SN_SAVE_DROP_LM_HEAD = 1, SN_SAVE_CAUSAL_LM = 2 };
// Writes DIR/config.json and DIR/model.safetensors (and 2_Dense for a projection) with the values
// `reader` gives (NULL: m's weights).
int sn_model_save_from(const sn_model *m, sn_weight_reader *reader, const char *dir, sn_dtype dtype, int mode,
                       char *err, size_t errlen);

// config.json key of the projection width (transformers ignores unknown keys).
#define SN_PROJECTION_CONFIG_KEY "scalingnote_projection_dim"
// config.json key saying model.safetensors' pooler.* is a zero placeholder for transformers.
#define SN_POOLER_PLACEHOLDER_KEY "scalingnote_pooler_placeholder"
// Allocates an empty model shell (config copied, no params).
sn_model *sn_model_shell(const sn_model_config *cfg, const sn_ops *ops);

// Pointer to a tensor in the weights / grads buffer; NULL for SN_NO_PARAM.
static inline void *sn_wptr(const sn_model *m, size_t offset) {
  return offset == SN_NO_PARAM ? NULL : (char *)m->weights + offset * m->ops->storage_size;
}
// NULL for a frozen model (no grads, no map). Without a grad map: into the flat grads buffer. With one: into the working buffer of the region
// holding offset (the last region beginning at or before it; a binary search over a few regions).
static inline void *sn_gptr(const sn_model *m, size_t offset) {
  if (offset == SN_NO_PARAM) return NULL;
  const sn_grad_map *g = m->grad_map;
  if (!g && !m->grads) return NULL;  // a frozen model (a LoRA tower's base): the backward skips it
  if (!g) return (char *)m->grads + offset * m->ops->storage_size;
  int lo = 0, hi = g->n;
  while (hi - lo > 1) {
    int mid = (lo + hi) / 2;
    if (g->begin[mid] <= offset) lo = mid;
    else hi = mid;
  }
  return (char *)g->base[lo] + (offset - g->begin[lo]) * m->ops->storage_size;
}

// What one block keeps for backward (all slots alias slot 0 when the forward is for inference).
// Which fields exist depends on the architecture:
//   decoder: norm_in, rstd_in, qkv, att, lse, x, norm_mid, rstd_mid, ff_in, ff_act
//   BERT:    qkv, att, lse, x, norm_mid, mean_mid, rstd_mid, ff_in, ff_act, y, mean_out, rstd_out
// The block's input is sn_acts.hidden[l].
typedef struct {
  void *norm_in;    // (T, C) decoder: rmsnorm(h)
  float *rstd_in;   // (T)
  void *qkv;        // (T, qkv_dim) after RoPE
  void *att;        // (T, attn_dim) attention output before o_proj
  float *lse;       // (Hq, T)
  void *x;          // (T, C) h + o_proj(att)
  void *norm_mid;   // (T, C) norm(x): input of the MLP
  float *mean_mid;  // (T) BERT only
  float *rstd_mid;  // (T)
  void *ff_in;      // (T, up_dim) decoder: gate|up; BERT: intermediate.dense output
  void *ff_act;     // (T, I) swiglu / gelu output
  void *y;          // (T, C) BERT: norm_mid + output.dense(ff_act), before output.LayerNorm
  float *mean_out;  // (T) BERT
  float *rstd_out;  // (T) BERT
} sn_layer_acts;

struct sn_acts {
  const sn_ops *ops;
  sn_model_config cfg;
  int max_tokens, max_seqs;
  int qkv_dim, attn_dim, up_dim;
  size_t bytes;
  int count_only;              // sizes only (sn_model_plan_acts_bytes): nothing allocated
  sn_recompute recompute;      // LAYER: backward slots are the block inputs only (hidden[1..L])
  void **allocs;  // everything allocated, for sn_acts_free
  int nallocs, cap_allocs;

  int have_backward_slots;     // layers[1..L-1] and hidden[1..L] allocated (lazily)
  int last_forward_backward;   // the last forward kept activations for backward
  sn_layer_acts *layers;       // (n_layers): slot l, or slot 0 for inference
  void **hidden;               // (n_layers + 1) residual stream entering block l; [L] the last one

  void *out;                   // (T, C) decoder: final norm output
  float *rstd_final;           // (T) decoder
  void *emb;                   // (T, C) BERT: word + position + type, before LayerNorm
  float *emb_mean, *emb_rstd;  // (T) BERT
  int32_t *zero_ids;           // (T) BERT: token type 0 for every token
  void *proj;                  // (T, C) o_proj / down / output.dense result, transient

  // backward scratch
  void *dres;                  // (T, C) gradient of the residual stream
  void *dnorm;                 // (T, C) gradient of a norm output / BERT second residual
  void *dwide;                 // (T, max(qkv_dim, up_dim)) dqkv, dgate_up, dintermediate
  void *dnarrow;               // (T, max(attn_dim, I)) datt, dswiglu, dgelu

  // LoRA scratch (towers with an adapter): t = s·x A^T and its gradient (a target's update and
  // output gradient are read and written in place in the fused output: ops->matmul_strided)
  void *lora_t, *lora_dt;      // (T, r)
  // LoRA dropout (adapters with dropout > 0, while training: sn_lora_set_dropout): the next forward
  // and its backward drop x before A with masks from this key; x's dropped copy and the gradient
  // before its mask, both recomputed rather than kept
  int lora_dropout_on;
  uint64_t lora_dropout_key;
  void *lora_xd;               // (T, widest target input)
  void *lora_dxd;              // (T, widest target input)

  // pooling scratch
  void *pooled;                // (max_seqs, C) storage dtype
  void *projected;             // (max_seqs, proj_dim) storage dtype, with a projection
  float *pool_norm;            // (max_seqs)
  int proj_dim;
  void *dpooled;               // (max_seqs, C) storage dtype, backward
  void *dprojected;            // (max_seqs, proj_dim) storage dtype, backward with a projection

  // A decoder forward for backward that ran its last block's o_proj, MLP and final norm on the
  // pooled rows only (sn_model_forward_pooled): its backward starts from those B rows.
  int last_forward_pooled;     // set by that forward, cleared by any other
  sn_pooling pooled_by;        // its pooling (last or cls)
  void *pool_att;              // (max_seqs, attn_dim) the last block's attention output at the pooled rows, kept
  void *pool_h;                // (max_seqs, C) the last block's input at the pooled rows, forward scratch
  void *pool_dres;             // (max_seqs, C) the residual stream's gradient at the pooled rows
  void *pool_datt;             // (max_seqs, attn_dim) o_proj's input gradient at the pooled rows
};

// Backend allocation recorded in the workspace.
void *sn_acts_alloc(sn_acts *a, size_t bytes);
// Slot l of the activations: its own for backward, slot 0 otherwise (and always under
// recomputation, where backward re-runs each block into slot 0).
static inline sn_layer_acts *sn_acts_layer(sn_acts *a, int l, int for_backward) {
  return &a->layers[for_backward && a->recompute == SN_RECOMPUTE_NONE ? l : 0];
}
static inline void *sn_acts_hidden(sn_acts *a, int l, int for_backward) {
  return a->hidden[for_backward ? l : 0];
}

// A forward that ends at the pooled rows (sn_model_embed, sn_model_forward_pooled): the pooling,
// last or cls (one token a sequence), and where its (B, C) rows go (storage dtype).
typedef struct {
  sn_pooling pooling;
  void *out;
} sn_pooled_rows;

// Whether a decoder forward of tok pooled by `pooling` may run its last block past the attention on
// the pooled rows only (sn_model_embed, sn_model_forward_pooled): pooling last or cls, fewer
// sequences than tokens, no LoRA dropout (its mask is drawn by element index: on B gathered rows it
// would not be the mask of the T rows), and SN_FULL_LAST_BLOCK unset or 0 (1 times the full block).
int sn_pooled_rows_path(const sn_model *m, const sn_acts *a, const sn_tokens *tok, sn_pooling pooling);

// The passes (tok already checked; a sized for tok). A decoder's forward with pooled returns
// pooled->out, the pooled rows of the final hidden state, and computes no more of the last block
// than they need (for_backward: a->last_forward_pooled is set); without, the final hidden state
// (T, C). The backward starts from dhidden (T, C), or after a pooled forward from the pooled rows'
// gradient (B, C).
const void *sn_decoder_forward(sn_model *m, sn_acts *a, const sn_tokens *tok, int for_backward,
                               const sn_pooled_rows *pooled);
void sn_decoder_backward(sn_model *m, sn_acts *a, const sn_tokens *tok, const void *dhidden);
const void *sn_encoder_forward(sn_model *m, sn_acts *a, const sn_tokens *tok, int for_backward);
void sn_encoder_backward(sn_model *m, sn_acts *a, const sn_tokens *tok, const void *dhidden);

// The inference paths for short inputs (ops.h: attention_rope_forward, linear_small), both for an
// inference forward (for_backward = 0) of a tower without LoRA.
// Short attention (decoders: rope + attention_forward become attention_rope_forward, RoPE applied
// while the attention loads q and k): the backend has the op, every sequence is within
// SN_ATTENTION_SHORT_MAX_SEQLEN, the head dim is even and at most SN_ATTENTION_SHORT_MAX_HEAD_DIM,
// and the environment says SN_SHORT_ATTENTION=1 (off by default: measured slower end to end; another
// value is warned about once and read as 0). Longer sequences keep the rope pass: each query tile
// would rotate every key tile again.
int sn_short_attention_path(const sn_model *m, const sn_tokens *tok, int for_backward);
// The whole small-batch forward (every linear through linear_small; a decoder's attention as short
// attention's conditions say): the backend has linear_small, the batch is at most
// SN_LINEAR_SMALL_MAX_ROWS tokens (so within short attention's limits), the widths multiples of 8.
int sn_small_batch_path(const sn_model *m, const sn_tokens *tok, int for_backward);
// Whether a decoder's inference forward may run as one decoder_fused_forward (SN_FUSED_DECODER=1, a
// backend with the op, a few tokens); the backend then says whether it takes the shape.
int sn_fused_decoder_path(const sn_model *m, const sn_tokens *tok, int for_backward);

// Linear layer helpers over ops->matmul with W (out, in) as PyTorch stores it:
//   forward  y (T, out) = x (T, in) @ W^T + b
//   backward dx (T, in) (= or +=) dy @ W; dW (out, in) += dy^T @ x; db (out) += colsum(dy)
//            (dW, db NULL: a frozen weight, no gradient)
void sn_linear_forward(const sn_ops *ops, void *y, const void *x, const void *w, const void *b,
                       int T, int in, int out);
void sn_linear_backward(const sn_ops *ops, void *dx, void *dw, void *db, const void *dy,
                        const void *x, const void *w, int T, int in, int out, int accumulate_dx);
