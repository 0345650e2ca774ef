// Gradient caching must give the same gradients as the direct computation: embed the batch without
// activations, take the InfoNCE gradient w.r.t. the embeddings, re-run chunk by chunk and
// backpropagate (sn_embed_batch / sn_backward_batch, what stage 1 runs), against one forward that
// keeps activations. Decoder and encoder towers, several chunk sizes, shared towers.
#include <string.h>

#include "common.h"
#include "test_util.h"
#include "train_internal.h"

#define NQ 6
#define NEG 2
#define ND (NQ * (NEG + 1))
#define MAX_LEN 9

static int random_batch(sn_test_rng *rng, int n, int vocab, int32_t *ids, int32_t *cu) {
  cu[0] = 0;
  for (int i = 0; i < n; i++) {
    int len = 1 + (int)(sn_test_uniform(rng) * MAX_LEN);  // 1-token sequences included
    for (int k = 0; k < len; k++) ids[cu[i] + k] = (int32_t)(sn_test_uniform(rng) * vocab);
    cu[i + 1] = cu[i] + len;
  }
  return cu[n];
}

// One InfoNCE step's gradients into the towers' grads; returns the loss.
static float grads_of(sn_model *qm, sn_model *dm, int grad_cache, int chunk, const int32_t *qids,
                      const int32_t *qcu, const int32_t *dids, const int32_t *dcu, sn_pooling pooling) {
  const sn_ops *ops = qm->ops;
  int C = qm->cfg.hidden;
  sn_tower_runner qr, dr;
  int cq = grad_cache ? chunk : NQ, cd = grad_cache ? chunk : ND;
  sn_runner_init(&qr, qm, pooling, cq, cq * MAX_LEN);
  sn_runner_init(&dr, dm, pooling, cd, cd * MAX_LEN);
  float *q = ops->alloc(NQ * C * sizeof(float)), *d = ops->alloc(ND * C * sizeof(float));
  float *dq = ops->alloc(NQ * C * sizeof(float)), *dd = ops->alloc(ND * C * sizeof(float));
  float *scratch = ops->alloc(ND * C * sizeof(float)), *loss = ops->alloc(sizeof(float));
  int32_t target_host[NQ], *target = ops->alloc(sizeof target_host);
  for (int i = 0; i < NQ; i++) target_host[i] = i * (NEG + 1);
  ops->upload(target, target_host, sizeof target_host);
  sn_model_zero_grads(qm);
  if (dm != qm) sn_model_zero_grads(dm);
  sn_embed_batch(&qr, grad_cache, cq, qids, qcu, NQ, q, "queries");
  sn_embed_batch(&dr, grad_cache, cd, dids, dcu, ND, d, "docs");
  ops->memset_zero(loss, sizeof(float));
  ops->memset_zero(dq, NQ * C * sizeof(float));
  ops->memset_zero(dd, ND * C * sizeof(float));
  ops->contrastive_loss(loss, dq, dd, q, d, target, NQ, ND, C, 20.0f, 1.0f / NQ);
  sn_backward_batch(&qr, grad_cache, cq, qids, qcu, NQ, dq, q, scratch, NULL, "queries");
  sn_backward_batch(&dr, grad_cache, cd, dids, dcu, ND, dd, d, scratch, NULL, "docs");
  float host_loss;
  ops->download(&host_loss, loss, sizeof host_loss);
  void *bufs[] = {q, d, dq, dd, scratch, loss, target};
  for (size_t i = 0; i < SN_ARRAY_LEN(bufs); i++) ops->free(bufs[i]);
  sn_runner_free(&qr);
  sn_runner_free(&dr);
  return host_loss;
}

static float *grads_copy(const sn_model *m) {
  float *g = mallocCheck(m->num_elements * sizeof(float));
  m->ops->download_f32(g, m->grads, m->num_elements);
  return g;
}

static void check_arch(const char *desc, sn_pooling pooling, int shared) {
  const sn_ops *ops = sn_ops_cpu();
  sn_model_config cfg;
  char err[512];
  CHECK(sn_config_parse_desc(&cfg, desc, strlen(desc), "desc", err, sizeof err) == 0, "%s", err);
  sn_model *qm = sn_model_new(&cfg, ops, 11), *dm = shared ? qm : sn_model_new(&cfg, ops, 12);
  sn_model_alloc_grads(qm);
  if (dm != qm) sn_model_alloc_grads(dm);
  sn_test_rng rng;
  sn_test_rng_seed(&rng, 99);
  int32_t qids[NQ * MAX_LEN], qcu[NQ + 1], dids[ND * MAX_LEN], dcu[ND + 1];
  random_batch(&rng, NQ, cfg.vocab, qids, qcu);
  random_batch(&rng, ND, cfg.vocab, dids, dcu);
  float loss_direct = grads_of(qm, dm, 0, 0, qids, qcu, dids, dcu, pooling);
  float *gq = grads_copy(qm), *gd = grads_copy(dm);
  const int chunks[] = {1, 4, NQ + 1};
  for (size_t c = 0; c < SN_ARRAY_LEN(chunks); c++) {
    float loss = grads_of(qm, dm, 1, chunks[c], qids, qcu, dids, dcu, pooling);
    float *hq = grads_copy(qm), *hd = grads_copy(dm);
    double eq = sn_rel_err(hq, gq, qm->num_elements), ed = sn_rel_err(hd, gd, dm->num_elements);
    fprintf(stderr, "%s%s chunk %d: loss %.6f vs %.6f, grad rel err q %.2e d %.2e\n", sn_arch_name(cfg.arch),
            shared ? " (shared)" : "", chunks[c], loss, loss_direct, eq, ed);
    CHECK(fabsf(loss - loss_direct) <= 1e-5f * fabsf(loss_direct), "loss differs");
    CHECK(eq < 1e-5 && ed < 1e-5, "gradients differ");
    free(hq);
    free(hd);
  }
  free(gq);
  free(gd);
  if (dm != qm) sn_model_free(dm);
  sn_model_free(qm);
}

int main(void) {
  check_arch("{\"arch\": \"qwen2\", \"layers\": 2, \"hidden\": 32, \"heads\": 4, \"kv_heads\": 2, "
             "\"intermediate\": 48, \"vocab\": 97}", SN_POOL_LAST, 0);
  check_arch("{\"arch\": \"qwen2\", \"layers\": 1, \"hidden\": 16, \"heads\": 2, \"kv_heads\": 1, "
             "\"intermediate\": 32, \"vocab\": 50}", SN_POOL_MEAN, 1);
  check_arch("{\"arch\": \"bert\", \"layers\": 2, \"hidden\": 24, \"heads\": 3, \"intermediate\": 40, "
             "\"vocab\": 61, \"max_positions\": 16}", SN_POOL_FIRST, 0);
  return sn_test_finish("test_grad_cache");
}
