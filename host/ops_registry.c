// Backend lookup by device name, the CUDA stub of CPU-only builds, and the learning-rate schedule.
#include <math.h>
#include <string.h>

#include "common.h"
#include "ops.h"

#ifndef SN_WITH_CUDA
// Built without CUDA: the real sn_ops_cuda lives in kernels/ and is compiled only with CUDA.
const sn_ops *sn_ops_cuda(const char **why_not) {
  if (why_not) *why_not = "built without CUDA";
  return NULL;
}
#endif

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

// Warm-up: lr rises linearly to peak, reaching peak * (step + 1) / warmup_steps on step `step`,
// so the first step already moves (a 0 learning rate would waste it). Then decay over
// [warmup_steps, total_steps] from peak to min_ratio * peak; at and after total_steps: the floor.
float sn_lr_at(int64_t step, int64_t warmup_steps, int64_t total_steps, float peak_lr,
               float min_ratio, sn_schedule schedule) {
  if (step < 0) step = 0;
  if (step < warmup_steps) return peak_lr * (float)(step + 1) / (float)warmup_steps;
  if (schedule == SN_SCHEDULE_CONSTANT) return peak_lr;
  double min_lr = (double)peak_lr * min_ratio;
  int64_t decay_steps = total_steps - warmup_steps;
  double progress = decay_steps > 0 ? (double)(step - warmup_steps) / (double)decay_steps : 1.0;
  if (progress > 1.0) progress = 1.0;
  double factor;  // 1 at the start of the decay, 0 at its end
  switch (schedule) {
    case SN_SCHEDULE_COSINE: factor = 0.5 * (1.0 + cos(M_PI * progress)); break;
    case SN_SCHEDULE_LINEAR: factor = 1.0 - progress; break;
    default: sn_bad_input("unknown learning-rate schedule %d", (int)schedule);
  }
  return (float)(min_lr + (peak_lr - min_lr) * factor);
}
