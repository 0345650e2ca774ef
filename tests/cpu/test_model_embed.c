// sn_model_embed (model.h): inference embeddings in one call, where a decoder pooled at one token a
// sequence runs its last block's o_proj, MLP and final norm on the pooled rows only. Against
// sn_model_forward + sn_model_pool on the same batch:
// - decoders (GQA, biases, a LoRA tower, a projection head), pooling last and cls, normalised and
//   raw, packed sequences of 1 to 23 tokens, and with the small-batch path on (SN_SMALL_BATCH=1);
// - LoRA dropout on (the gradient cache's first pass) is not pruned: its mask is drawn by element;
// - identical bits on the CPU, the bf16 band on CUDA (`test_model_embed cuda`, gpu/test_model_embed_cuda);
// - a counting op table proves the last block ran on B rows (and on T rows where nothing is pruned:
//   mean pooling, BERT, every sequence one token long).
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "lora_config.h"
#include "model.h"
#include "model_lora.h"
#include "test_model_util.h"

#define CUDA_TOL 2e-2  // bf16: the B-row GEMMs may take other cuBLASLt kernels than the T-row ones
#define PROJ_DIM 24
#define LORA_RANK 4
#define LORA_ALPHA 8.0f

static sn_test_rng rng;

// An op table that records the row count of every swiglu_forward / gelu_forward call: the MLP of
// each block, so the last one says how many rows the last block ran on.
static const sn_ops *real_ops;
static int last_mlp_rows;
static void counting_swiglu(void *out, const void *in, int T, int I) {
  last_mlp_rows = T;
  real_ops->swiglu_forward(out, in, T, I);
}
static void counting_gelu(void *out, const void *x, size_t n) {
  last_mlp_rows = -1;  // element count only: BERT is never pruned, which the callers check otherwise
  real_ops->gelu_forward(out, x, n);
}

// out (B, width) host fp32 from the backend's (B, width) fp32.
static float *download_emb(const sn_ops *ops, const float *dev, size_t n) {
  float *host = mallocCheck(n * sizeof(float));
  ops->download(host, dev, n * sizeof(float));
  return host;
}

typedef struct {
  const char *label;
  sn_arch arch;
  int lora, proj;
  float lora_dropout;  // > 0: set on for the forwards, as the gradient cache's first pass has it
  sn_pooling pooling;
  int normalize;
  const char *small_batch;  // SN_SMALL_BATCH
} embed_case;

static void check_case(const sn_ops *backend, const embed_case *ec, const int *lens, int B) {
  sn_ops counting = *backend;
  real_ops = backend;
  counting.swiglu_forward = counting_swiglu;
  counting.gelu_forward = counting_gelu;
  sn_model_config cfg = sn_test_tiny_config(ec->arch, 64, 4, ec->arch == SN_ARCH_BERT ? 4 : 2, 16, 96, 64);
  cfg.attn_bias = 1;
  cfg.mlp_bias = ec->arch != SN_ARCH_QWEN2;
  sn_model *base = sn_model_new(&cfg, &counting, 31 + (uint64_t)ec->arch);
  sn_test_randomise(base, &rng, 0.1f, 0.1f);
  sn_model *m = base;
  sn_lora *lora = NULL;
  if (ec->lora) {
    sn_lora_config lc = {.rank = LORA_RANK, .alpha = LORA_ALPHA, .dropout = ec->lora_dropout};
    char err[256];
    CHECK(sn_lora_targets_parse(SN_LORA_ALL_TARGETS, &lc.targets, err, sizeof err) == 0, "%s", err);
    lora = sn_lora_new(base, &lc, 5, ec->label);
    sn_test_randomise(lora->params, &rng, 0.1f, 0.1f);  // B != 0: the adapters change every linear
    m = sn_lora_tower(base, lora);
  }
  if (ec->proj) m = sn_model_add_projection(m, PROJ_DIM, 9);
  sn_tokens tok;
  const int T = sn_test_random_tokens(&tok, &counting, lens, B, cfg.vocab, &rng), width = sn_model_out_dim(m);
  sn_acts *a = sn_acts_new(m, T, B);
  float *dev = counting.alloc((size_t)B * width * sizeof(float));
  setenv("SN_SMALL_BATCH", ec->small_batch, 1);
  if (ec->lora_dropout > 0) sn_lora_set_dropout(a, 1, 1234);

  sn_model_pool(m, a, &tok, sn_model_forward(m, a, &tok, 0), ec->pooling, ec->normalize, dev);
  const int full_rows = last_mlp_rows;
  float *want = download_emb(backend, dev, (size_t)B * width);
  sn_model_embed(m, a, &tok, ec->pooling, ec->normalize, dev);
  const int embed_rows = last_mlp_rows;
  float *got = download_emb(backend, dev, (size_t)B * width);
  unsetenv("SN_SMALL_BATCH");

  const int small = !strcmp(ec->small_batch, "1") && T <= SN_LINEAR_SMALL_MAX_ROWS && !ec->lora;
  const int prunes =
      ec->arch != SN_ARCH_BERT && ec->pooling != SN_POOL_MEAN && T > B && !small && ec->lora_dropout == 0;
  if (ec->arch != SN_ARCH_BERT && !small) {
    CHECK(full_rows == T, "%s T=%d: forward + pool ran the last MLP on %d rows", ec->label, T, full_rows);
    CHECK(embed_rows == (prunes ? B : T), "%s T=%d B=%d: sn_model_embed ran the last MLP on %d rows (expected %d)",
          ec->label, T, B, embed_rows, prunes ? B : T);
  }
  const size_t n = (size_t)B * width;
  if (!strcmp(backend->name, "cpu")) {
    CHECK(memcmp(got, want, n * sizeof(float)) == 0, "%s T=%d B=%d: embeddings differ from forward + pool (rel %.3g)",
          ec->label, T, B, sn_rel_err(got, want, n));
  } else {
    const double err = sn_rel_err(got, want, n);
    CHECK(err < CUDA_TOL, "%s T=%d B=%d on %s: rel err %.3g against forward + pool", ec->label, T, B, backend->name,
          err);
    printf("%s T=%d B=%d on %s: sn_model_embed vs forward + pool: rel err %.3g\n", ec->label, T, B, backend->name,
           err);
  }
  free(want), free(got);
  counting.free(dev);
  sn_acts_free(a);
  sn_tokens_free(&tok, &counting);
  if (m != base) sn_model_free(m);
  if (lora) sn_lora_free(lora);
  if (!ec->proj || ec->lora) sn_model_free(base);
}

int main(int argc, char **argv) {
  sn_test_rng_seed(&rng, 20261206);
  const sn_ops *backend = sn_test_backend_from_args(argc, argv, "test_model_embed");
  const embed_case cases[] = {
      {"qwen2 last", SN_ARCH_QWEN2, 0, 0, 0, SN_POOL_LAST, 1, "0"},
      {"qwen2 cls, raw", SN_ARCH_QWEN2, 0, 0, 0, SN_POOL_FIRST, 0, "0"},
      {"llama last, projection", SN_ARCH_LLAMA, 0, 1, 0, SN_POOL_LAST, 1, "0"},
      {"qwen2 LoRA last", SN_ARCH_QWEN2, 1, 0, 0, SN_POOL_LAST, 1, "0"},
      {"qwen2 LoRA dropout on (not pruned)", SN_ARCH_QWEN2, 1, 0, 0.3f, SN_POOL_LAST, 1, "0"},
      {"qwen2 last, small-batch path", SN_ARCH_QWEN2, 0, 0, 0, SN_POOL_LAST, 1, "1"},
      {"qwen2 mean (not pruned)", SN_ARCH_QWEN2, 0, 0, 0, SN_POOL_MEAN, 1, "0"},
      {"bert cls (not pruned)", SN_ARCH_BERT, 0, 0, 0, SN_POOL_FIRST, 1, "0"},
  };
  const int some[] = {1, 9, 23, 4, 2}, single[] = {1, 1, 1}, one[] = {17};
  for (size_t i = 0; i < SN_ARRAY_LEN(cases); i++) {
    check_case(backend, &cases[i], some, (int)SN_ARRAY_LEN(some));
    check_case(backend, &cases[i], single, (int)SN_ARRAY_LEN(single));  // T == B: nothing to prune
    check_case(backend, &cases[i], one, 1);
  }
  return sn_test_finish("test_model_embed");
}
