// Matmul through cuBLASLt (bf16 inputs and output, fp32 compute), with the bias fused into the
// epilogue; the handle is created once for the process, and each execution context (common.cuh)
// has its workspace, and its descriptors and chosen algorithm cached per shape (with
// SN_MATMUL_AUTOTUNE=1, the fastest of cuBLASLt's first candidates, timed on the first call of the
// shape, rather than its first pick). Also: the fp32 GEMM the losses use, the
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

// cuBLASLt's functions may share a handle between threads (the handle holds no stream); a
// function-local static is created once even when contexts race to their first GEMM.
static cublasLtHandle_t make_lt_handle(void) {
  cublasLtHandle_t h;
  cublasCheck(cublasLtCreate(&h));
  return h;
}
static cublasLtHandle_t lt(void) {
  static const cublasLtHandle_t handle = make_lt_handle();
  return handle;
}

typedef struct {
  int M, N, K, trans_a, trans_b, has_bias, accumulate;
  int lda, ldb, ldc;      // row strides of the stored A, B, C (elements)
  cudaDataType_t dtype;   // of A and B (and C unless ctype differs)
  cudaDataType_t ctype;   // of C
  int align_mask;  // which of A, B, C, bias are 16-byte aligned: the heuristic depends on it
} matmul_key;

typedef enum {
  PRODUCER_WAIT_UNPROBED = 0,  // a fresh plan (zeroed)
  PRODUCER_WAIT_SEEN,          // the probe saw the algorithm wait: the plan gets the programmatic edge
  PRODUCER_WAIT_NOT_SEEN,      // it did not, or the plan is too large to probe: no edge
} producer_wait;

typedef struct {
  matmul_key key;
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a_layout, b_layout, c_layout;
  cublasLtMatmulAlgo_t algo;
  producer_wait waits;
} matmul_plan;

// A context's plans and workspace. Per context, not per process: a call sets its bias pointer on
// the plan's descriptor, and two streams must not share a workspace.
struct matmul_cache {
  matmul_plan plans[MATMUL_CACHE_SIZE];
  int nplans;
  int next_evict;  // packed batches change M every step: the cache is a ring, oldest out first
  void *workspace;
};

// The current context's cache, made at its first GEMM (the workspace is allocated once, outside
// any recording: a graph names it).
static matmul_cache *current_cache(void) {
  cuda_context *ctx = cuda_context_current();
  if (!ctx->matmul) {
    matmul_cache *c = (matmul_cache *)calloc(1, sizeof *c);
    if (!c) {
      fprintf(stderr, "error: %s:%d: out of host memory for the GEMM plans\n", __FILE__, __LINE__);
      exit(1);
    }
    c->workspace = cuda_alloc(CUBLASLT_WORKSPACE_BYTES);
    ctx->matmul = c;
  }
  return ctx->matmul;
}

// What a call multiplies: the autotuning runs the candidates on these (into a scratch output).
typedef struct {
  const void *A, *B, *bias;
  float alpha, beta;
} matmul_operands;

static size_t element_bytes(cudaDataType_t t) { return t == CUDA_R_32F ? 4 : 2; }

// SN_PDL_GEMM=1 (opt-in until the probe below has run on a GPU: docs/gpu_notes.md, session 8): while
// a graph records, a GEMM hangs on the kernel before it by a programmatic edge (as launch_pdl gives
// our own kernels), so it is launched while that kernel drains instead of after. Measured on the
// H100 (docs/PERFORMANCE.md): a 0.5B query 0.904, 0.908 against 0.956, 0.951 ms, the student's
// 0.151, 0.150 against 0.165, 0.160 (then every GEMM got the edge, unprobed). Sound only for a
// cuBLASLt kernel that waits for its producer before reading (griddepcontrol.wait), which its
// documentation does not promise: so a plan gets the edge only once the probe (pdl_probe.cu) has
// seen its algorithm wait. Plans are probed when a recording begins (cuda_matmul_probe_plans, from
// graph_begin): a shape runs directly before it is recorded (ops.h), so its plans exist then, and
// nothing records yet. A plan first made while recording, or whose operands pass PROBE_MAX_BYTES
// (the probe allocates its own; a GEMM that large takes tens of microseconds, beside which the
// launch gap the edge hides is small), is not probed and gets no edge.
#define PROBE_MAX_BYTES ((size_t)64 << 20)
static bool pdl_gemm_wanted(void) {
  static const bool enabled = cuda_env_switch("SN_PDL_GEMM", false, nullptr) && sn_cuda_pdl_enabled();
  return enabled;
}

static bool autotune_wanted(const matmul_key *key) {
  static const bool enabled = cuda_env_switch("SN_MATMUL_AUTOTUNE", false, nullptr);
  if (!enabled || (size_t)key->M * key->ldc * element_bytes(key->ctype) > AUTOTUNE_MAX_OUTPUT_BYTES) return false;
  cudaStreamCaptureStatus capturing;
  cudaCheck(cudaStreamIsCapturing(SN_STREAM, &capturing));
  return capturing == cudaStreamCaptureStatusNone;  // nothing can be timed while a graph records
}

// The index of the fastest of the n candidates, timed on the call's operands into a scratch output.
// A candidate cuBLASLt refuses at run time (its status) is skipped; the first one is known to run.
static int fastest_candidate(const matmul_plan *p, const cublasLtMatmulHeuristicResult_t *cand, int n,
                             const matmul_operands *op, void *workspace) {
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
      runs = cublasLtMatmul(lt(), p->desc, &op->alpha, op->B, p->a_layout, op->A, p->b_layout, &op->beta, out,
                            p->c_layout, out, p->c_layout, &cand[i].algo, workspace, CUBLASLT_WORKSPACE_BYTES,
                            SN_STREAM) == CUBLAS_STATUS_SUCCESS;
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

static matmul_plan *get_plan(matmul_cache *c, const matmul_key *key, const matmul_operands *operands) {
  for (int i = 0; i < c->nplans; i++)
    if (memcmp(&c->plans[i].key, key, sizeof *key) == 0) return &c->plans[i];
  matmul_plan *p;
  if (c->nplans < MATMUL_CACHE_SIZE) {
    p = &c->plans[c->nplans];
  } else {
    // The evicted plan's descriptors may still be named by queued matmuls: cuBLASLt reads them at
    // enqueue time only, so destroying them now is safe.
    p = &c->plans[c->next_evict];
    c->next_evict = (c->next_evict + 1) % MATMUL_CACHE_SIZE;
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
  const int candidates = autotune_wanted(key) && operands->A ? AUTOTUNE_CANDIDATES : 1;  // no operands: no timing
  cublasCheck(cublasLtMatmulAlgoGetHeuristic(lt(), p->desc, p->a_layout, p->b_layout, p->c_layout,
                                             p->c_layout, pref, candidates, heur, &found));
  cublasCheck(cublasLtMatmulPreferenceDestroy(pref));
  if (found == 0) {
    fprintf(stderr, "error: %s:%d: no cuBLASLt algorithm for M=%d N=%d K=%d ta=%d tb=%d bias=%d\n", __FILE__,
            __LINE__, M, N, K, key->trans_a, key->trans_b, key->has_bias);
    exit(1);
  }
  p->algo = heur[found > 1 ? fastest_candidate(p, heur, found, operands, c->workspace) : 0].algo;
  if (c->nplans < MATMUL_CACHE_SIZE) c->nplans++;
  return p;
}

void cuda_matmul_cache_free(matmul_cache *c) {
  if (!c) return;
  for (int i = 0; i < c->nplans; i++) destroy_plan(&c->plans[i]);
  cuda_free(c->workspace);
  free(c);
}

// Enqueues the plan's GEMM on `stream` with the workspace of the plan's context: C = alpha op(A)
// op(B) (+ bias) + beta C.
static void enqueue_plan(const matmul_plan *p, const matmul_operands *op, void *C, void *workspace,
                         cudaStream_t stream) {
  if (op->bias)
    cublasCheck(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &op->bias,
                                               sizeof op->bias));
  cublasCheck(cublasLtMatmul(lt(), p->desc, &op->alpha, op->B, p->a_layout, op->A, p->b_layout, &op->beta, C,
                             p->c_layout, C, p->c_layout, &p->algo, workspace, CUBLASLT_WORKSPACE_BYTES, stream));
}

// ---- the programmatic-edge probe of a plan (SN_PDL_GEMM above) ----------------------------------------
typedef struct {
  const matmul_plan *plan;
  matmul_operands operands;
  void *C, *workspace;
} plan_call;

static void run_plan_call(cudaStream_t stream, const void *ctx) {
  const plan_call *call = (const plan_call *)ctx;
  enqueue_plan(call->plan, &call->operands, call->C, call->workspace, stream);
}

// Whether the plan's algorithm waits for the kernel before it, on operands of its own (every input
// late: A, B, the bias and, when accumulated into, C).
static bool plan_waits_for_producer(const matmul_plan *p, void *workspace) {
  const matmul_key *k = &p->key;
  const size_t in_size = element_bytes(k->dtype), out_size = element_bytes(k->ctype);
  const size_t a_bytes = (size_t)(k->trans_a ? k->K : k->M) * k->lda * in_size;
  const size_t b_bytes = (size_t)(k->trans_b ? k->N : k->K) * k->ldb * in_size;
  const size_t c_bytes = (size_t)k->M * k->ldc * out_size, bias_bytes = k->has_bias ? (size_t)k->N * in_size : 0;
  if (a_bytes + b_bytes + c_bytes + bias_bytes > PROBE_MAX_BYTES) return false;
  plan_call call;
  memset(&call, 0, sizeof call);
  call.plan = p, call.workspace = workspace;
  call.operands.A = cuda_alloc(a_bytes), call.operands.B = cuda_alloc(b_bytes);
  call.operands.bias = k->has_bias ? cuda_alloc(bias_bytes) : NULL;
  call.operands.alpha = 1.0f, call.operands.beta = k->accumulate ? 1.0f : 0.0f;
  call.C = cuda_alloc(c_bytes);
  cudaCheck(cudaMemset(call.C, 0, c_bytes));  // the columns past N (ldc > N) are never written
  pdl_probe_buffers buf;
  memset(&buf, 0, sizeof buf);
  void *inputs[PDL_PROBE_MAX_INPUTS] = {(void *)call.operands.A, (void *)call.operands.B, (void *)call.operands.bias,
                                        k->accumulate ? call.C : NULL};
  const size_t bytes[PDL_PROBE_MAX_INPUTS] = {a_bytes, b_bytes, bias_bytes, c_bytes};
  for (int i = 0; i < PDL_PROBE_MAX_INPUTS; i++)
    if (inputs[i]) buf.inputs[buf.n_inputs] = inputs[i], buf.input_bytes[buf.n_inputs++] = bytes[i];
  buf.output = call.C, buf.output_rows = k->M, buf.output_cols = k->N, buf.output_ld = k->ldc;
  buf.output_f32 = k->ctype == CUDA_R_32F;
  const bool waits = pdl_consumer_waits(&buf, run_plan_call, &call);
  cuda_free((void *)call.operands.A), cuda_free((void *)call.operands.B), cuda_free((void *)call.operands.bias);
  cuda_free(call.C);
  return waits;
}

void cuda_matmul_probe_plans(void) {
  if (!pdl_gemm_wanted()) return;
  matmul_cache *c = current_cache();
  for (int i = 0; i < c->nplans; i++)
    if (c->plans[i].waits == PRODUCER_WAIT_UNPROBED)
      c->plans[i].waits = plan_waits_for_producer(&c->plans[i], c->workspace) ? PRODUCER_WAIT_SEEN
                                                                                : PRODUCER_WAIT_NOT_SEEN;
}

// The row strides of packed operands: op(A) (M, K) is stored (M, K), or (K, M) when transposed.
#define PACKED_LDA(M, K, trans_a) ((trans_a) ? (M) : (K))
#define PACKED_LDB(K, N, trans_b) ((trans_b) ? (K) : (N))

// For test_cuda_ops --only pdl: whether the plan cuda_matmul makes for this shape (16-byte aligned
// operands) waits for its producer; probed now.
extern "C" int sn_cuda_matmul_waits_for_producer(int M, int N, int K, int trans_a, int trans_b, int has_bias,
                                                 int accumulate) {
  matmul_key key;
  memset(&key, 0, sizeof key);
  key.M = M, key.N = N, key.K = K, key.trans_a = trans_a, key.trans_b = trans_b;
  key.lda = PACKED_LDA(M, K, trans_a), key.ldb = PACKED_LDB(K, N, trans_b), key.ldc = N;
  key.has_bias = has_bias, key.accumulate = accumulate, key.dtype = key.ctype = CUDA_R_16BF;
  key.align_mask = 1 | 2 | 4;
  const matmul_operands none = {NULL, NULL, NULL, 1.0f, 0.0f};  // no autotuning without operands
  matmul_cache *c = current_cache();
  return plan_waits_for_producer(get_plan(c, &key, &none), c->workspace);
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
  matmul_cache *c = current_cache();
  matmul_plan *p = get_plan(c, &key, &operands);
  if (p->waits == PRODUCER_WAIT_SEEN && pdl_gemm_wanted()) capture_programmatic_edge(SN_STREAM);
  enqueue_plan(p, &operands, C, c->workspace, SN_STREAM);
}

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
size_t cuda_matmul_workspace_bytes(void) { return CUBLASLT_WORKSPACE_BYTES; }  // a context's

void cuda_bias_backward(void *dbias, const void *dout, int M, int N) {
  if (M == 0 || N == 0) return;
  int nparts = ceil_div_int(M, BIAS_BWD_ROWS_PER_BLOCK);
  float *partials = (float *)sn_cuda_scratch(SCRATCH_REDUCE_PARTIALS, (size_t)nparts * N * sizeof(float));
  dim3 grid(ceil_div_int(N, BIAS_BWD_THREADS), nparts);
  bias_backward_partials_kernel<<<grid, BIAS_BWD_THREADS, 0, SN_STREAM>>>(partials, (const bf16 *)dout, M, N);
  launchCheck();
  sn_cuda_reduce_partials_into_bf16((bf16 *)dbias, partials, nparts, N);
}
