// Weight prefetch into L2 on a side stream (ops.h prefetch_l2 / prefetch_join).
// At a few tokens a GEMM reads each weight once and does little with it: cuBLASLt's kernels for 32
// rows run on a handful of CTAs (the 0.5B's QKV on about 9, gate|up on 76 of 132 SMs) whose time is
// the round trips of their weight stream to HBM, not its bandwidth. prefetch_l2 forks a side stream
// off the calling thread's stream at the point of the call: a small kernel there issues bulk L2
// prefetches (cp.async.bulk.prefetch.L2, sm_90; a line prefetch loop before) of the weights a later
// GEMM reads, while the main stream runs the kernels before that GEMM, which then reads L2 instead.
// Nothing is written, so the results are the same bits with or without it; the side stream joins the
// main one again at prefetch_join (and before every graph_end: a recording must not end with a fork
// open). Measured: docs/PERFORMANCE.md, "Serving queries".
#include "common.cuh"

#define PREFETCH_CHUNK_BYTES (16 << 10)  // a bulk prefetch's size: 16 KB, ~1000 of them for the 0.5B's gate|up
#define PREFETCH_BLOCKS 16               // few SMs: the GEMMs running beside need the rest
#define PREFETCH_THREADS 64
#define PREFETCH_LINE_BYTES 128          // an L2 line (the pre-sm_90 loop's step)
#define PREFETCH_BULK_ALIGN 16           // cp.async.bulk takes 16-byte aligned addresses and sizes

// [p, p + bytes) into L2, chunk by chunk, each thread its chunks in turn.
__global__ void l2_prefetch_kernel(const char *p, size_t bytes) {
  const size_t stride = (size_t)gridDim.x * blockDim.x * PREFETCH_CHUNK_BYTES;
  for (size_t off = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * PREFETCH_CHUNK_BYTES; off < bytes;
       off += stride) {
    const size_t n = bytes - off < PREFETCH_CHUNK_BYTES ? bytes - off : PREFETCH_CHUNK_BYTES;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    const unsigned whole = (unsigned)(n & ~(size_t)(PREFETCH_BULK_ALIGN - 1));  // a ragged tail stays cold
    if (whole) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p + off), "r"(whole) : "memory");
#else
    for (size_t k = 0; k < n; k += PREFETCH_LINE_BYTES) asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p + off + k));
#endif
  }
}

// The side stream of the calling thread's context: a bound context's own, or the thread's for the
// default context (like its capture stream, made at first use and kept for the thread's life).
static thread_local prefetch_lane default_context_lane;

static prefetch_lane *current_lane(void) {
  cuda_context *ctx = cuda_context_bound();
  prefetch_lane *lane = ctx ? &ctx->prefetch : &default_context_lane;
  if (!lane->stream) {
    cudaCheck(cudaStreamCreateWithFlags(&lane->stream, cudaStreamNonBlocking));
    cudaCheck(cudaEventCreateWithFlags(&lane->fork, cudaEventDisableTiming));
    cudaCheck(cudaEventCreateWithFlags(&lane->join, cudaEventDisableTiming));
  }
  return lane;
}

void cuda_prefetch_l2(const void *p, size_t bytes) {
  if (bytes == 0) return;
  prefetch_lane *lane = current_lane();
  cudaCheck(cudaEventRecord(lane->fork, SN_STREAM));  // the side stream starts from here
  cudaCheck(cudaStreamWaitEvent(lane->stream, lane->fork, 0));
  l2_prefetch_kernel<<<PREFETCH_BLOCKS, PREFETCH_THREADS, 0, lane->stream>>>((const char *)p, bytes);
  launchCheck();
  lane->open = true;
}

void cuda_prefetch_join(void) {
  cuda_context *ctx = cuda_context_bound();
  prefetch_lane *lane = ctx ? &ctx->prefetch : &default_context_lane;
  if (!lane->open) return;
  cudaCheck(cudaEventRecord(lane->join, lane->stream));
  cudaCheck(cudaStreamWaitEvent(SN_STREAM, lane->join, 0));
  lane->open = false;
}

void cuda_prefetch_lane_free(prefetch_lane *lane) {
  if (!lane->stream) return;
  cudaCheck(cudaStreamSynchronize(lane->stream));
  cudaCheck(cudaEventDestroy(lane->fork));
  cudaCheck(cudaEventDestroy(lane->join));
  cudaCheck(cudaStreamDestroy(lane->stream));
  *lane = prefetch_lane{};
}
