// The string → id hash map and the tokenizer's two tables the loaders fill: id → token (with its
// map the other way) and the added tokens.
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "tokenizer_internal.h"

uint64_t sn_hash_bytes(const void *data, size_t len) {  // FNV-1a, 64-bit
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++) { h ^= p[i]; h *= 0x100000001b3ULL; }
  return h;
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

// ---- vocabulary ---------------------------------------------------------------------------------

// Sets tokens[id] = token (copied) and maps it; grows the table. A token already present keeps
// its first id in the map (the id → token direction is still filled).
void sn_vocab_add(sn_tokenizer *tok, const char *token, size_t len, int32_t id) {
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

void sn_added_token_add(sn_tokenizer *tok, const char *content, int32_t id, int special,
                        int lstrip, int rstrip, int single_word, int normalized) {
  size_t len = strlen(content);
  if (len == 0) return;
  sn_vocab_add(tok, content, len, id);
  tok->added = reallocCheck(tok->added, (size_t)(tok->n_added + 1) * sizeof(sn_added_token));
  tok->added[tok->n_added++] =
      (sn_added_token){strdupCheck(content), len, id, special, lstrip, rstrip, single_word, normalized};
}
