// The op table: one C function table that every backend fills (host/backend/cpu/ now, kernels/ for CUDA).
// Models, losses and training loops call ops only through it, so one code path runs on CPU and GPU
// and every CUDA op can be checked against its CPU twin.
//
// Conventions
// - All tensors are row-major. Shapes are written as comments: // (T, C).
// - Buffers are backend memory (host memory on the CPU, device memory on CUDA), allocated with
//   ops->alloc. Pointers typed `void *` hold the backend's *storage* dtype (ops->storage: fp32 on
//   the CPU, bf16 on CUDA): weights, activations, weight gradients. Pointers typed `float *` are
//   always fp32 (norm statistics, pooled embeddings after L2 norm, losses, optimizer state).
//   Pointers typed `int32_t *` are backend int buffers (token ids, positions, cu_seqlens, labels).
// - Sequences are packed, never padded: T tokens in total, B sequences, sequence b spanning tokens
//   [cu_seqlens[b], cu_seqlens[b+1]). cu_seqlens has B+1 entries, cu_seqlens[0] = 0,
//   cu_seqlens[B] = T, and every sequence has at least one token.
// - Backward ops *accumulate* (+=) into weight gradients (dweight, dbias, dtable) so gradient
//   accumulation across micro-batches is free; into activation gradients they *write* (=) unless
//   the parameter is called `accumulate`.
// - Ops are asynchronous with respect to the host on CUDA (one stream); ops->synchronize() waits.
//   Every op checks its launch; errors exit with file:line.
// - The CPU backend is deterministic for a given OpenMP thread count; the CUDA backend is
//   deterministic run to run (no float atomics whose order varies).
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "alloc_stats.h"
#include "dtype.h"

typedef enum { SN_POOL_LAST = 0, SN_POOL_MEAN = 1, SN_POOL_FIRST = 2 } sn_pooling;

// Most candidates per query kl_distill_loss takes (the CUDA kernel keeps a row's in shared memory).
#define SN_KL_MAX_CANDIDATES 4096

// lm_head_xent works on blocks of SN_LM_HEAD_ROW_CHUNK positions x SN_LM_HEAD_VOCAB_CHUNK vocabulary
// entries: one block of fp32 logits (1024 x 8192 x 4 bytes = 32 MiB, plus its bf16 gradient on CUDA)
// is all it holds, where the whole (N, V) logits of a 16k-token batch over Qwen2's 151,936 entries
// would be 9.3 GiB. 8192 columns keep each block's GEMMs large enough to run at full speed.
#define SN_LM_HEAD_ROW_CHUNK 1024
#define SN_LM_HEAD_VOCAB_CHUNK 8192
// A target that lm_head_xent skips (padding; PyTorch's ignore_index). Every negative target is skipped.
#define SN_IGNORE_TARGET (-100)

// Small-batch inference kernels (query encoding at a batch of one or a few queries, where every GEMM
// reads far more weight bytes than activations): linear_small takes at most
// SN_LINEAR_SMALL_MAX_ROWS rows, attention_rope_forward sequences of at most
// SN_ATTENTION_SHORT_MAX_SEQLEN tokens and heads of at most SN_ATTENTION_SHORT_MAX_HEAD_DIM
// (even). Callers fall back to matmul / rope + attention_forward past them.
#define SN_LINEAR_SMALL_MAX_ROWS 64
#define SN_ATTENTION_SHORT_MAX_SEQLEN 128
#define SN_ATTENTION_SHORT_MAX_HEAD_DIM 128

// What linear_small does to the product after the bias (see the op).
typedef enum {
  SN_EPILOGUE_NONE = 0,      // out = y
  SN_EPILOGUE_SWIGLU = 1,    // W is gate rows then up rows: out = silu(y_gate) * y_up
  SN_EPILOGUE_GELU = 2,      // out = gelu(y), erf form
  SN_EPILOGUE_RESIDUAL = 3,  // out = residual + y
} sn_epilogue;

// The weights of one decoder block (Qwen2/Llama) as a model lays them out: norm weights (C), the
// fused q|k|v projection ((Hq + 2Hkv) D, C) and its bias, o_proj (C, Hq D), the fused gate|up
// projection (2I, C: gate rows, then up rows) and down (C, I). Any bias may be NULL.
typedef struct {
  const void *norm_attn_w, *qkv_w, *qkv_b, *o_w, *o_b, *norm_mlp_w, *up_w, *up_b, *down_w, *down_b;
} sn_decoder_block;
// A whole decoder for decoder_fused_forward: its shape, embedding table (V, C), blocks (layers of
// them, in host memory; the tensors they point at are the backend's) and final norm weight.
typedef struct {
  int layers, hidden, intermediate, heads, kv_heads, head_dim;
  float norm_eps, rope_theta;
  const void *tok_embed, *final_norm_w;
  const sn_decoder_block *blocks;
} sn_decoder_weights;
// decoder_fused_forward takes at most this many tokens (a query or two of a student's batch) and
// this many blocks.
#define SN_DECODER_FUSED_MAX_ROWS 32
#define SN_DECODER_FUSED_MAX_LAYERS 32

// Deepest list topk_merge keeps (the CUDA kernel sorts the survivors of a row in shared memory).
#define SN_TOPK_MAX_K 2048

// One contiguous parameter tensor inside a flat parameter buffer, for the multi-tensor optimizer:
// elements [offset, offset + count) get weight decay `weight_decay` (0 for norms and biases).
typedef struct {
  size_t offset;
  size_t count;
  float weight_decay;
} sn_param_span;

typedef struct {
  float lr;
  float beta1, beta2, eps;
  int64_t step;      // 1-based step number, for bias correction
  float grad_scale;  // multiplies every gradient first (1/accum_steps × clip factor)
  // bf16 optimizer state (optim.state_dtype = "bf16"): no master copy, the weights and moments are
  // rounded to bf16 stochastically (adamw_math.h says why) with the bits of stream round_key at
  // element index_base + i (index_base: where params[0] sits in the whole buffer, so a ZeRO slice
  // draws what the whole buffer would).
  int state_bf16;
  uint64_t round_key, index_base;
} sn_adamw_hparams;

// The shapes that size a backend's own scratch (what it allocates inside ops, beyond the buffers
// callers pass): the memory plan's "backend workspaces" line.
typedef struct {
  int max_tokens;              // the most tokens through one forward/backward (T)
  int n_heads, head_dim;       // attention backward's fp32 dq accumulator (T, Hq, D)
  int widest;                  // widest activation row: max(qkv, 2I, C) (bias/norm partials)
  int loss_rows, loss_cols;    // contrastive loss logits (R, N)
  int max_span_count;          // most parameter spans one optimizer step takes
  int lm_vocab, lm_width;      // lm_head_xent's V and C (0: no LM head); rows are max_tokens
} sn_workspace_shape;

typedef struct sn_ops {
  const char *name;  // "cpu" or "cuda"
  sn_dtype storage;  // dtype behind `void *` tensors
  size_t storage_size;

  // ---- memory ---------------------------------------------------------------------------------
  void *(*alloc)(size_t bytes);  // never NULL; contents undefined
  void (*free)(void *p);
  void (*memset_zero)(void *p, size_t bytes);
  void (*copy)(void *dst, const void *src, size_t bytes);          // backend → backend
  void (*upload)(void *dst, const void *host_src, size_t bytes);   // host → backend, raw bytes
  void (*download)(void *host_dst, const void *src, size_t bytes); // backend → host, raw bytes
  // Page-locked host memory (CUDA: pinned; the CPU: plain) and copies that are only enqueued, for
  // the small per-call transfers of query encoding, where a pageable copy costs more than the
  // bytes: the host buffer must come from host_alloc and be left alone until ops->synchronize()
  // (after which a download's bytes are there). The CPU backend copies at once.
  void *(*host_alloc)(size_t bytes);
  void (*host_free)(void *p);
  void (*upload_async)(void *dst, const void *host_src, size_t bytes);
  void (*download_async)(void *host_dst, const void *src, size_t bytes);
  // host fp32 ↔ backend storage dtype, converting (round to nearest even for bf16)
  void (*upload_f32)(void *dst, const float *host_src, size_t n);
  void (*download_f32)(float *host_dst, const void *src, size_t n);
  // backend fp32 ↔ backend storage dtype
  void (*storage_to_f32)(float *dst, const void *src, size_t n);
  void (*f32_to_storage)(void *dst, const float *src, size_t n);
  void (*synchronize)(void);
  // Bytes this backend's allocations (buffers and scratch) hold now and at most since the start
  // or the last reset_peak; see alloc_stats.h for what is outside it.
  sn_alloc_stats (*memory_stats)(void);
  void (*memory_reset_peak)(void);
  // Memory the backend could still allocate, and its size (the device, or the host's available
  // memory for the CPU backend).
  void (*device_memory)(size_t *free_bytes, size_t *total_bytes);
  // Most bytes of scratch the ops hold at once for work of this shape (counted by memory_stats).
  size_t (*workspace_bytes)(const sn_workspace_shape *shape);

  // ---- initialisation -------------------------------------------------------------------------
  // x (n) = stddev * sn_normal_at(key, j) for j < n, in the storage dtype (counter_rng.h: the same
  // values on every backend and thread count). fill: x (n) = value.
  void (*fill_normal)(void *x, size_t n, uint64_t key, float stddev);
  void (*fill)(void *x, size_t n, float value);
  // Inverted dropout with a counter-based mask: out (n) (= or += when accumulate) x * keep_j / (1 - p),
  // keep_j = sn_uniform_at(key, j) >= p. The same key gives the same mask on every backend and
  // thread count, so a backward (or a recomputed forward) re-derives it instead of storing it.
  void (*dropout)(void *out, const void *x, size_t n, uint64_t key, float p, int accumulate);

  // ---- elementwise ----------------------------------------------------------------------------
  void (*add)(void *out, const void *a, const void *b, size_t n);  // out = a + b (out may alias)
  void (*add_f32)(float *out, const float *a, const float *b, size_t n);  // the same on fp32 buffers
  void (*scale_f32)(float *x, float s, size_t n);                  // x *= s
  // dst (rows, cols) with row stride ld_dst = (accumulate ? dst : 0) + alpha * src (rows, cols) with
  // row stride ld_src. Moves a scaled column slice into or out of a wider matrix (a LoRA update into
  // its q, k or v columns of the fused q|k|v output, or those columns of the gradient out). dst may
  // be src (same strides: an in-place scale).
  void (*axpy_2d)(void *dst, int ld_dst, const void *src, int ld_src, int rows, int cols, float alpha,
                  int accumulate);

  // ---- embedding lookup -----------------------------------------------------------------------
  // out (T, C) = table[ids] (V, C); accumulate: out += instead. Ids are checked on the host before.
  void (*embedding_forward)(void *out, const int32_t *ids, const void *table, int T, int C,
                            int accumulate);
  // dtable (V, C) += scatter of dout (T, C) by ids. Deterministic.
  void (*embedding_backward)(void *dtable, const void *dout, const int32_t *ids, int T, int C, int V);

  // ---- norms ----------------------------------------------------------------------------------
  // RMSNorm (Qwen2/Llama): out = x / sqrt(mean(x²) + eps) * weight. rstd (T) saved for backward.
  void (*rmsnorm_forward)(void *out, float *rstd, const void *x, const void *weight, int T, int C,
                          float eps);
  // dx (T, C) = (accumulate ? dx + : ) d/dx; dweight (C) +=, or NULL for a frozen weight (LoRA).
  void (*rmsnorm_backward)(void *dx, void *dweight, const void *dout, const void *x,
                           const void *weight, const float *rstd, int T, int C, int accumulate);
  // Fused residual + RMSNorm: residual_out = a + b; out = rmsnorm(residual_out). Saves a pass.
  void (*add_rmsnorm_forward)(void *residual_out, void *out, float *rstd, const void *a,
                              const void *b, const void *weight, int T, int C, float eps);
  // LayerNorm (BERT): out = (x - mean) * rstd * weight + bias; mean, rstd (T) saved.
  void (*layernorm_forward)(void *out, float *mean, float *rstd, const void *x, const void *weight,
                            const void *bias, int T, int C, float eps);
  void (*layernorm_backward)(void *dx, void *dweight, void *dbias, const void *dout, const void *x,
                             const void *weight, const float *mean, const float *rstd, int T, int C,
                             int accumulate);
  // Fused residual + LayerNorm (BERT post-norm): residual_out = a + b; out = layernorm(residual_out).
  void (*add_layernorm_forward)(void *residual_out, void *out, float *mean, float *rstd,
                                const void *a, const void *b, const void *weight, const void *bias,
                                int T, int C, float eps);

  // ---- matmul ---------------------------------------------------------------------------------
  // C (M, N) = op(A) @ op(B) [+ bias (N)] [+ C if accumulate].
  // op(A) is (M, K): A stored (M, K), or (K, M) when trans_a. op(B) is (K, N): B stored (K, N),
  // or (N, K) when trans_b. A linear layer y = x W^T + b with W (out, in) as PyTorch stores it is
  // matmul(y, x, W, b, T, out, in, 0, 1, 0). Accumulation in fp32.
  void (*matmul)(void *C, const void *A, const void *B, const void *bias, int M, int N, int K,
                 int trans_a, int trans_b, int accumulate);
  // The same with the stored A, B and C's row strides given (in elements; matmul's are the widths):
  // a column slice of a wider matrix as an operand or the output, read and written in place (LoRA's
  // update into the q, k, v or gate, up columns of a fused projection, and those columns of its
  // gradient) where a copy through scratch would move the whole slice twice more.
  void (*matmul_strided)(void *C, int ldc, const void *A, int lda, const void *B, int ldb, const void *bias,
                         int M, int N, int K, int trans_a, int trans_b, int accumulate);
  // dbias (N) += column sums of dout (M, N).
  void (*bias_backward)(void *dbias, const void *dout, int M, int N);
  // Small-batch linear layer with its neighbours fused, for inference (no gradients):
  //   xn = norm_w ? rmsnorm(x, norm_w, eps) : x          x (M, K), norm_w (K) or NULL
  //   y  = xn · W^T + bias                               W (N_w, K) as PyTorch stores it, bias (N_w)
  //   out (M, N) = epilogue(y)                           N_w = 2N for SWIGLU (gate rows [0, N), up
  //                                                      rows [N, 2N), bias likewise), else N
  // residual (M, N) is read for SN_EPILOGUE_RESIDUAL only (NULL otherwise); out may alias residual
  // but not x. bias may be NULL. 1 <= M <= SN_LINEAR_SMALL_MAX_ROWS, K a multiple of 8, and x, W,
  // norm_w start on 16 bytes (allocations and tensors of a model whose widths are multiples of 8 do:
  // the CUDA kernel reads 16-byte packs). The result
  // equals the unfused ops (rmsnorm_forward, matmul, swiglu_forward / gelu_forward / add): on the
  // CPU bit for bit, on CUDA within bf16 rounding (no intermediate is rounded to storage there).
  void (*linear_small)(void *out, const void *x, const void *norm_w, float eps, const void *w,
                       const void *bias, const void *residual, int M, int N, int K,
                       sn_epilogue epilogue);

  // ---- rotary position embedding (Hugging Face rotate-half convention) -------------------------
  // qkv (T, (Hq + 2*Hkv) * D): per token, Hq query heads, then Hkv key heads, then Hkv value heads.
  // Rotates the q and k heads in place by angle pos[t] * theta^(-2i/D). inverse = 1 rotates by the
  // negative angle: that is the backward pass applied to dqkv.
  void (*rope)(void *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta,
               int inverse);

  // ---- attention over packed variable-length sequences ----------------------------------------
  // qkv as for rope; out (T, Hq * D); lse (Hq, T) log-sum-exp of the scaled scores, for backward.
  // Grouped-query: query head h reads kv head h / (Hq / Hkv). causal = 1 for decoders.
  // scale is usually 1/sqrt(D). max_seqlen is a bound on the longest sequence (tiling hint).
  void (*attention_forward)(void *out, float *lse, const void *qkv, const int32_t *cu_seqlens,
                            int B, int T, int max_seqlen, int Hq, int Hkv, int D, int causal,
                            float scale);
  // Inference attention over short sequences with RoPE applied on the fly: out (T, Hq * D) =
  // attention_forward(rope(qkv)) without lse, qkv left unchanged (rope's arguments, rotation by
  // pos[t] * theta^(-2i/D)). max_seqlen <= SN_ATTENTION_SHORT_MAX_SEQLEN, D even and at most
  // SN_ATTENTION_SHORT_MAX_HEAD_DIM. Equals rope + attention_forward: on the CPU bit for bit, on
  // CUDA within bf16 rounding.
  void (*attention_rope_forward)(void *out, const void *qkv, const int32_t *pos,
                                 const int32_t *cu_seqlens, int B, int T, int max_seqlen, int Hq,
                                 int Hkv, int D, float theta, int causal, float scale);
  // dqkv (T, (Hq + 2*Hkv) * D) is written (not accumulated).
  void (*attention_backward)(void *dqkv, const void *dout, const void *qkv, const void *out,
                             const float *lse, const int32_t *cu_seqlens, int B, int T,
                             int max_seqlen, int Hq, int Hkv, int D, int causal, float scale);

  // ---- the whole decoder in one op (inference) -----------------------------------------------
  // The inference forward of a whole decoder (a query tower or a distilled student) over at most
  // SN_DECODER_FUSED_MAX_ROWS tokens in one op: out (T, C) =
  //   h = embed(ids); per block: x = h + o_proj(attn(rope(rmsnorm(h) W_qkv^T + b_qkv)))
  //                              h = x + down(swiglu(rmsnorm(x) W_gate|up^T + b_gate|up))
  //   out = rmsnorm(h, final_norm_w)
  // the causal attention over the packed sequences of cu_seqlens (B + 1) with pos (T), as the
  // unfused ops compute it. decoder_fused_supports says whether this backend takes the shape (the
  // CPU takes any; the CUDA kernel those whose shares fit shared memory, docs/DESIGN.md); only then may
  // decoder_fused_forward be called. On the CPU the unfused ops in order: the same bits as the
  // model's forward; on CUDA within bf16 rounding of it.
  int (*decoder_fused_supports)(const sn_decoder_weights *w, int T);
  void (*decoder_fused_forward)(void *out, const int32_t *ids, const int32_t *pos,
                                const int32_t *cu_seqlens, int B, int T,
                                const sn_decoder_weights *w);

  // ---- activations ----------------------------------------------------------------------------
  // gate_up (T, 2*I): gate = [:, :I], up = [:, I:]; out (T, I) = silu(gate) * up.
  void (*swiglu_forward)(void *out, const void *gate_up, int T, int I);
  void (*swiglu_backward)(void *dgate_up, const void *dout, const void *gate_up, int T, int I);
  // GELU, erf form: out = x * 0.5 * (1 + erf(x / sqrt(2))).
  void (*gelu_forward)(void *out, const void *x, size_t n);
  void (*gelu_backward)(void *dx, const void *dout, const void *x, size_t n);

  // ---- pooling and L2 normalisation -----------------------------------------------------------
  // out (B, C) = one row per sequence of hidden (T, C): last token, mean over tokens, or first.
  void (*pool_forward)(void *out, const void *hidden, const int32_t *cu_seqlens, int B, int T,
                       int C, sn_pooling mode);
  // dhidden (T, C) is written in full (zero at tokens the pooling does not read).
  void (*pool_backward)(void *dhidden, const void *dout, const int32_t *cu_seqlens, int B, int T,
                        int C, sn_pooling mode);
  // out (B, C) fp32 = x / max(||x||, eps); norm (B) saved.
  void (*l2norm_forward)(float *out, float *norm, const void *x, int B, int C);
  // dx (B, C) storage = d/dx given dout (B, C) fp32 and the forward's out and norm.
  void (*l2norm_backward)(void *dx, const float *dout, const float *out, const float *norm, int B,
                          int C);

  // ---- losses (fp32) --------------------------------------------------------------------------
  // Contrastive cross-entropy over similarities, the core of InfoNCE:
  //   logits (R, N) = rows (R, C) @ cols (N, C)^T * inv_temp
  //   loss += scale * sum_r [ logsumexp(logits[r]) - logits[r, target[r]] ]
  // drows (R, C) and dcols (N, C) are accumulated (+=) with the gradient of that sum. `loss` is one
  // float in backend memory, accumulated. InfoNCE of queries against the batch's documents is
  // rows = queries, cols = documents, target = index of each query's positive, scale = 1/R; the
  // symmetric document→query term swaps the roles. Probabilities are never written out.
  void (*contrastive_loss)(float *loss, float *drows, float *dcols, const float *rows,
                           const float *cols, const int32_t *target, int R, int N, int C,
                           float inv_temp, float scale);
  // Distillation: student (B, C) and teacher (B, C) fp32.
  //   mse = mean over B*C of (s - t)²; cos = mean over rows of (1 - cos(s_b, t_b))
  //   loss_terms[0] += alpha * mse, loss_terms[1] += beta * cos (backend memory, 2 floats)
  // dstudent (B, C) is written with the gradient of alpha*mse + beta*cos.
  void (*distill_loss)(float *loss_terms, float *dstudent, const float *student,
                       const float *teacher, int B, int C, float alpha, float beta);
  // Score distillation (FlagEmbedding's kl_div), each query over its own G candidates:
  //   q (B, C) queries; d (B*G, C) documents, rows [b*G, (b+1)*G) query b's candidates; teacher
  //   (B, G) teacher scores; all fp32 backend memory. With s_bg = q_b . d_bg,
  //   p_t = softmax_g(teacher_b * inv_temp_teacher), p_s = softmax_g(s_b * inv_temp_student),
  //   *loss += scale * sum_b KL(p_t || p_s) (backend memory, 1 float);
  //   dq (B, C) and dd (B*G, C) are *accumulated* (+=) with the term's gradient
  //   (d/ds_bg = scale * inv_temp_student * (p_s - p_t)), so it adds onto the InfoNCE gradients.
  // G ≤ SN_KL_MAX_CANDIDATES.
  void (*kl_distill_loss)(float *loss, float *dq, float *dd, const float *q, const float *d,
                          const float *teacher, int B, int G, int C, float inv_temp_student,
                          float inv_temp_teacher, float scale);

  // Fused LM head and next-token cross-entropy (causal-LM pretraining), never holding (N, V) logits:
  //   logits (N, V) = hidden (N, C) @ weight (V, C)^T   (the lm_head, or the tied embedding table)
  //   *loss += scale * sum over n with targets[n] >= 0 of [logsumexp(logits[n]) - logits[n, targets[n]]]
  // A negative target (SN_IGNORE_TARGET) is skipped: no loss, a zero gradient row. Logits are made
  // one block of SN_LM_HEAD_ROW_CHUNK rows x SN_LM_HEAD_VOCAB_CHUNK columns at a time: a first sweep
  // over a row chunk's vocabulary keeps each row's running max and sum of exponentials (online
  // log-sum-exp), a second recomputes each block and turns it into its gradient
  // scale * (softmax - onehot), which two GEMMs take into dhidden and dweight before the next block.
  // hidden, weight, dhidden, dweight are storage; targets (N) int32 backend, each < V (the caller
  // checks); loss one fp32 float in backend memory. dhidden (N, C) is written (NULL: no backward);
  // dweight (V, C) is accumulated (+=; NULL: not wanted).
  void (*lm_head_xent)(float *loss, void *dhidden, void *dweight, const void *hidden, const void *weight,
                       const int32_t *targets, int N, int V, int C, float scale);

  // ---- exact top-k for evaluation (fp32) ------------------------------------------------------
  // S (M, N) = A (M, K) · B (N, K)^T, all fp32 backend memory, fp32 products and accumulation (no
  // reduced-precision tensor-core math: search scores must not depend on the backend's storage).
  void (*scores_f32)(float *S, const float *A, const float *B, int M, int N, int K);
  // Merges one block of candidates into running top-k lists, row by row:
  //   best_score, best_idx (nq, k): each row best-first in trec order (score descending, then tie
  //     key descending); entries with best_idx < 0 are empty (callers start from all -1) and rank
  //     below every candidate; they are written back as (-INFINITY, -1)
  //   scores (nq, nd): row i's candidates, candidate j being document col0 + j
  //   tie_key: int32 (N) backend array indexed by document, unique keys >= 0, or NULL for the
  //     document index itself
  // Rows end with the k best of their old entries and the nd candidates. -0.0 ranks as +0.0 and is
  // written back as +0.0; scores must not be NaN. Keys are unique, so the result is fully
  // determined: every backend returns identical lists. 1 <= k <= SN_TOPK_MAX_K, nd >= 0.
  void (*topk_merge)(float *best_score, int32_t *best_idx, const float *scores, int nq, int nd,
                     int k, int col0, const int32_t *tie_key);

  // ---- optimizer ------------------------------------------------------------------------------
  // out[0] += sum of squares of grads (n elements of storage dtype), accumulated in fp32/fp64.
  void (*sum_squares)(float *out, const void *grads, size_t n);
  // AdamW with decoupled weight decay over every span of a flat parameter buffer:
  //   g = grads * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g²
  //   master -= lr * (m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd * master)
  //   params = storage(master)
  // master, m, v are fp32 (on fp32 storage master may be params, or NULL for params). With
  // hp->state_bf16: master is NULL and params are their own master; m and v are in the storage
  // dtype; the new params, m and v are rounded to bf16 stochastically (on fp32 storage: to the
  // fp32 values that bf16 holds), the same values on every backend.
  void (*adamw)(void *params, float *master, const void *grads, void *m, void *v,
                const sn_param_span *spans, int nspans, const sn_adamw_hparams *hp);

  // ---- graphs: a fixed sequence of ops recorded once, replayed with one launch -------------------
  // NULL on backends without them (the CPU, where a launch costs nothing to save). Between
  // graph_begin and graph_end the ops the calling thread enqueues are recorded, not run (no
  // upload, download or synchronize in between); graph_end returns the executable graph. A replay
  // reads and writes the buffers the recording named, with the shapes and scalars it was given:
  // replaying with other contents of those buffers is the point, other sizes are not. Run once
  // outside a recording first, so the backend's scratch already fits the shape; a graph is stale
  // once scratch_epoch() differs from its value at recording (the backend's scratch moved).
  void (*graph_begin)(void);
  void *(*graph_end)(void);
  void (*graph_launch)(void *graph);  // ordered with the ops and copies before and after it
  void (*graph_free)(void *graph);
  uint64_t (*scratch_epoch)(void);

  // ---- execution contexts: a stream of its own with its own scratch and GEMM plans ----------------
  // NULL on backends without them (the CPU, whose scratch is per thread already). Ops and copies
  // run in the calling thread's context: the process's default one (the device's legacy stream:
  // training and the CLI tools), or the one the thread bound last with context_bind, which returns
  // the context bound before (NULL: the default). While bound, the thread's ops, copies, synchronize,
  // recordings and graph launches run on the context's stream with its scratch (scratch_epoch is
  // its own), so threads bound to different contexts run concurrently and never share a buffer.
  // A context is bound by one thread at a time; buffers may be allocated in any context and used in
  // another once the producing context has synchronized. context_free waits for the context's work
  // and releases it (it must not be bound by any thread).
  void *(*context_new)(void);
  void *(*context_bind)(void *ctx);
  void (*context_free)(void *ctx);
} sn_ops;

// The backends. sn_ops_cpu() always exists; sn_ops_cuda() returns NULL when built without CUDA
// or when no GPU is present (reason in *why_not when non-NULL).
const sn_ops *sn_ops_cpu(void);
const sn_ops *sn_ops_cuda(const char **why_not);
// The CUDA table without a device, for sn_ops_for_plan (NULL when built without CUDA).
const sn_ops *sn_ops_cuda_for_plan(void);
// CUDA builds only, for benchmarks: enqueues a kernel that keeps the stream busy this long.
void sn_cuda_busy_wait(double microseconds);
// For tests of the programmatic edge into cuBLASLt's GEMMs (kernels/pdl_probe.cu): whether the
// probe sees a copy kernel that does (consumer_waits = 1) or does not wait for its producer as
// waiting (-1: no programmatic launch here: before sm_90, SN_PDL=0, or a build without CUDA), and
// whether the GEMM ops->matmul runs for this shape waits (1) or not (0; also without CUDA).
int sn_cuda_pdl_probe_selftest(int consumer_waits);
int sn_cuda_matmul_waits_for_producer(int M, int N, int K, int trans_a, int trans_b, int has_bias, int accumulate);
// "cpu" or "cuda": the backend, or an error naming the device string.
const sn_ops *sn_ops_by_name(const char *device);
// A backend's table for the memory plan only (storage dtype, workspace arithmetic; nothing may be
// allocated), also on a machine without its device (a login node): device_memory then reports 0.
// Exits 2 for a backend this build lacks.
const sn_ops *sn_ops_for_plan(const char *device);

