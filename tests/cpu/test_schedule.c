// sn_lr_at: linear warm-up, then cosine / linear decay to min_ratio * peak, or constant.
#include <math.h>

#include "optimizer.h"
#include "test_util.h"

#define LR_TOL 1e-6f  // relative
#define PEAK 3e-4f
#define MIN_RATIO 0.1f
#define WARMUP 10
#define TOTAL 110  // 100 decay steps after warm-up

static void expect_lr(const char *what, int64_t step, int64_t warmup, int64_t total, float min_ratio,
                      sn_schedule schedule, double want) {
  float got = sn_lr_at(step, warmup, total, PEAK, min_ratio, schedule);
  double err = fabs(got - want) / fmax(fabs(want), 1e-30);
  printf("  %-26s step %4lld: lr %.6e (want %.6e)\n", what, (long long)step, got, want);
  CHECK(err < LR_TOL || (want == 0 && got == 0), "%s at step %lld: %.8g, want %.8g", what,
        (long long)step, got, want);
}

int main(void) {
  const double min_lr = PEAK * MIN_RATIO;
  const sn_schedule all[3] = {SN_SCHEDULE_COSINE, SN_SCHEDULE_LINEAR, SN_SCHEDULE_CONSTANT};
  // warm-up: every schedule reaches peak * (step + 1) / warmup, the last warm-up step = peak
  for (int s = 0; s < 3; s++) {
    expect_lr("warm-up first step", 0, WARMUP, TOTAL, MIN_RATIO, all[s], PEAK * 1.0 / WARMUP);
    expect_lr("warm-up middle", 4, WARMUP, TOTAL, MIN_RATIO, all[s], PEAK * 5.0 / WARMUP);
    expect_lr("warm-up last step", WARMUP - 1, WARMUP, TOTAL, MIN_RATIO, all[s], PEAK);
    expect_lr("end of warm-up", WARMUP, WARMUP, TOTAL, MIN_RATIO, all[s], PEAK);
  }
  // cosine: half-way is the midpoint of peak and floor; quarter-way is (1 + cos(pi/4)) / 2
  expect_lr("cosine quarter", WARMUP + 25, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_COSINE,
            min_lr + (PEAK - min_lr) * 0.5 * (1 + cos(M_PI / 4)));
  expect_lr("cosine half", WARMUP + 50, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_COSINE,
            0.5 * (PEAK + min_lr));
  expect_lr("cosine end", TOTAL, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_COSINE, min_lr);
  expect_lr("cosine past end", TOTAL + 50, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_COSINE, min_lr);
  // linear
  expect_lr("linear quarter", WARMUP + 25, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_LINEAR,
            PEAK - 0.25 * (PEAK - min_lr));
  expect_lr("linear half", WARMUP + 50, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_LINEAR,
            0.5 * (PEAK + min_lr));
  expect_lr("linear end", TOTAL, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_LINEAR, min_lr);
  expect_lr("linear past end", TOTAL + 7, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_LINEAR, min_lr);
  // constant holds the peak after warm-up, whatever min_ratio says
  expect_lr("constant half", WARMUP + 50, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_CONSTANT, PEAK);
  expect_lr("constant past end", TOTAL + 5, WARMUP, TOTAL, MIN_RATIO, SN_SCHEDULE_CONSTANT, PEAK);
  // no warm-up: step 0 is the peak; min_ratio 0 decays to exactly 0
  expect_lr("no warm-up step 0", 0, 0, 100, 0.0f, SN_SCHEDULE_COSINE, PEAK);
  expect_lr("no warm-up linear end", 100, 0, 100, 0.0f, SN_SCHEDULE_LINEAR, 0.0);
  // decay is monotone
  int monotone = 1;
  for (int s = 0; s < 2; s++)
    for (int64_t step = WARMUP; step < TOTAL + 3; step++)
      monotone &= sn_lr_at(step + 1, WARMUP, TOTAL, PEAK, MIN_RATIO, all[s]) <=
                  sn_lr_at(step, WARMUP, TOTAL, PEAK, MIN_RATIO, all[s]);
  CHECK(monotone, "decay must be non-increasing after warm-up");
  return sn_test_finish("test_schedule");
}
