// Losses (fp32): contrastive cross-entropy over similarities (InfoNCE), embedding distillation
// (MSE + cosine) and score distillation (KL over each query's candidates). Per-row terms are summed in row order, in double, so the loss does
// not depend on the thread count.
#include <math.h>

#include "common.h"
#include "cpu_ops.h"

// ---- contrastive --------------------------------------------------------------------------------
// Turns logits row (N) into the gradient row grad_scale * (softmax - onehot(target)); returns the
// row's cross-entropy logsumexp - logit[target].
static double softmax_xent_row(float *row, int N, int target, float grad_scale) {
  float max_logit = -INFINITY;
  for (int j = 0; j < N; j++) max_logit = fmaxf(max_logit, row[j]);
  double sum = 0.0;
  for (int j = 0; j < N; j++) sum += exp((double)row[j] - max_logit);
  double lse = max_logit + log(sum);
  double xent = lse - row[target];
  for (int j = 0; j < N; j++) {
    double p = exp((double)row[j] - lse);
    row[j] = (float)(grad_scale * (p - (j == target ? 1.0 : 0.0)));
  }
  return xent;
}

void sn_cpu_contrastive_loss(float *loss, float *drows, float *dcols, const float *rows,
                             const float *cols, const int32_t *target, int R, int N, int C,
                             float inv_temp, float scale) {
  for (int r = 0; r < R; r++)
    if (target[r] < 0 || target[r] >= N)
      sn_fatal("contrastive_loss: target[%d] = %d outside [0, %d)", r, (int)target[r], N);
  // logits (R, N) then, in place, dloss/dlogits; row_xent (R)
  float *logits = sn_cpu_scratch(SN_CPU_SCRATCH_OP, ((size_t)R * N + R) * sizeof(float));
  float *row_xent = logits + (size_t)R * N;
  sn_cpu_matmul(logits, rows, cols, NULL, R, N, C, 0, 1, 0);  // rows @ cols^T
  float grad_scale = scale * inv_temp;  // d logits / d (rows . cols) = inv_temp
  size_t work = (size_t)R * N;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int r = 0; r < R; r++) {
    float *row = logits + (size_t)r * N;
    for (int j = 0; j < N; j++) row[j] *= inv_temp;
    row_xent[r] = (float)softmax_xent_row(row, N, target[r], grad_scale);
  }
  double total = 0.0;
  for (int r = 0; r < R; r++) total += row_xent[r];
  *loss += (float)(scale * total);
  if (drows) sn_cpu_matmul(drows, logits, cols, NULL, R, C, N, 0, 0, 1);  // (R,N) @ (N,C)
  if (dcols) sn_cpu_matmul(dcols, logits, rows, NULL, N, C, R, 1, 0, 1);  // (R,N)^T @ (R,C)
}

// ---- distillation -------------------------------------------------------------------------------
// Row b: cos = s.t / (max(|s|, eps) max(|t|, eps)). Writes d(alpha*mse + beta*cos_term)/ds of the
// row into ds; returns the row's squared error in sq_err and 1 - cos in one_minus_cos.
static void distill_row(float *ds, double *sq_err, double *one_minus_cos, const float *s,
                        const float *t, int C, float mse_grad, float cos_grad) {
  double err = 0.0, st = 0.0, ss = 0.0, tt = 0.0;
  for (int c = 0; c < C; c++) {
    double d = (double)s[c] - t[c];
    err += d * d;
    st += (double)s[c] * t[c];
    ss += (double)s[c] * s[c];
    tt += (double)t[c] * t[c];
  }
  double ns = sqrt(ss), nt = sqrt(tt);
  double ns_c = fmax(ns, SN_COSINE_EPS), nt_c = fmax(nt, SN_COSINE_EPS);
  double cos = st / (ns_c * nt_c);
  // dcos/ds = t / (ns_c nt_c) - cos s / ns^2 (the second term vanishes below the eps floor)
  double along_t = 1.0 / (ns_c * nt_c), along_s = ns > SN_COSINE_EPS ? cos / ss : 0.0;
  for (int c = 0; c < C; c++) {
    double dcos = t[c] * along_t - s[c] * along_s;
    ds[c] = (float)(mse_grad * ((double)s[c] - t[c]) - cos_grad * dcos);
  }
  *sq_err = err;
  *one_minus_cos = 1.0 - cos;
}

void sn_cpu_distill_loss(float *loss_terms, float *dstudent, const float *student,
                         const float *teacher, int B, int C, float alpha, float beta) {
  double *terms = sn_cpu_scratch(SN_CPU_SCRATCH_OP, (size_t)B * 2 * sizeof(double));  // (B, 2)
  double count = (double)B * C;
  float mse_grad = (float)(2.0 * alpha / count);  // d(alpha * mean (s-t)^2)/d(s-t) / (s-t)
  float cos_grad = (float)(beta / B);             // d(beta * mean (1 - cos))/dcos, negated
  size_t work = (size_t)B * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++) {
    size_t off = (size_t)b * C;
    distill_row(dstudent + off, &terms[2 * b], &terms[2 * b + 1], student + off, teacher + off, C,
                mse_grad, cos_grad);
  }
  double sq_err = 0.0, one_minus_cos = 0.0;
  for (int b = 0; b < B; b++) {
    sq_err += terms[2 * b];
    one_minus_cos += terms[2 * b + 1];
  }
  loss_terms[0] += (float)(alpha * sq_err / count);
  loss_terms[1] += (float)(beta * one_minus_cos / B);
}

// ---- score distillation (KL over each query's candidates) ---------------------------------------
// Query b: logits (G) in, d loss / d (q_b . d_bg) out in place; returns KL(p_t || p_s) of the row.
static double kl_row(float *logits, const float *teacher, int G, float inv_ts, float inv_tt,
                     float grad_scale) {
  double s_max = -INFINITY, t_max = -INFINITY;
  for (int g = 0; g < G; g++) {
    s_max = fmax(s_max, (double)logits[g] * inv_ts);
    t_max = fmax(t_max, (double)teacher[g] * inv_tt);
  }
  double s_sum = 0.0, t_sum = 0.0;
  for (int g = 0; g < G; g++) {
    s_sum += exp((double)logits[g] * inv_ts - s_max);
    t_sum += exp((double)teacher[g] * inv_tt - t_max);
  }
  double s_lse = s_max + log(s_sum), t_lse = t_max + log(t_sum), kl = 0.0;
  for (int g = 0; g < G; g++) {
    double log_ps = (double)logits[g] * inv_ts - s_lse, log_pt = (double)teacher[g] * inv_tt - t_lse;
    double pt = exp(log_pt);
    kl += pt * (log_pt - log_ps);  // pt = 0 (underflow) contributes 0
    logits[g] = (float)(grad_scale * (exp(log_ps) - pt));
  }
  return kl;
}

void sn_cpu_kl_distill_loss(float *loss, float *dq, float *dd, const float *q, const float *d,
                            const float *teacher, int B, int G, int C, float inv_temp_student,
                            float inv_temp_teacher, float scale) {
  if (G < 1 || G > SN_KL_MAX_CANDIDATES)
    sn_fatal("kl_distill_loss: %d candidates per query (expected 1..%d)", G, SN_KL_MAX_CANDIDATES);
  // per query: its G logits, then gradients, in place; row_kl (B)
  float *grads = sn_cpu_scratch(SN_CPU_SCRATCH_OP, ((size_t)B * G + B) * sizeof(float));
  float *row_kl = grads + (size_t)B * G;
  float grad_scale = scale * inv_temp_student;  // d logit / d (q . d) = inv_temp_student
  size_t work = (size_t)B * G * C;
#pragma omp parallel for schedule(static) if (work >= SN_CPU_PARALLEL_MIN_WORK)
  for (int b = 0; b < B; b++) {
    const float *qb = q + (size_t)b * C, *db = d + (size_t)b * G * C;
    float *g_row = grads + (size_t)b * G;
    for (int g = 0; g < G; g++) {
      double dot = 0.0;
      for (int c = 0; c < C; c++) dot += (double)qb[c] * db[(size_t)g * C + c];
      g_row[g] = (float)dot;
    }
    row_kl[b] = (float)kl_row(g_row, teacher + (size_t)b * G, G, inv_temp_student, inv_temp_teacher,
                              grad_scale);
    // Rows of query b and of its candidates are its own: no two iterations write the same row.
    float *dqb = dq + (size_t)b * C, *ddb = dd + (size_t)b * G * C;
    for (int g = 0; g < G; g++) {
      for (int c = 0; c < C; c++) {
        dqb[c] += g_row[g] * db[(size_t)g * C + c];
        ddb[(size_t)g * C + c] += g_row[g] * qb[c];
      }
    }
  }
  double total = 0.0;
  for (int b = 0; b < B; b++) total += row_kl[b];
  *loss += (float)(scale * total);
}
