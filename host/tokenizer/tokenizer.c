// Loading (tokenizer.json, vocab.txt, GPT-2's encoder.json + vocab.bpe) and the encode pipeline:
// added tokens are cut out of the raw text first, each remaining segment is decoded (invalid UTF-8
// → U+FFFD per maximal subpart, as Python's errors='replace'), normalized, pre-tokenized and
// handed to the model; add_special wraps the result in the post-processor's ids.
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "common.h"
#include "tokenizer_internal.h"
#include "unicode.h"

// BERT's defaults (what `tokenizers` BertWordPieceTokenizer uses for a bare vocab.txt).
#define BERT_MAX_INPUT_CHARS_PER_WORD 100
static const char *const BERT_SPECIAL_TOKENS[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};

// Ids at or past this are refused: real vocabularies are far smaller, and the id → token table is
// sized by the largest id.
#define SN_MAX_TOKEN_ID (1 << 24)

static atomic_uint_fast64_t next_serial = 1;

// ---- small helpers ------------------------------------------------------------------------------

uint64_t sn_hash_bytes(const void *data, size_t len) {  // FNV-1a, 64-bit
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
  return h;
}

void sn_ids_push(int32_t **ids, size_t *n, size_t *cap, int32_t id) {
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 64;
    *ids = reallocCheck(*ids, *cap * sizeof(int32_t));
  }
  (*ids)[(*n)++] = id;
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (err && errlen) vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
// buf = dir/name; returns 0, or -1 when it does not fit.
static int join_path(char *buf, size_t buflen, const char *dir, const char *name) {
  int written = snprintf(buf, buflen, "%s/%s", dir, name);
  return written >= 0 && (size_t)written < buflen ? 0 : -1;
}
static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

// ---- string map ---------------------------------------------------------------------------------

void sn_strmap_init(sn_strmap *m, size_t expected) {
  m->cap = 16;
  while (m->cap < expected * 2) m->cap *= 2;  // load factor at most 1/2
  m->keys = callocCheck(m->cap, sizeof(char *));
  m->key_lens = mallocCheck(m->cap * sizeof(uint32_t));
  m->values = mallocCheck(m->cap * sizeof(int32_t));
  m->count = 0;
}

void sn_strmap_free(sn_strmap *m) {
  free(m->keys); free(m->key_lens); free(m->values);
  memset(m, 0, sizeof(*m));
}

static size_t strmap_slot(const sn_strmap *m, const char *key, size_t len) {
  size_t mask = m->cap - 1, i = sn_hash_bytes(key, len) & mask;
  while (m->keys[i] && !(m->key_lens[i] == len && memcmp(m->keys[i], key, len) == 0)) i = (i + 1) & mask;
  return i;
}

void sn_strmap_put(sn_strmap *m, const char *key, size_t len, int32_t value) {
  if ((m->count + 1) * 2 > m->cap) {  // grow: rehash every entry into twice the slots
    sn_strmap old = *m;
    sn_strmap_init(m, old.cap);
    for (size_t i = 0; i < old.cap; i++)
      if (old.keys[i]) sn_strmap_put(m, old.keys[i], old.key_lens[i], old.values[i]);
    sn_strmap_free(&old);
  }
  size_t i = strmap_slot(m, key, len);
  if (!m->keys[i]) m->count++;
  m->keys[i] = key;
  m->key_lens[i] = (uint32_t)len;
  m->values[i] = value;
}

int32_t sn_strmap_get(const sn_strmap *m, const char *key, size_t len) {
  if (!m->cap) return -1;
  size_t i = strmap_slot(m, key, len);
  return m->keys[i] ? m->values[i] : -1;
}

// An integer in [0, SN_MAX_TOKEN_ID) (ids, lengths). Returns 0 and sets *out, or -1.
static int json_id(const cJSON *v, int32_t *out) {
  if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble < SN_MAX_TOKEN_ID) ||
      v->valuedouble != (double)(int32_t)v->valuedouble)
    return -1;
  *out = (int32_t)v->valuedouble;
  return 0;
}

// ---- vocabulary ---------------------------------------------------------------------------------

// Sets tokens[id] = token (copied) and maps it; grows the table. A token already present keeps
// its first id in the map (the id → token direction is still filled).
static void vocab_add(sn_tokenizer *tok, const char *token, size_t len, int32_t id) {
  if (id >= tok->vocab_size) {
    int new_size = id + 1;
    tok->tokens = reallocCheck(tok->tokens, (size_t)new_size * sizeof(char *));
    for (int i = tok->vocab_size; i < new_size; i++) tok->tokens[i] = NULL;
    tok->vocab_size = new_size;
  }
  if (tok->tokens[id]) return;  // keys are borrowed by the map: never replace a live one
  char *copy = mallocCheck(len + 1);
  memcpy(copy, token, len);
  copy[len] = 0;
  tok->tokens[id] = copy;
  if (sn_strmap_get(&tok->vocab, copy, len) < 0) sn_strmap_put(&tok->vocab, copy, len, id);
}

static int load_vocab_object(sn_tokenizer *tok, const cJSON *vocab, const char *path,
                             const char *field, char *err, size_t errlen) {
  if (!cJSON_IsObject(vocab)) return fail(err, errlen, "%s: %s: expected an object {token: id}", path, field);
  sn_strmap_init(&tok->vocab, (size_t)cJSON_GetArraySize(vocab) + 1024);
  for (const cJSON *e = vocab->child; e; e = e->next) {
    int32_t id;
    if (json_id(e, &id))
      return fail(err, errlen, "%s: %s[\"%.60s\"]: expected an integer id in [0, %d)", path, field, e->string, SN_MAX_TOKEN_ID);
    vocab_add(tok, e->string, strlen(e->string), id);
  }
  return 0;
}

static int added_token_longer(const void *a, const void *b) {
  size_t la = ((const sn_added_token *)a)->len, lb = ((const sn_added_token *)b)->len;
  return la < lb ? 1 : la > lb ? -1 : 0;
}

static void add_added_token(sn_tokenizer *tok, const char *content, int32_t id, int special,
                            int lstrip, int rstrip, int single_word, int normalized) {
  size_t len = strlen(content);
  if (len == 0) return;
  vocab_add(tok, content, len, id);
  tok->added = reallocCheck(tok->added, (size_t)(tok->n_added + 1) * sizeof(sn_added_token));
  tok->added[tok->n_added++] =
      (sn_added_token){strdupCheck(content), len, id, special, lstrip, rstrip, single_word, normalized};
}

static void normalize(const sn_tokenizer *tok, uint32_t **cps, size_t *n, size_t *cap);

// cps as a malloc'd UTF-8 string (*len bytes, NUL-terminated).
static char *cps_to_utf8(const uint32_t *cps, size_t n, size_t *len) {
  char *out = mallocCheck(4 * n + 1);
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++) bytes += sn_utf8_encode(cps[i], out + bytes);
  out[bytes] = 0;
  *len = bytes;
  return out;
}

// Normalized tokens are matched by their normalized form (so "CoVid" finds "covid" when the
// normalizer lower-cases); without a normalizer both passes see the same text: all go raw. Then
// longest first, so the first token that matches at a position is the longest one there.
static void prepare_added_tokens(sn_tokenizer *tok) {
  for (int i = 0; i < tok->n_added; i++) {
    sn_added_token *a = &tok->added[i];
    if (a->normalized && tok->n_norm == 0) a->normalized = 0;
    if (!a->normalized) continue;
    uint32_t *cps;
    size_t n, cap;
    sn_utf8_to_cps(a->content, a->len, &cps, &n);
    cap = n + 1;
    normalize(tok, &cps, &n, &cap);
    free(a->content);
    a->content = cps_to_utf8(cps, n, &a->len);
    free(cps);
    tok->has_normalized_added = 1;
  }
  for (int i = 0; i < tok->n_added; i++)
    if (tok->added[i].len)
      tok->added_first_byte[(unsigned char)tok->added[i].content[0]] |=
          tok->added[i].normalized ? SN_ADDED_NORMALIZED : SN_ADDED_RAW;
  if (tok->n_added) qsort(tok->added, (size_t)tok->n_added, sizeof(sn_added_token), added_token_longer);
}

// ---- JSON field helpers -------------------------------------------------------------------------

static const char *json_type_name(const cJSON *obj) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
  return cJSON_IsString(t) ? t->valuestring : NULL;
}
static int json_flag(const cJSON *obj, const char *key, int fallback) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
  if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
  return fallback;
}

// ---- normalizer ---------------------------------------------------------------------------------

static int load_normalizer(sn_tokenizer *tok, const cJSON *n, const char *path, const char *field,
                           char *err, size_t errlen) {
  if (!n || cJSON_IsNull(n)) return 0;
  const char *type = json_type_name(n);
  if (!type) return fail(err, errlen, "%s: %s.type: missing or not a string", path, field);
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
    if (!cJSON_IsArray(list)) return fail(err, errlen, "%s: %s.normalizers: expected an array", path, field);
    int i = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
      char sub[96];
      snprintf(sub, sizeof(sub), "%s.normalizers[%d]", field, i);
      if (load_normalizer(tok, e, path, sub, err, errlen)) return -1;
    }
    return 0;
  }
  if (tok->n_norm == SN_MAX_NORM_STEPS) return fail(err, errlen, "%s: %s: too many normalizers", path, field);
  sn_norm_step *step = &tok->norm[tok->n_norm];
  memset(step, 0, sizeof(*step));
  if (strcmp(type, "NFC") == 0) step->kind = SN_NORM_NFC;
  else if (strcmp(type, "NFD") == 0) step->kind = SN_NORM_NFD;
  else if (strcmp(type, "Lowercase") == 0) step->kind = SN_NORM_LOWERCASE;
  else if (strcmp(type, "StripAccents") == 0) step->kind = SN_NORM_STRIP_ACCENTS;
  else if (strcmp(type, "BertNormalizer") == 0) {
    step->kind = SN_NORM_BERT;
    step->clean_text = json_flag(n, "clean_text", 1);
    step->handle_chinese_chars = json_flag(n, "handle_chinese_chars", 1);
    step->lowercase = json_flag(n, "lowercase", 1);
    step->strip_accents = json_flag(n, "strip_accents", step->lowercase);  // null follows lowercase
  } else {
    return fail(err, errlen, "%s: %s.type: unsupported normalizer \"%s\"", path, field, type);
  }
  tok->n_norm++;
  return 0;
}

// ---- pre-tokenizer ------------------------------------------------------------------------------

static int set_split(sn_tokenizer *tok, sn_split_kind kind, const char *path, const char *field,
                     char *err, size_t errlen) {
  if (tok->split != SN_SPLIT_NONE && tok->split != kind)
    return fail(err, errlen, "%s: %s: a second splitting pre-tokenizer is not supported", path, field);
  tok->split = kind;
  return 0;
}

static int load_pre_tokenizer(sn_tokenizer *tok, const cJSON *p, const char *path, const char *field,
                              char *err, size_t errlen) {
  if (!p || cJSON_IsNull(p)) return 0;
  const char *type = json_type_name(p);
  if (!type) return fail(err, errlen, "%s: %s.type: missing or not a string", path, field);
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
    if (!cJSON_IsArray(list)) return fail(err, errlen, "%s: %s.pretokenizers: expected an array", path, field);
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
    tok->add_prefix_space = json_flag(p, "add_prefix_space", 1);
    tok->prefix_space_per_piece = tok->add_prefix_space && tok->split != SN_SPLIT_NONE;
    if (json_flag(p, "use_regex", 1)) return set_split(tok, SN_SPLIT_GPT2, path, field, err, errlen);
    return 0;
  }
  if (strcmp(type, "BertPreTokenizer") == 0) return set_split(tok, SN_SPLIT_BERT, path, field, err, errlen);
  if (strcmp(type, "Split") == 0) {
    const cJSON *pattern = cJSON_GetObjectItemCaseSensitive(p, "pattern");
    const cJSON *regex = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
    const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(p, "behavior");
    if (!cJSON_IsString(regex))
      return fail(err, errlen, "%s: %s.pattern.Regex: missing or not a string", path, field);
    if (!cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") != 0)
      return fail(err, errlen, "%s: %s.behavior: only \"Isolated\" is supported", path, field);
    if (json_flag(p, "invert", 0)) return fail(err, errlen, "%s: %s.invert: only false is supported", path, field);
    int known;
    sn_split_kind kind = sn_split_kind_from_regex(regex->valuestring, &known);
    if (!known)
      return fail(err, errlen, "%s: %s.pattern.Regex: unsupported pattern \"%.200s\"", path, field, regex->valuestring);
    return set_split(tok, kind, path, field, err, errlen);
  }
  return fail(err, errlen, "%s: %s.type: unsupported pre-tokenizer \"%s\"", path, field, type);
}

// ---- post-processor -----------------------------------------------------------------------------

static int push_template_id(sn_tokenizer *tok, int32_t id, int after_sequence, const char *path,
                            const char *field, char *err, size_t errlen) {
  int32_t *list = after_sequence ? tok->suffix_ids : tok->prefix_ids;
  int *count = after_sequence ? &tok->n_suffix : &tok->n_prefix;
  if (*count == SN_MAX_TEMPLATE_IDS) return fail(err, errlen, "%s: %s: too many special tokens", path, field);
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
      return fail(err, errlen, "%s: %s.%s: expected [token, id]", path, field, names[k]);
    if (push_template_id(tok, id, k, path, field, err, errlen)) return -1;
  }
  return 0;
}

static int load_template(sn_tokenizer *tok, const cJSON *p, const char *path, const char *field,
                         char *err, size_t errlen) {
  const cJSON *single = cJSON_GetObjectItemCaseSensitive(p, "single");
  const cJSON *specials = cJSON_GetObjectItemCaseSensitive(p, "special_tokens");
  if (!cJSON_IsArray(single)) return fail(err, errlen, "%s: %s.single: expected an array", path, field);
  int after_sequence = 0, i = 0;
  for (const cJSON *e = single->child; e; e = e->next, i++) {
    if (cJSON_GetObjectItemCaseSensitive(e, "Sequence")) { after_sequence = 1; continue; }
    const cJSON *special = cJSON_GetObjectItemCaseSensitive(e, "SpecialToken");
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(special, "id");
    if (!cJSON_IsString(name))
      return fail(err, errlen, "%s: %s.single[%d]: expected {\"SpecialToken\": {\"id\": …}} or {\"Sequence\": …}", path, field, i);
    const cJSON *entry = cJSON_GetObjectItemCaseSensitive(specials, name->valuestring);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(entry, "ids");
    if (!cJSON_IsArray(ids))
      return fail(err, errlen, "%s: %s.special_tokens[\"%.60s\"].ids: missing", path, field, name->valuestring);
    for (const cJSON *v = ids->child; v; v = v->next) {
      int32_t id;
      if (json_id(v, &id)) return fail(err, errlen, "%s: %s.special_tokens[\"%.60s\"].ids: not an id", path, field, name->valuestring);
      if (push_template_id(tok, id, after_sequence, path, field, err, errlen)) return -1;
    }
  }
  return 0;
}

static int load_post_processor(sn_tokenizer *tok, const cJSON *p, const char *path, const char *field,
                               char *err, size_t errlen) {
  if (!p || cJSON_IsNull(p)) return 0;
  const char *type = json_type_name(p);
  if (!type) return fail(err, errlen, "%s: %s.type: missing or not a string", path, field);
  if (strcmp(type, "ByteLevel") == 0) return 0;  // offsets only: no ids
  if (strcmp(type, "TemplateProcessing") == 0) return load_template(tok, p, path, field, err, errlen);
  if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0)
    return load_cls_sep(tok, p, path, field, err, errlen);
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "processors");
    if (!cJSON_IsArray(list)) return fail(err, errlen, "%s: %s.processors: expected an array", path, field);
    int i = 0;
    for (const cJSON *e = list->child; e; e = e->next, i++) {
      char sub[96];
      snprintf(sub, sizeof(sub), "%s.processors[%d]", field, i);
      if (load_post_processor(tok, e, path, sub, err, errlen)) return -1;
    }
    return 0;
  }
  return fail(err, errlen, "%s: %s.type: unsupported post-processor \"%s\"", path, field, type);
}

// ---- tokenizer.json -----------------------------------------------------------------------------

static int load_added_tokens(sn_tokenizer *tok, const cJSON *list, const char *path, char *err, size_t errlen) {
  if (!list || cJSON_IsNull(list)) return 0;
  if (!cJSON_IsArray(list)) return fail(err, errlen, "%s: added_tokens: expected an array", path);
  int i = 0;
  for (const cJSON *e = list->child; e; e = e->next, i++) {
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
    int32_t id;
    if (!cJSON_IsString(content)) return fail(err, errlen, "%s: added_tokens[%d].content: missing or not a string", path, i);
    if (json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id))
      return fail(err, errlen, "%s: added_tokens[%d].id: missing or not an integer in [0, %d)", path, i, SN_MAX_TOKEN_ID);
    int special = json_flag(e, "special", 0);
    add_added_token(tok, content->valuestring, id, special, json_flag(e, "lstrip", 0), json_flag(e, "rstrip", 0),
                    json_flag(e, "single_word", 0), json_flag(e, "normalized", !special));
  }
  return 0;
}

static int load_wordpiece_model(sn_tokenizer *tok, const cJSON *model, const char *path, char *err, size_t errlen) {
  tok->is_wordpiece = 1;
  const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
  const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
  const cJSON *max_chars = cJSON_GetObjectItemCaseSensitive(model, "max_input_chars_per_word");
  if (!cJSON_IsString(unk)) return fail(err, errlen, "%s: model.unk_token: missing or not a string", path);
  tok->wp.unk_id = sn_strmap_get(&tok->vocab, unk->valuestring, strlen(unk->valuestring));
  if (tok->wp.unk_id < 0) return fail(err, errlen, "%s: model.unk_token: \"%.60s\" is not in model.vocab", path, unk->valuestring);
  tok->wp.prefix = strdupCheck(cJSON_IsString(prefix) ? prefix->valuestring : "##");
  tok->wp.prefix_len = strlen(tok->wp.prefix);
  int32_t max = BERT_MAX_INPUT_CHARS_PER_WORD;
  if (max_chars && json_id(max_chars, &max))
    return fail(err, errlen, "%s: model.max_input_chars_per_word: expected a non-negative integer", path);
  tok->wp.max_chars = max;
  return 0;
}

static int load_bpe_model(sn_tokenizer *tok, const cJSON *model, const char *path, char *err, size_t errlen) {
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  if (!cJSON_IsArray(merges)) return fail(err, errlen, "%s: model.merges: missing or not an array", path);
  if (json_flag(model, "byte_fallback", 0)) return fail(err, errlen, "%s: model.byte_fallback: true is not supported", path);
  const cJSON *prefix = cJSON_GetObjectItemCaseSensitive(model, "continuing_subword_prefix");
  const cJSON *suffix = cJSON_GetObjectItemCaseSensitive(model, "end_of_word_suffix");
  if ((cJSON_IsString(prefix) && prefix->valuestring[0]) || (cJSON_IsString(suffix) && suffix->valuestring[0]))
    return fail(err, errlen, "%s: model.continuing_subword_prefix/end_of_word_suffix: not supported", path);
  tok->bpe.ignore_merges = json_flag(model, "ignore_merges", 0);
  return sn_bpe_load_merges_json(tok, merges, path, err, errlen);
}

static int load_tokenizer_json(sn_tokenizer *tok, const char *path, const char *text, size_t len,
                               char *err, size_t errlen) {
  cJSON *root = cJSON_ParseWithLength(text, len);
  if (!root) {
    const char *where = cJSON_GetErrorPtr();
    long offset = where && where >= text && where <= text + len ? (long)(where - text) : -1;
    return fail(err, errlen, "%s: not valid JSON (near byte %ld)", path, offset);
  }
  int rc = -1;
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
  if (!cJSON_IsObject(root)) { fail(err, errlen, "%s: expected a JSON object at the top", path); goto done; }
  if (!cJSON_IsObject(model)) { fail(err, errlen, "%s: model: missing or not an object", path); goto done; }
  const char *type = json_type_name(model);
  if (!type)  // older files leave the type out: merges mean BPE
    type = cJSON_GetObjectItemCaseSensitive(model, "merges") ? "BPE" : "WordPiece";
  if (load_vocab_object(tok, cJSON_GetObjectItemCaseSensitive(model, "vocab"), path, "model.vocab", err, errlen)) goto done;
  if (load_added_tokens(tok, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path, err, errlen)) goto done;
  if (load_normalizer(tok, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), path, "normalizer", err, errlen)) goto done;
  if (load_pre_tokenizer(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), path, "pre_tokenizer", err, errlen)) goto done;
  if (load_post_processor(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), path, "post_processor", err, errlen)) goto done;
  if (strcmp(type, "BPE") == 0) {
    if (load_bpe_model(tok, model, path, err, errlen)) goto done;
    if (!tok->byte_level) { fail(err, errlen, "%s: pre_tokenizer: BPE is supported with a ByteLevel pre-tokenizer only", path); goto done; }
    if (sn_bpe_init_byte_level(tok, path, err, errlen)) goto done;
  } else if (strcmp(type, "WordPiece") == 0) {
    if (load_wordpiece_model(tok, model, path, err, errlen)) goto done;
  } else {
    fail(err, errlen, "%s: model.type: unsupported model \"%.40s\"", path, type);
    goto done;
  }
  rc = 0;
done:
  cJSON_Delete(root);
  return rc;
}

// ---- vocab.txt (BERT) ---------------------------------------------------------------------------

static int load_vocab_txt(sn_tokenizer *tok, const char *path, const char *text, size_t len,
                          int lowercase, char *err, size_t errlen) {
  sn_strmap_init(&tok->vocab, 1024);
  int32_t id = 0;
  for (size_t i = 0; i < len; id++) {
    size_t end = i;
    while (end < len && text[end] != '\n') end++;
    size_t line_end = end;
    if (line_end > i && text[line_end - 1] == '\r') line_end--;
    vocab_add(tok, text + i, line_end - i, id);
    i = end + 1;
  }
  if (id == 0) return fail(err, errlen, "%s: empty vocabulary", path);
  tok->is_wordpiece = 1;
  tok->wp.unk_id = sn_strmap_get(&tok->vocab, "[UNK]", 5);
  if (tok->wp.unk_id < 0) return fail(err, errlen, "%s: no [UNK] token", path);
  tok->wp.prefix = strdupCheck("##");
  tok->wp.prefix_len = 2;
  tok->wp.max_chars = BERT_MAX_INPUT_CHARS_PER_WORD;
  for (size_t k = 0; k < SN_ARRAY_LEN(BERT_SPECIAL_TOKENS); k++) {
    int32_t sid = sn_strmap_get(&tok->vocab, BERT_SPECIAL_TOKENS[k], strlen(BERT_SPECIAL_TOKENS[k]));
    if (sid >= 0) add_added_token(tok, BERT_SPECIAL_TOKENS[k], sid, 1, 0, 0, 0, 0);
  }
  tok->norm[0] = (sn_norm_step){SN_NORM_BERT, 1, 1, lowercase, lowercase};
  tok->n_norm = 1;
  tok->split = SN_SPLIT_BERT;
  int32_t cls = sn_strmap_get(&tok->vocab, "[CLS]", 5), sep = sn_strmap_get(&tok->vocab, "[SEP]", 5);
  if (cls < 0 || sep < 0) return fail(err, errlen, "%s: no [CLS] or [SEP] token", path);
  tok->prefix_ids[tok->n_prefix++] = cls;
  tok->suffix_ids[tok->n_suffix++] = sep;
  return 0;
}

// ---- GPT-2's encoder.json + vocab.bpe -----------------------------------------------------------

static int load_gpt2_pair(sn_tokenizer *tok, const char *vocab_path, const char *vocab_text, size_t vocab_len,
                          const char *merges_path, const char *merges_text, size_t merges_len, char *err, size_t errlen) {
  cJSON *vocab = cJSON_ParseWithLength(vocab_text, vocab_len);
  if (!vocab) return fail(err, errlen, "%s: not valid JSON", vocab_path);
  int rc = load_vocab_object(tok, vocab, vocab_path, "(top level)", err, errlen);
  cJSON_Delete(vocab);
  if (rc) return -1;
  // As GPT2TokenizerFast: byte-level with GPT-2's regex, no prefix space, <|endoftext|> special.
  tok->byte_level = 1;
  tok->split = SN_SPLIT_GPT2;
  int32_t eot = sn_strmap_get(&tok->vocab, "<|endoftext|>", 13);
  if (eot >= 0) add_added_token(tok, "<|endoftext|>", eot, 1, 0, 0, 0, 0);
  if (sn_bpe_load_merges_txt(tok, merges_text, merges_len, merges_path, err, errlen)) return -1;
  return sn_bpe_init_byte_level(tok, vocab_path, err, errlen);
}

// ---- tokenizer_config.json ----------------------------------------------------------------------

typedef struct { char eos[128], pad[128]; int lowercase; } tokenizer_config;

// eos_token/pad_token are strings or {"content": …}.
static void config_token(const cJSON *root, const char *key, char *out, size_t outlen) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
  if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
  if (cJSON_IsString(v)) snprintf(out, outlen, "%s", v->valuestring);
}

static void read_config(const char *dir, tokenizer_config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->lowercase = 1;  // BERT's default for a bare vocab.txt
  char path[4096];
  if (join_path(path, sizeof(path), dir, "tokenizer_config.json")) return;
  size_t len;
  char *text = sn_read_file(path, &len);
  if (!text) return;
  cJSON *root = cJSON_ParseWithLength(text, len);
  if (root) {
    config_token(root, "eos_token", cfg->eos, sizeof(cfg->eos));
    config_token(root, "pad_token", cfg->pad, sizeof(cfg->pad));
    cfg->lowercase = json_flag(root, "do_lower_case", 1);
  }
  cJSON_Delete(root);
  free(text);
}

// ---- special ids, fingerprint -------------------------------------------------------------------

static int32_t first_known(const sn_tokenizer *tok, const char *const *names, size_t count) {
  for (size_t i = 0; i < count; i++)
    if (names[i] && names[i][0]) {
      int32_t id = sn_tokenizer_token_to_id(tok, names[i]);
      if (id >= 0) return id;
    }
  return -1;
}

static void set_special_ids(sn_tokenizer *tok, const tokenizer_config *cfg) {
  if (tok->is_wordpiece) {
    const char *eos[] = {"[SEP]", cfg->eos}, *pad[] = {"[PAD]", cfg->pad};
    tok->eos_id = first_known(tok, eos, SN_ARRAY_LEN(eos));
    tok->pad_id = first_known(tok, pad, SN_ARRAY_LEN(pad));
  } else {
    // <|endoftext|> first: it is what Qwen embedding models end a text with and pool on.
    const char *eos[] = {"<|endoftext|>", cfg->eos, "<|end_of_text|>", "</s>"};
    const char *pad[] = {cfg->pad, "<|endoftext|>", "<|end_of_text|>", "<pad>"};
    tok->eos_id = first_known(tok, eos, SN_ARRAY_LEN(eos));
    tok->pad_id = first_known(tok, pad, SN_ARRAY_LEN(pad));
  }
}

static void set_fingerprint(sn_tokenizer *tok, uint64_t content_hash) {
  snprintf(tok->fingerprint, sizeof(tok->fingerprint), "%s-%016llx",
           tok->is_wordpiece ? "wordpiece" : "bpe", (unsigned long long)content_hash);
}

// ---- load / free --------------------------------------------------------------------------------

void sn_tokenizer_free(sn_tokenizer *tok) {
  if (!tok) return;
  for (int i = 0; i < tok->vocab_size; i++) free(tok->tokens[i]);
  free(tok->tokens);
  sn_strmap_free(&tok->vocab);
  for (int i = 0; i < tok->n_added; i++) free(tok->added[i].content);
  free(tok->added);
  sn_bpe_free(&tok->bpe);
  free(tok->wp.prefix);
  free(tok);
}

// What every loader does last: longest added tokens first, special ids, the identity string.
static void finish_load(sn_tokenizer *tok, const tokenizer_config *cfg, uint64_t content_hash) {
  prepare_added_tokens(tok);
  set_special_ids(tok, cfg);
  set_fingerprint(tok, content_hash);
}

static sn_tokenizer *new_tokenizer(void) {
  sn_tokenizer *tok = callocCheck(1, sizeof(sn_tokenizer));
  tok->serial = atomic_fetch_add(&next_serial, 1);
  return tok;
}

sn_tokenizer *sn_tokenizer_load_json(const char *json, size_t len, const char *name, char *err, size_t errlen) {
  if (err && errlen) err[0] = 0;
  sn_tokenizer *tok = new_tokenizer();
  if (load_tokenizer_json(tok, name, json, len, err, errlen)) { sn_tokenizer_free(tok); return NULL; }
  tokenizer_config cfg = {.lowercase = 1};
  finish_load(tok, &cfg, sn_hash_bytes(json, len));
  return tok;
}

// Reads path into *text; on failure sets err naming the file.
static int read_whole(const char *path, char **text, size_t *len, char *err, size_t errlen) {
  *text = sn_read_file(path, len);
  if (!*text) return fail(err, errlen, "%s: cannot read", path);
  return 0;
}

static const char *first_existing(const char *dir, const char *const *names, size_t count, char *buf, size_t buflen) {
  for (size_t i = 0; i < count; i++) {
    if (join_path(buf, buflen, dir, names[i]) == 0 && file_exists(buf)) return buf;
  }
  return NULL;
}

sn_tokenizer *sn_tokenizer_load(const char *file_or_dir, char *err, size_t errlen) {
  if (err && errlen) err[0] = 0;
  sn_tokenizer *tok = new_tokenizer();
  char dir[4096], path[4096], path2[4096];
  char *text = NULL, *text2 = NULL;
  size_t len = 0, len2 = 0;
  int rc = -1;
  if (sn_is_dir(file_or_dir)) {
    snprintf(dir, sizeof(dir), "%s", file_or_dir);
    static const char *const json_names[] = {"tokenizer.json"}, *const vocab_txt[] = {"vocab.txt"};
    static const char *const vocab_json[] = {"vocab.json", "encoder.json"}, *const merges[] = {"merges.txt", "vocab.bpe"};
    if (!first_existing(dir, json_names, 1, path, sizeof(path)) && !first_existing(dir, vocab_txt, 1, path, sizeof(path)) &&
        !(first_existing(dir, vocab_json, 2, path, sizeof(path)) && first_existing(dir, merges, 2, path2, sizeof(path2)))) {
      fail(err, errlen, "%s: no tokenizer.json, vocab.txt or vocab.json/encoder.json + merges.txt/vocab.bpe", file_or_dir);
      goto done;
    }
  } else {
    snprintf(path, sizeof(path), "%s", file_or_dir);
    snprintf(dir, sizeof(dir), "%s", file_or_dir);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else snprintf(dir, sizeof(dir), ".");
  }
  tokenizer_config cfg;
  read_config(dir, &cfg);
  if (read_whole(path, &text, &len, err, errlen)) goto done;
  uint64_t hash = sn_hash_bytes(text, len);
  const char *name = base_name(path);
  if (strcmp(name, "vocab.txt") == 0) {
    hash ^= (uint64_t)cfg.lowercase;  // do_lower_case changes the ids too
    rc = load_vocab_txt(tok, path, text, len, cfg.lowercase, err, errlen);
  } else if (strcmp(name, "vocab.json") == 0 || strcmp(name, "encoder.json") == 0) {
    static const char *const merges[] = {"merges.txt", "vocab.bpe"};
    if (!first_existing(dir, merges, 2, path2, sizeof(path2))) {
      fail(err, errlen, "%s: no merges.txt or vocab.bpe beside it", path);
      goto done;
    }
    if (read_whole(path2, &text2, &len2, err, errlen)) goto done;
    hash ^= sn_hash_bytes(text2, len2) * 31;
    rc = load_gpt2_pair(tok, path, text, len, path2, text2, len2, err, errlen);
  } else {
    rc = load_tokenizer_json(tok, path, text, len, err, errlen);
  }
  if (rc) goto done;
  finish_load(tok, &cfg, hash);
done:
  free(text);
  free(text2);
  if (rc) { sn_tokenizer_free(tok); return NULL; }
  return tok;
}

// ---- queries ------------------------------------------------------------------------------------

int sn_tokenizer_vocab_size(const sn_tokenizer *tok) { return tok->vocab_size; }
int32_t sn_tokenizer_token_to_id(const sn_tokenizer *tok, const char *token) {
  return sn_strmap_get(&tok->vocab, token, strlen(token));
}
int32_t sn_tokenizer_eos_id(const sn_tokenizer *tok) { return tok->eos_id; }
int32_t sn_tokenizer_pad_id(const sn_tokenizer *tok) { return tok->pad_id; }
int sn_tokenizer_is_wordpiece(const sn_tokenizer *tok) { return tok->is_wordpiece; }
const char *sn_tokenizer_fingerprint(const sn_tokenizer *tok) { return tok->fingerprint; }
const char *sn_tokenizer_id_to_token(const sn_tokenizer *tok, int32_t id) {
  return id >= 0 && id < tok->vocab_size ? tok->tokens[id] : NULL;
}

// ---- encoding -----------------------------------------------------------------------------------

static void normalize(const sn_tokenizer *tok, uint32_t **cps, size_t *n, size_t *cap) {
  for (int i = 0; i < tok->n_norm; i++) {
    const sn_norm_step *step = &tok->norm[i];
    switch (step->kind) {
      case SN_NORM_NFC: sn_unicode_nfc(cps, n, cap); break;
      case SN_NORM_NFD: sn_unicode_nfd(cps, n, cap); break;
      case SN_NORM_BERT: sn_bert_normalize(step, cps, n, cap); break;
      case SN_NORM_LOWERCASE: {
        sn_norm_step only_lower = {SN_NORM_BERT, 0, 0, 0, 1};
        sn_bert_normalize(&only_lower, cps, n, cap);
        break;
      }
      case SN_NORM_STRIP_ACCENTS: {
        sn_norm_step only_strip = {SN_NORM_BERT, 0, 0, 1, 0};
        sn_bert_normalize(&only_strip, cps, n, cap);
        break;
      }
    }
  }
}

// Pre-tokenizes normalized text that holds no added token and runs the model on each piece.
// Takes cps (malloc'd) over.
static void encode_pieces(const sn_tokenizer *tok, uint32_t *cps, size_t n_cps, size_t cps_cap, int32_t **ids,
                          size_t *n, size_t *cap) {
  if (tok->byte_level && tok->add_prefix_space && !tok->prefix_space_per_piece && n_cps > 0 && cps[0] != ' ') {
    if (n_cps + 1 > cps_cap) cps = reallocCheck(cps, (cps_cap = n_cps + 1) * sizeof(uint32_t));
    memmove(cps + 1, cps, n_cps * sizeof(uint32_t));
    cps[0] = ' ';
    n_cps++;
  }
  char *piece = tok->is_wordpiece ? NULL : mallocCheck(4 * n_cps + 2);
  size_t pos = 0, start, end;
  while (sn_pretok_next(tok->split, cps, n_cps, &pos, &start, &end)) {
    if (tok->is_wordpiece) {
      sn_wordpiece_encode_word(tok, cps + start, end - start, ids, n, cap);
    } else {
      size_t bytes = 0;
      if (tok->prefix_space_per_piece && cps[start] != ' ') piece[bytes++] = ' ';
      for (size_t i = start; i < end; i++) {
        if (cps[i] < 0x80) piece[bytes++] = (char)cps[i];
        else bytes += sn_utf8_encode(cps[i], piece + bytes);
      }
      sn_bpe_encode_word(tok, piece, bytes, ids, n, cap);
    }
  }
  free(piece);
  free(cps);
}

// The code point that ends just before text[i] (not before lo) / starts at text[i]: its byte
// length, 0 when there is none.
static size_t cp_before(const char *text, size_t lo, size_t i, uint32_t *cp) {
  if (i <= lo) return 0;
  size_t start = i - 1;
  while (start > lo && i - start < 4 && ((unsigned char)text[start] & 0xC0) == 0x80) start--;
  size_t len = sn_utf8_decode((const unsigned char *)text + start, i - start, cp);
  if (start + len != i) { *cp = SN_UNICODE_REPLACEMENT; return 1; }  // a stray byte
  return len;
}
static size_t cp_at(const char *text, size_t len, size_t i, uint32_t *cp) {
  return i < len ? sn_utf8_decode((const unsigned char *)text + i, len - i, cp) : 0;
}

// single_word: a token must not touch a word character (Rust regex's \w: alphabetic, marks,
// decimal digits, connector punctuation such as _, and the joiners U+200C/U+200D).
#define ZERO_WIDTH_NON_JOINER 0x200C
#define ZERO_WIDTH_JOINER 0x200D
static int is_word_char(uint32_t cp) {
  enum sn_ucat k = sn_unicode_category(cp);
  return sn_unicode_is_letter(cp) || k == SN_UCAT_NL || k == SN_UCAT_ND || k == SN_UCAT_MN || k == SN_UCAT_MC ||
         k == SN_UCAT_ME || k == SN_UCAT_PC || cp == ZERO_WIDTH_NON_JOINER || cp == ZERO_WIDTH_JOINER;
}

// Finds the first added token at or after pos (longest at the earliest position). Returns it with
// the span it takes, lstrip/rstrip white space included, or NULL.
static const sn_added_token *find_added(const sn_tokenizer *tok, int pass, const char *text, size_t len,
                                        size_t pos, size_t *match_start, size_t *match_end) {
  if (!tok->n_added) return NULL;
  for (size_t i = pos; i < len; i++) {
    if (!(tok->added_first_byte[(unsigned char)text[i]] & pass)) continue;
    for (int k = 0; k < tok->n_added; k++) {
      const sn_added_token *a = &tok->added[k];
      if ((a->normalized ? SN_ADDED_NORMALIZED : SN_ADDED_RAW) != pass || !a->len) continue;
      if (a->len > len - i || memcmp(text + i, a->content, a->len) != 0) continue;
      size_t s = i, e = i + a->len;
      uint32_t before, after;
      if (a->single_word && ((cp_before(text, 0, s, &before) && is_word_char(before)) ||
                             (cp_at(text, len, e, &after) && is_word_char(after))))
        continue;
      for (size_t k; a->lstrip && (k = cp_before(text, pos, s, &before)) && sn_unicode_is_white_space(before);) s -= k;
      for (size_t k; a->rstrip && (k = cp_at(text, len, e, &after)) && sn_unicode_is_white_space(after);) e += k;
      *match_start = s;
      *match_end = e;
      return a;
    }
  }
  return NULL;
}

typedef void (*between_fn)(const sn_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n,
                           size_t *cap);

// Cuts the added tokens of one pass out of text: their ids go out, the text between them goes to
// encode_between.
static void split_added(const sn_tokenizer *tok, int pass, const char *text, size_t len, between_fn encode_between,
                        int32_t **ids, size_t *n, size_t *cap) {
  size_t pos = 0;
  while (pos < len) {
    size_t s = len, e = len;
    const sn_added_token *a = find_added(tok, pass, text, len, pos, &s, &e);
    if (s > pos) encode_between(tok, text + pos, s - pos, ids, n, cap);
    if (a) sn_ids_push(ids, n, cap, a->id);
    pos = e;
  }
}

// Text between normalized added tokens: already normalized.
static void encode_normalized_gap(const sn_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n,
                                  size_t *cap) {
  uint32_t *cps;
  size_t n_cps;
  sn_utf8_to_cps(text, len, &cps, &n_cps);
  encode_pieces(tok, cps, n_cps, n_cps + 1, ids, n, cap);
}

// Text between raw added tokens: decoded (invalid UTF-8 → U+FFFD), normalized, then cut by the
// normalized added tokens when there are any.
static void encode_raw_gap(const sn_tokenizer *tok, const char *text, size_t len, int32_t **ids, size_t *n,
                           size_t *cap) {
  uint32_t *cps;
  size_t n_cps;
  sn_utf8_to_cps(text, len, &cps, &n_cps);
  size_t cps_cap = n_cps + 1;
  normalize(tok, &cps, &n_cps, &cps_cap);
  if (!tok->has_normalized_added) {
    encode_pieces(tok, cps, n_cps, cps_cap, ids, n, cap);
    return;
  }
  size_t bytes;
  char *normalized = cps_to_utf8(cps, n_cps, &bytes);
  free(cps);
  split_added(tok, SN_ADDED_NORMALIZED, normalized, bytes, encode_normalized_gap, ids, n, cap);
  free(normalized);
}

size_t sn_tokenizer_encode(const sn_tokenizer *tok, const char *text, size_t len, int add_special,
                           int32_t **ids, size_t *n, size_t *cap) {
  size_t first = *n;
  if (add_special) for (int i = 0; i < tok->n_prefix; i++) sn_ids_push(ids, n, cap, tok->prefix_ids[i]);
  split_added(tok, SN_ADDED_RAW, text, len, encode_raw_gap, ids, n, cap);
  if (add_special) for (int i = 0; i < tok->n_suffix; i++) sn_ids_push(ids, n, cap, tok->suffix_ids[i]);
  return *n - first;
}
