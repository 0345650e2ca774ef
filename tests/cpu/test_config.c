// Model configs: config.json files as transformers writes them for Qwen2, Llama and BERT models,
// every rejected field (with a message naming the file and the field), round trips through
// sn_config_to_hf_json, the small description format, parameter counts of known models, and
// sn_config_load_hf_dir's exit status on bad input.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common.h"
#include "model_config.h"
#include "test_util.h"

#define ERR_LEN 1024
#define FAKE_PATH "models/x/config.json"

// Qwen2.5-0.5B's config.json (transformers 4.40).
static const char *QWEN2_JSON =
    "{\n"
    "  \"architectures\": [\"Qwen2ForCausalLM\"],\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 151643,\n"
    "  \"eos_token_id\": 151643,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 896,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 4864,\n"
    "  \"max_position_embeddings\": 32768,\n"
    "  \"max_window_layers\": 24,\n"
    "  \"model_type\": \"qwen2\",\n"
    "  \"num_attention_heads\": 14,\n"
    "  \"num_hidden_layers\": 24,\n"
    "  \"num_key_value_heads\": 2,\n"
    "  \"rms_norm_eps\": 1e-06,\n"
    "  \"rope_scaling\": null,\n"
    "  \"rope_theta\": 1000000.0,\n"
    "  \"sliding_window\": 32768,\n"
    "  \"tie_word_embeddings\": true,\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.40.1\",\n"
    "  \"use_cache\": true,\n"
    "  \"use_sliding_window\": false,\n"
    "  \"vocab_size\": 151936\n"
    "}\n";

// TinyLlama-1.1B's config.json (transformers 4.35).
static const char *LLAMA_JSON =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, \"bos_token_id\": 1,\n"
    " \"eos_token_id\": 2, \"hidden_act\": \"silu\", \"hidden_size\": 2048, \"initializer_range\": 0.02,\n"
    " \"intermediate_size\": 5632, \"max_position_embeddings\": 2048, \"model_type\": \"llama\",\n"
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 22, \"num_key_value_heads\": 4,\n"
    " \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, \"rope_scaling\": null, \"rope_theta\": 10000.0,\n"
    " \"tie_word_embeddings\": false, \"torch_dtype\": \"float32\", \"transformers_version\": \"4.35.0\",\n"
    " \"use_cache\": true, \"vocab_size\": 32000}";

// A Llama config as transformers 5 writes it: rope_parameters, dtype, an eos list, explicit head_dim.
static const char *LLAMA_V5_JSON =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": true, \"mlp_bias\": true,\n"
    " \"bos_token_id\": 128000, \"eos_token_id\": [128001, 128008, 128009], \"pad_token_id\": null,\n"
    " \"head_dim\": 64, \"hidden_act\": \"silu\", \"hidden_size\": 2048, \"intermediate_size\": 8192,\n"
    " \"max_position_embeddings\": 131072, \"model_type\": \"llama\", \"num_attention_heads\": 32,\n"
    " \"num_hidden_layers\": 16, \"num_key_value_heads\": 8, \"rms_norm_eps\": 1e-05,\n"
    " \"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"default\"}, \"dtype\": \"bfloat16\",\n"
    " \"tie_word_embeddings\": true, \"transformers_version\": \"5.0.0\", \"vocab_size\": 128256}";

// bert-base-uncased's config.json.
static const char *BERT_JSON =
    "{\"architectures\": [\"BertForMaskedLM\"], \"attention_probs_dropout_prob\": 0.1,\n"
    " \"gradient_checkpointing\": false, \"hidden_act\": \"gelu\", \"hidden_dropout_prob\": 0.1,\n"
    " \"hidden_size\": 768, \"initializer_range\": 0.02, \"intermediate_size\": 3072,\n"
    " \"layer_norm_eps\": 1e-12, \"max_position_embeddings\": 512, \"model_type\": \"bert\",\n"
    " \"num_attention_heads\": 12, \"num_hidden_layers\": 12, \"pad_token_id\": 0,\n"
    " \"position_embedding_type\": \"absolute\", \"transformers_version\": \"4.6.0.dev0\",\n"
    " \"type_vocab_size\": 2, \"use_cache\": true, \"vocab_size\": 30522}";

// No model_type: the architecture comes from architectures[0].
static const char *ARCHS_ONLY_JSON =
    "{\"architectures\": [\"Qwen2Model\"], \"hidden_size\": 64, \"intermediate_size\": 128,\n"
    " \"num_attention_heads\": 4, \"num_hidden_layers\": 2, \"vocab_size\": 100}";

static int parse_hf(sn_model_config *cfg, const char *json, char *err) {
  return sn_config_parse_hf(cfg, json, strlen(json), FAKE_PATH, err, ERR_LEN);
}

static int parse_desc(sn_model_config *cfg, const char *json, char *err) {
  return sn_config_parse_desc(cfg, json, strlen(json), "desc.json", err, ERR_LEN);
}

static int configs_equal(const sn_model_config *a, const sn_model_config *b) {
  return a->arch == b->arch && a->n_layers == b->n_layers && a->hidden == b->hidden && a->n_heads == b->n_heads &&
         a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim && a->intermediate == b->intermediate &&
         a->vocab == b->vocab && a->max_positions == b->max_positions && a->type_vocab == b->type_vocab &&
         a->rope_theta == b->rope_theta && a->norm_eps == b->norm_eps && a->tie_embeddings == b->tie_embeddings &&
         a->attn_bias == b->attn_bias && a->mlp_bias == b->mlp_bias && a->bos_id == b->bos_id &&
         a->eos_id == b->eos_id && a->pad_id == b->pad_id && strcmp(a->hidden_act, b->hidden_act) == 0;
}

// to_hf_json → parse gives the same config, and the JSON has what transformers needs.
static void check_round_trip(const sn_model_config *cfg, const char *what) {
  char *json = sn_config_to_hf_json(cfg);
  sn_model_config back;
  char err[ERR_LEN] = "";
  int rc = parse_hf(&back, json, err);
  CHECK(rc == 0, "%s: written config does not parse: %s\n%s", what, err, json);
  CHECK(rc != 0 || configs_equal(cfg, &back), "%s: round trip changed the config:\n%s", what, json);
  static const char *const base_model[] = {"\"Qwen2Model\"", "\"LlamaModel\"", "\"BertModel\""};
  CHECK(strstr(json, base_model[cfg->arch]) != NULL, "%s: architectures missing", what);
  CHECK(strstr(json, "\"torch_dtype\"") && strstr(json, "\"model_type\""), "%s: torch_dtype/model_type missing", what);
  if (cfg->arch == SN_ARCH_QWEN2) CHECK(strstr(json, "\"use_sliding_window\":\tfalse") != NULL, "%s: sliding", what);
  if (cfg->arch == SN_ARCH_BERT) CHECK(strstr(json, "\"absolute\"") != NULL, "%s: position_embedding_type", what);
  if (cfg->arch == SN_ARCH_LLAMA) CHECK(strstr(json, "\"mlp_bias\"") != NULL, "%s: mlp_bias", what);
  free(json);
}

static void test_real_configs(void) {
  sn_model_config c;
  char err[ERR_LEN] = "";
  CHECK(parse_hf(&c, QWEN2_JSON, err) == 0, "qwen2: %s", err);
  CHECK(c.arch == SN_ARCH_QWEN2 && c.n_layers == 24 && c.hidden == 896 && c.n_heads == 14 && c.n_kv_heads == 2 &&
            c.head_dim == 64 && c.intermediate == 4864 && c.vocab == 151936 && c.max_positions == 32768,
        "qwen2 sizes");
  CHECK(c.rope_theta == 1e6f && c.norm_eps == 1e-6f && c.tie_embeddings == 1 && c.attn_bias == 1 && c.mlp_bias == 0,
        "qwen2 options");
  CHECK(c.bos_id == 151643 && c.eos_id == 151643 && c.pad_id == -1 && strcmp(c.hidden_act, "silu") == 0, "qwen2 ids");
  CHECK(sn_config_num_params(&c) == 494032768LL, "Qwen2.5-0.5B has 494032768 parameters, got %lld",
        (long long)sn_config_num_params(&c));
  check_round_trip(&c, "qwen2");

  CHECK(parse_hf(&c, LLAMA_JSON, err) == 0, "llama: %s", err);
  CHECK(c.arch == SN_ARCH_LLAMA && c.n_layers == 22 && c.hidden == 2048 && c.n_heads == 32 && c.n_kv_heads == 4 &&
            c.head_dim == 64 && c.intermediate == 5632 && c.vocab == 32000 && c.max_positions == 2048,
        "llama sizes");
  CHECK(c.rope_theta == 1e4f && c.norm_eps == 1e-5f && c.tie_embeddings == 0 && c.attn_bias == 0 && c.mlp_bias == 0 &&
            c.bos_id == 1 && c.eos_id == 2 && c.pad_id == -1,
        "llama options");
  // TinyLlama: 1100048384 parameters with its 32000 x 2048 LM head; the base model has none.
  CHECK(sn_config_num_params(&c) == 1100048384LL - 32000LL * 2048, "TinyLlama base parameters, got %lld",
        (long long)sn_config_num_params(&c));
  check_round_trip(&c, "llama");

  CHECK(parse_hf(&c, LLAMA_V5_JSON, err) == 0, "llama v5: %s", err);
  CHECK(c.rope_theta == 5e5f && c.head_dim == 64 && c.eos_id == 128001 && c.pad_id == -1 && c.bos_id == 128000 &&
            c.attn_bias == 1 && c.mlp_bias == 1 && c.max_positions == 131072 && c.tie_embeddings == 1,
        "llama v5 fields");
  check_round_trip(&c, "llama v5");

  CHECK(parse_hf(&c, BERT_JSON, err) == 0, "bert: %s", err);
  CHECK(c.arch == SN_ARCH_BERT && c.n_layers == 12 && c.hidden == 768 && c.n_heads == 12 && c.n_kv_heads == 12 &&
            c.head_dim == 64 && c.intermediate == 3072 && c.vocab == 30522 && c.max_positions == 512 &&
            c.type_vocab == 2,
        "bert sizes");
  CHECK(c.norm_eps == 1e-12f && c.attn_bias == 1 && c.mlp_bias == 1 && c.pad_id == 0 &&
            strcmp(c.hidden_act, "gelu") == 0,
        "bert options");
  // bert-base-uncased's BertModel: 109482240 parameters, of which the pooler is 768 x 768 + 768.
  CHECK(sn_config_num_params(&c) == 109482240LL - (768LL * 768 + 768), "bert-base parameters, got %lld",
        (long long)sn_config_num_params(&c));
  check_round_trip(&c, "bert");

  CHECK(parse_hf(&c, ARCHS_ONLY_JSON, err) == 0, "architectures only: %s", err);
  CHECK(c.arch == SN_ARCH_QWEN2 && c.n_kv_heads == 4 && c.head_dim == 16 && c.rope_theta == 10000.0f &&
            c.tie_embeddings == 0 && c.max_positions == 32768,
        "defaults from architectures[0]");
  check_round_trip(&c, "architectures only");
}

// Replaces the first occurrence of `from` in the text with `to`.
static char *edited(const char *text, const char *from, const char *to) {
  const char *at = strstr(text, from);
  if (!at) {
    fprintf(stderr, "test bug: '%s' not in the base config\n", from);
    exit(1);
  }
  size_t n = strlen(text) - strlen(from) + strlen(to) + 1;
  char *out = malloc(n);
  snprintf(out, n, "%.*s%s%s", (int)(at - text), text, to, at + strlen(from));
  return out;
}

// The edited config must be rejected with a message naming the file and `field`.
static void expect_bad_hf(const char *base, const char *from, const char *to, const char *field) {
  char *json = edited(base, from, to);
  sn_model_config c;
  char err[ERR_LEN] = "";
  int rc = parse_hf(&c, json, err);
  CHECK(rc == -1, "accepted a config with %s -> %s", from, to);
  CHECK(strstr(err, FAKE_PATH) && strstr(err, field), "%s -> %s: message lacks the file or '%s': %s", from, to, field,
        err);
  free(json);
}

static void test_bad_configs(void) {
  sn_model_config c;
  char err[ERR_LEN] = "";
  // truncated at every length: never accepted, never crashes, always names the file
  size_t n = strlen(QWEN2_JSON);
  for (size_t len = 0; len + 3 < n; len++) {
    int rc = sn_config_parse_hf(&c, QWEN2_JSON, len, FAKE_PATH, err, sizeof err);
    CHECK(rc == -1 && strstr(err, FAKE_PATH), "truncated to %zu bytes: rc %d, %s", len, rc, err);
  }
  CHECK(parse_hf(&c, "[1, 2]", err) == -1 && strstr(err, "object"), "array: %s", err);
  CHECK(parse_hf(&c, "{\"hidden_size\": 8}", err) == -1 && strstr(err, "model_type"), "no arch: %s", err);

  const char *Q = QWEN2_JSON, *B = BERT_JSON, *L = LLAMA_JSON;
  expect_bad_hf(Q, "\"hidden_size\": 896", "\"hidden_size\": \"896\"", "\"hidden_size\" is a string");
  expect_bad_hf(Q, "\"hidden_size\": 896", "\"hidden_size\": 896.5", "hidden_size");
  expect_bad_hf(Q, "\"hidden_size\": 896", "\"hidden_size\": -896", "hidden_size");
  expect_bad_hf(Q, "\"hidden_size\": 896", "\"hidden_size\": 1e300", "hidden_size");
  expect_bad_hf(Q, "\"hidden_size\": 896", "\"hidden_sizes\": 896", "missing required field \"hidden_size\"");
  expect_bad_hf(Q, "\"num_hidden_layers\": 24", "\"num_hidden_layers\": 0", "num_hidden_layers");
  expect_bad_hf(Q, "\"vocab_size\": 151936", "\"vocab\": 151936", "vocab_size");
  expect_bad_hf(Q, "\"num_attention_heads\": 14", "\"num_attention_heads\": 10", "num_attention_heads");
  expect_bad_hf(Q, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", "num_key_value_heads");
  expect_bad_hf(Q, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": [2]", "num_key_value_heads");
  expect_bad_hf(Q, "\"intermediate_size\": 4864", "\"intermediate_size\": true", "intermediate_size");
  expect_bad_hf(Q, "\"model_type\": \"qwen2\"", "\"model_type\": \"mamba\"", "\"mamba\"");
  expect_bad_hf(Q, "\"model_type\": \"qwen2\"", "\"model_type\": \"qwen3\"", "qwen2, llama, bert");
  expect_bad_hf(Q, "\"model_type\": \"qwen2\"", "\"model_type\": 2", "model_type");
  expect_bad_hf(ARCHS_ONLY_JSON, "\"Qwen2Model\"", "\"GPT2LMHeadModel\"", "GPT2LMHeadModel");
  expect_bad_hf(ARCHS_ONLY_JSON, "[\"Qwen2Model\"]", "[]", "architectures");
  expect_bad_hf(Q, "\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"yarn\", \"factor\": 4.0}", "rope_scaling");
  expect_bad_hf(Q, "\"rope_theta\": 1000000.0", "\"rope_theta\": -1", "rope_theta");
  expect_bad_hf(Q, "\"rope_theta\": 1000000.0", "\"rope_parameters\": {\"rope_type\": \"yarn\"}",
                "rope_parameters.rope_type");
  expect_bad_hf(Q, "\"rope_theta\": 1000000.0", "\"rope_parameters\": {\"rope_theta\": \"big\"}",
                "rope_parameters.rope_theta");
  expect_bad_hf(Q, "\"rms_norm_eps\": 1e-06", "\"rms_norm_eps\": 0", "rms_norm_eps");
  expect_bad_hf(Q, "\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu_pytorch_tanh\"", "hidden_act");
  expect_bad_hf(Q, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": \"yes\"", "tie_word_embeddings");
  expect_bad_hf(Q, "\"use_sliding_window\": false", "\"use_sliding_window\": true", "use_sliding_window");
  expect_bad_hf(Q, "\"eos_token_id\": 151643", "\"eos_token_id\": \"</s>\"", "eos_token_id");
  expect_bad_hf(Q, "\"eos_token_id\": 151643", "\"eos_token_id\": [-5]", "eos_token_id");
  expect_bad_hf(Q, "\"bos_token_id\": 151643", "\"bos_token_id\": 1.5", "bos_token_id");
  expect_bad_hf(L, "\"attention_bias\": false", "\"attention_bias\": 0", "attention_bias");
  expect_bad_hf(L, "\"num_key_value_heads\": 4", "\"head_dim\": 63, \"num_key_value_heads\": 4", "even");
  expect_bad_hf(B, "\"hidden_act\": \"gelu\"", "\"hidden_act\": \"relu\"", "hidden_act");
  expect_bad_hf(B, "\"hidden_act\": \"gelu\"", "\"hidden_act\": \"silu\"", "expected \"gelu\"");
  expect_bad_hf(B, "\"type_vocab_size\": 2", "\"type_vocab_size\": 0", "type_vocab_size");
  expect_bad_hf(B, "\"absolute\"", "\"relative_key\"", "position_embedding_type");
  expect_bad_hf(B, "\"layer_norm_eps\": 1e-12", "\"layer_norm_eps\": null, \"x\": [", "not valid JSON");

  // Accepted variations: null fields take their defaults; "swish" is SiLU; a pad id of -1 is absent.
  char *json = edited(Q, "\"num_key_value_heads\": 2", "\"num_key_value_heads\": null, \"pad_token_id\": -1");
  CHECK(parse_hf(&c, json, err) == 0 && c.n_kv_heads == 14 && c.pad_id == -1, "null kv heads: %s", err);
  free(json);
  json = edited(Q, "\"model_type\": \"qwen2\",", "");
  CHECK(parse_hf(&c, json, err) == 0 && c.arch == SN_ARCH_QWEN2, "architectures[0] without model_type: %s", err);
  free(json);
  json = edited(Q, "\"silu\"", "\"swish\"");
  CHECK(parse_hf(&c, json, err) == 0 && strcmp(c.hidden_act, "silu") == 0, "swish: %s", err);
  free(json);
  json = edited(Q, "\"eos_token_id\": 151643", "\"eos_token_id\": []");
  CHECK(parse_hf(&c, json, err) == 0 && c.eos_id == -1, "empty eos list: %s", err);
  free(json);
}

static void test_desc(void) {
  sn_model_config c;
  char err[ERR_LEN] = "";
  CHECK(parse_desc(&c, "{\"arch\": \"qwen2\", \"layers\": 2, \"hidden\": 64, \"heads\": 4, \"kv_heads\": 2,"
                       " \"vocab\": 1000}", err) == 0, "qwen2 desc: %s", err);
  CHECK(c.arch == SN_ARCH_QWEN2 && c.n_layers == 2 && c.hidden == 64 && c.n_heads == 4 && c.n_kv_heads == 2 &&
            c.head_dim == 16 && c.vocab == 1000,
        "qwen2 desc sizes");
  CHECK(c.intermediate == 192, "SwiGLU default 8/3 x 64 rounded up to 64 = 192, got %d", c.intermediate);
  CHECK(c.max_positions == 512 && c.rope_theta == 10000.0f && c.tie_embeddings == 1 && c.attn_bias == 1 &&
            c.mlp_bias == 0 && c.bos_id == -1 && strcmp(c.hidden_act, "silu") == 0,
        "qwen2 desc defaults");
  check_round_trip(&c, "qwen2 desc");

  CHECK(parse_desc(&c, "{\"arch\": \"llama\", \"layers\": 1, \"hidden\": 96, \"heads\": 3, \"head_dim\": 48,"
                       " \"intermediate\": 200, \"vocab\": 50, \"max_positions\": 128, \"rope_theta\": 500000,"
                       " \"tie\": false}", err) == 0, "llama desc: %s", err);
  CHECK(c.arch == SN_ARCH_LLAMA && c.head_dim == 48 && c.n_kv_heads == 3 && c.intermediate == 200 &&
            c.max_positions == 128 && c.rope_theta == 5e5f && c.tie_embeddings == 0 && c.attn_bias == 0,
        "llama desc fields");
  check_round_trip(&c, "llama desc");

  CHECK(parse_desc(&c, "{\"arch\": \"bert\", \"layers\": 4, \"hidden\": 128, \"heads\": 2, \"vocab\": 30522}", err) == 0,
        "bert desc: %s", err);
  CHECK(c.arch == SN_ARCH_BERT && c.intermediate == 512 && c.type_vocab == 2 && c.norm_eps == 1e-12f &&
            c.attn_bias == 1 && c.mlp_bias == 1 && strcmp(c.hidden_act, "gelu") == 0 && c.head_dim == 64,
        "bert desc defaults");
  check_round_trip(&c, "bert desc");

  struct { const char *json, *want; } bad[] = {
      {"{\"arch\": \"qwen2\", \"layers\": 2, \"hiden\": 64, \"heads\": 4, \"vocab\": 10}", "\"hiden\""},
      {"{\"arch\": \"qwen2\", \"layers\": 2, \"hidden\": 64, \"heads\": 4}", "\"vocab\""},
      {"{\"arch\": \"gpt2\", \"layers\": 2, \"hidden\": 64, \"heads\": 4, \"vocab\": 10}", "\"gpt2\""},
      {"{\"layers\": 2, \"hidden\": 64, \"heads\": 4, \"vocab\": 10}", "\"arch\""},
      {"{\"arch\": \"llama\", \"layers\": 2, \"hidden\": 64, \"heads\": 5, \"vocab\": 10}", "\"heads\""},
      {"{\"arch\": \"llama\", \"layers\": 2, \"hidden\": 64, \"heads\": 4, \"kv_heads\": 3, \"vocab\": 10}", "kv_heads"},
      {"{\"arch\": \"bert\", \"layers\": 2, \"hidden\": 64, \"heads\": 4, \"kv_heads\": 2, \"vocab\": 10}", "kv_heads"},
      {"{\"arch\": \"llama\", \"layers\": -1, \"hidden\": 64, \"heads\": 4, \"vocab\": 10}", "\"layers\""},
      {"{\"arch\": \"llama\", \"layers\": 2, \"hidden\": 64, \"heads\": 4, \"vocab\": 10, \"tie\": 1}", "\"tie\""},
      {"{\"arch\": \"llama\", \"layers\": 2, \"hidden\": 64, \"heads\": 4, \"vocab\": 10, \"rope_theta\": \"x\"}",
       "rope_theta"},
      {"{\"arch\": \"llama\", \"layers\": 2, \"hidden\": 64, \"heads\": 4, \"vocab\": 10", "not valid JSON"},
  };
  for (size_t i = 0; i < SN_ARRAY_LEN(bad); i++) {
    int rc = parse_desc(&c, bad[i].json, err);
    CHECK(rc == -1 && strstr(err, "desc.json") && strstr(err, bad[i].want), "desc case %zu: rc %d, %s", i, rc, err);
  }
}

// sn_config_load_hf_dir reads DIR/config.json or a .json path and exits 2 on bad input.
static int load_in_child(const char *path) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    freopen("/dev/null", "w", stderr);
    sn_model_config c;
    sn_config_load_hf_dir(&c, path);
    _exit(c.hidden == 896 ? 0 : 3);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

static void test_load_dir(void) {
  char dir[] = "/tmp/sn_test_config_XXXXXX", path[256];
  if (!mkdtemp(dir)) {
    CHECK(0, "mkdtemp");
    return;
  }
  snprintf(path, sizeof path, "%s/config.json", dir);
  write_text(path, QWEN2_JSON);
  CHECK(load_in_child(dir) == 0, "load folder");
  CHECK(load_in_child(path) == 0, "load config.json path");
  sn_model_config c;
  sn_config_load_hf_dir(&c, dir);
  CHECK(c.arch == SN_ARCH_QWEN2 && c.n_layers == 24, "load in process");
  write_text(path, "{\"arch\": \"qwen2\", \"layers\": 1, \"hidden\": 896, \"heads\": 14, \"vocab\": 10}");
  CHECK(load_in_child(path) == 0, "load a description file");
  write_text(path, "{\"model_type\": \"qwen2\", \"hidden_size\": ");
  CHECK(load_in_child(dir) == SN_EXIT_BAD_INPUT, "truncated config.json must exit 2");
  unlink(path);
  CHECK(load_in_child(dir) == SN_EXIT_BAD_INPUT, "missing config.json must exit 2");
  rmdir(dir);
}

int main(void) {
  test_real_configs();
  test_bad_configs();
  test_desc();
  test_load_dir();
  return sn_test_finish("test_config");
}
