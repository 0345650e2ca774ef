// The memory plan's arithmetic against a hand count for a tiny decoder (2 layers, C 32, 2 query
// heads and 1 key/value head of 16, I 64, vocabulary 100, tied embeddings) on the CPU backend
// (fp32, so 4 bytes an element): parameter count, the stage-1 weights, gradients and moments of two
// towers, the activation bytes of a T-token batch with and without recomputation and for inference,
// and the encode batch and (on a device backend) the search buffers a mining round adds to stage 1;
// the master and moments of the fp32 and bf16 optimizer states on fp32 and bf16 storage.
#include <string.h>

#include "model.h"
#include "ops.h"
#include "run_config.h"
#include "test_util.h"
#include "train_plan.h"

#define DESC "{\"arch\": \"qwen2\", \"layers\": 2, \"hidden\": 32, \"heads\": 2, \"kv_heads\": 1, " \
             "\"intermediate\": 64, \"vocab\": 100, \"tie\": true}"
enum { L = 2, C = 32, HQ = 2, HKV = 1, D = 16, I = 64, V = 100, QKV = (HQ + 2 * HKV) * D, ATT = HQ * D };
enum { BQ = 4, NEG = 1, LEN_Q = 8, LEN_D = 16 };

// Parameters: embeddings, per layer the two norms, fused qkv (+ bias), o_proj, gate|up, down, and
// the final norm.
static size_t hand_params(void) {
  size_t layer = C + (size_t)QKV * C + QKV + (size_t)C * ATT + C + (size_t)2 * I * C + (size_t)C * I;
  return (size_t)V * C + L * layer + C;
}

// One layer's activation slot (fp32) for T tokens.
static size_t hand_slot(int T) { return (size_t)T * (C + 1 + QKV + ATT + HQ + C + C + 1 + 2 * I + I) * 4; }

// Activation bytes (fp32) of sn_acts for T tokens and S sequences, inference only: one layer slot,
// the hidden state, projection and output rows, the final norm's statistics, the pooled rows.
static size_t hand_infer_acts(int T, int S) {
  const size_t f = 4;
  return hand_slot(T) + 3 * (size_t)T * C * f + (size_t)T * f + (size_t)S * C * f + (size_t)S * f;
}

// The same kept for backward, with the pooled last block's rows (the attention output and its
// gradient, the block input and the residual gradient: S rows each).
static size_t hand_acts(int T, int S, int recompute) {
  const size_t f = 4;
  size_t slot = hand_slot(T);
  size_t base = hand_infer_acts(T, S);
  size_t backward = (recompute ? 0 : (L - 1) * slot) + (size_t)L * T * C * f + 2 * (size_t)T * C * f +
                    (size_t)T * (QKV > 2 * I ? QKV : 2 * I) * f + (size_t)T * (ATT > I ? ATT : I) * f +
                    (size_t)S * C * f;
  size_t pooled_rows = 2 * (size_t)S * ATT * f + 2 * (size_t)S * C * f;
  return base + backward + pooled_rows;
}

static size_t item(const sn_plan_phase *ph, const char *what) {
  for (int i = 0; i < ph->n; i++)
    if (strcmp(ph->items[i].what, what) == 0) return ph->items[i].bytes;
  return 0;
}

int main(void) {
  const sn_ops *ops = sn_ops_cpu();
  sn_model_config mc;
  char err[1024];
  CHECK(sn_config_parse_desc(&mc, DESC, strlen(DESC), "test", err, sizeof err) == 0, "%s", err);
  sn_model *m = sn_model_plan(&mc, ops, 0);
  CHECK(m->num_elements == hand_params(), "parameters: plan %zu, hand %zu", m->num_elements, hand_params());
  for (int rc = 0; rc <= 1; rc++) {
    size_t plan = sn_model_plan_acts_bytes(m, 40, 3, 1, rc ? SN_RECOMPUTE_LAYER : SN_RECOMPUTE_NONE);
    CHECK(plan == hand_acts(40, 3, rc), "activations (recompute %d): plan %zu, hand %zu", rc, plan,
          hand_acts(40, 3, rc));
  }

  size_t infer = sn_model_plan_acts_bytes(m, 40, 3, 0, SN_RECOMPUTE_NONE);
  CHECK(infer == hand_infer_acts(40, 3), "inference activations: plan %zu, hand %zu", infer, hand_infer_acts(40, 3));

  sn_run_config cfg;
  sn_run_config_defaults(&cfg);
  snprintf(cfg.stage1.model_desc, sizeof cfg.stage1.model_desc, "%s", DESC);
  cfg.stage1.batch_queries = BQ;
  cfg.stage1.negatives_per_query = NEG;
  cfg.data.max_query_len = LEN_Q;
  cfg.data.max_doc_len = LEN_D;
  sn_memory_plan p;
  sn_memory_plan_build(&p, &cfg, ops, 1, 0, 1, 0);
  CHECK(p.n == 1, "phases: %d", p.n);
  const sn_plan_phase *s1 = &p.phases[0];
  const size_t N = hand_params(), f = 4;
  CHECK(item(s1, "weights") == 2 * N * f, "weights %zu, hand %zu", item(s1, "weights"), 2 * N * f);
  CHECK(item(s1, "gradients") == 2 * N * f, "gradients %zu", item(s1, "gradients"));
  CHECK(item(s1, "master weights") == 0, "fp32 storage needs no master copy: %zu", item(s1, "master weights"));
  CHECK(item(s1, "Adam moments") == 2 * (2 * N + 1) * f, "moments %zu, hand %zu", item(s1, "Adam moments"),
        2 * (2 * N + 1) * f);
  // each tower's runner: activations + token buffers (ids, pos, cu_seqlens) + dhidden
  const int Nd = BQ * (NEG + 1);
  size_t runners = hand_acts(BQ * LEN_Q, BQ, 0) + (2 * BQ * LEN_Q + BQ + 1) * 4 + (size_t)BQ * LEN_Q * C * f +
                   hand_acts(Nd * LEN_D, Nd, 0) + (2 * Nd * LEN_D + Nd + 1) * 4 + (size_t)Nd * LEN_D * C * f;
  CHECK(item(s1, "activations") == runners, "activations %zu, hand %zu", item(s1, "activations"), runners);
  const size_t s1_total = s1->total;
  CHECK(item(s1, "mining embedder") == 0, "no mining rounds, yet %zu planned for them", item(s1, "mining embedder"));
  // Mining rounds embed with an encode batch (eval.batch) of the longer length while training buffers
  // stay: its workspace, token buffers (ids, pos, cu_seqlens) and pooled fp32 rows.
  cfg.stage1.mine.rounds = 2;
  cfg.eval.batch = 3;
  sn_memory_plan_build(&p, &cfg, ops, 1, 0, 1, 0);
  const int mine_tokens = 3 * LEN_D;
  const size_t mining = hand_infer_acts(mine_tokens, 3) + (2 * mine_tokens + 3 + 1) * 4 + (size_t)3 * C * f;
  CHECK(item(&p.phases[0], "mining embedder") == mining, "mining embedder %zu, hand %zu",
        item(&p.phases[0], "mining embedder"), mining);
  CHECK(p.phases[0].total == s1_total + mining, "stage 1 with mining %zu, without %zu + %zu", p.phases[0].total,
        s1_total, mining);
  CHECK(item(&p.phases[0], "mining search") == 0, "the CPU searches in host memory, yet %zu planned",
        item(&p.phases[0], "mining search"));
  // A device backend also holds the exact search's buffers (host/eval/eval_search.c), at most: a slice
  // of 32768 queries, 64 MiB of running lists, a block of 16384 documents, a 1024 x 16384 score block.
  sn_ops device = *ops;
  device.name = "device";
  sn_memory_plan_build(&p, &cfg, &device, 1, 0, 1, 0);
  const size_t search = (size_t)32768 * C * 4 + ((size_t)64 << 20) + (size_t)16384 * C * 4 + (size_t)1024 * 16384 * 4;
  CHECK(item(&p.phases[0], "mining search") == search, "mining search %zu, hand %zu",
        item(&p.phases[0], "mining search"), search);
  cfg.stage1.mine.rounds = 0;
  // ZeRO-1 on 4 ranks: moments and master are a quarter (rounded up), plus the exchange buffers
  cfg.dist.zero = 1, cfg.dist.zero1 = 1;
  sn_memory_plan_build(&p, &cfg, ops, 4, 0, 1, 0);
  const size_t shard = (N + 3) / 4;
  CHECK(item(&p.phases[0], "Adam moments") == 2 * (2 * shard + 1) * f, "ZeRO-1 moments %zu",
        item(&p.phases[0], "Adam moments"));
  CHECK(item(&p.phases[0], "master weights") == 2 * shard * f, "ZeRO-1 master %zu", item(&p.phases[0], "master weights"));
  CHECK(item(&p.phases[0], "ZeRO exchange") == 2 * 5 * shard * f, "ZeRO-1 exchange %zu",
        item(&p.phases[0], "ZeRO exchange"));
  // The bf16 optimizer state: no master copy, sharded or not; m and v in the storage dtype (4 bytes
  // on the CPU's fp32 storage, 2 on a bf16 backend), beside the one-float norm scratch.
  snprintf(cfg.stage1.optim.state_dtype, sizeof cfg.stage1.optim.state_dtype, "bf16");
  sn_memory_plan_build(&p, &cfg, ops, 4, 0, 1, 0);
  CHECK(item(&p.phases[0], "master weights") == 0, "bf16 state: master %zu", item(&p.phases[0], "master weights"));
  CHECK(item(&p.phases[0], "Adam moments") == 2 * (2 * shard * f + 4), "bf16 state moments %zu on fp32 storage",
        item(&p.phases[0], "Adam moments"));
  sn_ops bf16_device = *ops;
  bf16_device.storage = SN_DTYPE_BF16, bf16_device.storage_size = 2;
  sn_memory_plan_build(&p, &cfg, &bf16_device, 4, 0, 1, 0);
  CHECK(item(&p.phases[0], "Adam moments") == 2 * (2 * shard * 2 + 4), "bf16 state moments %zu on bf16 storage",
        item(&p.phases[0], "Adam moments"));
  CHECK(item(&p.phases[0], "master weights") == 0, "bf16 state on bf16 storage: master %zu",
        item(&p.phases[0], "master weights"));
  // The fp32 state on bf16 storage keeps an fp32 master even on one rank.
  snprintf(cfg.stage1.optim.state_dtype, sizeof cfg.stage1.optim.state_dtype, "fp32");
  cfg.dist.zero = 0, cfg.dist.zero1 = 0;
  sn_memory_plan_build(&p, &cfg, &bf16_device, 1, 0, 1, 0);
  CHECK(item(&p.phases[0], "master weights") == 2 * N * f, "fp32 state on bf16 storage: master %zu, hand %zu",
        item(&p.phases[0], "master weights"), 2 * N * f);
  sn_model_free(m);
  return sn_test_finish("test_memory_plan_count");
}
