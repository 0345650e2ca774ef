// Shared by every kernel file: error checks that print file:line and the failing call, bf16
// helpers, 128-bit packed loads/stores, the bf16 tensor-core product (mma.sync), RoPE's angles,
// warp/block reductions, the growable scratch buffers, and the entry points of each op family
// (ops_cuda.cu puts them into the sn_ops table).
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>

extern "C" {
#include "ops.h"
}

// ---- error checks ---------------------------------------------------------------------------------
static inline void cuda_check_at(cudaError_t err, const char *call, const char *file, int line) {
  if (err != cudaSuccess) {
    fprintf(stderr, "error: %s:%d: CUDA error %s (%s) in %s\n", file, line, cudaGetErrorName(err),
            cudaGetErrorString(err), call);
    exit(1);
  }
}
static inline void cublas_check_at(cublasStatus_t st, const char *call, const char *file, int line) {
  if (st != CUBLAS_STATUS_SUCCESS) {
    fprintf(stderr, "error: %s:%d: cuBLAS status %d in %s\n", file, line, (int)st, call);
    exit(1);
  }
}
#define cudaCheck(call) cuda_check_at((call), #call, __FILE__, __LINE__)
#define cublasCheck(call) cublas_check_at((call), #call, __FILE__, __LINE__)
// After every kernel launch: catches bad launch configurations at the launch site. With
// SN_CUDA_SYNC_CHECK defined it also synchronizes, so faults are reported where they happen.
#ifdef SN_CUDA_SYNC_CHECK
#define launchCheck() (cudaCheck(cudaGetLastError()), cudaCheck(cudaDeviceSynchronize()))
#else
#define launchCheck() cudaCheck(cudaGetLastError())
#endif

// Every op runs on the calling thread's current stream: the stream of the execution context the
// thread has bound (context.cu; a serving handle's own stream), else the legacy default stream,
// except between graph_begin and graph_end in the default context (graphs.cu), when it is the
// thread's capture stream, a blocking stream, so graph launches stay ordered with the legacy stream.
cudaStream_t sn_cuda_stream(void);
#define SN_STREAM (sn_cuda_stream())

typedef __nv_bfloat16 bf16;

// ---- bf16 and packed 128-bit access ---------------------------------------------------------------
#define BF16_PER_PACK 8  // 16 bytes = 8 bf16
#define F32_PER_PACK 4   // 16 bytes = 4 floats

struct __align__(16) bf16x8 {
  bf16 v[BF16_PER_PACK];
};
struct __align__(16) f32x4 {
  float v[F32_PER_PACK];
};

__device__ __forceinline__ float bf2f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ bf16 f2bf(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ bf16x8 load_bf16x8(const bf16 *p) { return *reinterpret_cast<const bf16x8 *>(p); }
__device__ __forceinline__ void store_bf16x8(bf16 *p, bf16x8 v) { *reinterpret_cast<bf16x8 *>(p) = v; }
__device__ __forceinline__ f32x4 load_f32x4(const float *p) { return *reinterpret_cast<const f32x4 *>(p); }
__device__ __forceinline__ void store_f32x4(float *p, f32x4 v) { *reinterpret_cast<f32x4 *>(p) = v; }

// True when p is 16-byte aligned (packed paths need it; odd shapes fall back to scalar code).
__host__ __device__ __forceinline__ bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

// A 32-bit word holding two bf16 (element 0 in the low half) <-> floats. Widening is exact (a bf16 is
// the top half of an fp32); packing rounds to nearest even, as f2bf.
__device__ __forceinline__ float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<uint32_t *>(&v);
}
// acc[0..8) += the 8 bf16 of a 16-byte pack held as four words.
__device__ __forceinline__ void add_bf16x8_words(float (&acc)[BF16_PER_PACK], uint4 v) {
  const uint32_t w[F32_PER_PACK] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int k = 0; k < F32_PER_PACK; k++) acc[2 * k] += bf16_lo(w[k]), acc[2 * k + 1] += bf16_hi(w[k]);
}

// ---- cp.async (sm_80+): copies global -> shared memory that bypass registers ---------------
// The "memory" clobbers keep the compiler from moving shared-memory reads above a wait: a thread
// may read its own copies right after cp_async_wait, with no barrier in between.
__device__ __forceinline__ uint32_t smem_addr(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
}
// With a source size of 0 the destination is zero-filled instead (rows past the end of a tile).
__device__ __forceinline__ void cp_async16_zfill(void *smem, const void *gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async4_zfill(void *smem, const void *gmem, bool valid) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem), "r"(valid ? 4 : 0)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit(void) { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>  // waits until at most N of this thread's newest copy groups are still in flight
__device__ __forceinline__ void cp_async_wait(void) { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// ---- tensor cores (sm_80+) -----------------------------------------------------------------------
// c (16x8 fp32) += a (16x16 bf16, row-major) b (16x8 bf16), mma.sync m16n8k16; fragment layout
// (lane = 4 * g + q):
//   a[0] = (g, 2q..2q+1), a[1] = (g+8, 2q..), a[2] = (g, 2q+8..), a[3] = (g+8, 2q+8..)
//   b[0] = (k = 2q..2q+1, n = g), b[1] = (k = 2q+8..2q+9, n = g)
//   c[0..1] = (g, 2q..2q+1), c[2..3] = (g+8, 2q..2q+1)
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// ---- programmatic dependent launch (sm_90+) ----------------------------------------------------------
#define PDL_PROBE_MAX_INPUTS 4  // A, B, C (when accumulated into) and the bias of a GEMM
// A kernel launched with launch_pdl may start while the kernel before it in the stream is still
// running: what it does before pdl_wait() (loading weights, which no kernel writes during a forward)
// overlaps that kernel's tail, and its launch latency is hidden. pdl_wait() returns once the previous
// kernel has completed and its writes are visible; every such kernel must call it, also on paths that
// read nothing, so that completion stays transitive down the stream (a kernel two launches back is
// done once the one before it is). pdl_launch_dependents() lets the next kernel start now, instead of
// when this one's blocks exit. Both are no-ops before sm_90, and for a kernel launched normally.
__device__ __forceinline__ void pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
// Whether launch_pdl asks for the overlap: a device of compute capability 9.0 or later, and the
// environment does not say SN_PDL=0 (to time the same kernels without it).
bool sn_cuda_pdl_enabled(void);
// Launches on SN_STREAM with programmatic dependent launch (when enabled) and, where cluster_blocks
// > 1, thread-block clusters of (1, cluster_blocks, 1) (sm_90+: the caller checks).
template <typename... KernelArgs, typename... Args>
static void launch_pdl_cluster(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, int cluster_blocks,
                               Args... args) {
  cudaLaunchAttribute attr[2];
  int n = 0;
  if (sn_cuda_pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_blocks > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = 1, attr[n].val.clusterDim.y = cluster_blocks, attr[n++].val.clusterDim.z = 1;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = SN_STREAM;
  cfg.attrs = attr, cfg.numAttrs = n;
  cudaCheck(cudaLaunchKernelEx(&cfg, kernel, ((KernelArgs)args)...));
}
template <typename... KernelArgs, typename... Args>
static void launch_pdl(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, Args... args) {
  launch_pdl_cluster(kernel, grid, block, smem, 1, args...);
}

// Programmatic edges into kernels we did not write (cuBLASLt's), while a graph records: sound only
// for a consumer that waits for its producer (griddepcontrol.wait) before reading, which is probed
// rather than assumed (pdl_probe.cu). capture_programmatic_edge makes the next node recorded on
// `stream` hang on the one kernel node before it by a programmatic edge (nothing when the stream is
// not recording or that node is not a single kernel). pdl_consumer_waits runs `run` (which enqueues
// the consumer on the stream it is given) after a producer that lets it launch at once and writes
// its inputs only later, and tells whether the output came out as after a plain launch.
typedef void (*pdl_consumer_fn)(cudaStream_t stream, const void *ctx);
typedef struct {
  void *inputs[PDL_PROBE_MAX_INPUTS];  // every buffer the consumer reads
  size_t input_bytes[PDL_PROBE_MAX_INPUTS];
  int n_inputs;
  const void *output;  // what it writes: (rows, cols) of bf16, or of fp32 when output_f32, row stride ld
  int output_rows, output_cols, output_ld, output_f32;
} pdl_probe_buffers;
void capture_programmatic_edge(cudaStream_t stream);
bool pdl_consumer_waits(const pdl_probe_buffers *buffers, pdl_consumer_fn run, const void *ctx);
// The device's clock in nanoseconds (the same on every multiprocessor).
__device__ __forceinline__ uint64_t global_ns(void) {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// ---- rotary position embedding ---------------------------------------------------------------------
// Pair i of a D-wide head turns by the angle pos * theta^(-2i/D) (Hugging Face rotate-half), the
// angle in fp32 as transformers forms it; precise sincosf (angles reach hundreds of radians: the
// fast intrinsics lose digits there). Shared by rope.cu and the attention that rotates while it
// loads (attention_forward.cu), so both rotate to the same bits.
__device__ __forceinline__ float rope_inv_freq(int i, int D, float theta) {
  return 1.0f / powf(theta, (float)(2 * i) / (float)D);
}
__device__ __forceinline__ void rope_cos_sin(int pos, int i, int D, float theta, float *c, float *s) {
  sincosf((float)pos * rope_inv_freq(i, D, theta), s, c);
}
// (x1, x2) turned by the angle of cosine c and sine s: (x1 c - x2 s, x2 c + x1 s), each product
// rounded before the sum (no fused multiply-add, whose choice the compiler makes per kernel), so the
// kernels that rotate agree bit for bit.
__device__ __forceinline__ void rope_rotate(float x1, float x2, float c, float s, float *r1, float *r2) {
  *r1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
  *r2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

// ---- reductions (fp32) ------------------------------------------------------------------------------
#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
  return v;
}
// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `shared` holds at least 32 floats. Fixed order, so deterministic.
__device__ __forceinline__ float block_sum(float v, float *shared) {
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int nwarps = blockDim.x / WARP_SIZE;
  v = warp_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : 0.0f;
  return warp_sum(v);
}
__device__ __forceinline__ float block_max(float v, float *shared) {
  const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
  const int nwarps = blockDim.x / WARP_SIZE;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  v = lane < nwarps ? shared[lane] : -INFINITY;
  return warp_max(v);
}

static inline int ceil_div_int(long long a, long long b) { return (int)((a + b - 1) / b); }

// Raises a kernel's dynamic shared-memory limit once (needed past 48 KB). Threads of several
// contexts may race here: both set the same value, and the flag is atomic.
template <typename K>
static void allow_smem(K kernel, size_t bytes, std::atomic<bool> *done) {
  if (done->load(std::memory_order_acquire)) return;
  cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
  done->store(true, std::memory_order_release);
}

// An environment switch of the CUDA backend: 1 on, 0 off, unset the fallback; another value is
// warned about (once per *warned flag, or every call where warned is NULL) and read as the fallback,
// as host/model/model.c's switches.
bool cuda_env_switch(const char *name, bool fallback, bool *warned);

// ---- device facts and scratch -------------------------------------------------------------------
// Multiprocessor count, compute-capability major, the most dynamic shared memory a block may opt in
// to, and cooperative-launch support of the current device (each read once).
int sn_cuda_sm_count(void);
int sn_cuda_cc_major(void);
int sn_cuda_smem_optin_max(void);
bool sn_cuda_cooperative_launch(void);

// Growable device scratch buffers, one per slot: the first call of a shape allocates, later calls of
// the same or smaller size reuse it, so the step loop does no cudaMalloc after the first step.
typedef enum {
  SCRATCH_REDUCE_PARTIALS = 0,  // per-block partial sums of weight-gradient / norm reductions
  SCRATCH_ATTN_DELTA,           // attention backward: rowsum(dO * O), (Hq, T)
  SCRATCH_ATTN_DQ_ACCUM,        // attention backward: fp32 dQ accumulated over key blocks, (T, Hq, D)
  SCRATCH_ATTN_DQ_ORDER,        // attention backward: per (sequence, head, query tile) key-block counters
  SCRATCH_SORT,                 // embedding backward: sorted ids and token order, radix workspace
  SCRATCH_LOSS_LOGITS,          // contrastive loss: logits, then their gradient (R, N)
  SCRATCH_LOSS_ROWS,            // per-row loss terms
  SCRATCH_LM_LOGITS,            // lm_head_xent: one fp32 logits block (row chunk, vocab chunk)
  SCRATCH_LM_GRAD,              // lm_head_xent: that block's bf16 gradient
  SCRATCH_LM_ROWS,              // lm_head_xent: fp32 dhidden rows (row chunk, C) and row statistics
  SCRATCH_ADAMW_TABLE,          // adamw: block → span table
  SCRATCH_CONVERT,              // host upload/download staging
  SCRATCH_DECODER_FUSED,        // decoder_fused: activations, down's partial sums (inference only, opt-in
                                // with SN_FUSED_DECODER: 0.8 MB at the 0.5B shape, outside the training plan)
  SCRATCH_SLOT_COUNT
} scratch_slot;
// The current context's slot (below), grown to at least `bytes`.
void *sn_cuda_scratch(scratch_slot slot, size_t bytes);
// Changes whenever a scratch slot of the current context moves (a graph recorded before then names
// freed memory).
uint64_t cuda_scratch_epoch(void);
// A slot grows to what a request needs plus 1/SCRATCH_HEADROOM_DIV, so a slowly growing shape does
// not reallocate every step; the memory plan counts the same headroom.
#define SCRATCH_HEADROOM_DIV 4
static inline size_t scratch_slot_bytes(size_t request) { return request + request / SCRATCH_HEADROOM_DIV; }

// ---- execution contexts (context.cu) ------------------------------------------------------------
// What the ops of one stream own, so that two streams never share a buffer: its scratch slots, its
// cuBLASLt plans (a plan's descriptor takes each call's bias pointer) and workspace, the fused grid
// kernel's barrier. The process's default context runs on the legacy stream (training, sn_embed);
// each serving handle makes its own (ops.h context_new) on a non-blocking stream of its own and
// binds it for its calls. A context is used by one thread at a time; a thread runs in the context
// it bound last, else in the default one.
struct matmul_cache;  // matmul.cu
struct cuda_context {
  cudaStream_t stream;  // 0 (the legacy stream) in the default context
  bool recording;       // a bound context between graph_begin and graph_end (graphs.cu)
  void *scratch_ptr[SCRATCH_SLOT_COUNT];
  size_t scratch_bytes[SCRATCH_SLOT_COUNT];
  uint64_t scratch_moves;        // reallocations so far: the epoch graphs are checked against
  matmul_cache *matmul;          // made at the context's first GEMM (matmul.cu)
  unsigned int *grid_barrier;    // made at its first fused decoder launch (decoder_fused.cu)
};
cuda_context *cuda_context_current(void);  // the bound context, else the default one
cuda_context *cuda_context_bound(void);    // the bound context, else NULL
void cuda_matmul_cache_free(matmul_cache *cache);

// Adds fp32 partial sums (nparts, n) in a fixed order into dst (n) of storage dtype, rounding once:
// the deterministic second stage of every cross-block reduction into a bf16 weight gradient.
void sn_cuda_reduce_partials_into_bf16(bf16 *dst, const float *partials, int nparts, int n);
// The same for two outputs in one launch: partials (2, nparts, n), the second block into dst1 (when
// dst1 is non-NULL).
void sn_cuda_reduce_partials2_into_bf16(bf16 *dst0, bf16 *dst1, const float *partials, int nparts, int n);

// ---- scratch sizes for the memory plan: each is the largest request its kernel family makes for
// the shape (beside the launcher that makes it), before the slot's headroom -------------------------
size_t cuda_attention_scratch_bytes(scratch_slot slot, int T, int Hq, int D);  // DELTA, DQ_ACCUM, DQ_ORDER
size_t cuda_embedding_scratch_bytes(int T, int C);                            // SORT
size_t cuda_norm_scratch_bytes(int T, int C);                                 // REDUCE_PARTIALS
size_t cuda_bias_scratch_bytes(int T, int N);                                 // REDUCE_PARTIALS
size_t cuda_loss_scratch_bytes(scratch_slot slot, int R, int N);              // LOSS_LOGITS, LOSS_ROWS
size_t cuda_lm_head_scratch_bytes(scratch_slot slot, int N, int V, int C);     // LM_LOGITS, LM_GRAD, LM_ROWS
size_t cuda_optimizer_scratch_bytes(scratch_slot slot, int nspans);          // ADAMW_TABLE, REDUCE_PARTIALS
size_t cuda_matmul_workspace_bytes(void);                                     // cuBLASLt, allocated once
size_t cuda_workspace_bytes(const sn_workspace_shape *shape);

// ---- entry points of each kernel file ------------------------------------------------------------
// memory.cu
void *cuda_alloc(size_t bytes);
void cuda_free(void *p);
void cuda_memset_zero(void *p, size_t bytes);
void cuda_copy(void *dst, const void *src, size_t bytes);
void cuda_upload(void *dst, const void *host_src, size_t bytes);
void cuda_download(void *host_dst, const void *src, size_t bytes);
void *cuda_host_alloc(size_t bytes);
void cuda_host_free(void *p);
void cuda_upload_async(void *dst, const void *host_src, size_t bytes);
void cuda_download_async(void *host_dst, const void *src, size_t bytes);
void cuda_upload_f32(void *dst, const float *host_src, size_t n);
void cuda_download_f32(float *host_dst, const void *src, size_t n);
void cuda_storage_to_f32(float *dst, const void *src, size_t n);
void cuda_f32_to_storage(void *dst, const float *src, size_t n);
void cuda_synchronize(void);
sn_alloc_stats cuda_memory_stats(void);
void cuda_device_memory(size_t *free_bytes, size_t *total_bytes);
void cuda_memory_reset_peak(void);
void cuda_add(void *out, const void *a, const void *b, size_t n);
void cuda_add_f32(float *out, const float *a, const float *b, size_t n);
void cuda_scale_f32(float *x, float s, size_t n);
void cuda_axpy_2d(void *dst, int ld_dst, const void *src, int ld_src, int rows, int cols, float alpha,
                  int accumulate);
// Around every graph recording (graphs.cu): frees meanwhile wait for the last one to end.
void cuda_recording_begins(void);
void cuda_recording_ends(void);
// context.cu
void *cuda_context_new(void);
void *cuda_context_bind(void *ctx);
void cuda_context_free(void *ctx);
// graphs.cu
void cuda_graph_begin(void);
void *cuda_graph_end(void);
void cuda_graph_launch(void *graph);
void cuda_graph_free(void *graph);
// init.cu
void cuda_fill_normal(void *x, size_t n, uint64_t key, float stddev);
void cuda_fill(void *x, size_t n, float value);
void cuda_dropout(void *out, const void *x, size_t n, uint64_t key, float p, int accumulate);
// embedding.cu
void cuda_embedding_forward(void *out, const int32_t *ids, const void *table, int T, int C, int accumulate);
void cuda_embedding_backward(void *dtable, const void *dout, const int32_t *ids, int T, int C, int V);
// norms.cu
void cuda_rmsnorm_forward(void *out, float *rstd, const void *x, const void *weight, int T, int C, float eps);
void cuda_rmsnorm_backward(void *dx, void *dweight, const void *dout, const void *x, const void *weight,
                           const float *rstd, int T, int C, int accumulate);
void cuda_add_rmsnorm_forward(void *residual_out, void *out, float *rstd, const void *a, const void *b,
                              const void *weight, int T, int C, float eps);
void cuda_layernorm_forward(void *out, float *mean, float *rstd, const void *x, const void *weight,
                            const void *bias, int T, int C, float eps);
void cuda_layernorm_backward(void *dx, void *dweight, void *dbias, const void *dout, const void *x,
                             const void *weight, const float *mean, const float *rstd, int T, int C,
                             int accumulate);
void cuda_add_layernorm_forward(void *residual_out, void *out, float *mean, float *rstd, const void *a,
                                const void *b, const void *weight, const void *bias, int T, int C, float eps);
// matmul.cu
void cuda_matmul(void *C, const void *A, const void *B, const void *bias, int M, int N, int K, int trans_a,
                 int trans_b, int accumulate);
void cuda_matmul_strided(void *C, int ldc, const void *A, int lda, const void *B, int ldb, const void *bias, int M,
                         int N, int K, int trans_a, int trans_b, int accumulate);
void cuda_bias_backward(void *dbias, const void *dout, int M, int N);
// Probes the GEMM plans not yet probed for the programmatic edge (SN_PDL_GEMM); graph_begin calls it.
void cuda_matmul_probe_plans(void);
// fp32 GEMM with the same row-major convention, C = alpha * op(A) op(B) + beta * C (losses use it).
void sn_cuda_matmul_f32(float *C, const float *A, const float *B, int M, int N, int K, int trans_a,
                        int trans_b, float alpha, float beta);
// bf16 A and B, fp32 C: the same convention and fp32 accumulation (the LM head's logits and dhidden).
void sn_cuda_matmul_bf16_f32(float *C, const bf16 *A, const bf16 *B, int M, int N, int K, int trans_a,
                             int trans_b, float alpha, float beta);
// linear_small.cu
void cuda_linear_small(void *out, const void *x, const void *norm_w, float eps, const void *w, const void *bias,
                       const void *residual, int M, int N, int K, sn_epilogue epilogue);
// decoder_fused.cu
int cuda_decoder_fused_supports(const sn_decoder_weights *w, int T);
void cuda_decoder_fused_forward(void *out, const int32_t *ids, const int32_t *pos, const int32_t *cu_seqlens, int B,
                                int T, const sn_decoder_weights *w);
// rope.cu
void cuda_rope(void *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta, int inverse);
// attention_forward.cu, attention_backward.cu
void cuda_attention_forward(void *out, float *lse, const void *qkv, const int32_t *cu_seqlens, int B, int T,
                            int max_seqlen, int Hq, int Hkv, int D, int causal, float scale);
void cuda_attention_rope_forward(void *out, const void *qkv, const int32_t *pos, const int32_t *cu_seqlens, int B,
                                 int T, int max_seqlen, int Hq, int Hkv, int D, float theta, int causal, float scale);
void cuda_attention_backward(void *dqkv, const void *dout, const void *qkv, const void *out, const float *lse,
                             const int32_t *cu_seqlens, int B, int T, int max_seqlen, int Hq, int Hkv,
                             int D, int causal, float scale);
// activations.cu
void cuda_swiglu_forward(void *out, const void *gate_up, int T, int I);
void cuda_swiglu_backward(void *dgate_up, const void *dout, const void *gate_up, int T, int I);
void cuda_gelu_forward(void *out, const void *x, size_t n);
void cuda_gelu_backward(void *dx, const void *dout, const void *x, size_t n);
// pooling.cu
void cuda_pool_forward(void *out, const void *hidden, const int32_t *cu_seqlens, int B, int T, int C,
                       sn_pooling mode);
void cuda_pool_backward(void *dhidden, const void *dout, const int32_t *cu_seqlens, int B, int T, int C,
                        sn_pooling mode);
void cuda_l2norm_forward(float *out, float *norm, const void *x, int B, int C);
void cuda_l2norm_backward(void *dx, const float *dout, const float *out, const float *norm, int B, int C);
// losses.cu
void cuda_contrastive_loss(float *loss, float *drows, float *dcols, const float *rows, const float *cols,
                           const int32_t *target, int R, int N, int C, float inv_temp, float scale);
void cuda_distill_loss(float *loss_terms, float *dstudent, const float *student, const float *teacher, int B,
                       int C, float alpha, float beta);
void cuda_kl_distill_loss(float *loss, float *dq, float *dd, const float *q, const float *d, const float *teacher,
                          int B, int G, int C, float inv_temp_student, float inv_temp_teacher, float scale);
// *acc += factor * sum of x[i * stride] for i < n, in a fixed order (one block): deterministic loss sums.
void sn_cuda_ordered_sum(float *acc, const float *x, int n, int stride, float factor);
// lm_head.cu
void cuda_lm_head_xent(float *loss, void *dhidden, void *dweight, const void *hidden, const void *weight,
                       const int32_t *targets, int N, int V, int C, float scale);
// topk.cu
void cuda_scores_f32(float *S, const float *A, const float *B, int M, int N, int K);
void cuda_topk_merge(float *best_score, int32_t *best_idx, const float *scores, int nq, int nd, int k, int col0,
                     const int32_t *tie_key);
// optimizer.cu
void cuda_sum_squares(float *out, const void *grads, size_t n);
void cuda_adamw(void *params, float *master, const void *grads, void *m, void *v, const sn_param_span *spans,
                int nspans, const sn_adamw_hparams *hp);
