// libFuzzer target: arbitrary bytes as a config.json and as a model description. Whatever parses
// must survive the round trip through sn_config_to_hf_json unchanged, and its parameter count must
// be positive; nothing may crash or leak.
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "model_config.h"

#define ERR_LEN 512

static int same_config(const sn_model_config *a, const sn_model_config *b) {
  return a->arch == b->arch && a->n_layers == b->n_layers && a->hidden == b->hidden && a->n_heads == b->n_heads &&
         a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim && a->intermediate == b->intermediate &&
         a->vocab == b->vocab && a->max_positions == b->max_positions && a->type_vocab == b->type_vocab &&
         a->rope_theta == b->rope_theta && a->norm_eps == b->norm_eps && a->tie_embeddings == b->tie_embeddings &&
         a->attn_bias == b->attn_bias && a->mlp_bias == b->mlp_bias && a->bos_id == b->bos_id &&
         a->eos_id == b->eos_id && a->pad_id == b->pad_id && strcmp(a->hidden_act, b->hidden_act) == 0;
}

static void check_round_trip(const sn_model_config *cfg) {
  if (sn_config_num_params(cfg) <= 0) abort();
  char *json = sn_config_to_hf_json(cfg);
  sn_model_config back;
  char err[ERR_LEN];
  if (sn_config_parse_hf(&back, json, strlen(json), "round-trip", err, sizeof err) != 0 || !same_config(cfg, &back))
    abort();
  free(json);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sn_model_config cfg;
  char err[ERR_LEN];
  if (sn_config_parse_hf(&cfg, (const char *)data, size, "fuzz.json", err, sizeof err) == 0) check_round_trip(&cfg);
  if (sn_config_parse_desc(&cfg, (const char *)data, size, "fuzz.json", err, sizeof err) == 0) check_round_trip(&cfg);
  return 0;
}
