// Benchmark support: a one-thread kernel that keeps the stream busy for a given time. sn_bench
// enqueues it ahead of the calls it times, so that the GPU runs them back to back from a full queue
// and each pair of events measures the GPU's time for one call, not the host's launch latency
// (nvbench's blocking kernel serves the same purpose).
#include "common.cuh"

#define BUSY_WAIT_SLEEP_NS 1000  // between reads of the clock: the other SMs' work is not disturbed

__global__ void busy_wait_kernel(uint64_t ns) {
  const uint64_t start = global_ns();
  while (global_ns() - start < ns) __nanosleep(BUSY_WAIT_SLEEP_NS);
}

extern "C" void sn_cuda_busy_wait(double microseconds) {
  busy_wait_kernel<<<1, 1, 0, SN_STREAM>>>((uint64_t)(microseconds * 1e3));
  launchCheck();
}
