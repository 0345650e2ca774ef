// The programmatic-edge probe. While a graph records, a kernel may hang on the kernel before it by a
// programmatic edge instead of a full one: it is then launched as soon as every block of its
// producer has run griddepcontrol.launch_dependents (or exited), and it must itself run
// griddepcontrol.wait before it reads what the producer wrote. Our kernels do (pdl_wait,
// common.cuh). cuBLASLt's GEMMs gain from the edge too (a 0.5B query 5%, the student's 7-9%:
// docs/PERFORMANCE.md), but their documentation does not promise the wait and cuobjdump does not
// list their code. So an algorithm gets the edge only once it has been seen to wait:
// - the producer lets its dependents launch at once, sleeps, and only then writes the consumer's
//   inputs, which held NaN before it ran;
// - the sleep is many times the consumer's own time, so a consumer that does not wait reads NaN
//   and gives another output than a plain launch on the written inputs;
// - a consumer that waits gives the plain launch's output.
// test_cuda_ops --only pdl checks the probe both ways: a copy kernel without the wait must be
// caught, the same kernel with it must pass.
#include <math.h>

#include "common.cuh"

#define PROBE_MIN_DELAY_NS 200000.0  // the producer's sleep, at least: a serving GEMM takes 3-60 µs
#define PROBE_DELAY_FACTOR 16        // and at least this many times the consumer's measured time
#define PROBE_FILL_BYTE 0x3C         // the inputs: bf16 0x3C3C and fp32 0x3C3C3C3C, both about 0.0115
#define PROBE_POISON_BYTE 0xFF       // the inputs before the producer writes them: NaN in bf16 and fp32
#define PROBE_REL_TOL 1e-3           // two runs of a consumer may sum in different orders (split K)
#define LATE_FILL_BLOCKS 8
#define LATE_FILL_THREADS 256
#define LATE_FILL_SLEEP_NS 1000      // between reads of the clock while the producer sleeps
#define COPY_PROBE_THREADS 256
#define COPY_PROBE_ELEMS ((size_t)1 << 20)  // the self-test's copy: 2 MiB of bf16, about 2 µs

// ---- the edge ----------------------------------------------------------------------------------------
void capture_programmatic_edge(cudaStream_t stream) {
  cudaStreamCaptureStatus status;
  const cudaGraphNode_t *deps;
  const cudaGraphEdgeData *edges;  // asked for although unused: without it the query fails on annotated edges
  size_t ndeps = 0;
  cudaCheck(cudaStreamGetCaptureInfo(stream, &status, NULL, NULL, &deps, &edges, &ndeps));
  if (status != cudaStreamCaptureStatusActive || ndeps != 1) return;
  cudaGraphNodeType type;
  cudaCheck(cudaGraphNodeGetType(deps[0], &type));
  if (type != cudaGraphNodeTypeKernel) return;
  cudaGraphNode_t producer = deps[0];
  cudaGraphEdgeData edge;
  memset(&edge, 0, sizeof edge);
  edge.from_port = cudaGraphKernelNodePortProgrammatic;
  edge.type = cudaGraphDependencyTypeProgrammatic;
  cudaCheck(cudaStreamUpdateCaptureDependencies(stream, &producer, &edge, 1, cudaStreamSetCaptureDependencies));
}

// ---- the producer ------------------------------------------------------------------------------------
typedef struct {
  unsigned char *dst[PDL_PROBE_MAX_INPUTS];
  size_t bytes[PDL_PROBE_MAX_INPUTS];
  int n;
} late_fill;

// Lets its dependents launch at once, sleeps delay_ns, then fills every buffer with PROBE_FILL_BYTE
// (32-bit words, the odd tail bytes by one thread; the buffers come from cudaMalloc, so aligned).
__global__ void late_fill_kernel(late_fill f, uint64_t delay_ns) {
  pdl_launch_dependents();
  const uint64_t start = global_ns();
  while (global_ns() - start < delay_ns) __nanosleep(LATE_FILL_SLEEP_NS);
  const uint32_t word = PROBE_FILL_BYTE * 0x01010101u;
  const size_t first = (size_t)blockIdx.x * blockDim.x + threadIdx.x, stride = (size_t)gridDim.x * blockDim.x;
  for (int i = 0; i < f.n; i++) {
    const size_t words = f.bytes[i] / sizeof(uint32_t);
    for (size_t j = first; j < words; j += stride) reinterpret_cast<uint32_t *>(f.dst[i])[j] = word;
    if (first == 0)
      for (size_t b = words * sizeof(uint32_t); b < f.bytes[i]; b++) f.dst[i][b] = PROBE_FILL_BYTE;
  }
}

// ---- the probe ---------------------------------------------------------------------------------------
// A blocking stream of the thread's own: ordered after the legacy stream's work, whose cuBLASLt
// workspace a probed GEMM shares, and capturable (the legacy stream is not).
static cudaStream_t probe_stream(void) {
  static thread_local cudaStream_t stream = NULL;
  if (!stream) cudaCheck(cudaStreamCreateWithFlags(&stream, cudaStreamDefault));
  return stream;
}

static void fill_inputs(const pdl_probe_buffers *b, int byte, cudaStream_t s) {
  for (int i = 0; i < b->n_inputs; i++) cudaCheck(cudaMemsetAsync(b->inputs[i], byte, b->input_bytes[i], s));
}

// The output's (rows, cols) values as floats (host, malloc'd), after the stream's work.
static float *download_output(const pdl_probe_buffers *b, cudaStream_t s) {
  const size_t esize = b->output_f32 ? sizeof(float) : sizeof(bf16), n = (size_t)b->output_rows * b->output_cols;
  unsigned char *raw = (unsigned char *)malloc((size_t)b->output_rows * b->output_ld * esize);
  float *vals = (float *)malloc(n * sizeof(float));
  if (!raw || !vals) {
    fprintf(stderr, "error: %s:%d: out of host memory for the programmatic-edge probe\n", __FILE__, __LINE__);
    exit(1);
  }
  cudaCheck(cudaMemcpyAsync(raw, b->output, (size_t)b->output_rows * b->output_ld * esize, cudaMemcpyDeviceToHost, s));
  cudaCheck(cudaStreamSynchronize(s));
  for (int r = 0; r < b->output_rows; r++)
    for (int c = 0; c < b->output_cols; c++) {
      const size_t at = (size_t)r * b->output_ld + c;
      float v;
      if (b->output_f32) {
        memcpy(&v, raw + at * sizeof(float), sizeof v);
      } else {
        uint16_t h;
        memcpy(&h, raw + at * sizeof h, sizeof h);
        const uint32_t bits = (uint32_t)h << 16;  // a bf16 is the top half of an fp32
        memcpy(&v, &bits, sizeof v);
      }
      vals[(size_t)r * b->output_cols + c] = v;
    }
  free(raw);
  return vals;
}

static bool outputs_agree(const float *expect, const float *got, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!isfinite(expect[i]) || !isfinite(got[i]) || fabsf(got[i] - expect[i]) > PROBE_REL_TOL * fabsf(expect[i]))
      return false;
  return true;
}

bool pdl_consumer_waits(const pdl_probe_buffers *b, pdl_consumer_fn run, const void *ctx) {
  if (b->n_inputs < 1 || b->n_inputs > PDL_PROBE_MAX_INPUTS) {
    fprintf(stderr, "error: %s:%d: programmatic-edge probe of %d inputs (1 to %d)\n", __FILE__, __LINE__, b->n_inputs,
            PDL_PROBE_MAX_INPUTS);
    exit(1);
  }
  const cudaStream_t s = probe_stream();
  // What a plain launch gives on the written inputs; the second run is timed (the first may load
  // modules) and starts from freshly written inputs (a consumer may accumulate into one).
  cudaEvent_t start, stop;
  cudaCheck(cudaEventCreate(&start));
  cudaCheck(cudaEventCreate(&stop));
  fill_inputs(b, PROBE_FILL_BYTE, s);
  run(s, ctx);
  fill_inputs(b, PROBE_FILL_BYTE, s);
  cudaCheck(cudaEventRecord(start, s));
  run(s, ctx);
  cudaCheck(cudaEventRecord(stop, s));
  cudaCheck(cudaEventSynchronize(stop));
  float ms;
  cudaCheck(cudaEventElapsedTime(&ms, start, stop));
  cudaCheck(cudaEventDestroy(start));
  cudaCheck(cudaEventDestroy(stop));
  float *expect = download_output(b, s);

  // The same consumer recorded behind the late producer by a programmatic edge, on poisoned inputs.
  late_fill f;
  memset(&f, 0, sizeof f);
  for (int i = 0; i < b->n_inputs; i++) f.dst[i] = (unsigned char *)b->inputs[i], f.bytes[i] = b->input_bytes[i];
  f.n = b->n_inputs;
  const uint64_t delay_ns = (uint64_t)fmax(PROBE_MIN_DELAY_NS, PROBE_DELAY_FACTOR * (double)ms * 1e6);
  fill_inputs(b, PROBE_POISON_BYTE, s);
  cudaCheck(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
  late_fill_kernel<<<LATE_FILL_BLOCKS, LATE_FILL_THREADS, 0, s>>>(f, delay_ns);
  launchCheck();
  capture_programmatic_edge(s);
  run(s, ctx);
  cudaGraph_t graph;
  cudaCheck(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec;
  bool waits = false;
  if (cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
    cudaCheck(cudaGraphLaunch(exec, s));
    float *got = download_output(b, s);
    waits = outputs_agree(expect, got, (size_t)b->output_rows * b->output_cols);
    free(got);
    cudaCheck(cudaGraphExecDestroy(exec));
  } else {
    (void)cudaGetLastError();  // a graph that refuses the edge: the consumer simply never gets it
  }
  cudaCheck(cudaGraphDestroy(graph));
  free(expect);
  return waits;
}

// ---- the probe's self-test -------------------------------------------------------------------------
typedef struct {
  bf16 *out;
  const bf16 *in;
  size_t n;
  int wait;
} copy_probe;

__global__ void copy_probe_kernel(bf16 *out, const bf16 *in, size_t n, int wait) {
  if (wait) pdl_wait();
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    out[i] = in[i];
}

static void run_copy_probe(cudaStream_t s, const void *ctx) {
  const copy_probe *c = (const copy_probe *)ctx;
  copy_probe_kernel<<<sn_cuda_sm_count(), COPY_PROBE_THREADS, 0, s>>>(c->out, c->in, c->n, c->wait);
  launchCheck();
}

extern "C" int sn_cuda_pdl_probe_selftest(int consumer_waits) {
  if (!sn_cuda_pdl_enabled()) return -1;  // no programmatic edges on this device or with SN_PDL=0
  const size_t n = COPY_PROBE_ELEMS;
  copy_probe c = {(bf16 *)cuda_alloc(n * sizeof(bf16)), (const bf16 *)cuda_alloc(n * sizeof(bf16)), n, consumer_waits};
  pdl_probe_buffers b;
  memset(&b, 0, sizeof b);
  b.inputs[0] = (void *)c.in, b.input_bytes[0] = n * sizeof(bf16), b.n_inputs = 1;
  b.output = c.out, b.output_rows = 1, b.output_cols = (int)n, b.output_ld = (int)n, b.output_f32 = 0;
  const bool waits = pdl_consumer_waits(&b, run_copy_probe, &c);
  cuda_free(c.out);
  cuda_free((void *)c.in);
  return waits;
}
