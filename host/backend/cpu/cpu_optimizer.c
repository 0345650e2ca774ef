// Gradient sum of squares (for the global norm clip) and the multi-span AdamW step.
#include <math.h>

#include "adamw_math.h"
#include "common.h"
#include "cpu_ops.h"

// Fixed-size chunks whose partial sums are combined in order: the same bits for any thread count.
#define SUM_CHUNK 16384

void sn_cpu_sum_squares(float *out, const void *gradsv, size_t n) {
  const float *g = gradsv;
  size_t nchunks = SN_CEIL_DIV(n, (size_t)SUM_CHUNK);
  if (nchunks == 0) return;
  double *partial = sn_cpu_scratch(SN_CPU_SCRATCH_OP, nchunks * sizeof(double));
#pragma omp parallel for schedule(static) if (n >= SN_CPU_PARALLEL_MIN_WORK)
  for (size_t ch = 0; ch < nchunks; ch++) {
    size_t i0 = ch * SUM_CHUNK, i1 = SN_MIN(n, i0 + SUM_CHUNK);
    double sum = 0.0;
    for (size_t i = i0; i < i1; i++) sum += (double)g[i] * g[i];
    partial[ch] = sum;
  }
  double total = 0.0;
  for (size_t ch = 0; ch < nchunks; ch++) total += partial[ch];
  out[0] += (float)total;
}

// One span [offset, offset + count) with weight decay wd. Called by every thread of the team:
// the loop is shared out without a barrier after it (spans are disjoint).
static void adamw_span(float *params, float *master, const float *grads, float *m, float *v, size_t offset,
                       size_t count, float wd, const sn_adamw_hparams *hp, const sn_adamw_consts *k) {
  int write_params = params != master;  // on the CPU master may be the params buffer itself
#pragma omp for schedule(static) nowait
  for (size_t j = 0; j < count; j++) {
    size_t i = offset + j;
    sn_adamw_elem e = sn_adamw_update(master[i], m[i], v[i], grads[i], wd, *k);
    if (hp->state_bf16) sn_adamw_round_bf16(&e, hp->round_key, hp->index_base + i);
    m[i] = e.m;
    v[i] = e.v;
    master[i] = e.w;
    if (write_params) params[i] = e.w;
  }
}

void sn_cpu_adamw(void *params, float *master, const void *grads, void *m, void *v,
                  const sn_param_span *spans, int nspans, const sn_adamw_hparams *hp) {
  if (hp->step < 1) sn_fatal("adamw: step %lld must be >= 1 (1-based)", (long long)hp->step);
  if (hp->state_bf16 && master && master != params) sn_fatal("adamw: the bf16 state has no master copy");
  if (!master) master = params;  // fp32 storage: the params are their own master copy
  const sn_adamw_consts k = sn_adamw_consts_at(hp->lr, hp->beta1, hp->beta2, hp->eps, hp->grad_scale, hp->step);
  size_t total = 0;
  for (int s = 0; s < nspans; s++) total += spans[s].count;
  // One team for all spans (hundreds of tensors): one join instead of one per tensor.
#pragma omp parallel if (total >= SN_CPU_PARALLEL_MIN_WORK)
  for (int s = 0; s < nspans; s++)
    adamw_span(params, master, grads, m, v, spans[s].offset, spans[s].count, spans[s].weight_decay, hp, &k);
}
