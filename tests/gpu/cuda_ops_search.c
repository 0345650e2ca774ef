// The evaluation search on the GPU against its CPU twin: fp32 scores, the top-k merge (bit for bit,
// spread, tied and equal scores) and the device search sn_topk_exact against the host's.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "cuda_ops_harness.h"
#include "eval.h"

// ---- exact top-k for evaluation ----------------------------------------------------------------------
void check_scores_f32(int M, int N, int K) {
  char name[160];
  pair A = f32_rand((size_t)M * K, 1.0f), B = f32_rand((size_t)N * K, 1.0f), S = f32_poison((size_t)M * N);
  cpu->scores_f32(S.c, A.c, B.c, M, N, K), gpu->scores_f32(S.g, A.g, B.g, M, N, K);
  snprintf(name, sizeof name, "scores_f32 M=%d N=%d K=%d", M, N, K);
  compare(name, S, SCORES_TOL);
  pair_free(&A), pair_free(&B), pair_free(&S);
}

static const char *score_kind_name[] = {"spread", "tied", "equal"};

static void fill_scores(float *h, size_t n, score_kind kind) {
  static const float tied[8] = {-1.0f, -0.5f, -0.0f, 0.0f, 0.25f, 0.5f, 1.0f, -INFINITY};
  for (size_t i = 0; i < n; i++) {
    if (kind == SCORES_SPREAD) h[i] = 0.5f + 0.1f * sn_test_normal(&rng);
    else if (kind == SCORES_TIED) h[i] = tied[(int)(sn_test_uniform(&rng) * 8) % 8];
    else h[i] = 0.3f;
  }
}

// nblocks blocks of (nq, nd) scores merged into (nq, k) lists on both backends; the lists must be
// identical, indices and score bits (keys are unique, so there is one right answer).
void check_topk_merge(int nq, int nd, int k, int nblocks, score_kind kind, int with_tie_key) {
  char name[160];
  const int N = nd * nblocks;
  int32_t *perm = mallocCheck((size_t)N * sizeof(int32_t));  // tie keys unrelated to the index
  for (int i = 0; i < N; i++) perm[i] = i;
  for (int i = N - 1; i > 0; i--) {
    int j = (int)(sn_test_uniform(&rng) * (i + 1)) % (i + 1), t = perm[i];
    perm[i] = perm[j], perm[j] = t;
  }
  pair tie = i32_new(N, perm);
  int32_t *empty = mallocCheck((size_t)nq * k * sizeof(int32_t));
  for (size_t i = 0; i < (size_t)nq * k; i++) empty[i] = -1;
  pair best_idx = i32_new((size_t)nq * k, empty);
  pair best_score = f32_poison((size_t)nq * k);  // only empty entries: the NaN must never be read
  float *h = mallocCheck((size_t)nq * nd * sizeof(float));
  pair S = f32_poison((size_t)nq * nd);
  for (int b = 0; b < nblocks; b++) {
    fill_scores(h, (size_t)nq * nd, kind);
    cpu->upload(S.c, h, (size_t)nq * nd * 4), gpu->upload(S.g, h, (size_t)nq * nd * 4);
    cpu->topk_merge(best_score.c, best_idx.c, S.c, nq, nd, k, b * nd, with_tie_key ? tie.c : NULL);
    gpu->topk_merge(best_score.g, best_idx.g, S.g, nq, nd, k, b * nd, with_tie_key ? tie.g : NULL);
  }
  size_t n = (size_t)nq * k;
  int32_t *ci = mallocCheck(n * 4), *gi = mallocCheck(n * 4);
  float *cs = mallocCheck(n * 4), *gs = mallocCheck(n * 4);
  cpu->download(ci, best_idx.c, n * 4), gpu->download(gi, best_idx.g, n * 4);
  cpu->download(cs, best_score.c, n * 4), gpu->download(gs, best_score.g, n * 4);
  size_t bad_idx = 0, bad_score = 0;
  for (size_t i = 0; i < n; i++) bad_idx += ci[i] != gi[i], bad_score += memcmp(&cs[i], &gs[i], 4) != 0;
  snprintf(name, sizeof name, "topk_merge nq=%d nd=%d k=%d blocks=%d %s ties by %s", nq, nd, k, nblocks,
           score_kind_name[kind], with_tie_key ? "key" : "index");
  CHECK(bad_idx == 0 && bad_score == 0, "%s: %zu indices, %zu scores of %zu differ", name, bad_idx, bad_score, n);
  if (verbose_rows) {
    printf("%-58s %s\n", name, bad_idx || bad_score ? "FAIL" : "identical");
    fflush(stdout);
  }
  pair_free(&tie), pair_free(&best_idx), pair_free(&best_score), pair_free(&S);
  free(perm), free(empty), free(h), free(ci), free(gi), free(cs), free(gs);
}

// sn_topk_exact on the device against the host search (ops = NULL). quantized: halves and small
// integers with duplicated documents, so every score is exact in any sum order and ties are
// decided by the document ids: lists must be identical. Otherwise cosine-like embeddings: the
// device's SGEMM and the host's dot products may differ in the last bits, so where an index
// differs the rank is accepted only if the host scores of the two documents differ by less than
// SCORES_TOL relative (a swap of near-ties); scores must agree rank by rank within SCORES_TOL.
void check_topk_exact(int N, int Q, int C, int k, int quantized) {
  const int DUP_EVERY = 3;
  float *docs = randn((size_t)N * C, quantized ? 1.0f : 1.0f / sqrtf((float)C));
  float *queries = randn((size_t)Q * C, quantized ? 1.0f : 1.0f / sqrtf((float)C));
  if (quantized) {
    for (size_t i = 0; i < (size_t)N * C; i++) docs[i] = (float)(int)(docs[i] * 2.0f) * 0.5f;
    for (size_t i = 0; i < (size_t)Q * C; i++) queries[i] = (float)(int)(queries[i] * 2.0f) * 0.5f;
    for (int i = DUP_EVERY; i < N; i += DUP_EVERY)
      memcpy(docs + (size_t)i * C, docs + (size_t)(i - DUP_EVERY) * C, sizeof(float) * C);
  }
  char **ids = mallocCheck((size_t)N * sizeof(char *));
  for (int i = 0; i < N; i++) {
    ids[i] = mallocCheck(32);  // random prefix (order unrelated to the index), unique suffix
    snprintf(ids[i], 32, "%06u-%d", (unsigned)(sn_test_uniform(&rng) * 1e6f), i);
  }
  const int kk = SN_MIN(k, N);
  size_t n = (size_t)Q * kk;
  int32_t *gi = mallocCheck(n * 4), *hi = mallocCheck(n * 4);
  float *gs = nan_array(n), *hs = mallocCheck(n * 4);
  for (size_t i = 0; i < n; i++) gi[i] = -7;  // poison
  sn_topk_exact(gpu, docs, N, queries, Q, C, k, (const char *const *)ids, gi, gs);
  sn_topk_exact(NULL, docs, N, queries, Q, C, k, (const char *const *)ids, hi, hs);
  size_t bad_idx = 0, bad_score = 0, swaps = 0, bad_swaps = 0;
  unsigned char *seen = calloc((size_t)N, 1);
  for (int q = 0; q < Q; q++) {
    const float *qv = queries + (size_t)q * C;
    for (int r = 0; r < kk; r++) {
      size_t i = (size_t)q * kk + r;
      if (gi[i] < 0 || gi[i] >= N || seen[gi[i]]) {  // out of range or listed twice
        bad_swaps++;
        continue;
      }
      seen[gi[i]] = 1;
      bad_idx += gi[i] != hi[i];
      if (quantized) bad_score += gs[i] != hs[i];
      else bad_score += !(fabsf(gs[i] - hs[i]) <= SCORES_TOL * fabsf(hs[i]));
      if (gi[i] != hi[i] && !quantized) {
        swaps++;
        float host_of_gpu_doc;  // the host's score of the device's document, as the host computes it
        cpu->scores_f32(&host_of_gpu_doc, qv, docs + (size_t)gi[i] * C, 1, 1, C);
        bad_swaps += !(fabsf(host_of_gpu_doc - hs[i]) <= SCORES_TOL * fabsf(hs[i]));
      }
    }
    for (int r = 0; r < kk; r++)
      if (gi[(size_t)q * kk + r] >= 0 && gi[(size_t)q * kk + r] < N) seen[gi[(size_t)q * kk + r]] = 0;
  }
  char name[160];
  snprintf(name, sizeof name, "sn_topk_exact N=%d Q=%d C=%d k=%d %s", N, Q, C, k, quantized ? "quantized" : "cosine");
  const int ok = bad_swaps == 0 && bad_score == 0 && (!quantized || bad_idx == 0);
  CHECK(ok, "%s: %zu indices differ (%zu not near-ties or invalid), %zu scores off", name, bad_idx, bad_swaps, bad_score);
  if (verbose_rows) {
    printf("%-58s %zu near-tie swaps  %s\n", name, swaps, ok ? "ok" : "FAIL");
    fflush(stdout);
  }
  for (int i = 0; i < N; i++) free(ids[i]);
  free(ids), free(docs), free(queries), free(gi), free(hi), free(gs), free(hs), free(seen);
}
