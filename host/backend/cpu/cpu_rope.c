// Rotary position embedding, Hugging Face rotate-half convention, in place on the packed qkv rows.
// For pair i < D/2 of a head: x1 = x[i], x2 = x[i + D/2], angle = pos * theta^(-2i/D),
//   out[i] = x1 cos - x2 sin;  out[i + D/2] = x2 cos + x1 sin.
// The angle is formed in fp32 as transformers does (inv_freq and pos * inv_freq in float), so
// positions far into a sequence round the same way as the reference model.
#include <math.h>

#include "common.h"
#include "cpu_ops.h"

// cos and sin of every (position, pair) used, once: packed sequences repeat the same positions,
// so this is max_pos * D/2 sincos calls instead of T * D/2.
// Returns the (n_pos, half) cos table; the sin table follows it.
static float *rotation_table(const int32_t *pos, int T, int half, int D, float theta,
                             int *n_pos_out) {
  int max_pos = 0;
  for (int t = 0; t < T; t++) max_pos = SN_MAX(max_pos, pos[t]);
  int n_pos = max_pos + 1;
  size_t n = (size_t)n_pos * half;
  float *cos_t = sn_cpu_scratch(SN_CPU_SCRATCH_OP, 2 * SN_MAX(n, 1) * sizeof(float));
  float *sin_t = cos_t + n;
  for (int i = 0; i < half; i++) {
    float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)D);
    for (int p = 0; p < n_pos; p++) {
      float angle = (float)p * inv_freq;
      cos_t[(size_t)p * half + i] = cosf(angle);
      sin_t[(size_t)p * half + i] = sinf(angle);
    }
  }
  *n_pos_out = n_pos;
  return cos_t;
}

void sn_cpu_rope(void *qkv, const int32_t *pos, int T, int Hq, int Hkv, int D, float theta,
                 int inverse) {
  float *x = qkv;  // (T, (Hq + 2*Hkv) * D)
  int half = D / 2, row_len = (Hq + 2 * Hkv) * D;
  int rotated_heads = Hq + Hkv;  // q heads then k heads are adjacent; v heads are left alone
  int n_pos;
  const float *cos_t = rotation_table(pos, T, half, D, theta, &n_pos);
  const float *sin_t = cos_t + (size_t)n_pos * half;
  float sign = inverse ? -1.0f : 1.0f;  // the inverse rotation is the rotation by -angle
  size_t work = (size_t)T * rotated_heads * D;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int t = 0; t < T; t++) {
    const float *c = cos_t + (size_t)pos[t] * half, *s = sin_t + (size_t)pos[t] * half;
    for (int h = 0; h < rotated_heads; h++) {
      float *x1 = x + (size_t)t * row_len + (size_t)h * D, *x2 = x1 + half;
      for (int i = 0; i < half; i++) {
        float a = x1[i], b = x2[i], si = sign * s[i];
        x1[i] = a * c[i] - b * si;
        x2[i] = b * c[i] + a * si;
      }
    }
  }
}
