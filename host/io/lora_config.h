// LoRA settings (stage1.lora.* in the run config, adapter_config.json of a peft folder): the rank,
// alpha, dropout and which linears of a decoder block get an adapter. Parsed here, in io, so the
// run config can name a bad target before any work; host/model/model_lora.h applies them.
#pragma once
#include <stddef.h>

// The linears a LoRA adapter may target, in the order the decoder runs them.
typedef enum {
  SN_LORA_Q = 0,
  SN_LORA_K,
  SN_LORA_V,
  SN_LORA_O,
  SN_LORA_GATE,
  SN_LORA_UP,
  SN_LORA_DOWN,
  SN_LORA_NTARGETS
} sn_lora_target;

#define SN_LORA_ALL_TARGETS "q,k,v,o,gate,up,down"

typedef struct {
  int rank;          // r; 0 = no adapter
  float alpha;       // the update is scaled by alpha / r
  float dropout;     // peft's lora_dropout (only 0 is supported so far)
  unsigned targets;  // bit (1 << sn_lora_target) per targeted linear
} sn_lora_config;

// Short name ("q", "gate") and peft/transformers module name ("q_proj", "gate_proj") of a target.
const char *sn_lora_target_name(sn_lora_target t);
const char *sn_lora_module_name(sn_lora_target t);
// A comma-separated list of short names ("q,v", spaces allowed) → *mask. Returns 0, or -1 with a
// message naming the bad entry and the valid ones in err.
int sn_lora_targets_parse(const char *list, unsigned *mask, char *err, size_t errlen);
// The target of a peft module name ("q_proj"), or -1.
int sn_lora_target_from_module(const char *module);
