// Loading: finds the files (tokenizer.json, vocab.txt, GPT-2's encoder.json + vocab.bpe) and
// tokenizer_config.json, reads vocab.txt and the GPT-2 pair, sets the special ids and the
// fingerprint; load and free.
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cJSON.h>

#include "common.h"
#include "tokenizer_internal.h"

// BERT's special tokens (what `tokenizers` BertWordPieceTokenizer uses for a bare vocab.txt).
static const char *const BERT_SPECIAL_TOKENS[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};

static atomic_uint_fast64_t next_serial = 1;

// ---- small helpers ------------------------------------------------------------------------------

int sn_tok_fail(char *err, size_t errlen, const char *fmt, ...) {
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
    sn_vocab_add(tok, text + i, line_end - i, id);
    i = end + 1;
  }
  if (id == 0) return sn_tok_fail(err, errlen, "%s: empty vocabulary", path);
  tok->is_wordpiece = 1;
  tok->wp.unk_id = sn_strmap_get(&tok->vocab, "[UNK]", 5);
  if (tok->wp.unk_id < 0) return sn_tok_fail(err, errlen, "%s: no [UNK] token", path);
  tok->wp.prefix = strdupCheck("##");
  tok->wp.prefix_len = 2;
  tok->wp.max_chars = BERT_MAX_INPUT_CHARS_PER_WORD;
  for (size_t k = 0; k < SN_ARRAY_LEN(BERT_SPECIAL_TOKENS); k++) {
    int32_t sid = sn_strmap_get(&tok->vocab, BERT_SPECIAL_TOKENS[k], strlen(BERT_SPECIAL_TOKENS[k]));
    if (sid >= 0) sn_added_token_add(tok, BERT_SPECIAL_TOKENS[k], sid, 1, 0, 0, 0, 0);
  }
  tok->norm[0] = (sn_norm_step){SN_NORM_BERT, 1, 1, lowercase, lowercase};
  tok->n_norm = 1;
  tok->split = SN_SPLIT_BERT;
  int32_t cls = sn_strmap_get(&tok->vocab, "[CLS]", 5), sep = sn_strmap_get(&tok->vocab, "[SEP]", 5);
  if (cls < 0 || sep < 0) return sn_tok_fail(err, errlen, "%s: no [CLS] or [SEP] token", path);
  tok->prefix_ids[tok->n_prefix++] = cls;
  tok->suffix_ids[tok->n_suffix++] = sep;
  return 0;
}

// ---- GPT-2's encoder.json + vocab.bpe -----------------------------------------------------------

static int load_gpt2_pair(sn_tokenizer *tok, const char *vocab_path, const char *vocab_text, size_t vocab_len,
                          const char *merges_path, const char *merges_text, size_t merges_len, char *err, size_t errlen) {
  cJSON *vocab = cJSON_ParseWithLength(vocab_text, vocab_len);
  if (!vocab) return sn_tok_fail(err, errlen, "%s: not valid JSON", vocab_path);
  int rc = sn_vocab_load_object(tok, vocab, vocab_path, "(top level)", err, errlen);
  cJSON_Delete(vocab);
  if (rc) return -1;
  // As GPT2TokenizerFast: byte-level with GPT-2's regex, no prefix space, <|endoftext|> special.
  tok->byte_level = 1;
  tok->split = SN_SPLIT_GPT2;
  int32_t eot = sn_strmap_get(&tok->vocab, "<|endoftext|>", 13);
  if (eot >= 0) sn_added_token_add(tok, "<|endoftext|>", eot, 1, 0, 0, 0, 0);
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
    cfg->lowercase = sn_json_flag(root, "do_lower_case", 1);
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
  sn_added_tokens_prepare(tok);
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
  if (sn_tokenizer_json_parse(tok, name, json, len, err, errlen)) { sn_tokenizer_free(tok); return NULL; }
  tokenizer_config cfg = {.lowercase = 1};
  finish_load(tok, &cfg, sn_hash_bytes(json, len));
  return tok;
}

// Reads path into *text; on failure sets err naming the file.
static int read_whole(const char *path, char **text, size_t *len, char *err, size_t errlen) {
  *text = sn_read_file(path, len);
  if (!*text) return sn_tok_fail(err, errlen, "%s: cannot read", path);
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
      sn_tok_fail(err, errlen, "%s: no tokenizer.json, vocab.txt or vocab.json/encoder.json + merges.txt/vocab.bpe", file_or_dir);
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
      sn_tok_fail(err, errlen, "%s: no merges.txt or vocab.bpe beside it", path);
      goto done;
    }
    if (read_whole(path2, &text2, &len2, err, errlen)) goto done;
    hash ^= sn_hash_bytes(text2, len2) * 31;
    rc = load_gpt2_pair(tok, path, text, len, path2, text2, len2, err, errlen);
  } else {
    rc = sn_tokenizer_json_parse(tok, path, text, len, err, errlen);
  }
  if (rc) goto done;
  finish_load(tok, &cfg, hash);
done:
  free(text);
  free(text2);
  if (rc) { sn_tokenizer_free(tok); return NULL; }
  return tok;
}
