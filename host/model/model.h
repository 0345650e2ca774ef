// Towers: decoder (Qwen2, Llama: pre-RMSNorm, RoPE, GQA, SwiGLU) and encoder (BERT: learned
// positions, post-LayerNorm, GELU) assembled from the op table. All parameters of a model live in
// one flat buffer of the backend's storage dtype (grads likewise), so the optimizer, gradient norm
// and all-reduce each take one call. Each Hugging Face tensor is a contiguous slice of it; q/k/v
// projections are adjacent (one fused QKV matmul), as are gate/up.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "model_config.h"
#include "ops.h"

#define SN_PARAM_NAME_MAX 128

typedef struct {
  char name[SN_PARAM_NAME_MAX];  // the Hugging Face name without the "model." prefix
  int ndim;
  int64_t shape[2];
  size_t offset;                 // in elements, into sn_model.weights / .grads
  size_t count;
  int no_decay;                  // norms, biases (and embeddings when configured): no weight decay
} sn_param;

// Where gradients are written when the model keeps no full gradient buffer (ZeRO-2, see
// host/train/optimizer.h): the flat range [0, num_elements) is cut into regions (the tensors
// before the layers, each layer, the tensors after them), and region r's gradients are written at
// base[r], a working buffer the optimizer empties as the region completes. A region must not cut
// the fused q|k|v or gate|up groups (one matmul writes each group): whole layers never do. Owned
// by its installer.
typedef struct {
  int n;               // regions, in buffer order
  const size_t *begin; // (n + 1) region r is elements [begin[r], begin[r + 1]); begin[n] = num_elements
  void *const *base;   // (n) storage of region r's gradients (element begin[r] is base[r][0])
} sn_grad_map;

// The last call of on_layer_grads in a backward pass: every gradient outside the layers (the
// embeddings, the final norm, the projection) is complete too.
#define SN_GRADS_REST (-1)

typedef struct sn_model {
  sn_model_config cfg;
  const sn_ops *ops;
  int nparams;
  sn_param *params;
  size_t num_elements;  // total parameter count
  void *weights;        // (num_elements) storage dtype
  void *grads;          // (num_elements) storage dtype; NULL until sn_model_alloc_grads
  const sn_grad_map *grad_map;  // when set, gradients go through it instead of grads (ZeRO-2)
  struct sn_model_layout *layout;  // resolved per-layer pointers (model.c internal)
  // Called by sn_model_backward as soon as layer l's weight gradients are complete (from the last
  // layer down), so data parallelism can start their all-reduce while lower layers still compute;
  // then once with SN_GRADS_REST when the pass is over.
  void (*on_layer_grads)(void *ctx, int layer);
  void *on_layer_grads_ctx;
  // A LoRA tower (model_lora.h): a view of a frozen base (weights shared, grads NULL) whose
  // targeted linears add the adapter's low-rank update. NULL for an ordinary model.
  struct sn_lora *lora;
  int is_view;  // weights, params and layout belong to another model: sn_model_free frees the struct
  // Causal-LM training (stage 0): the untied lm_head is trained (it gets an optimizer span), where
  // the towers only carry it along.
  int trains_lm_head;
} sn_model;

// A packed batch in backend memory: B sequences, T tokens in total.
typedef struct {
  int B, T, max_seqlen;
  int32_t *ids;         // (T)
  int32_t *pos;         // (T) position of each token inside its sequence
  int32_t *cu_seqlens;  // (B + 1)
  int capacity_tokens, capacity_seqs;
  // ids, pos and cu_seqlens lie in one backend buffer (`packed`), packed for the batch at hand
  // (sn_tokens_upload: pos and cu_seqlens start where the previous ends, on 16 bytes), so a batch
  // is one copy from `staging`, page-locked host memory laid out the same way. The pointers depend
  // on T only (what a recorded graph keys on). copies_pending: enqueued and not yet known done, so
  // the next upload synchronises first.
  int32_t *packed, *staging;
  int copies_pending;
} sn_tokens;

// Loads a Hugging Face folder (config.json + safetensors). Exits with status 2 and a message
// naming the file and tensor/field on bad input.
sn_model *sn_model_load(const char *dir, const sn_ops *ops);
// The same for callers that must not exit (the encoder library): NULL with err on bad input.
// Allocation failures (host or backend) still abort, as everywhere.
sn_model *sn_model_load_try(const char *dir, const sn_ops *ops, char *err, size_t errlen);
// Whether a config describes a tower the builders can assemble: 0, or -1 with err.
int sn_model_config_check(const sn_model_config *cfg, char *err, size_t errlen);
// Fresh model with a seeded initialisation (normal(0, 0.02) matrices, unit norms, zero biases).
sn_model *sn_model_new(const sn_model_config *cfg, const sn_ops *ops, uint64_t seed);
// Writes DIR/config.json and DIR/model.safetensors (dtype F32 or BF16), durably. Returns 0, or
// -1 with err.
int sn_model_save(const sn_model *m, const char *dir, sn_dtype dtype, char *err, size_t errlen);
// The same for an exported embedding tower: without an untied lm_head.weight, which the towers
// never read (half the file of a small decoder). sn_model_load accepts folders with or without it.
int sn_model_export(const sn_model *m, const char *dir, sn_dtype dtype, char *err, size_t errlen);
// A decoder as a Hugging Face *ForCausalLM folder (Qwen2ForCausalLM / LlamaForCausalLM): tensors
// under "model." and lm_head.weight (absent when tied), as transformers saves one. 0 or -1 with err.
int sn_model_save_causal_lm(const sn_model *m, const char *dir, sn_dtype dtype, char *err, size_t errlen);
void sn_model_free(sn_model *m);
// The vocabulary projection of a decoder: *weight (V, C) the untied lm_head, or the embedding table
// when tie_word_embeddings; *grad where its gradient goes (NULL for a frozen model). 0, or -1 when
// the model has neither (an exported tower without lm_head.weight, an encoder).
int sn_model_lm_head(const sn_model *m, const void **weight, void **grad);
const sn_param *sn_model_find_param(const sn_model *m, const char *name);
void sn_model_alloc_grads(sn_model *m);
void sn_model_zero_grads(sn_model *m);
// Spans for the optimizer (weight decay wd for decayed tensors, 0 for no_decay). Tensors the
// forward never reads (an untied lm_head, BERT's pooler) get no span, so decay cannot shrink them.
// Caller frees.
sn_param_span *sn_model_param_spans(const sn_model *m, float wd, int *nspans);

// Token batches. Checks every id against the vocabulary (exit 2 naming `what` and the position).
void sn_tokens_alloc(sn_tokens *t, const sn_ops *ops, int capacity_tokens, int capacity_seqs);
void sn_tokens_free(sn_tokens *t, const sn_ops *ops);
// What sn_tokens_alloc allocates (the memory plan).
size_t sn_tokens_bytes(int capacity_tokens, int capacity_seqs);
// ids_host: all sequences back to back; cu_seqlens_host (B + 1).
void sn_tokens_upload(sn_tokens *t, const sn_ops *ops, const int32_t *ids_host,
                      const int32_t *cu_seqlens_host, int B, int vocab, const char *what);

// Activation workspace for batches of at most max_tokens tokens and max_seqs sequences.
typedef struct sn_acts sn_acts;
sn_acts *sn_acts_new(const sn_model *m, int max_tokens, int max_seqs);
void sn_acts_free(sn_acts *a);
size_t sn_acts_bytes(const sn_acts *a);

// Activation recomputation (decoders): a forward kept for backward stores only each block's input
// (T, C); the backward re-runs block l's forward from it into one shared slot just before its own
// backward. Gradients are those of the plain path (bit for bit on the CPU: the recomputation runs
// the same ops on the same inputs); memory drops from ~(6C + qkv + 3I) to C values a token per layer,
// for about one more forward of compute.
typedef enum { SN_RECOMPUTE_NONE = 0, SN_RECOMPUTE_LAYER = 1 } sn_recompute;
// Set before the workspace's first forward with for_backward = 1 (exits otherwise, and for BERT).
void sn_acts_set_recompute(sn_acts *a, sn_recompute mode);
// "none" | "layer"; -1 for an unknown name.
int sn_recompute_parse(const char *name, sn_recompute *out);

// The memory plan: a model's parameter table without weights (num_elements, params; with an output
// projection of width proj_dim > 0; free it with sn_model_free), and the bytes sn_acts_new (plus, for_backward, the backward slots of a forward kept
// for backward under `recompute`) would allocate for it, counted by the same code that allocates them.
sn_model *sn_model_plan(const sn_model_config *cfg, const sn_ops *ops, int proj_dim);
// The widest activation row of a block: max(qkv width, MLP input width, C) (the plan's scratch shapes).
int sn_model_widest_row(const sn_model *m);
size_t sn_model_plan_acts_bytes(const sn_model *m, int max_tokens, int max_seqs, int for_backward,
                                sn_recompute recompute);

// Forward pass: returns the last hidden state (T, C) (after the final norm for decoders, after the
// last layer's LayerNorm for BERT), valid until the next call with the same acts. for_backward = 0
// keeps only what the next layer needs (inference, gradient-cache embedding pass).
const void *sn_model_forward(sn_model *m, sn_acts *a, const sn_tokens *tok, int for_backward);
// Backward from dhidden (T, C) (storage dtype) after a forward with for_backward = 1: accumulates
// into m->grads (or where m->grad_map says). After sn_model_forward_pooled use sn_model_backward_pooled.
void sn_model_backward(sn_model *m, sn_acts *a, const sn_tokens *tok, const void *dhidden);

// Pooled embeddings: out (B, sn_model_out_dim(m)) fp32 in backend memory (C, or the projection's
// width when the model has one); normalize = L2 normalise.
// Uses a's scratch; hidden is what sn_model_forward returned.
void sn_model_pool(sn_model *m, sn_acts *a, const sn_tokens *tok, const void *hidden,
                   sn_pooling pooling, int normalize, float *out);

// Inference embeddings of a batch, what sn_model_forward (for_backward = 0) then sn_model_pool give,
// in one call that may skip work they do not need: a decoder pooled at one token a sequence (last or
// cls) runs its last block's o_proj, MLP and final norm on those B rows only (causal attention: no
// other row's output reaches them). The same embeddings bit for bit on the CPU; on CUDA the GEMMs of
// B rows may pick other cuBLASLt kernels than those of T rows (the bf16 band). The hidden state is
// not left in a: use forward + pool to read it. Not pruned: mean pooling, BERT, and LoRA dropout on
// (sn_lora_set_dropout: its mask is drawn by element index).
void sn_model_embed(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_pooling pooling, int normalize,
                    float *out);

// The training forward of the embeddings: what sn_model_forward (for_backward = 1) then
// sn_model_pool with normalize = 1 give, keeping what the backward needs, and like sn_model_embed
// running a decoder's last block past the attention on the B pooled rows only (the attention half
// stays on all T rows: every row's keys and values are read). That is ~1/L of the step's work less:
// nothing else reaches the embeddings, so no other row's gradient is computed either. The hidden
// state is not left in a. Its backward is sn_model_backward_pooled.
void sn_model_forward_pooled(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_pooling pooling, float *emb);
// The backward of sn_model_forward_pooled, as sn_model_pool_backward then sn_model_backward: from
// d_emb (B, out_dim) fp32, the emb it wrote and d_raw_extra (as sn_model_pool_backward); dhidden is
// (T, C) storage scratch, used when the forward ran every row.
void sn_model_backward_pooled(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_pooling pooling,
                              const float *d_emb, const float *emb, const void *d_raw_extra, void *dhidden);

// Pooling names, parsed here only: "last" | "mean" | "cls" ("first" is accepted as an alias of
// cls, which pools the first token). 0 with *out set, or -1 for an unknown name.
int sn_pooling_parse(const char *name, sn_pooling *out);
// As sn_pooling_parse, but an unknown name exits with status 2, naming `what` (a flag or config key).
sn_pooling sn_pooling_from_name(const char *name, const char *what);
// "last" | "mean" | "cls".
const char *sn_pooling_name(sn_pooling p);

// The embedding before L2 normalisation of the last sn_model_pool: (B, sn_model_out_dim(m)) storage.
const void *sn_model_pool_raw(const sn_acts *a);
// Backward of sn_model_pool with normalize = 1 (the last one, after a forward kept activations):
// from d_emb (B, out_dim) fp32 and the normalised emb it wrote, plus d_raw_extra (B, out_dim)
// storage when non-NULL (a gradient w.r.t. the raw embedding), through the projection (gradients
// accumulated into m->grads) and the pooling into dhidden (T, C) storage, written.
void sn_model_pool_backward(sn_model *m, sn_acts *a, const sn_tokens *tok, sn_pooling pooling,
                            const float *d_emb, const float *emb, const void *d_raw_extra, void *dhidden);

// Output projection (stage-2 students narrower than their teacher): "projection.weight"
// (out_dim, C) and "projection.bias" (out_dim), applied after pooling by sn_model_pool and saved
// with the model (config key "scalingnote_projection_dim"). Returns a model with m's weights and a
// fresh seeded projection; m is freed.
sn_model *sn_model_add_projection(sn_model *m, int out_dim, uint64_t seed);
// Width of what sn_model_pool writes: the projection's out_dim, or C without one.
int sn_model_out_dim(const sn_model *m);
