// tokenizer.json: the model (BPE or WordPiece, its vocabulary), the added tokens, and the
// normalizer, pre-tokenizer and post-processor configuration, each checked with an error that names
// the file and the field.
#include <stdio.h>
#include <string.h>

#include <cJSON.h>

#include "common.h"
#include "tokenizer_internal.h"

// Ids at or past this are refused: real vocabularies are far smaller, and the id → token table is
// sized by the largest id.
#define SN_MAX_TOKEN_ID (1 << 24)

// An integer in [0, SN_MAX_TOKEN_ID) (ids, lengths). Returns 0 and sets *out, or -1.
static int json_id(const cJSON *v, int32_t *out) {
  if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < SN_MAX_TOKEN_ID) ||
      v->valuedouble != (double)(int32_t)v->valuedouble)
    return -1;
  *out = (int32_t)v->valuedouble;
  return 0;
}

// ---- vocabulary ---------------------------------------------------------------------------------

int sn_vocab_load_object(sn_tokenizer *tok, const void *vocab_cjson, const char *path, const char *field,
                         char *err, size_t errlen) {
  const cJSON *vocab = vocab_cjson;
  if (!cJSON_IsObject(vocab)) return sn_tok_fail(err, errlen, "%s: %s: expected an object {token: id}", path, field);
  sn_strmap_init(&tok->vocab, (size_t)cJSON_GetArraySize(vocab) + 1024);
  for (const cJSON *e = vocab->child; e; e = e->next) {
    int32_t id;
    if (json_id(e, &id))
      return sn_tok_fail(err, errlen, "%s: %s[\"%.60s\"]: expected an integer id in [0, %d)", path, field, e->string, SN_MAX_TOKEN_ID);
    sn_vocab_add(tok, e->string, strlen(e->string), id);
  }
  return 0;
}

// ---- JSON field helpers -------------------------------------------------------------------------

static const char *json_type_name(const cJSON *obj) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
  return cJSON_IsString(t) ? t->valuestring : NULL;
}
int sn_json_flag(const void *obj_cjson, const char *key, int fallback) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj_cjson, key);
  if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
  return fallback;
}

// ---- normalizer ---------------------------------------------------------------------------------

static int load_normalizer(sn_tokenizer *tok, const cJSON *n, const char *path, const char *field,
                           char *err, size_t errlen) {
  if (!n || cJSON_IsNull(n)) return 0;
  const char *type = json_type_name(n);
  if (!type) return sn_tok_fail(err, errlen, "%s: %s.type: missing or not a string", path, field);
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
    if (!cJSON_IsArray(list)) return sn_tok_fail(err, errlen, "%s: %s.normalizers: expected an array", path, field);
    int i = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
      char sub[96];
      snprintf(sub, sizeof(sub), "%s.normalizers[%d]", field, i);
      if (load_normalizer(tok, e, path, sub, err, errlen)) return -1;
    }
    return 0;
  }
  if (tok->n_norm == SN_MAX_NORM_STEPS) return sn_tok_fail(err, errlen, "%s: %s: too many normalizers", path, field);
  sn_norm_step *step = &tok->norm[tok->n_norm];
  memset(step, 0, sizeof(*step));
  if (strcmp(type, "NFC") == 0) step->kind = SN_NORM_NFC;
  else if (strcmp(type, "NFD") == 0) step->kind = SN_NORM_NFD;
  else if (strcmp(type, "Lowercase") == 0) step->kind = SN_NORM_LOWERCASE;
  else if (strcmp(type, "StripAccents") == 0) step->kind = SN_NORM_STRIP_ACCENTS;
  else if (strcmp(type, "BertNormalizer") == 0) {
    step->kind = SN_NORM_BERT;
    step->clean_text = sn_json_flag(n, "clean_text", 1);
    step->handle_chinese_chars = sn_json_flag(n, "handle_chinese_chars", 1);
    step->lowercase = sn_json_flag(n, "lowercase", 1);
    step->strip_accents = sn_json_flag(n, "strip_accents", step->lowercase);  // null follows lowercase
  } else {
    return sn_tok_fail(err, errlen, "%s: %s.type: unsupported normalizer \"%s\"", path, field, type);
  }
  tok->n_norm++;
  return 0;
}

// ---- pre-tokenizer ------------------------------------------------------------------------------

static int set_split(sn_tokenizer *tok, sn_split_kind kind, const char *path, const char *field,
                     char *err, size_t errlen) {
  if (tok->split != SN_SPLIT_NONE && tok->split != kind)
    return sn_tok_fail(err, errlen, "%s: %s: a second splitting pre-tokenizer is not supported", path, field);
  tok->split = kind;
  return 0;
}

static int load_pre_tokenizer(sn_tokenizer *tok, const cJSON *p, const char *path, const char *field,
                              char *err, size_t errlen) {
  if (!p || cJSON_IsNull(p)) return 0;
  const char *type = json_type_name(p);
  if (!type) return sn_tok_fail(err, errlen, "%s: %s.type: missing or not a string", path, field);
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
    if (!cJSON_IsArray(list)) return sn_tok_fail(err, errlen, "%s: %s.pretokenizers: expected an array", path, field);
    int i = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
      char sub[96];
      snprintf(sub, sizeof(sub), "%s.pretokenizers[%d]", field, i);
      if (load_pre_tokenizer(tok, e, path, sub, err, errlen)) return -1;
    }
    return 0;
  }
  if (strcmp(type, "ByteLevel") == 0) {
    tok->byte_level = 1;
    // add_prefix_space acts on each split made so far: after a Split, on every piece of it.
    tok->add_prefix_space = sn_json_flag(p, "add_prefix_space", 1);
    tok->prefix_space_per_piece = tok->add_prefix_space && tok->split != SN_SPLIT_NONE;
    if (sn_json_flag(p, "use_regex", 1)) return set_split(tok, SN_SPLIT_GPT2, path, field, err, errlen);
    return 0;
  }
  if (strcmp(type, "BertPreTokenizer") == 0) return set_split(tok, SN_SPLIT_BERT, path, field, err, errlen);
  if (strcmp(type, "Split") == 0) {
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(p, "pattern");
    const cJSON *regex = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
    const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(p, "behavior");
    if (!cJSON_IsString(regex))
      return sn_tok_fail(err, errlen, "%s: %s.pattern.Regex: missing or not a string", path, field);
    if (!cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") != 0)
      return sn_tok_fail(err, errlen, "%s: %s.behavior: only \"Isolated\" is supported", path, field);
    if (sn_json_flag(p, "invert", 0)) return sn_tok_fail(err, errlen, "%s: %s.invert: only false is supported", path, field);
    int known;
    sn_split_kind kind = sn_split_kind_from_regex(regex->valuestring, &known);
    if (!known)
      return sn_tok_fail(err, errlen, "%s: %s.pattern.Regex: unsupported pattern \"%.200s\"", path, field, regex->valuestring);
    return set_split(tok, kind, path, field, err, errlen);
  }
  return sn_tok_fail(err, errlen, "%s: %s.type: unsupported pre-tokenizer \"%s\"", path, field, type);
}

// ---- post-processor -----------------------------------------------------------------------------

static int push_template_id(sn_tokenizer *tok, int32_t id, int after_sequence, const char *path,
                            const char *field, char *err, size_t errlen) {
  int32_t *list = after_sequence ? tok->suffix_ids : tok->prefix_ids;
  int *count = after_sequence ? &tok->n_suffix : &tok->n_prefix;
  if (*count == SN_MAX_TEMPLATE_IDS) return sn_tok_fail(err, errlen, "%s: %s: too many special tokens", path, field);
  list[(*count)++] = id;
  return 0;
}

// BertProcessing/RobertaProcessing: {"cls": ["[CLS]", 101], "sep": ["[SEP]", 102]}.
static int load_cls_sep(sn_tokenizer *tok, const cJSON *p, const char *path, const char *field,
                        char *err, size_t errlen) {
  const char *names[2] = {"cls", "sep"};
  for (int k = 0; k < 2; k++) {
    const cJSON *pair = cJSON_GetObjectItemCaseSensitive(p, names[k]);
    int32_t id;
    if (!cJSON_IsArray(pair) || json_id(cJSON_GetArrayItem(pair, 1), &id))
      return sn_tok_fail(err, errlen, "%s: %s.%s: expected [token, id]", path, field, names[k]);
    if (push_template_id(tok, id, k, path, field, err, errlen)) return -1;
  }
  return 0;
}

static int load_template(sn_tokenizer *tok, const cJSON *p, const char *path, const char *field,
                         char *err, size_t errlen) {
  const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
  const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
  if (!cJSON_IsArray(single)) return sn_tok_fail(err, errlen, "%s: %s.single: expected an array", path, field);
  int after_sequence = 0, i = 0;
  for (const cJSON *e = single->child; e; e = e->next, i++) {
    if (cJSON_GetObjectItemCaseSensitive(e, "Sequence")) { after_sequence = 1; continue; }
    const cJSON *special = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(special, "id");
    if (!cJSON_IsString(name))
      return sn_tok_fail(err, errlen, "%s: %s.single[%d]: expected {\"SpecialToken\": {\"id\": …}} or {\"Sequence\": …}", path, field, i);
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(specials, name->valuestring);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(entry, "ids");
    if (!cJSON_IsArray(ids))
      return sn_tok_fail(err, errlen, "%s: %s.special_tokens[\"%.60s\"].ids: missing", path, field, name->valuestring);
    for (const cJSON *v = ids->child; v; v = v->next) {
      int32_t id;
      if (json_id(v, &id)) return sn_tok_fail(err, errlen, "%s: %s.special_tokens[\"%.60s\"].ids: not an id", path, field, name->valuestring);
      if (push_template_id(tok, id, after_sequence, path, field, err, errlen)) return -1;
    }
  }
  return 0;
}

static int load_post_processor(sn_tokenizer *tok, const cJSON *p, const char *path, const char *field,
                               char *err, size_t errlen) {
  if (!p || cJSON_IsNull(p)) return 0;
  const char *type = json_type_name(p);
  if (!type) return sn_tok_fail(err, errlen, "%s: %s.type: missing or not a string", path, field);
  if (strcmp(type, "ByteLevel") == 0) return 0;  // offsets only: no ids
  if (strcmp(type, "TemplateProcessing") == 0) return load_template(tok, p, path, field, err, errlen);
  if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0)
    return load_cls_sep(tok, p, path, field, err, errlen);
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
    if (!cJSON_IsArray(list)) return sn_tok_fail(err, errlen, "%s: %s.processors: expected an array", path, field);
    int i = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
      char sub[96];
      snprintf(sub, sizeof(sub), "%s.processors[%d]", field, i);
      if (load_post_processor(tok, e, path, sub, err, errlen)) return -1;
    }
    return 0;
  }
  return sn_tok_fail(err, errlen, "%s: %s.type: unsupported post-processor \"%s\"", path, field, type);
}

// ---- tokenizer.json -----------------------------------------------------------------------------

static int load_added_tokens(sn_tokenizer *tok, const cJSON *list, const char *path, char *err, size_t errlen) {
  if (!list || cJSON_IsNull(list)) return 0;
  if (!cJSON_IsArray(list)) return sn_tok_fail(err, errlen, "%s: added_tokens: expected an array", path);
  int i = 0;
  for (const cJSON *e = list->child; e; e = e->next, i++) {
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
    int32_t id;
    if (!cJSON_IsString(content)) return sn_tok_fail(err, errlen, "%s: added_tokens[%d].content: missing or not a string", path, i);
    if (json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id))
      return sn_tok_fail(err, errlen, "%s: added_tokens[%d].id: missing or not an integer in [0, %d)", path, i, SN_MAX_TOKEN_ID);
    int special = sn_json_flag(e, "special", 0);
    sn_added_token_add(tok, content->valuestring, id, special, sn_json_flag(e, "lstrip", 0), sn_json_flag(e, "rstrip", 0),
                    sn_json_flag(e, "single_word", 0), sn_json_flag(e, "normalized", !special));
  }
  return 0;
}

static int load_wordpiece_model(sn_tokenizer *tok, const cJSON *model, const char *path, char *err, size_t errlen) {
  tok->is_wordpiece = 1;
  const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
  const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
  const cJSON *max_chars = cJSON_GetObjectItemCaseSensitive(model, "max_input_chars_per_word");
  if (!cJSON_IsString(unk)) return sn_tok_fail(err, errlen, "%s: model.unk_token: missing or not a string", path);
  tok->wp.unk_id = sn_strmap_get(&tok->vocab, unk->valuestring, strlen(unk->valuestring));
  if (tok->wp.unk_id < 0) return sn_tok_fail(err, errlen, "%s: model.unk_token: \"%.60s\" is not in model.vocab", path, unk->valuestring);
  tok->wp.prefix = strdupCheck(cJSON_IsString(prefix) ? prefix->valuestring : "##");
  tok->wp.prefix_len = strlen(tok->wp.prefix);
  int32_t max = BERT_MAX_INPUT_CHARS_PER_WORD;
  if (max_chars && json_id(max_chars, &max))
    return sn_tok_fail(err, errlen, "%s: model.max_input_chars_per_word: expected a non-negative integer", path);
  tok->wp.max_chars = max;
  return 0;
}

static int load_bpe_model(sn_tokenizer *tok, const cJSON *model, const char *path, char *err, size_t errlen) {
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  if (!cJSON_IsArray(merges)) return sn_tok_fail(err, errlen, "%s: model.merges: missing or not an array", path);
  if (sn_json_flag(model, "byte_fallback", 0)) return sn_tok_fail(err, errlen, "%s: model.byte_fallback: true is not supported", path);
  const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
  const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
  if ((cJSON_IsString(prefix) && prefix->valuestring[0]) || (cJSON_IsString(suffix) && suffix->valuestring[0]))
    return sn_tok_fail(err, errlen, "%s: model.continuing_subword_prefix/end_of_word_suffix: not supported", path);
  tok->bpe.ignore_merges = sn_json_flag(model, "ignore_merges", 0);
  return sn_bpe_load_merges_json(tok, merges, path, err, errlen);
}

int sn_tokenizer_json_parse(sn_tokenizer *tok, const char *path, const char *text, size_t len,
                            char *err, size_t errlen) {
  cJSON *root = cJSON_ParseWithLength(text, len);
  if (!root) {
    const char *where = cJSON_GetErrorPtr();
    long offset = where && where >= text && where <= text + len ? (long)(where - text) : -1;
    return sn_tok_fail(err, errlen, "%s: not valid JSON (near byte %ld)", path, offset);
  }
  int rc = -1;
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  if (!cJSON_IsObject(root)) { sn_tok_fail(err, errlen, "%s: expected a JSON object at the top", path); goto done; }
  if (!cJSON_IsObject(model)) { sn_tok_fail(err, errlen, "%s: model: missing or not an object", path); goto done; }
  const char *type = json_type_name(model);
  if (!type)  // older files leave the type out: merges mean BPE
    type = cJSON_GetObjectItemCaseSensitive(model, "merges") ? "BPE" : "WordPiece";
  if (sn_vocab_load_object(tok, cJSON_GetObjectItemCaseSensitive(model, "vocab"), path, "model.vocab", err, errlen)) goto done;
  if (load_added_tokens(tok, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path, err, errlen)) goto done;
  if (load_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, "normalizer", err, errlen)) goto done;
  if (load_pre_tokenizer(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, "pre_tokenizer", err, errlen)) goto done;
  if (load_post_processor(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), path, "post_processor", err, errlen)) goto done;
  if (strcmp(type, "BPE") == 0) {
    if (load_bpe_model(tok, model, path, err, errlen)) goto done;
    if (!tok->byte_level) { sn_tok_fail(err, errlen, "%s: pre_tokenizer: BPE is supported with a ByteLevel pre-tokenizer only", path); goto done; }
    if (sn_bpe_init_byte_level(tok, path, err, errlen)) goto done;
  } else if (strcmp(type, "WordPiece") == 0) {
    if (load_wordpiece_model(tok, model, path, err, errlen)) goto done;
  } else {
    sn_tok_fail(err, errlen, "%s: model.type: unsupported model \"%.40s\"", path, type);
    goto done;
  }
  rc = 0;
done:
  cJSON_Delete(root);
  return rc;
}
