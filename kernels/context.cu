// Execution contexts (common.cuh): the default one on the legacy stream, and those serving handles
// make, each on a non-blocking stream of its own so that its kernels, copies and synchronisations
// neither wait for nor hold up another handle's (or a training loop's on the legacy stream).
#include "common.cuh"

static cuda_context default_context;                      // stream 0: the legacy default stream
static thread_local cuda_context *bound_context = nullptr;  // the calling thread's, set by cuda_context_bind

cuda_context *cuda_context_bound(void) { return bound_context; }
cuda_context *cuda_context_current(void) { return bound_context ? bound_context : &default_context; }

void *cuda_context_new(void) {
  cuda_context *ctx = (cuda_context *)calloc(1, sizeof *ctx);
  if (!ctx) {
    fprintf(stderr, "error: %s:%d: out of host memory for an execution context\n", __FILE__, __LINE__);
    exit(1);
  }
  cudaCheck(cudaStreamCreateWithFlags(&ctx->stream, cudaStreamNonBlocking));
  return ctx;
}

void *cuda_context_bind(void *ctx) {
  cuda_context *previous = bound_context;
  bound_context = (cuda_context *)ctx;
  return previous;
}

void cuda_context_free(void *opaque) {
  cuda_context *ctx = (cuda_context *)opaque;
  if (!ctx) return;
  if (ctx == bound_context) {
    fprintf(stderr, "%s:%d: context_free of the calling thread's bound context\n", __FILE__, __LINE__);
    exit(EXIT_FAILURE);
  }
  cudaCheck(cudaStreamSynchronize(ctx->stream));  // its last work may still read the buffers below
  for (int k = 0; k < SCRATCH_SLOT_COUNT; k++) cuda_free(ctx->scratch_ptr[k]);
  cuda_matmul_cache_free(ctx->matmul);
  cuda_free(ctx->grid_barrier);
  cudaCheck(cudaStreamDestroy(ctx->stream));
  free(ctx);
}
