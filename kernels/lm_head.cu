// The fused LM head + next-token cross-entropy (ops.h: lm_head_xent), chunked so that the (N, V)
// logits never exist: per block of SN_LM_HEAD_ROW_CHUNK rows x SN_LM_HEAD_VOCAB_CHUNK vocabulary
// entries, one cuBLASLt GEMM (bf16 operands, fp32 logits) and one row kernel.
//   sweep 1, per vocabulary block: logits = hidden rows @ W block^T; lse_merge_kernel folds the block
//     into each row's running max and sum of exponentials (online log-sum-exp) and picks up the
//     target's logit when it falls in the block. Then row_loss_kernel: lse and the row's loss,
//     summed in a fixed order into *loss.
//   sweep 2, per vocabulary block: the same GEMM again, xent_grad_kernel writes scale * (softmax -
//     onehot) as bf16, and two GEMMs take it into dhidden (fp32 rows, accumulated over the blocks,
//     rounded once at the end) and dweight (bf16, += as every weight gradient).
// Recomputing the logits in sweep 2 costs one GEMM more than keeping them (4 of 2 N V C flops each
// instead of 3), which is what bounds the memory by one block; the GEMMs are the whole cost.
#include "common.cuh"

#define LM_ROW_THREADS 256

// Row r of the block logits (rn, vc): merges its max and sum of exp into (row_max, row_sum), and
// keeps the target's logit in target_logit when target r is in [v0, v0 + vc).
__global__ void lse_merge_kernel(float *row_max, float *row_sum, float *target_logit, const float *logits,
                                 const int32_t *targets, int vc, int v0) {
  __shared__ float red[WARP_SIZE];
  const int r = blockIdx.x;
  const float *row = logits + (size_t)r * vc;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < vc; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = block_max(mx, red);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < vc; j += blockDim.x) sum += expf(row[j] - mx);
  sum = block_sum(sum, red);
  if (threadIdx.x == 0) {
    const float old_max = row_max[r], new_max = fmaxf(old_max, mx);
    // old_max = -inf on the first block: exp(-inf) = 0 drops the empty running sum
    row_sum[r] = row_sum[r] * expf(old_max - new_max) + sum * expf(mx - new_max);
    row_max[r] = new_max;
    const int t = targets[r];
    if (t >= v0 && t < v0 + vc) target_logit[r] = row[t - v0];
  }
}

// Resets the running statistics of rn rows.
__global__ void lse_reset_kernel(float *row_max, float *row_sum, float *target_logit, int rn) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rn) return;
  row_max[r] = -INFINITY;
  row_sum[r] = 0.0f;
  target_logit[r] = 0.0f;
}

// lse (rn) overwrites row_max; row_loss (rn) = lse - target logit, 0 on ignored rows.
__global__ void row_loss_kernel(float *row_max, float *row_loss, const float *row_sum, const float *target_logit,
                                const int32_t *targets, int rn) {
  const int r = blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= rn) return;
  const float lse = row_max[r] + logf(row_sum[r]);
  row_max[r] = lse;
  row_loss[r] = targets[r] < 0 ? 0.0f : lse - target_logit[r];
}

// g (rn, vc) bf16 = scale * (exp(logits - lse) - onehot(target)); zero rows where target < 0.
__global__ void xent_grad_kernel(bf16 *g, const float *logits, const float *lse, const int32_t *targets, int vc,
                                 int v0, float scale) {
  const int r = blockIdx.y;
  const int t = targets[r];
  const float l = lse[r];
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < vc; j += gridDim.x * blockDim.x) {
    const size_t i = (size_t)r * vc + j;
    const float p = t < 0 ? 0.0f : expf(logits[i] - l);
    g[i] = f2bf(scale * (p - (v0 + j == t ? 1.0f : 0.0f)));
  }
}

// Columns of a row the grad kernel's blocks cover: a grid of a few blocks per row.
#define LM_GRAD_BLOCKS_PER_ROW_MAX 32

static int row_chunk_of(int N) { return std::min(N, SN_LM_HEAD_ROW_CHUNK); }
static int vocab_chunk_of(int V) { return std::min(V, SN_LM_HEAD_VOCAB_CHUNK); }

// Row statistics (4 floats a row: max/lse, sum, target logit, loss) after the dhidden rows.
#define LM_ROW_STATS 4

size_t cuda_lm_head_scratch_bytes(scratch_slot slot, int N, int V, int C) {
  const size_t rn = (size_t)row_chunk_of(N), vc = (size_t)vocab_chunk_of(V);
  if (slot == SCRATCH_LM_LOGITS) return rn * vc * sizeof(float);
  if (slot == SCRATCH_LM_GRAD) return rn * vc * sizeof(bf16);
  if (slot == SCRATCH_LM_ROWS) return rn * ((size_t)C + LM_ROW_STATS) * sizeof(float);
  return 0;
}

void cuda_lm_head_xent(float *loss, void *dhidden, void *dweight, const void *hidden, const void *weight,
                       const int32_t *targets, int N, int V, int C, float scale) {
  if (N == 0 || V == 0) return;
  const bf16 *h = (const bf16 *)hidden, *w = (const bf16 *)weight;
  bf16 *dh = (bf16 *)dhidden, *dw = (bf16 *)dweight;
  const int row_chunk = row_chunk_of(N), vocab_chunk = vocab_chunk_of(V);
  float *logits = (float *)sn_cuda_scratch(SCRATCH_LM_LOGITS, cuda_lm_head_scratch_bytes(SCRATCH_LM_LOGITS, N, V, C));
  bf16 *g = (dh || dw) ? (bf16 *)sn_cuda_scratch(SCRATCH_LM_GRAD, cuda_lm_head_scratch_bytes(SCRATCH_LM_GRAD, N, V, C))
                       : NULL;
  float *rows = (float *)sn_cuda_scratch(SCRATCH_LM_ROWS, cuda_lm_head_scratch_bytes(SCRATCH_LM_ROWS, N, V, C));
  float *dh_acc = rows;  // (row_chunk, C)
  float *row_max = dh_acc + (size_t)row_chunk * C, *row_sum = row_max + row_chunk;
  float *target_logit = row_sum + row_chunk, *row_loss = target_logit + row_chunk;
  for (int r0 = 0; r0 < N; r0 += row_chunk) {
    const int rn = std::min(row_chunk, N - r0);
    const bf16 *hr = h + (size_t)r0 * C;
    const int32_t *tr = targets + r0;
    lse_reset_kernel<<<ceil_div_int(rn, LM_ROW_THREADS), LM_ROW_THREADS, 0, SN_STREAM>>>(row_max, row_sum,
                                                                                         target_logit, rn);
    launchCheck();
    for (int v0 = 0; v0 < V; v0 += vocab_chunk) {
      const int vc = std::min(vocab_chunk, V - v0);
      // logits (rn, vc) = hidden rows (rn, C) @ W block (vc, C)^T
      sn_cuda_matmul_bf16_f32(logits, hr, w + (size_t)v0 * C, rn, vc, C, 0, 1, 1.0f, 0.0f);
      lse_merge_kernel<<<rn, LM_ROW_THREADS, 0, SN_STREAM>>>(row_max, row_sum, target_logit, logits, tr, vc, v0);
      launchCheck();
    }
    row_loss_kernel<<<ceil_div_int(rn, LM_ROW_THREADS), LM_ROW_THREADS, 0, SN_STREAM>>>(row_max, row_loss, row_sum,
                                                                                        target_logit, tr, rn);
    launchCheck();
    sn_cuda_ordered_sum(loss, row_loss, rn, 1, scale);
    if (!g) continue;
    for (int v0 = 0; v0 < V; v0 += vocab_chunk) {
      const int vc = std::min(vocab_chunk, V - v0);
      sn_cuda_matmul_bf16_f32(logits, hr, w + (size_t)v0 * C, rn, vc, C, 0, 1, 1.0f, 0.0f);
      dim3 grid(std::min(ceil_div_int(vc, LM_ROW_THREADS), LM_GRAD_BLOCKS_PER_ROW_MAX), rn);
      xent_grad_kernel<<<grid, LM_ROW_THREADS, 0, SN_STREAM>>>(g, logits, row_max, tr, vc, v0, scale);
      launchCheck();
      // dhidden rows (rn, C) fp32 (+)= g (rn, vc) @ W block (vc, C)
      if (dh) sn_cuda_matmul_bf16_f32(dh_acc, g, w + (size_t)v0 * C, rn, C, vc, 0, 0, 1.0f, v0 > 0 ? 1.0f : 0.0f);
      // dweight block (vc, C) += g^T (vc, rn) @ hidden rows (rn, C)
      if (dw) cuda_matmul(dw + (size_t)v0 * C, g, hr, NULL, vc, C, rn, 1, 0, 1);
    }
    if (dh) cuda_f32_to_storage(dh + (size_t)r0 * C, dh_acc, (size_t)rn * C);
  }
}
