// Memory: allocation, copies, fp32 <-> bf16 conversion, the two elementwise ops (add, scale_f32),
// the growable scratch buffers and the deterministic partial-sum reducer shared by the backward ops.
#include <algorithm>
#include <mutex>
#include <vector>

#include "common.cuh"

#define ELEMENTWISE_THREADS 256
// Host fp32 <-> bf16 staging chunk (see cuda_upload_f32).
#define CONVERT_CHUNK_ELEMS ((size_t)16 << 20)  // 64 MiB of fp32 staging

// An attribute of the current device. Each caller below keeps it in a function-local static,
// initialised once even when threads of several contexts race to the first call.
static int device_attribute(cudaDeviceAttr attr) {
  int dev, value;
  cudaCheck(cudaGetDevice(&dev));
  cudaCheck(cudaDeviceGetAttribute(&value, attr, dev));
  return value;
}
int sn_cuda_sm_count(void) {
  static const int count = device_attribute(cudaDevAttrMultiProcessorCount);
  return count;
}
int sn_cuda_cc_major(void) {
  static const int major = device_attribute(cudaDevAttrComputeCapabilityMajor);
  return major;
}
int sn_cuda_smem_optin_max(void) {
  static const int bytes = device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin);
  return bytes;
}
bool sn_cuda_cooperative_launch(void) {
  static const bool supported = device_attribute(cudaDevAttrCooperativeLaunch) != 0;
  return supported;
}

bool cuda_env_switch(const char *name, bool fallback, bool *warned) {
  const char *v = getenv(name);
  if (!v) return fallback;
  if (strcmp(v, "0") == 0 || strcmp(v, "1") == 0) return v[0] == '1';
  if (!warned || !*warned)
    fprintf(stderr, "warning: environment variable %s='%s' is neither 0 nor 1; read as %d\n", name, v, (int)fallback);
  if (warned) *warned = true;
  return fallback;
}

static bool pdl_wanted(void) {
  const char *v = getenv("SN_PDL");
  return sn_cuda_cc_major() >= 9 && !(v && strcmp(v, "0") == 0);
}
bool sn_cuda_pdl_enabled(void) {
  static const bool enabled = pdl_wanted();
  return enabled;
}

// ---- allocation: every cudaMalloc of the backend (buffers, scratch, workspaces) goes through
// cuda_alloc/cuda_free, so the tracker sees all the device memory the run holds ------------------
static sn_alloc_tracker device_tracker = SN_ALLOC_TRACKER_INIT;

void *cuda_alloc(size_t bytes) {
  void *p = NULL;
  cudaCheck(cudaMalloc(&p, bytes ? bytes : 16));
  sn_alloc_tracker_add(&device_tracker, p, bytes);
  return p;
}
// cudaFree synchronises the device, which a graph recording in progress (any thread's, any
// context's) must not see: a free while one records waits in `deferred` until the last recording
// ends. Recordings themselves may allocate (relaxed capture mode, graphs.cu).
static std::mutex recording_lock;  // guards the two below
static int recordings;
static std::vector<void *> deferred;

static void free_now(void *p) {
  sn_alloc_tracker_remove(&device_tracker, p);
  cudaCheck(cudaFree(p));
}
void cuda_free(void *p) {
  if (!p) return;
  {
    std::lock_guard<std::mutex> hold(recording_lock);
    if (recordings > 0) {
      deferred.push_back(p);
      return;
    }
  }
  free_now(p);
}
void cuda_recording_begins(void) {
  std::lock_guard<std::mutex> hold(recording_lock);
  recordings++;
}
void cuda_recording_ends(void) {
  std::lock_guard<std::mutex> hold(recording_lock);
  if (--recordings > 0) return;
  for (void *p : deferred) free_now(p);
  deferred.clear();
}
sn_alloc_stats cuda_memory_stats(void) { return sn_alloc_tracker_stats(&device_tracker); }
void cuda_memory_reset_peak(void) { sn_alloc_tracker_reset_peak(&device_tracker); }

// ---- scratch: the current context's slots ---------------------------------------------------------
void *sn_cuda_scratch(scratch_slot slot, size_t bytes) {
  cuda_context *ctx = cuda_context_current();
  if (bytes > ctx->scratch_bytes[slot]) {
    size_t want = scratch_slot_bytes(bytes);
    cuda_free(ctx->scratch_ptr[slot]);
    ctx->scratch_ptr[slot] = cuda_alloc(want);
    ctx->scratch_bytes[slot] = want;
    ctx->scratch_moves++;
  }
  return ctx->scratch_ptr[slot];
}

uint64_t cuda_scratch_epoch(void) { return cuda_context_current()->scratch_moves; }

// Every slot at its largest request for the shape, with the headroom it grows by, plus the cuBLASLt
// workspace. The reduce-partials slot serves several families: the largest of them.
size_t cuda_workspace_bytes(const sn_workspace_shape *s) {
  size_t slot[SCRATCH_SLOT_COUNT] = {0};
  const int T = s->max_tokens;
  size_t partials = cuda_norm_scratch_bytes(T, s->widest);
  partials = std::max(partials, cuda_bias_scratch_bytes(T, s->widest));
  partials = std::max(partials, cuda_optimizer_scratch_bytes(SCRATCH_REDUCE_PARTIALS, s->max_span_count));
  slot[SCRATCH_REDUCE_PARTIALS] = partials;
  for (int k = SCRATCH_ATTN_DELTA; k <= SCRATCH_ATTN_DQ_ORDER; k++)
    slot[k] = cuda_attention_scratch_bytes((scratch_slot)k, T, s->n_heads, s->head_dim);
  slot[SCRATCH_SORT] = cuda_embedding_scratch_bytes(T, s->widest);
  slot[SCRATCH_LOSS_LOGITS] = cuda_loss_scratch_bytes(SCRATCH_LOSS_LOGITS, s->loss_rows, s->loss_cols);
  slot[SCRATCH_LOSS_ROWS] = cuda_loss_scratch_bytes(SCRATCH_LOSS_ROWS, s->loss_rows, s->loss_cols);
  for (int k = SCRATCH_LM_LOGITS; k <= SCRATCH_LM_ROWS; k++)
    slot[k] = s->lm_vocab > 0 ? cuda_lm_head_scratch_bytes((scratch_slot)k, T, s->lm_vocab, s->lm_width) : 0;
  slot[SCRATCH_ADAMW_TABLE] = cuda_optimizer_scratch_bytes(SCRATCH_ADAMW_TABLE, s->max_span_count);
  slot[SCRATCH_CONVERT] = CONVERT_CHUNK_ELEMS * sizeof(float);
  size_t total = cuda_matmul_workspace_bytes();
  for (int k = 0; k < SCRATCH_SLOT_COUNT; k++) total += slot[k] ? scratch_slot_bytes(slot[k]) : 0;
  return total;
}

void cuda_device_memory(size_t *free_bytes, size_t *total_bytes) {
  cudaCheck(cudaMemGetInfo(free_bytes, total_bytes));
}

// ---- raw copies ------------------------------------------------------------------------------------
void cuda_memset_zero(void *p, size_t bytes) { cudaCheck(cudaMemsetAsync(p, 0, bytes, SN_STREAM)); }
void cuda_copy(void *dst, const void *src, size_t bytes) {
  cudaCheck(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, SN_STREAM));
}
// Synchronous copies on the current stream (cudaMemcpy would use the legacy stream, which a bound
// context's non-blocking stream is not ordered with): the host buffer is free again on return.
void cuda_upload(void *dst, const void *host_src, size_t bytes) {
  cudaCheck(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, SN_STREAM));
  cudaCheck(cudaStreamSynchronize(SN_STREAM));
}
void cuda_download(void *host_dst, const void *src, size_t bytes) {
  cudaCheck(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, SN_STREAM));
  cudaCheck(cudaStreamSynchronize(SN_STREAM));
}
void *cuda_host_alloc(size_t bytes) {
  void *p = NULL;
  cudaCheck(cudaMallocHost(&p, bytes ? bytes : 1));
  return p;
}
void cuda_host_free(void *p) {
  if (p) cudaCheck(cudaFreeHost(p));
}
void cuda_upload_async(void *dst, const void *host_src, size_t bytes) {
  cudaCheck(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, SN_STREAM));
}
void cuda_download_async(void *host_dst, const void *src, size_t bytes) {
  cudaCheck(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, SN_STREAM));
}
// A bound context waits for its own stream only; the default context for the whole device (the
// training loop's NCCL streams included).
void cuda_synchronize(void) {
  if (cuda_context_bound())
    cudaCheck(cudaStreamSynchronize(SN_STREAM));
  else
    cudaCheck(cudaDeviceSynchronize());
}

// ---- conversion --------------------------------------------------------------------------------------
// One thread per pack of 8 elements; the last n % 8 elements are handled one per thread after the
// packs, so any n and (for the scalar tail) any alignment works.
__global__ void f32_to_bf16_kernel(bf16 *dst, const float *src, size_t n, int packed) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t npacks = packed ? n / BF16_PER_PACK : 0;
  if (i < npacks) {
    f32x4 lo = load_f32x4(src + i * BF16_PER_PACK), hi = load_f32x4(src + i * BF16_PER_PACK + F32_PER_PACK);
    bf16x8 o;
#pragma unroll
    for (int k = 0; k < F32_PER_PACK; k++) {
      o.v[k] = f2bf(lo.v[k]);
      o.v[k + F32_PER_PACK] = f2bf(hi.v[k]);
    }
    store_bf16x8(dst + i * BF16_PER_PACK, o);
  } else {
    size_t j = npacks * BF16_PER_PACK + (i - npacks);
    if (j < n) dst[j] = f2bf(src[j]);
  }
}

__global__ void bf16_to_f32_kernel(float *dst, const bf16 *src, size_t n, int packed) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t npacks = packed ? n / BF16_PER_PACK : 0;
  if (i < npacks) {
    bf16x8 x = load_bf16x8(src + i * BF16_PER_PACK);
    f32x4 lo, hi;
#pragma unroll
    for (int k = 0; k < F32_PER_PACK; k++) {
      lo.v[k] = bf2f(x.v[k]);
      hi.v[k] = bf2f(x.v[k + F32_PER_PACK]);
    }
    store_f32x4(dst + i * BF16_PER_PACK, lo);
    store_f32x4(dst + i * BF16_PER_PACK + F32_PER_PACK, hi);
  } else {
    size_t j = npacks * BF16_PER_PACK + (i - npacks);
    if (j < n) dst[j] = bf2f(src[j]);
  }
}

// Threads needed for n elements in the pack-then-tail layout above.
static size_t pack_threads(size_t n, int packed) {
  return packed ? n / BF16_PER_PACK + n % BF16_PER_PACK : n;
}

void cuda_f32_to_storage(void *dst, const float *src, size_t n) {
  if (n == 0) return;
  int packed = aligned16(dst) && aligned16(src);
  size_t threads = pack_threads(n, packed);
  f32_to_bf16_kernel<<<ceil_div_int(threads, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, SN_STREAM>>>(
      (bf16 *)dst, src, n, packed);
  launchCheck();
}
void cuda_storage_to_f32(float *dst, const void *src, size_t n) {
  if (n == 0) return;
  int packed = aligned16(dst) && aligned16(src);
  size_t threads = pack_threads(n, packed);
  bf16_to_f32_kernel<<<ceil_div_int(threads, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, SN_STREAM>>>(
      dst, (const bf16 *)src, n, packed);
  launchCheck();
}

// Host fp32 ↔ device bf16 through a bounded fp32 staging buffer, converted on the device (rounds to
// nearest even, like the CPU reference would). Chunked: a whole tower at once would stage 4 bytes a
// parameter beside the training buffers (30 GB for 7B) and ran out of memory at the end-of-stage
// save of a 7B run. Copies are ordered on SN_STREAM with the conversions, so a chunk's staging is
// reused only after the kernel that reads it; a pageable-host copy returns once the host side is
// consumed (upload) and downloads wait for their chunk.

void cuda_upload_f32(void *dst, const float *host_src, size_t n) {
  if (n == 0) return;
  const size_t chunk = n < CONVERT_CHUNK_ELEMS ? n : CONVERT_CHUNK_ELEMS;
  float *staging = (float *)sn_cuda_scratch(SCRATCH_CONVERT, chunk * sizeof(float));
  for (size_t off = 0; off < n; off += chunk) {
    const size_t m = n - off < chunk ? n - off : chunk;
    cudaCheck(cudaMemcpyAsync(staging, host_src + off, m * sizeof(float), cudaMemcpyHostToDevice, SN_STREAM));
    cuda_f32_to_storage((bf16 *)dst + off, staging, m);
  }
}
void cuda_download_f32(float *host_dst, const void *src, size_t n) {
  if (n == 0) return;
  const size_t chunk = n < CONVERT_CHUNK_ELEMS ? n : CONVERT_CHUNK_ELEMS;
  float *staging = (float *)sn_cuda_scratch(SCRATCH_CONVERT, chunk * sizeof(float));
  for (size_t off = 0; off < n; off += chunk) {
    const size_t m = n - off < chunk ? n - off : chunk;
    cuda_storage_to_f32(staging, (const bf16 *)src + off, m);
    cudaCheck(cudaMemcpyAsync(host_dst + off, staging, m * sizeof(float), cudaMemcpyDeviceToHost, SN_STREAM));
    cudaCheck(cudaStreamSynchronize(SN_STREAM));
  }
}

// ---- elementwise -------------------------------------------------------------------------------------
// out = a + b in fp32, rounded once (out may alias a or b).
__global__ void add_bf16_kernel(bf16 *out, const bf16 *a, const bf16 *b, size_t n, int packed) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  size_t npacks = packed ? n / BF16_PER_PACK : 0;
  if (i < npacks) {
    bf16x8 x = load_bf16x8(a + i * BF16_PER_PACK), y = load_bf16x8(b + i * BF16_PER_PACK), o;
#pragma unroll
    for (int k = 0; k < BF16_PER_PACK; k++) o.v[k] = f2bf(bf2f(x.v[k]) + bf2f(y.v[k]));
    store_bf16x8(out + i * BF16_PER_PACK, o);
  } else {
    size_t j = npacks * BF16_PER_PACK + (i - npacks);
    if (j < n) out[j] = f2bf(bf2f(a[j]) + bf2f(b[j]));
  }
}
void cuda_add(void *out, const void *a, const void *b, size_t n) {
  if (n == 0) return;
  int packed = aligned16(out) && aligned16(a) && aligned16(b);
  size_t threads = pack_threads(n, packed);
  add_bf16_kernel<<<ceil_div_int(threads, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, SN_STREAM>>>(
      (bf16 *)out, (const bf16 *)a, (const bf16 *)b, n, packed);
  launchCheck();
}

// fp32 gradients of embeddings (the symmetric InfoNCE term's, cross-device slices): rows of a few
// thousand floats, one thread an element.
__global__ void add_f32_kernel(float *out, const float *a, const float *b, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a[i] + b[i];
}
void cuda_add_f32(float *out, const float *a, const float *b, size_t n) {
  if (n == 0) return;
  add_f32_kernel<<<ceil_div_int(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, SN_STREAM>>>(out, a, b, n);
  launchCheck();
}

__global__ void scale_f32_kernel(float *x, float s, size_t n) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}
void cuda_scale_f32(float *x, float s, size_t n) {
  if (n == 0) return;
  scale_f32_kernel<<<ceil_div_int(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, SN_STREAM>>>(x, s, n);
  launchCheck();
}

// dst (rows, cols) = (accumulate ? dst : 0) + alpha * src, both strided by rows; fp32 math, one
// rounding. One thread per element (LoRA slices are narrow: r or one projection's width).
__global__ void axpy_2d_kernel(bf16 *dst, int ld_dst, const bf16 *src, int ld_src, int rows, int cols,
                               float alpha, int accumulate) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= (size_t)rows * cols) return;
  size_t r = i / (size_t)cols, c = i % (size_t)cols;
  bf16 *d = dst + r * (size_t)ld_dst + c;
  float v = alpha * bf2f(src[r * (size_t)ld_src + c]);
  *d = f2bf(accumulate ? bf2f(*d) + v : v);
}
void cuda_axpy_2d(void *dst, int ld_dst, const void *src, int ld_src, int rows, int cols, float alpha,
                  int accumulate) {
  size_t n = (size_t)rows * cols;
  if (n == 0) return;
  axpy_2d_kernel<<<ceil_div_int(n, ELEMENTWISE_THREADS), ELEMENTWISE_THREADS, 0, SN_STREAM>>>(
      (bf16 *)dst, ld_dst, (const bf16 *)src, ld_src, rows, cols, alpha, accumulate);
  launchCheck();
}

// ---- deterministic second stage of cross-block reductions -------------------------------------------
// dst (n) += sum over p of partials (nparts, n); with a second output, blockIdx.y = 1 reduces the
// next (nparts, n) block of partials into dst1 in the same launch. A block owns REDUCE_COLS columns
// (a warp reads a 128-byte row segment); its REDUCE_SLICES thread rows each sum the parts p = slice,
// slice + REDUCE_SLICES, ... in order, REDUCE_UNROLL loads in flight, then the slices are added in
// order: a fixed summation order (deterministic), rounding to bf16 once.
#define REDUCE_COLS 32
#define REDUCE_SLICES 32
static constexpr int REDUCE_UNROLL = 8;  // #pragma unroll takes no macro
__global__ void __launch_bounds__(REDUCE_COLS *REDUCE_SLICES)
    reduce_partials_kernel(bf16 *dst0, bf16 *dst1, const float *partials, int nparts, int n) {
  __shared__ float slice_sums[REDUCE_SLICES][REDUCE_COLS];
  const int col = threadIdx.x % REDUCE_COLS, slice = threadIdx.x / REDUCE_COLS;
  const int j = blockIdx.x * REDUCE_COLS + col;
  const float *src = partials + (size_t)blockIdx.y * nparts * n;
  float sum = 0.0f;
  if (j < n) {
#pragma unroll REDUCE_UNROLL
    for (int p = slice; p < nparts; p += REDUCE_SLICES) sum += src[(size_t)p * n + j];
  }
  slice_sums[slice][col] = sum;
  __syncthreads();
  if (slice == 0 && j < n) {
    float total = 0.0f;
#pragma unroll
    for (int k = 0; k < REDUCE_SLICES; k++) total += slice_sums[k][col];
    bf16 *dst = blockIdx.y ? dst1 : dst0;
    dst[j] = f2bf(bf2f(dst[j]) + total);
  }
}
void sn_cuda_reduce_partials2_into_bf16(bf16 *dst0, bf16 *dst1, const float *partials, int nparts, int n) {
  dim3 grid(ceil_div_int(n, REDUCE_COLS), dst1 ? 2 : 1);
  reduce_partials_kernel<<<grid, REDUCE_COLS * REDUCE_SLICES, 0, SN_STREAM>>>(dst0, dst1, partials, nparts, n);
  launchCheck();
}
void sn_cuda_reduce_partials_into_bf16(bf16 *dst, const float *partials, int nparts, int n) {
  sn_cuda_reduce_partials2_into_bf16(dst, NULL, partials, nparts, n);
}
