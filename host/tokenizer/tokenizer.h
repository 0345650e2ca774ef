// Tokenizers read from the files users already have: byte-level BPE (GPT-2, Qwen2/2.5/3, Llama-3)
// from tokenizer.json or GPT-2's encoder.json/vocab.json + vocab.bpe/merges.txt, and WordPiece
// (BERT) from tokenizer.json or vocab.txt. Ids are identical to Hugging Face `tokenizers`.
#pragma once
#include <stddef.h>
#include <stdint.h>

typedef struct sn_tokenizer sn_tokenizer;

// Loads a tokenizer from a file (tokenizer.json, vocab.txt) or a folder (tokenizer.json, else
// vocab.txt, else vocab.json/encoder.json + merges.txt/vocab.bpe; tokenizer_config.json is read
// for special-token settings when present). Returns NULL with a message in err naming the file and
// field on failure; never exits (the fuzz target drives it).
sn_tokenizer *sn_tokenizer_load(const char *file_or_dir, char *err, size_t errlen);
void sn_tokenizer_free(sn_tokenizer *tok);

// Encodes text (len bytes, any bytes; invalid UTF-8 handled as Hugging Face does) and appends ids
// to *ids (realloc'd; *n ids, *cap capacity). add_special: what add_special_tokens=True means in
// Hugging Face (the post-processor's BOS/EOS/CLS/SEP). Thread-safe (caches are per thread).
// Returns the number of ids appended.
size_t sn_tokenizer_encode(const sn_tokenizer *tok, const char *text, size_t len, int add_special,
                           int32_t **ids, size_t *n, size_t *cap);

int sn_tokenizer_vocab_size(const sn_tokenizer *tok);  // largest id + 1, added tokens included
int32_t sn_tokenizer_token_to_id(const sn_tokenizer *tok, const char *token);  // -1 if absent
// Special ids, -1 when the tokenizer has none: eos is what last-token pooling reads (Qwen:
// <|endoftext|>; BERT: [SEP]); bos/cls are prepended by add_special where the tokenizer does.
int32_t sn_tokenizer_eos_id(const sn_tokenizer *tok);
int32_t sn_tokenizer_pad_id(const sn_tokenizer *tok);
int sn_tokenizer_is_wordpiece(const sn_tokenizer *tok);
// A short identity string (kind + a hash of the files' contents) for cache keys.
const char *sn_tokenizer_fingerprint(const sn_tokenizer *tok);
// The token string of id (byte-level tokens in their printable spelling), NULL when out of range.
const char *sn_tokenizer_id_to_token(const sn_tokenizer *tok, int32_t id);
// Loads a tokenizer.json held in memory (json, len bytes); name is what error messages call it.
// No tokenizer_config.json is read. NULL with a message in err on failure.
sn_tokenizer *sn_tokenizer_load_json(const char *json, size_t len, const char *name, char *err, size_t errlen);
