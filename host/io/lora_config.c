#include "lora_config.h"

#include <stdio.h>
#include <string.h>

#include "common.h"

static const char *const SHORT_NAMES[SN_LORA_NTARGETS] = {"q", "k", "v", "o", "gate", "up", "down"};
static const char *const MODULE_NAMES[SN_LORA_NTARGETS] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                           "gate_proj", "up_proj", "down_proj"};

const char *sn_lora_target_name(sn_lora_target t) { return SHORT_NAMES[t]; }
const char *sn_lora_module_name(sn_lora_target t) { return MODULE_NAMES[t]; }

int sn_lora_target_from_module(const char *module) {
  for (int t = 0; t < SN_LORA_NTARGETS; t++)
    if (strcmp(module, MODULE_NAMES[t]) == 0) return t;
  return -1;
}

#define TARGET_NAME_MAX 32

int sn_lora_targets_parse(const char *list, unsigned *mask, char *err, size_t errlen) {
  *mask = 0;
  const char *p = list;
  while (*p) {
    while (*p == ' ' || *p == ',') p++;
    if (!*p) break;
    size_t n = strcspn(p, ", ");
    char name[TARGET_NAME_MAX];
    snprintf(name, sizeof name, "%.*s", (int)SN_MIN(n, sizeof name - 1), p);
    int found = -1;
    for (int t = 0; t < SN_LORA_NTARGETS; t++)
      if (strcmp(name, SHORT_NAMES[t]) == 0 || strcmp(name, MODULE_NAMES[t]) == 0) found = t;
    if (found < 0) {
      snprintf(err, errlen, "unknown LoRA target '%s' (valid: %s)", name, SN_LORA_ALL_TARGETS);
      return -1;
    }
    *mask |= 1u << found;
    p += n;
  }
  if (*mask == 0) {
    snprintf(err, errlen, "no LoRA target given (valid: %s)", SN_LORA_ALL_TARGETS);
    return -1;
  }
  return 0;
}
