// Model architecture: read from a Hugging Face config.json, or from a small JSON description for
// fresh models, and written back as a config.json that `transformers` loads.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef enum { SN_ARCH_QWEN2 = 0, SN_ARCH_LLAMA = 1, SN_ARCH_BERT = 2 } sn_arch;

typedef struct {
  sn_arch arch;
  int n_layers;
  int hidden;        // C
  int n_heads;       // Hq
  int n_kv_heads;    // Hkv (= Hq for BERT)
  int head_dim;      // D (Llama/Qwen may set it explicitly; else hidden / n_heads)
  int intermediate;  // I
  int vocab;         // V
  int max_positions; // BERT position table size; RoPE models: max_position_embeddings
  int type_vocab;    // BERT token types (type 0 is used)
  float rope_theta;
  float norm_eps;    // rms_norm_eps or layer_norm_eps
  int tie_embeddings;
  int attn_bias;     // q/k/v biases (Qwen2: 1, Llama: attention_bias, BERT: 1)
  int mlp_bias;      // Llama mlp_bias; BERT: 1
  int bos_id, eos_id, pad_id; // -1 when absent
  char hidden_act[16];        // "silu" or "gelu"
} sn_model_config;

// Parses config.json text. `path` is used in messages. Returns 0, or -1 with err naming the file and
// the field and what was expected (missing field, wrong type, out-of-range value, unknown
// model_type/architectures, unsupported option such as rope_scaling or a non-silu activation).
// Never exits: the fuzz target drives it.
int sn_config_parse_hf(sn_model_config *cfg, const char *json, size_t len, const char *path,
                       char *err, size_t errlen);
// Small description for fresh models: {"arch": "qwen2"|"llama"|"bert", "layers", "hidden",
// "heads", "kv_heads"?, "intermediate"?, "vocab", "max_positions"?, "rope_theta"?, "tie"?}.
int sn_config_parse_desc(sn_model_config *cfg, const char *json, size_t len, const char *path,
                         char *err, size_t errlen);
// Loads DIR/config.json (or a description file); exits with status 2 and a clear message on error.
void sn_config_load_hf_dir(sn_model_config *cfg, const char *dir);
// The same for callers that must not exit (the encoder library): 0, or -1 with err.
int sn_config_load_hf_dir_try(sn_model_config *cfg, const char *dir, char *err, size_t errlen);
// config.json text for `transformers` (caller frees).
char *sn_config_to_hf_json(const sn_model_config *cfg);
// A model takes sequences of at most max_positions tokens: the position table of encoders, the
// max_position_embeddings (context it was trained for) of RoPE decoders. Returns 0 when len fits,
// else -1 with "LEN_NAME LEN is more than the N positions of MODEL ..." in err.
int sn_config_check_seq_len(const sn_model_config *cfg, const char *model, int len, const char *len_name,
                            char *err, size_t errlen);
// Number of parameters.
int64_t sn_config_num_params(const sn_model_config *cfg);
const char *sn_arch_name(sn_arch arch);
static inline int sn_arch_is_decoder(sn_arch a) { return a != SN_ARCH_BERT; }
