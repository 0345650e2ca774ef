// Rotary position embedding, Hugging Face rotate-half convention, in place on the packed qkv rows.
// For pair i < D/2 of a head: x1 = x[i], x2 = x[i + D/2], angle = pos * theta^(-2i/D),
//   out[i] = x1 cos - x2 sin;  out[i + D/2] = x2 cos + x1 sin.
// The angle is formed in fp32 as transformers does (inv_freq and pos * inv_freq in float), so
// positions far into a sequence round the same way as the reference model.
#include <math.h>

#include "../common.h"
#include "cpu_ops.h"

void sn_cpu_rope(void *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta,
                 int inverse) {
  float *x = qkv;  // (T, (Hq + 2*Hkv) * D)
  int half = D / 2, row_len = (Hq + 2 * Hkv) * D;
  int rotated_heads = Hq + Hkv;  // q heads then k heads are adjacent; v heads are left alone
  float *inv_freq = sn_cpu_scratch(SN_CPU_SCRATCH_OP, (size_t)SN_MAX(half, 1) * sizeof(float));
  for (int i = 0; i < half; i++) inv_freq[i] = 1.0f / powf(theta, (float)(2 * i) / (float)D);
  float sign = inverse ? -1.0f : 1.0f;  // the inverse rotation is the rotation by -angle
  size_t work = (size_t)T * rotated_heads * D;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    float *row = x + (size_t)t * row_len;
    for (int i = 0; i < half; i++) {
      float angle = (float)pos[t] * inv_freq[i];
      float c = cosf(angle), s = sign * sinf(angle);
      for (int h = 0; h < rotated_heads; h++) {
        float *head = row + (size_t)h * D;
        float x1 = head[i], x2 = head[i + half];
        head[i] = x1 * c - x2 * s;
        head[i + half] = x2 * c + x1 * s;
      }
    }
  }
}
