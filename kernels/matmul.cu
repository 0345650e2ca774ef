// Matmul through cuBLASLt (bf16 inputs and output, fp32 compute), with the bias fused into the
// epilogue; the handle and workspace are created once and the descriptors and chosen algorithm are
// cached per shape (with SN_MATMUL_AUTOTUNE=1, the fastest of cuBLASLt's first candidates, timed on
// the first call of the shape, rather than its first pick). Also: the fp32 GEMM the losses use, the
// bf16 x bf16 -> fp32 GEMM of the LM head's logits and gradients, and the deterministic bias gradient.
//
// Row-major ↔ column-major: a row-major (M, N) matrix is a column-major (N, M) one. So the
// row-major C = op(A) op(B) is computed as the column-major C^T = op(B)^T op(A)^T: cuBLAS's first
// operand is our B, its second our A, and a row-major operand stored untransposed is, seen
// column-major, already the transpose cuBLAS wants (op N); a transposed one gets op T.
#include "common.cuh"

#define CUBLASLT_WORKSPACE_BYTES ((size_t)32 << 20)
#define MATMUL_CACHE_SIZE 256
#define BIAS_BWD_THREADS 256
#define BIAS_BWD_ROWS_PER_BLOCK 128
// Autotuning: cuBLASLt's heuristic ranks algorithms by a model, not by a clock, and at the few-row
// shapes of serving its first pick can be a split-K kernel plus a separate reduction. With
// SN_MATMUL_AUTOTUNE=1 the first call of a shape times this many candidates, each run
// AUTOTUNE_TIMED_RUNS times after one warm-up, and keeps the fastest. Off by default: the choice
// depends on a clock, so two processes (two ranks of one run) could pick different algorithms and
// round differently, and data-parallel replicas must stay bit-identical (dist/comm.h). Measured on
// the H100 (docs/PERFORMANCE.md): a 0.5B query 0.98 against 0.96 ms (the kernel fastest alone is not
// the fastest inside a graph with programmatic dependent launch), a batch of 64 1-4% faster.
// The separate split-K reduction kernel cuBLASLt adds at those shapes (the 0.5B query's down
// projection: 7.6 + 3.8 us under ncu) stays: measured on the H100 (2026-12-06) through the
// preference's reduction-scheme mask, allowing no split of K took the 0.5B query from 0.943 to 3.27
// ms, and only in-kernel (in-place) reductions left it unchanged (0.948, 0.943 ms).
#define AUTOTUNE_CANDIDATES 8
#define AUTOTUNE_TIMED_RUNS 5
// The timing writes a scratch output, not C (C may be accumulated into); above this size a shape is
// a training-scale GEMM, whose heuristic pick is already good, and is not tuned.
#define AUTOTUNE_MAX_OUTPUT_BYTES ((size_t)64 << 20)

static cublasLtHandle_t lt_handle;
static void *lt_workspace;

static void lt_init(void) {
  if (lt_handle) return;
  cublasCheck(cublasLtCreate(&lt_handle));
  lt_workspace = cuda_alloc(CUBLASLT_WORKSPACE_BYTES);
}

typedef struct {
  int M, N, K, trans_a, trans_b, has_bias, accumulate;
  int lda, ldb, ldc;      // row strides of the stored A, B, C (elements)
  cudaDataType_t dtype;   // of A and B (and C unless ctype differs)
  cudaDataType_t ctype;   // of C
  int align_mask;  // which of A, B, C, bias are 16-byte aligned: the heuristic depends on it
} matmul_key;

typedef struct {
  matmul_key key;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a_layout, b_layout, c_layout;
  cublasLtMatmulAlgo_t algo;
} matmul_plan;

static matmul_plan plans[MATMUL_CACHE_SIZE];
static int nplans;
static int next_evict;  // packed batches change M every step: the cache is a ring, oldest out first

// What a call multiplies: the autotuning runs the candidates on these (into a scratch output).
typedef struct {
  const void *A, *B, *bias;
  float alpha, beta;
} matmul_operands;

static size_t element_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

// An opt-in environment switch of this file, read once by its caller: 1 on, unset or 0 off; another
// value is warned about and read as 0 (as host/model/model.c's switches).
static bool env_switch_on(const char *name) {
  const char *v = getenv(name);
  if (v && strcmp(v, "0") != 0 && strcmp(v, "1") != 0)
    fprintf(stderr, "warning: environment variable %s='%s' is neither 0 nor 1; read as 0\n", name, v);
  return v && strcmp(v, "1") == 0;
}

// SN_PDL_GEMM=1 (opt-in): while a graph records, the GEMM's kernel hangs on the kernel before it by
// a programmatic edge (as launch_pdl gives our own kernels), so it is launched while that kernel
// drains instead of after. Measured on the H100 (docs/PERFORMANCE.md): a 0.5B query 0.904, 0.908
// against 0.956, 0.951 ms, the student's 0.151, 0.150 against 0.165, 0.160, and the graphs give the
// direct launches' embeddings exactly (test_encoder_cuda). Off by default because it is sound only if
// cuBLASLt's kernels wait for their producer (griddepcontrol.wait) before reading its output, which
// their documentation does not promise and their code could not be inspected for (cuobjdump does not
// list them); without that wait a GEMM could read its input before the producer's last stores land.
static bool pdl_gemm_wanted(void) {
  static int enabled = -1;
  if (enabled < 0) enabled = env_switch_on("SN_PDL_GEMM") && sn_cuda_pdl_enabled();
  return enabled;
}

// Makes the next node captured on SN_STREAM depend on the one kernel node before it programmatically;
// nothing when the stream is not recording or the node before is not a single kernel.
static void programmatic_edge_to_next(void) {
  cudaStreamCaptureStatus status;
  const cudaGraphNode_t *deps;
  const cudaGraphEdgeData *edges;  // asked for although unused: without it the query fails on annotated edges
  size_t ndeps = 0;
  cudaCheck(cudaStreamGetCaptureInfo(SN_STREAM, &status, NULL, NULL, &deps, &edges, &ndeps));
  if (status != cudaStreamCaptureStatusActive || ndeps != 1) return;
  cudaGraphNodeType type;
  cudaCheck(cudaGraphNodeGetType(deps[0], &type));
  if (type != cudaGraphNodeTypeKernel) return;
  cudaGraphNode_t producer = deps[0];
  cudaGraphEdgeData edge;
  memset(&edge, 0, sizeof edge);
  edge.from_port = cudaGraphKernelNodePortProgrammatic;
  edge.type = cudaGraphDependencyTypeProgrammatic;
  cudaCheck(cudaStreamUpdateCaptureDependencies(SN_STREAM, &producer, &edge, 1, cudaStreamSetCaptureDependencies));
}

static bool autotune_wanted(const matmul_key *key) {
  static int enabled = -1;
  if (enabled < 0) enabled = env_switch_on("SN_MATMUL_AUTOTUNE");
  if (!enabled || (size_t)key->M * key->ldc * element_bytes(key->ctype) > AUTOTUNE_MAX_OUTPUT_BYTES) return false;
  cudaStreamCaptureStatus capturing;
  cudaCheck(cudaStreamIsCapturing(SN_STREAM, &capturing));
  return capturing == cudaStreamCaptureStatusNone;  // nothing can be timed while a graph records
}

// The index of the fastest of the n candidates, timed on the call's operands into a scratch output.
// A candidate cuBLASLt refuses at run time (its status) is skipped; the first one is known to run.
static int fastest_candidate(const matmul_plan *p, const cublasLtMatmulHeuristicResult_t *cand, int n,
                             const matmul_operands *op) {
  const matmul_key *key = &p->key;
  const size_t out_bytes = (size_t)key->M * key->ldc * element_bytes(key->ctype);
  void *out = cuda_alloc(out_bytes);
  cudaCheck(cudaMemsetAsync(out, 0, out_bytes, SN_STREAM));  // read when beta != 0
  if (op->bias)
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &op->bias,
                                               sizeof op->bias));
  cudaEvent_t start, stop;
  cudaCheck(cudaEventCreate(&start));
  cudaCheck(cudaEventCreate(&stop));
  int best = 0;
  float best_ms = -1.0f;  // none timed yet
  for (int i = 0; i < n; i++) {
    if (cand[i].state != CUBLAS_STATUS_SUCCESS) continue;
    bool runs = true;
    for (int r = 0; r <= AUTOTUNE_TIMED_RUNS && runs; r++) {  // run 0 warms up
      if (r == 1) cudaCheck(cudaEventRecord(start, SN_STREAM));
      runs = cublasLtMatmul(lt_handle, p->desc, &op->alpha, op->B, p->a_layout, op->A, p->b_layout, &op->beta,
                            out, p->c_layout, out, p->c_layout, &cand[i].algo, lt_workspace,
                            CUBLASLT_WORKSPACE_BYTES, SN_STREAM) == CUBLAS_STATUS_SUCCESS;
    }
    if (!runs) continue;
    cudaCheck(cudaEventRecord(stop, SN_STREAM));
    cudaCheck(cudaEventSynchronize(stop));
    float ms;
    cudaCheck(cudaEventElapsedTime(&ms, start, stop));
    if (best_ms < 0.0f || ms < best_ms) best = i, best_ms = ms;
  }
  cudaCheck(cudaEventDestroy(start));
  cudaCheck(cudaEventDestroy(stop));
  cuda_free(out);
  return best;
}

static void destroy_plan(matmul_plan *p) {
  cublasCheck(cublasLtMatrixLayoutDestroy(p->a_layout));
  cublasCheck(cublasLtMatrixLayoutDestroy(p->b_layout));
  cublasCheck(cublasLtMatrixLayoutDestroy(p->c_layout));
  cublasCheck(cublasLtMatmulDescDestroy(p->desc));
}

static matmul_plan *get_plan(const matmul_key *key, const matmul_operands *operands) {
  for (int i = 0; i < nplans; i++)
    if (memcmp(&plans[i].key, key, sizeof *key) == 0) return &plans[i];
  lt_init();
  matmul_plan *p;
  if (nplans < MATMUL_CACHE_SIZE) {
    p = &plans[nplans];
  } else {
    // The evicted plan's descriptors may still be named by queued matmuls: cuBLASLt reads them at
    // enqueue time only, so destroying them now is safe.
    p = &plans[next_evict];
    next_evict = (next_evict + 1) % MATMUL_CACHE_SIZE;
    destroy_plan(p);
  }
  memset(p, 0, sizeof *p);
  p->key = *key;
  const bool f32 = key->dtype == CUDA_R_32F, c_f32 = key->ctype == CUDA_R_32F;
  // cuBLAS operand 1 = our B (column-major view (N, K) after op), operand 2 = our A ((K, M)).
  cublasOperation_t op1 = key->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t op2 = key->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasCheck(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op1, sizeof op1));
  cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op2, sizeof op2));
  if (key->has_bias) {
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    cudaDataType_t bias_type = key->dtype;
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                               sizeof bias_type));
  }
  // Stored shapes, column-major view: our B stored (K, N) → (N, K); stored (N, K) → (K, N). The
  // leading dimension is the stored row stride (the width, unless a slice of a wider matrix).
  const int M = key->M, N = key->N, K = key->K;
  cublasCheck(cublasLtMatrixLayoutCreate(&p->a_layout, key->dtype, key->trans_b ? K : N, key->trans_b ? N : K,
                                         key->ldb));
  cublasCheck(cublasLtMatrixLayoutCreate(&p->b_layout, key->dtype, key->trans_a ? M : K, key->trans_a ? K : M,
                                         key->lda));
  cublasCheck(cublasLtMatrixLayoutCreate(&p->c_layout, key->ctype, N, M, key->ldc));

  cublasLtMatmulPreference_t pref;
  cublasCheck(cublasLtMatmulPreferenceCreate(&pref));
  size_t ws = CUBLASLT_WORKSPACE_BYTES;
  cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  static const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  // Our B is cuBLAS's A; alignment bits: 1 = A, 2 = B, 4 = C.
  const int bits[4] = {2, 1, 4, 4};
  for (int i = 0; i < 4; i++) {
    const bool elem_f32 = bits[i] == 4 ? c_f32 : f32;
    uint32_t a = (key->align_mask & bits[i]) ? 16 : (elem_f32 ? 4 : 2);
    cublasCheck(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &a, sizeof a));
  }
  cublasLtMatmulHeuristicResult_t heur[AUTOTUNE_CANDIDATES];
  int found = 0;
  cublasCheck(cublasLtMatmulAlgoGetHeuristic(lt_handle, p->desc, p->a_layout, p->b_layout, p->c_layout,
                                             p->c_layout, pref, autotune_wanted(key) ? AUTOTUNE_CANDIDATES : 1,
                                             heur, &found));
  cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
  if (found == 0) {
    fprintf(stderr, "error: %s:%d: no cuBLASLt algorithm for M=%d N=%d K=%d ta=%d tb=%d bias=%d\n", __FILE__,
            __LINE__, M, N, K, key->trans_a, key->trans_b, key->has_bias);
    exit(1);
  }
  p->algo = heur[found > 1 ? fastest_candidate(p, heur, found, operands) : 0].algo;
  if (nplans < MATMUL_CACHE_SIZE) nplans++;
  return p;
}

static void run_matmul(cudaDataType_t dtype, cudaDataType_t ctype, void *C, int ldc, const void *A, int lda,
                       const void *B, int ldb, const void *bias, int M, int N, int K, int trans_a, int trans_b,
                       float alpha, float beta) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // empty sum: C = beta*C (+ bias); only the plain cases occur
    const size_t esize = ctype == CUDA_R_32F ? 4 : 2;
    if (beta == 0.0f && !bias)
      cudaCheck(cudaMemset2DAsync(C, (size_t)ldc * esize, 0, (size_t)N * esize, M, SN_STREAM));
    return;
  }
  matmul_key key;
  memset(&key, 0, sizeof key);
  key.M = M, key.N = N, key.K = K, key.trans_a = trans_a, key.trans_b = trans_b;
  key.lda = lda, key.ldb = ldb, key.ldc = ldc;
  key.has_bias = bias != NULL, key.accumulate = beta != 0.0f, key.dtype = dtype, key.ctype = ctype;
  key.align_mask = (aligned16(A) ? 1 : 0) | (aligned16(B) ? 2 : 0) |
                   (aligned16(C) && (!bias || aligned16(bias)) ? 4 : 0);
  const matmul_operands operands = {A, B, bias, alpha, beta};
  matmul_plan *p = get_plan(&key, &operands);
  if (bias)
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  if (pdl_gemm_wanted()) programmatic_edge_to_next();
  cublasCheck(cublasLtMatmul(lt_handle, p->desc, &alpha, B, p->a_layout, A, p->b_layout, &beta, C, p->c_layout,
                             C, p->c_layout, &p->algo, lt_workspace, CUBLASLT_WORKSPACE_BYTES, SN_STREAM));
}

// The row strides of packed operands: op(A) (M, K) is stored (M, K), or (K, M) when transposed.
#define PACKED_LDA(M, K, trans_a) ((trans_a) ? (M) : (K))
#define PACKED_LDB(K, N, trans_b) ((trans_b) ? (K) : (N))

// C (M, N) = op(A) @ op(B) [+ bias] [+ C]
void cuda_matmul(void *C, const void *A, const void *B, const void *bias, int M, int N, int K, int trans_a,
                 int trans_b, int accumulate) {
  run_matmul(CUDA_R_16BF, CUDA_R_16BF, C, N, A, PACKED_LDA(M, K, trans_a), B, PACKED_LDB(K, N, trans_b), bias, M,
             N, K, trans_a, trans_b, 1.0f, accumulate ? 1.0f : 0.0f);
}

// The same on slices: row strides ldc, lda, ldb of the stored C, A, B
void cuda_matmul_strided(void *C, int ldc, const void *A, int lda, const void *B, int ldb, const void *bias, int M,
                         int N, int K, int trans_a, int trans_b, int accumulate) {
  run_matmul(CUDA_R_16BF, CUDA_R_16BF, C, ldc, A, lda, B, ldb, bias, M, N, K, trans_a, trans_b, 1.0f,
             accumulate ? 1.0f : 0.0f);
}

void sn_cuda_matmul_f32(float *C, const float *A, const float *B, int M, int N, int K, int trans_a, int trans_b,
                        float alpha, float beta) {
  run_matmul(CUDA_R_32F, CUDA_R_32F, C, N, A, PACKED_LDA(M, K, trans_a), B, PACKED_LDB(K, N, trans_b), NULL, M, N,
             K, trans_a, trans_b, alpha, beta);
}

void sn_cuda_matmul_bf16_f32(float *C, const bf16 *A, const bf16 *B, int M, int N, int K, int trans_a, int trans_b,
                             float alpha, float beta) {
  run_matmul(CUDA_R_16BF, CUDA_R_32F, C, N, A, PACKED_LDA(M, K, trans_a), B, PACKED_LDB(K, N, trans_b), NULL, M, N,
             K, trans_a, trans_b, alpha, beta);
}

// ---- bias gradient -------------------------------------------------------------------------------------
// partials (nblocks, N): column sums over the block's rows of dout (M, N), in row order.
__global__ void bias_backward_partials_kernel(float *partials, const bf16 *dout, int M, int N) {
  int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  int m0 = blockIdx.y * BIAS_BWD_ROWS_PER_BLOCK, m1 = min(M, m0 + BIAS_BWD_ROWS_PER_BLOCK);
  float acc = 0.0f;
  for (int m = m0; m < m1; m++) acc += bf2f(dout[(size_t)m * N + n]);
  partials[(size_t)blockIdx.y * N + n] = acc;
}

size_t cuda_bias_scratch_bytes(int T, int N) {
  return (size_t)ceil_div_int(T, BIAS_BWD_ROWS_PER_BLOCK) * N * sizeof(float);
}
size_t cuda_matmul_workspace_bytes(void) { return CUBLASLT_WORKSPACE_BYTES; }

void cuda_bias_backward(void *dbias, const void *dout, int M, int N) {
  if (M == 0 || N == 0) return;
  int nparts = ceil_div_int(M, BIAS_BWD_ROWS_PER_BLOCK);
  float *partials = (float *)sn_cuda_scratch(SCRATCH_REDUCE_PARTIALS, (size_t)nparts * N * sizeof(float));
  dim3 grid(ceil_div_int(N, BIAS_BWD_THREADS), nparts);
  bias_backward_partials_kernel<<<grid, BIAS_BWD_THREADS, 0, SN_STREAM>>>(partials, (const bf16 *)dout, M, N);
  launchCheck();
  sn_cuda_reduce_partials_into_bf16((bf16 *)dbias, partials, nparts, N);
}
