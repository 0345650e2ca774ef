// Losses, fp32 throughout.
//
// Contrastive (InfoNCE) loss, fused: one similarity GEMM (cuBLASLt, fp32) writes the logits (R, N);
// one row kernel then does log-softmax, cross-entropy and turns that same buffer, in place, into the
// logit gradient scale * inv_temp * (softmax - onehot): probabilities never reach memory as such; the
// loss sum is reduced in fixed order. Two GEMMs accumulate the gradients of both embedding sets.
// Unfused, the same work is GEMM, softmax (writes P), CE (reads P), grad (reads P, writes dlogits).
//
// Distillation loss: one block per row computes the MSE and cosine terms and writes the gradient.
//
// Score distillation (KL over each query's G candidates): one block per query keeps the row's G
// logits in shared memory, a warp per candidate takes the dot products, one thread the softmaxes
// (G is small), then the block accumulates dq and dd; the loss sum is reduced in fixed order.
#include "common.cuh"

#define LOSS_THREADS 256
#define COS_EPS 1e-8f  // as torch.nn.functional.cosine_similarity

// Sums x (n) in a fixed order with one block and adds factor * sum to *acc.
__global__ void ordered_sum_kernel(float *acc, const float *x, int n, int stride, float factor) {
  __shared__ float red[WARP_SIZE];
  float s = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[(size_t)i * stride];
  s = block_sum(s, red);
  if (threadIdx.x == 0) *acc += factor * s;
}

void sn_cuda_ordered_sum(float *acc, const float *x, int n, int stride, float factor) {
  ordered_sum_kernel<<<1, LOSS_THREADS, 0, SN_STREAM>>>(acc, x, n, stride, factor);
  launchCheck();
}

// logits (R, N) in, gradient out, in place; row_loss (R) = logsumexp(row) - row[target].
__global__ void contrastive_rows_kernel(float *logits, float *row_loss, const int32_t *target, int N,
                                        float grad_factor) {
  __shared__ float red[WARP_SIZE];
  int r = blockIdx.x;
  float *row = logits + (size_t)r * N;
  float mx = -INFINITY;
  for (int n = threadIdx.x; n < N; n += blockDim.x) mx = fmaxf(mx, row[n]);
  mx = block_max(mx, red);
  float sum = 0.0f;
  for (int n = threadIdx.x; n < N; n += blockDim.x) sum += expf(row[n] - mx);
  sum = block_sum(sum, red);
  const float lse = mx + logf(sum);
  const int tgt = target[r];
  const float target_logit = row[tgt];  // read by all before anyone overwrites (barrier in block_sum)
  __syncthreads();
  for (int n = threadIdx.x; n < N; n += blockDim.x) {
    float p = expf(row[n] - lse);
    row[n] = grad_factor * (p - (n == tgt ? 1.0f : 0.0f));
  }
  if (threadIdx.x == 0) row_loss[r] = lse - target_logit;
}

size_t cuda_loss_scratch_bytes(scratch_slot slot, int R, int N) {
  if (slot == SCRATCH_LOSS_LOGITS) return (size_t)R * N * sizeof(float);
  if (slot == SCRATCH_LOSS_ROWS) return (size_t)2 * R * sizeof(float);  // the distillation terms' pair
  return 0;
}

void cuda_contrastive_loss(float *loss, float *drows, float *dcols, const float *rows, const float *cols,
                           const int32_t *target, int R, int N, int C, float inv_temp, float scale) {
  if (R == 0) return;
  float *logits = (float *)sn_cuda_scratch(SCRATCH_LOSS_LOGITS, (size_t)R * N * sizeof(float));
  float *row_loss = (float *)sn_cuda_scratch(SCRATCH_LOSS_ROWS, (size_t)R * sizeof(float));
  // logits (R, N) = inv_temp * rows (R, C) @ cols (N, C)^T
  sn_cuda_matmul_f32(logits, rows, cols, R, N, C, 0, 1, inv_temp, 0.0f);
  contrastive_rows_kernel<<<R, LOSS_THREADS, 0, SN_STREAM>>>(logits, row_loss, target, N, scale * inv_temp);
  launchCheck();
  ordered_sum_kernel<<<1, LOSS_THREADS, 0, SN_STREAM>>>(loss, row_loss, R, 1, scale);
  launchCheck();
  // drows (R, C) += G (R, N) @ cols (N, C); dcols (N, C) += G^T (N, R) @ rows (R, C)
  sn_cuda_matmul_f32(drows, logits, cols, R, C, N, 0, 0, 1.0f, 1.0f);
  sn_cuda_matmul_f32(dcols, logits, rows, N, C, R, 1, 0, 1.0f, 1.0f);
}

// terms (B, 2): per-row squared error sum and 1 - cos. dstudent (B, C) written.
__global__ void distill_rows_kernel(float *terms, float *dstudent, const float *student, const float *teacher,
                                    int B, int C, float alpha, float beta) {
  __shared__ float red[WARP_SIZE];
  int b = blockIdx.x;
  const float *s = student + (size_t)b * C, *t = teacher + (size_t)b * C;
  float ss = 0.0f, tt = 0.0f, st = 0.0f, se = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float sv = s[c], tv = t[c];
    ss += sv * sv, tt += tv * tv, st += sv * tv, se += (sv - tv) * (sv - tv);
  }
  ss = block_sum(ss, red), tt = block_sum(tt, red), st = block_sum(st, red), se = block_sum(se, red);
  const float ns = fmaxf(sqrtf(ss), COS_EPS), nt = fmaxf(sqrtf(tt), COS_EPS);
  const float cosv = st / (ns * nt);
  // d mse/ds = 2 (s - t) / (B C); d (1 - cos)/ds / B = -(t / (ns nt) - cos s / ns²) / B
  // (the second term only where ||s|| is not clamped; the clamp is constant there).
  const float mse_f = alpha * 2.0f / ((float)B * C);
  const float cos_f = beta / (float)B;
  const float self_f = sqrtf(ss) > COS_EPS ? cosv / (ns * ns) : 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float sv = s[c], tv = t[c];
    dstudent[(size_t)b * C + c] = mse_f * (sv - tv) - cos_f * (tv / (ns * nt) - self_f * sv);
  }
  if (threadIdx.x == 0) {
    terms[2 * b] = se;
    terms[2 * b + 1] = 1.0f - cosv;
  }
}

void cuda_distill_loss(float *loss_terms, float *dstudent, const float *student, const float *teacher, int B,
                       int C, float alpha, float beta) {
  if (B == 0) return;
  float *terms = (float *)sn_cuda_scratch(SCRATCH_LOSS_ROWS, (size_t)2 * B * sizeof(float));
  distill_rows_kernel<<<B, LOSS_THREADS, 0, SN_STREAM>>>(terms, dstudent, student, teacher, B, C, alpha, beta);
  launchCheck();
  ordered_sum_kernel<<<1, LOSS_THREADS, 0, SN_STREAM>>>(loss_terms, terms, B, 2, alpha / ((float)B * C));
  launchCheck();
  ordered_sum_kernel<<<1, LOSS_THREADS, 0, SN_STREAM>>>(loss_terms + 1, terms + 1, B, 2, beta / (float)B);
  launchCheck();
}

#define KL_SMEM_PAD_FLOATS 4  // the widest shared load ptxas makes of grad[] (see the launch)

// Query b: row_kl[b] = KL(p_t || p_s); dq_b += sum_g grad_g d_bg, dd_bg += grad_g q_b with
// grad_g = grad_factor * (p_s - p_t)_g. Dynamic shared memory: G floats, padded to a multiple of 4.
__global__ void kl_distill_rows_kernel(float *row_kl, float *dq, float *dd, const float *q, const float *d,
                                       const float *teacher, int G, int C, float inv_ts, float inv_tt,
                                       float grad_factor) {
  extern __shared__ float grad[];  // (G): the logits, then their gradients
  const int b = blockIdx.x, lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int n_warps = blockDim.x / WARP_SIZE;
  const float *qb = q + (size_t)b * C, *db = d + (size_t)b * G * C, *tb = teacher + (size_t)b * G;
  for (int g = warp; g < G; g += n_warps) {
    float dot = 0.0f;
    for (int c = lane; c < C; c += WARP_SIZE) dot += qb[c] * db[(size_t)g * C + c];
    dot = warp_sum(dot);
    if (lane == 0) grad[g] = dot * inv_ts;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float s_max = -INFINITY, t_max = -INFINITY;
    for (int g = 0; g < G; g++) s_max = fmaxf(s_max, grad[g]), t_max = fmaxf(t_max, tb[g] * inv_tt);
    float s_sum = 0.0f, t_sum = 0.0f;
    for (int g = 0; g < G; g++) s_sum += expf(grad[g] - s_max), t_sum += expf(tb[g] * inv_tt - t_max);
    const float s_lse = s_max + logf(s_sum), t_lse = t_max + logf(t_sum);
    float kl = 0.0f;
    for (int g = 0; g < G; g++) {
      const float log_ps = grad[g] - s_lse, log_pt = tb[g] * inv_tt - t_lse, pt = expf(log_pt);
      kl += pt * (log_pt - log_ps);  // pt = 0 (underflow) contributes 0
      grad[g] = grad_factor * (expf(log_ps) - pt);
    }
    row_kl[b] = kl;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float qc = qb[c];
    float acc = 0.0f;
    for (int g = 0; g < G; g++) {
      acc += grad[g] * db[(size_t)g * C + c];
      dd[((size_t)b * G + g) * C + c] += grad[g] * qc;
    }
    dq[(size_t)b * C + c] += acc;
  }
}

void cuda_kl_distill_loss(float *loss, float *dq, float *dd, const float *q, const float *d, const float *teacher,
                          int B, int G, int C, float inv_temp_student, float inv_temp_teacher, float scale) {
  if (G < 1 || G > SN_KL_MAX_CANDIDATES) {
    fprintf(stderr, "error: %s:%d: kl_distill_loss: %d candidates per query (expected 1..%d)\n", __FILE__,
            __LINE__, G, SN_KL_MAX_CANDIDATES);
    exit(1);
  }
  if (B == 0) return;
  float *row_kl = (float *)sn_cuda_scratch(SCRATCH_LOSS_ROWS, (size_t)B * sizeof(float));
  // ptxas merges the unrolled loop's remainder reads of grad[] into one 12-byte shared load, which
  // reads past G floats when G % 4 != 0 (compute-sanitizer memcheck flagged it at G = 1); the
  // padding keeps that load inside the block's allocation.
  const int padded_g = (G + KL_SMEM_PAD_FLOATS - 1) / KL_SMEM_PAD_FLOATS * KL_SMEM_PAD_FLOATS;
  const size_t smem_bytes = (size_t)padded_g * sizeof(float);
  kl_distill_rows_kernel<<<B, LOSS_THREADS, smem_bytes, SN_STREAM>>>(
      row_kl, dq, dd, q, d, teacher, G, C, inv_temp_student, inv_temp_teacher, scale * inv_temp_student);
  launchCheck();
  ordered_sum_kernel<<<1, LOSS_THREADS, 0, SN_STREAM>>>(loss, row_kl, B, 1, scale);
  launchCheck();
}
