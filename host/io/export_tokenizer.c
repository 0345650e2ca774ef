// The tokenizer of an exported tower, made so that transformers' AutoTokenizer gives training's ids:
//  - tokenizer_config.json names PreTrainedTokenizerFast: the model-specific classes (Qwen2Tokenizer
//    in transformers 5) rebuild the pre-tokenizer instead of running tokenizer.json's, and split
//    texts such as " 500 B" differently;
//  - decoders: tokenizer.json's post-processor appends EOS, which training appends to every text
//    (last-token pooling reads it), so add_special_tokens=True gives the same sequence. sn's own
//    tokenizer then sees EOS as the tokenizer's trailing special and does not append it twice.
#define _GNU_SOURCE
#include <cJSON.h>
#include <errno.h>
#include <string.h>

#include "common.h"
#include "export_internal.h"

#define TOKENIZER_JSON "tokenizer.json"
#define TOKENIZER_CONFIG "tokenizer_config.json"
#define FAST_TOKENIZER_CLASS "PreTrainedTokenizerFast"
// transformers settings that rebuild the post-processor from BOS/EOS flags and would undo ours.
static const char *const REBUILDING_KEYS[] = {"add_bos_token", "add_eos_token"};
// BERT's special tokens, by their tokenizer_config.json key, written when tokenizer.json has them.
static const char *const WORDPIECE_SPECIALS[][2] = {
    {"cls_token", "[CLS]"}, {"sep_token", "[SEP]"}, {"pad_token", "[PAD]"}, {"unk_token", "[UNK]"}, {"mask_token", "[MASK]"}};

static cJSON *read_json(const char *path, int *missing, char *err, size_t errlen) {
  size_t len;
  char *text = sn_read_file(path, &len);
  *missing = !text;
  if (!text) return NULL;
  cJSON *root = cJSON_ParseWithLength(text, len);
  free(text);
  if (!root || !cJSON_IsObject(root)) {
    cJSON_Delete(root);
    sn_errorf(err, errlen, "%s: not a JSON object", path);
  }
  return root;
}

static cJSON *special_step(const char *token, int type_id) {
  cJSON *step = cJSON_CreateObject(), *inner = cJSON_AddObjectToObject(step, "SpecialToken");
  cJSON_AddStringToObject(inner, "id", token);
  cJSON_AddNumberToObject(inner, "type_id", type_id);
  return step;
}

static cJSON *sequence_step(const char *which, int type_id) {
  cJSON *step = cJSON_CreateObject(), *inner = cJSON_AddObjectToObject(step, "Sequence");
  cJSON_AddStringToObject(inner, "id", which);
  cJSON_AddNumberToObject(inner, "type_id", type_id);
  return step;
}

// TemplateProcessing "$A <eos>" (pairs "$A <eos> $B <eos>").
static cJSON *eos_template(const sn_export_info *info) {
  cJSON *t = cJSON_CreateObject();
  cJSON_AddStringToObject(t, "type", "TemplateProcessing");
  cJSON *single = cJSON_AddArrayToObject(t, "single"), *pair = cJSON_AddArrayToObject(t, "pair");
  cJSON_AddItemToArray(single, sequence_step("A", 0));
  cJSON_AddItemToArray(single, special_step(info->eos_token, 0));
  cJSON_AddItemToArray(pair, sequence_step("A", 0));
  cJSON_AddItemToArray(pair, special_step(info->eos_token, 0));
  cJSON_AddItemToArray(pair, sequence_step("B", 1));
  cJSON_AddItemToArray(pair, special_step(info->eos_token, 1));
  cJSON *specials = cJSON_AddObjectToObject(t, "special_tokens");
  cJSON *entry = cJSON_AddObjectToObject(specials, info->eos_token);
  cJSON_AddStringToObject(entry, "id", info->eos_token);
  cJSON_AddItemToObject(entry, "ids", cJSON_CreateIntArray(&info->eos_id, 1));
  const char *tokens[1] = {info->eos_token};
  cJSON_AddItemToObject(entry, "tokens", cJSON_CreateStringArray(tokens, 1));
  return t;
}

static int template_ends_with(const cJSON *p, const char *token) {
  const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
  if (!cJSON_IsString(type) || strcmp(type->valuestring, "TemplateProcessing") != 0) return 0;
  const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
  const cJSON *last = cJSON_GetArrayItem(single, cJSON_GetArraySize(single) - 1);
  const cJSON *id = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(last, "SpecialToken"), "id");
  return cJSON_IsString(id) && strcmp(id->valuestring, token) == 0;
}

// Whether the post-processor (or the last of a Sequence of them) already appends token.
static int appends(const cJSON *p, const char *token) {
  const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
  if (cJSON_IsArray(list)) return appends(cJSON_GetArrayItem(list, cJSON_GetArraySize(list) - 1), token);
  return p && template_ends_with(p, token);
}

// The decoder's post-processor followed by "$A <eos>": a Sequence when there was one before
// (ByteLevel's only adjusts offsets; a BOS template keeps its BOS).
static void append_eos(cJSON *tok, const sn_export_info *info) {
  cJSON *old = cJSON_DetachItemFromObjectCaseSensitive(tok, "post_processor");
  if (appends(old, info->eos_token)) {
    cJSON_AddItemToObject(tok, "post_processor", old);
    return;
  }
  if (!old || cJSON_IsNull(old)) {
    cJSON_Delete(old);
    cJSON_AddItemToObject(tok, "post_processor", eos_template(info));
    return;
  }
  cJSON *seq = cJSON_CreateObject();
  cJSON_AddStringToObject(seq, "type", "Sequence");
  cJSON *list = cJSON_AddArrayToObject(seq, "processors");
  cJSON_AddItemToArray(list, old);
  cJSON_AddItemToArray(list, eos_template(info));
  cJSON_AddItemToObject(tok, "post_processor", seq);
}

static int has_added_token(const cJSON *tok, const char *content) {
  const cJSON *e;
  cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(tok, "added_tokens")) {
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
    if (cJSON_IsString(c) && strcmp(c->valuestring, content) == 0) return 1;
  }
  return 0;
}

static void set_string(cJSON *obj, const char *key, const char *value) {
  cJSON_DeleteItemFromObjectCaseSensitive(obj, key);
  cJSON_AddStringToObject(obj, key, value);
}

// tokenizer_config.json: the class that runs tokenizer.json as it is, and the special tokens
// (padding for batches, EOS), keeping the other keys of one copied from the source.
static int write_config(const char *dir, const cJSON *tok, const sn_export_info *info, char *err, size_t errlen) {
  char path[SN_EXPORT_PATH_LEN];
  if (sn_export_join(path, sizeof path, dir, TOKENIZER_CONFIG, err, errlen) != 0) return -1;
  int missing;
  cJSON *cfg = read_json(path, &missing, err, errlen);
  if (!cfg && !missing) return -1;
  if (!cfg) cfg = cJSON_CreateObject();
  set_string(cfg, "tokenizer_class", FAST_TOKENIZER_CLASS);
  for (size_t i = 0; i < SN_ARRAY_LEN(REBUILDING_KEYS); i++) cJSON_DeleteItemFromObjectCaseSensitive(cfg, REBUILDING_KEYS[i]);
  cJSON_DeleteItemFromObjectCaseSensitive(cfg, "model_max_length");
  cJSON_AddNumberToObject(cfg, "model_max_length", info->max_seq_length);
  if (info->decoder && info->eos_token[0]) {
    set_string(cfg, "eos_token", info->eos_token);
    set_string(cfg, "pad_token", info->pad_token[0] ? info->pad_token : info->eos_token);
  } else {
    for (size_t i = 0; i < SN_ARRAY_LEN(WORDPIECE_SPECIALS); i++)
      if (has_added_token(tok, WORDPIECE_SPECIALS[i][1])) set_string(cfg, WORDPIECE_SPECIALS[i][0], WORDPIECE_SPECIALS[i][1]);
  }
  int rc = sn_export_write_json(dir, TOKENIZER_CONFIG, cfg, err, errlen);
  cJSON_Delete(cfg);
  return rc;
}

int sn_export_write_tokenizer(const char *dir, const sn_export_info *info, char *err, size_t errlen) {
  char path[SN_EXPORT_PATH_LEN];
  if (sn_export_join(path, sizeof path, dir, TOKENIZER_JSON, err, errlen) != 0) return -1;
  int missing;
  cJSON *tok = read_json(path, &missing, err, errlen);
  if (missing) return 0;  // vocab.txt / GPT-2 files: transformers picks the class from config.json
  if (!tok) return -1;
  int rc = 0;
  if (info->decoder && info->eos_token[0]) {
    append_eos(tok, info);
    rc = sn_export_write_json(dir, TOKENIZER_JSON, tok, err, errlen);
  }
  if (rc == 0) rc = write_config(dir, tok, info, err, errlen);
  cJSON_Delete(tok);
  return rc;
}
