#include "test_model_util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"

#define TEST_PATH_MAX 4096
#define TEST_ERR_MAX 1024

float *sn_test_download(const sn_ops *ops, const void *src, size_t n) {
  float *h = mallocCheck(SN_MAX(n, 1) * sizeof(float));
  ops->download_f32(h, src, n);
  return h;
}

float sn_test_get_elem(const sn_model *m, const void *buf, size_t i) {
  float v;
  m->ops->download_f32(&v, (const char *)buf + i * m->ops->storage_size, 1);
  return v;
}

void sn_test_set_weight(sn_model *m, size_t i, float v) {
  m->ops->upload_f32((char *)m->weights + i * m->ops->storage_size, &v, 1);
}

const sn_ops *sn_test_backend_from_args(int argc, char **argv, const char *program) {
  if (argc < 2) return sn_ops_cpu();
  if (argc > 2 || strcmp(argv[1], "cuda") != 0) {
    fprintf(stderr, "usage: %s [cuda]\n", program);
    exit(2);
  }
  const char *why = NULL;
  const sn_ops *cuda = sn_ops_cuda(&why);
  if (!cuda) sn_test_skip(why ? why : "no CUDA backend");
  return cuda;
}

const sn_ops *sn_test_backend_from_env(void) {
  const char *device = getenv("SN_TEST_DEVICE");
  if (!device || strcmp(device, "cuda") != 0) return sn_ops_cpu();
  const char *why = NULL;
  const sn_ops *cuda = sn_ops_cuda(&why);
  if (!cuda) {
    char msg[256];
    snprintf(msg, sizeof msg, "SN_TEST_DEVICE=cuda but no CUDA backend: %s", why ? why : "unknown");
    sn_test_skip(msg);
  }
  return cuda;
}

void sn_test_require_fixture(const char *path, const char *maker) {
  struct stat st;
  if (stat(path, &st) == 0) return;
  char why[TEST_PATH_MAX + 128];
  snprintf(why, sizeof why, "fixture %s missing (run %s)", path, maker);
  sn_test_skip(why);
}

int sn_test_random_tokens(sn_tokens *tok, const sn_ops *ops, const int *lens, int B, int vocab, sn_test_rng *rng) {
  int32_t *cu = mallocCheck((size_t)(B + 1) * sizeof(int32_t));
  cu[0] = 0;
  for (int b = 0; b < B; b++) cu[b + 1] = cu[b] + lens[b];
  const int T = cu[B];
  int32_t *ids = mallocCheck((size_t)(T ? T : 1) * sizeof(int32_t));
  for (int t = 0; t < T; t++) ids[t] = (int)(sn_test_uniform(rng) * vocab) % vocab;
  sn_tokens_alloc(tok, ops, T, B);
  sn_tokens_upload(tok, ops, ids, cu, B, vocab, "test tokens");
  free(ids), free(cu);
  return T;
}

sn_model_config sn_test_tiny_config(sn_arch arch, int hidden, int heads, int kv_heads, int head_dim, int intermediate,
                                    int max_positions) {
  sn_model_config c;
  memset(&c, 0, sizeof c);
  c.arch = arch;
  c.n_layers = 2;
  c.hidden = hidden;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = head_dim;
  c.intermediate = intermediate;
  c.vocab = 50;
  c.max_positions = max_positions;
  c.type_vocab = 2;
  c.rope_theta = 10000.0f;
  c.norm_eps = 1e-6f;
  c.bos_id = c.eos_id = c.pad_id = -1;
  snprintf(c.hidden_act, sizeof c.hidden_act, "%s", arch == SN_ARCH_BERT ? "gelu" : "silu");
  return c;
}

void sn_test_randomise(sn_model *m, sn_test_rng *rng, float matrix_std, float vector_std) {
  float *w = sn_test_download(m->ops, m->weights, m->num_elements);
  for (int i = 0; i < m->nparams; i++) {
    const sn_param *p = &m->params[i];
    float *x = w + p->offset;
    for (size_t j = 0; j < p->count; j++)
      x[j] = p->ndim == 2 ? matrix_std * sn_test_normal(rng) : x[j] + vector_std * sn_test_normal(rng);
  }
  m->ops->upload_f32(m->weights, w, m->num_elements);
  free(w);
}

void sn_test_load_npy(const char *dir, const char *file, sn_npy_array *a) {
  char path[TEST_PATH_MAX], err[TEST_ERR_MAX];
  if (snprintf(path, sizeof path, "%s/%s", dir, file) >= (int)sizeof path) {
    fprintf(stderr, "FAIL path too long: %s/%s\n", dir, file);
    exit(1);
  }
  if (sn_npy_read(path, a, err, sizeof err) != 0) {
    fprintf(stderr, "FAIL %s\n", err);
    exit(1);
  }
}
