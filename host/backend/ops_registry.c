// Backend lookup by device name, the CUDA stub of CPU-only builds, and the learning-rate schedule.
#include <string.h>

#include "common.h"
#include "ops.h"

#ifndef SN_WITH_CUDA
// Built without CUDA: the real sn_ops_cuda lives in kernels/ and is compiled only with CUDA.
const sn_ops *sn_ops_cuda(const char **why_not) {
  if (why_not) *why_not = "built without CUDA";
  return NULL;
}
const sn_ops *sn_ops_cuda_for_plan(void) { return NULL; }
// test_cuda_ops links them in every build and skips before calling them without a CUDA backend.
int sn_cuda_pdl_probe_selftest(int consumer_waits) {
  (void)consumer_waits;
  return -1;  // no programmatic launch here
}
int sn_cuda_matmul_waits_for_producer(int M, int N, int K, int trans_a, int trans_b, int has_bias, int accumulate) {
  (void)M, (void)N, (void)K, (void)trans_a, (void)trans_b, (void)has_bias, (void)accumulate;
  return 0;
}
#endif

const sn_ops *sn_ops_for_plan(const char *device) {
  if (device && strcmp(device, "cuda") == 0) {
    const sn_ops *ops = sn_ops_cuda(NULL);
    if (!ops) ops = sn_ops_cuda_for_plan();
    if (!ops) sn_bad_input("device 'cuda': this build has no CUDA backend to plan for");
    return ops;
  }
  return sn_ops_by_name(device);
}

const sn_ops *sn_ops_by_name(const char *device) {
  if (!device) sn_bad_input("device is missing (valid: cpu, cuda)");
  if (strcmp(device, "cpu") == 0) return sn_ops_cpu();
  if (strcmp(device, "cuda") == 0) {
    const char *why_not = "unknown reason";
    const sn_ops *ops = sn_ops_cuda(&why_not);
    if (!ops) sn_bad_input("device 'cuda' is not available: %s (use device 'cpu')", why_not);
    return ops;
  }
  sn_bad_input("unknown device '%s' (valid: cpu, cuda)", device);
}
