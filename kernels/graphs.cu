// CUDA graphs: a fixed sequence of ops recorded once and replayed with one launch, so that a small
// forward (a batch of short queries: dozens of kernels of a few microseconds each) costs one launch
// instead of one per kernel. Used by the encoder library (host/serve/) per batch shape.
//
// In the default context, recording runs on the calling thread's capture stream, a blocking stream
// created at its first recording: between graph_begin and graph_end SN_STREAM is that stream, and
// ops enqueue into the graph instead of running. Launches go to the same stream; a blocking stream
// is ordered with the legacy default stream every other op and copy there uses, so uploads before
// a launch and downloads after it need no extra synchronisation. A bound context (context.cu)
// records and launches on its own stream, where its copies run too. Capture mode is relaxed: an op
// whose scratch slot must grow may cudaMalloc while recording (the allocation happens at once,
// outside the graph), and other threads' contexts may allocate meanwhile; a graph then names that
// buffer, and cuda_scratch_epoch() tells its owner when a later reallocation makes it stale. Frees
// (which synchronise the device) wait until no recording is in progress (memory.cu cuda_free).
#include "common.cuh"

static thread_local cudaStream_t current_stream = 0;  // default context: the legacy stream, or recording
static thread_local cudaStream_t capture_stream = NULL;

cudaStream_t sn_cuda_stream(void) {
  const cuda_context *ctx = cuda_context_bound();
  return ctx ? ctx->stream : current_stream;
}

static cudaStream_t thread_capture_stream(void) {
  if (!capture_stream) cudaCheck(cudaStreamCreateWithFlags(&capture_stream, cudaStreamDefault));
  return capture_stream;
}

// The stream a recording of the calling thread runs on, and graphs are launched on.
static cudaStream_t graph_stream(void) {
  const cuda_context *ctx = cuda_context_bound();
  return ctx ? ctx->stream : thread_capture_stream();
}

void cuda_graph_begin(void) {
  cuda_context *ctx = cuda_context_bound();
  if (ctx ? ctx->recording : current_stream != 0) {
    fprintf(stderr, "%s:%d: graph_begin inside a recording\n", __FILE__, __LINE__);
    exit(EXIT_FAILURE);
  }
  cuda_matmul_probe_plans();  // before recording: the probe runs and synchronises (matmul.cu)
  cuda_recording_begins();
  if (ctx)
    ctx->recording = true;
  else
    current_stream = thread_capture_stream();
  cudaCheck(cudaStreamBeginCapture(graph_stream(), cudaStreamCaptureModeRelaxed));
}

void *cuda_graph_end(void) {
  cudaGraph_t graph;
  cudaCheck(cudaStreamEndCapture(graph_stream(), &graph));
  cuda_context *ctx = cuda_context_bound();
  if (ctx)
    ctx->recording = false;
  else
    current_stream = 0;
  cuda_recording_ends();
  cudaGraphExec_t exec;
  cudaCheck(cudaGraphInstantiate(&exec, graph, 0));
  cudaCheck(cudaGraphDestroy(graph));
  return (void *)exec;
}

void cuda_graph_launch(void *graph) { cudaCheck(cudaGraphLaunch((cudaGraphExec_t)graph, graph_stream())); }

void cuda_graph_free(void *graph) {
  if (graph) cudaCheck(cudaGraphExecDestroy((cudaGraphExec_t)graph));
}
