// Shared between the tokenizer files: the loaded tokenizer and the pieces of the encode pipeline
// (added-token split → normalizer → pre-tokenizer → model → post-processor), as Hugging Face
// `tokenizers` runs them.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

// ---- string → id hash map (vocabularies) --------------------------------------------------------
typedef struct {
  const char **keys;  // borrowed NUL-terminated strings (owned by the tokenizer's token table)
  uint32_t *key_lens;
  int32_t *values;
  size_t cap;         // power of two; 0 = empty map
  size_t count;
} sn_strmap;

uint64_t sn_hash_bytes(const void *data, size_t len);
void sn_strmap_init(sn_strmap *m, size_t expected);
void sn_strmap_free(sn_strmap *m);
// Inserts or overwrites key (not copied: it must outlive the map).
void sn_strmap_put(sn_strmap *m, const char *key, size_t len, int32_t value);
int32_t sn_strmap_get(const sn_strmap *m, const char *key, size_t len);  // -1 when absent

// ---- pre-tokenizers: the Split regexes and BERT's splitter as state machines --------------------
typedef enum {
  SN_SPLIT_NONE,    // the whole segment is one piece
  SN_SPLIT_GPT2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  SN_SPLIT_QWEN2,   // (?i:'s|…)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|…
  SN_SPLIT_LLAMA3,  // the same with \p{N}{1,3}
  SN_SPLIT_BERT,    // BertPreTokenizer: drop white space, isolate each punctuation character
} sn_split_kind;

// Maps a Split pre-tokenizer's regex string to its state machine; SN_SPLIT_NONE when unknown.
sn_split_kind sn_split_kind_from_regex(const char *pattern, int *known);
// Finds the next piece of cps[*pos..n): [*start, *end) and advances *pos. Returns 0 when done.
int sn_pretok_next(sn_split_kind kind, const uint32_t *cps, size_t n, size_t *pos, size_t *start,
                   size_t *end);

// ---- normalizers --------------------------------------------------------------------------------
typedef enum { SN_NORM_NFC, SN_NORM_NFD, SN_NORM_LOWERCASE, SN_NORM_BERT, SN_NORM_STRIP_ACCENTS } sn_norm_kind;
typedef struct {
  sn_norm_kind kind;
  int clean_text, handle_chinese_chars, strip_accents, lowercase;  // SN_NORM_BERT only
} sn_norm_step;
#define SN_MAX_NORM_STEPS 8

// ---- models -------------------------------------------------------------------------------------
typedef struct {
  uint64_t *keys;      // (left id << 32 | right id) + 1; 0 = empty slot
  uint32_t *ranks;
  int32_t *merged_ids;
  size_t cap;          // power of two
} sn_merge_map;

typedef struct {
  sn_merge_map merges;
  int32_t byte_ids[256];  // id of each byte's byte-level character
  int ignore_merges;      // a word that is itself in the vocabulary is not merged
} sn_bpe;

typedef struct {
  int32_t unk_id;
  char *prefix;          // continuing_subword_prefix ("##")
  size_t prefix_len;
  int max_chars;         // max_input_chars_per_word; longer words become [UNK]
} sn_wordpiece;

typedef struct {
  char *content;   // what is matched: the token, or for a normalized one its normalized form
  size_t len;
  int32_t id;
  int special, lstrip, rstrip, single_word;
  int normalized;  // matched in the normalizer's output rather than in the raw text
} sn_added_token;

// The two passes that cut added tokens out: on the raw text, then on each normalized segment.
enum { SN_ADDED_RAW = 1, SN_ADDED_NORMALIZED = 2 };

#define SN_MAX_TEMPLATE_IDS 8

struct sn_tokenizer {
  int is_wordpiece;
  char **tokens;          // id → token string (NULL for holes)
  int vocab_size;         // largest id + 1
  sn_strmap vocab;        // token string → id, added tokens included
  sn_added_token *added;  // longest first, so the first match at a position is the longest
  int n_added;
  uint8_t added_first_byte[256];  // SN_ADDED_* bits: some token of that pass starts with the byte
  int has_normalized_added;
  sn_norm_step norm[SN_MAX_NORM_STEPS];
  int n_norm;
  sn_split_kind split;
  int byte_level;         // ByteLevel pre-tokenizer: bytes → printable characters
  int add_prefix_space;   // ByteLevel's add_prefix_space
  int prefix_space_per_piece;  // ByteLevel came after a Split: each piece gets the space
  sn_bpe bpe;
  sn_wordpiece wp;
  int32_t prefix_ids[SN_MAX_TEMPLATE_IDS], suffix_ids[SN_MAX_TEMPLATE_IDS];  // add_special ids
  int n_prefix, n_suffix;
  int32_t eos_id, pad_id;
  uint64_t serial;        // unique per loaded tokenizer: keys the per-thread word caches
  char fingerprint[64];
};

// ---- loading (tokenizer_load.c, tokenizer_json.c, tokenizer_vocab.c) ---------------------------

// BERT's defaults (what `tokenizers` BertWordPieceTokenizer uses for a bare vocab.txt).
#define BERT_MAX_INPUT_CHARS_PER_WORD 100

// Writes the message into err (when there is one); returns -1.
int sn_tok_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// A JSON object's boolean field, or fallback when it is absent or not a boolean.
int sn_json_flag(const void *obj_cjson, const char *key, int fallback);

// tokens[id] = token (copied) and the map entry; a token already present keeps its first id.
void sn_vocab_add(sn_tokenizer *tok, const char *token, size_t len, int32_t id);
// Fills tokens and vocab from a JSON object {token: id}. Returns 0, or -1 with err set.
int sn_vocab_load_object(sn_tokenizer *tok, const void *vocab_cjson, const char *path, const char *field,
                         char *err, size_t errlen);
// Registers an added token (and puts it in the vocabulary); an empty one is ignored.
void sn_added_token_add(sn_tokenizer *tok, const char *content, int32_t id, int special,
                        int lstrip, int rstrip, int single_word, int normalized);
// Normalized added tokens to their normalized form, the first-byte filter, longest first.
void sn_added_tokens_prepare(sn_tokenizer *tok);
// Parses tokenizer.json text into tok. Returns 0, or -1 with err set.
int sn_tokenizer_json_parse(sn_tokenizer *tok, const char *path, const char *text, size_t len,
                            char *err, size_t errlen);

// Model loaders (tok->tokens and tok->vocab filled first). Return 0, or -1 with err set.
int sn_bpe_load_merges_json(sn_tokenizer *tok, const void *merges_cjson, const char *path,
                            char *err, size_t errlen);
int sn_bpe_load_merges_txt(sn_tokenizer *tok, const char *text, size_t len, const char *path,
                           char *err, size_t errlen);
int sn_bpe_init_byte_level(sn_tokenizer *tok, const char *path, char *err, size_t errlen);
void sn_bpe_free(sn_bpe *bpe);
// Byte-level character (as UTF-8, up to 2 bytes) of byte b; returns its length.
size_t sn_byte_level_char(unsigned char b, char out[2]);

// Model encoders: append the ids of one pre-tokenized piece.
void sn_bpe_encode_word(const sn_tokenizer *tok, const char *word, size_t len, int32_t **ids,
                        size_t *n, size_t *cap);
void sn_wordpiece_encode_word(const sn_tokenizer *tok, const uint32_t *cps, size_t n_cps,
                              int32_t **ids, size_t *n, size_t *cap);
// BERT's normalizer, applied to a code point buffer (malloc'd) in place.
void sn_bert_normalize(const sn_norm_step *step, uint32_t **cps, size_t *n, size_t *cap);

void sn_ids_push(int32_t **ids, size_t *n, size_t *cap, int32_t id);
