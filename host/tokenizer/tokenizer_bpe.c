// Byte-level BPE: the byte → printable-character map, the merge table (pair of ids → rank and
// merged id) and word encoding, lowest rank first and leftmost on ties as `tokenizers` merges, with
// a per-thread cache of recent words because most words of a text repeat.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "common.h"
#include "tokenizer_internal.h"

// ---- byte-level characters ----------------------------------------------------------------------

// GPT-2's map: printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space,
// DEL, NBSP, soft hyphen) take code points from U+0100 upwards, in byte order.
#define BYTE_LEVEL_SHIFTED_BASE 0x100

static int byte_is_printable(unsigned b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

size_t sn_byte_level_char(unsigned char b, char out[2]) {
  unsigned cp = b;
  if (!byte_is_printable(b)) {
    cp = BYTE_LEVEL_SHIFTED_BASE;
    for (unsigned x = 0; x < b; x++) cp += !byte_is_printable(x);
  }
  if (cp < 0x80) { out[0] = (char)cp; return 1; }
  out[0] = (char)(0xC0 | (cp >> 6));
  out[1] = (char)(0x80 | (cp & 0x3F));
  return 2;
}

int sn_bpe_init_byte_level(sn_tokenizer *tok, const char *path, char *err, size_t errlen) {
  for (int b = 0; b < 256; b++) {
    char ch[2];
    size_t len = sn_byte_level_char((unsigned char)b, ch);
    tok->bpe.byte_ids[b] = sn_strmap_get(&tok->vocab, ch, len);
    if (tok->bpe.byte_ids[b] < 0) {
      snprintf(err, errlen, "%s: model.vocab: no token for byte 0x%02X (byte-level character '%.*s')",
               path, b, (int)len, ch);
      return -1;
    }
  }
  return 0;
}

// ---- merge table --------------------------------------------------------------------------------

static uint64_t pair_key(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }
static size_t mix64(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33;
  return (size_t)x;
}

static void merge_map_init(sn_merge_map *m, size_t expected) {
  m->cap = 16;
  while (m->cap < expected * 2) m->cap *= 2;  // load factor at most 1/2
  m->keys = callocCheck(m->cap, sizeof(uint64_t));
  m->ranks = mallocCheck(m->cap * sizeof(uint32_t));
  m->merged_ids = mallocCheck(m->cap * sizeof(int32_t));
}

// Returns the slot of the pair (its key 0 when absent).
static size_t merge_map_slot(const sn_merge_map *m, uint64_t key) {
  size_t mask = m->cap - 1, i = mix64(key) & mask;
  while (m->keys[i] && m->keys[i] != key) i = (i + 1) & mask;
  return i;
}

// Adds one merge "a b" of the given rank. Returns 0, or -1 with err naming the field.
static int add_merge(sn_tokenizer *tok, const char *a, size_t alen, const char *b, size_t blen,
                     uint32_t rank, const char *path, char *err, size_t errlen) {
  int32_t ia = sn_strmap_get(&tok->vocab, a, alen), ib = sn_strmap_get(&tok->vocab, b, blen);
  char *joined = mallocCheck(alen + blen + 1);
  memcpy(joined, a, alen);
  memcpy(joined + alen, b, blen);
  joined[alen + blen] = 0;
  int32_t merged = sn_strmap_get(&tok->vocab, joined, alen + blen);
  free(joined);
  if (ia < 0 || ib < 0 || merged < 0) {
    snprintf(err, errlen, "%s: model.merges[%u]: \"%.*s %.*s\" uses a token missing from model.vocab",
             path, rank, (int)alen, a, (int)blen, b);
    return -1;
  }
  sn_merge_map *m = &tok->bpe.merges;
  uint64_t key = pair_key(ia, ib);
  size_t slot = merge_map_slot(m, key);
  // A repeated pair takes its last rank, as `tokenizers` (which collects merges into a map) does.
  m->keys[slot] = key;
  m->ranks[slot] = rank;
  m->merged_ids[slot] = merged;
  return 0;
}

int sn_bpe_load_merges_json(sn_tokenizer *tok, const void *merges_cjson, const char *path,
                            char *err, size_t errlen) {
  const cJSON *merges = merges_cjson;
  merge_map_init(&tok->bpe.merges, (size_t)cJSON_GetArraySize(merges));
  uint32_t rank = 0;
  for (const cJSON *e = merges->child; e; e = e->next, rank++) {
    if (cJSON_IsString(e)) {  // "a b"
      const char *s = e->valuestring, *space = strchr(s, ' ');
      if (!space || space == s || !space[1]) {
        snprintf(err, errlen, "%s: model.merges[%u]: expected \"left right\", got \"%.60s\"", path, rank, s);
        return -1;
      }
      if (add_merge(tok, s, (size_t)(space - s), space + 1, strlen(space + 1), rank, path, err, errlen)) return -1;
    } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
               cJSON_IsString(e->child->next)) {  // ["a", "b"]
      const char *a = e->child->valuestring, *b = e->child->next->valuestring;
      if (add_merge(tok, a, strlen(a), b, strlen(b), rank, path, err, errlen)) return -1;
    } else {
      snprintf(err, errlen, "%s: model.merges[%u]: expected a string \"a b\" or a pair [\"a\", \"b\"]", path, rank);
      return -1;
    }
  }
  return 0;
}

static const char MERGES_VERSION_HEADER[] = "#version";

int sn_bpe_load_merges_txt(sn_tokenizer *tok, const char *text, size_t len, const char *path,
                           char *err, size_t errlen) {
  size_t lines = 1;
  for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
  merge_map_init(&tok->bpe.merges, lines);
  uint32_t rank = 0;
  size_t line_no = 0;
  for (size_t i = 0; i < len;) {
    size_t end = i;
    while (end < len && text[end] != '\n') end++;
    line_no++;
    size_t line_end = end;
    if (line_end > i && text[line_end - 1] == '\r') line_end--;
    // The "#version: 0.2" header and blank lines carry no merge ("# #" is a merge).
    int header = line_end - i >= strlen(MERGES_VERSION_HEADER) &&
                 memcmp(text + i, MERGES_VERSION_HEADER, strlen(MERGES_VERSION_HEADER)) == 0;
    if (line_end > i && !header) {
      const char *space = memchr(text + i, ' ', line_end - i);
      if (!space || space == text + i || space + 1 == text + line_end) {
        snprintf(err, errlen, "%s:%zu: expected \"left right\"", path, line_no);
        return -1;
      }
      size_t alen = (size_t)(space - (text + i));
      if (add_merge(tok, text + i, alen, space + 1, line_end - i - alen - 1, rank, path, err, errlen)) {
        snprintf(err + strlen(err), errlen - strlen(err), " (line %zu)", line_no);
        return -1;
      }
      rank++;
    }
    i = end + 1;
  }
  return 0;
}

void sn_bpe_free(sn_bpe *bpe) {
  free(bpe->merges.keys);
  free(bpe->merges.ranks);
  free(bpe->merges.merged_ids);
  memset(bpe, 0, sizeof(*bpe));
}

// ---- merging ------------------------------------------------------------------------------------

typedef struct { int32_t id; int32_t prev, next; } symbol;  // a doubly linked list of symbols
typedef struct { uint32_t rank; int32_t pos; } candidate;    // a mergeable pair, by its left symbol

static int candidate_before(candidate a, candidate b) {
  return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}
static void heap_push(candidate *heap, size_t *n, candidate c) {
  size_t i = (*n)++;
  while (i > 0 && candidate_before(c, heap[(i - 1) / 2])) { heap[i] = heap[(i - 1) / 2]; i = (i - 1) / 2; }
  heap[i] = c;
}
static candidate heap_pop(candidate *heap, size_t *n) {
  candidate top = heap[0], last = heap[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= *n) break;
    if (child + 1 < *n && candidate_before(heap[child + 1], heap[child])) child++;
    if (!candidate_before(heap[child], last)) break;
    heap[i] = heap[child];
    i = child;
  }
  heap[i] = last;
  return top;
}

// Looks up the pair at symbols[pos] and its successor; pushes it when a merge exists.
static void push_pair(const sn_merge_map *m, const symbol *sym, int32_t pos, candidate *heap, size_t *n) {
  if (pos < 0 || sym[pos].next < 0) return;
  size_t slot = merge_map_slot(m, pair_key(sym[pos].id, sym[sym[pos].next].id));
  if (m->keys[slot]) heap_push(heap, n, (candidate){m->ranks[slot], pos});
}

// Words shorter than this merge on the stack; longer ones (long runs of spaces) on the heap.
#define SN_BPE_STACK_SYMBOLS 64

static void bpe_merge(const sn_tokenizer *tok, const unsigned char *word, size_t len, int32_t **ids,
                      size_t *n, size_t *cap) {
  const sn_merge_map *m = &tok->bpe.merges;
  symbol stack_sym[SN_BPE_STACK_SYMBOLS];
  // Each merge pushes at most two new candidates onto the len - 1 initial ones: 3*len bounds it.
  candidate stack_heap[3 * SN_BPE_STACK_SYMBOLS];
  int on_heap = len > SN_BPE_STACK_SYMBOLS;
  symbol *sym = on_heap ? mallocCheck(len * sizeof(symbol)) : stack_sym;
  candidate *heap = on_heap ? mallocCheck(3 * len * sizeof(candidate)) : stack_heap;
  size_t hn = 0;
  for (size_t i = 0; i < len; i++)
    sym[i] = (symbol){tok->bpe.byte_ids[word[i]], (int32_t)i - 1, i + 1 < len ? (int32_t)i + 1 : -1};
  for (size_t i = 0; i + 1 < len; i++) push_pair(m, sym, (int32_t)i, heap, &hn);
  while (hn > 0) {
    candidate c = heap_pop(heap, &hn);
    symbol *left = &sym[c.pos];
    if (left->id < 0 || left->next < 0) continue;  // merged away since it was pushed
    size_t slot = merge_map_slot(m, pair_key(left->id, sym[left->next].id));
    if (!m->keys[slot] || m->ranks[slot] != c.rank) continue;  // a rank names one pair: stale entry
    symbol *right = &sym[left->next];
    left->id = m->merged_ids[slot];
    left->next = right->next;
    if (right->next >= 0) sym[right->next].prev = c.pos;
    right->id = -1;
    push_pair(m, sym, left->prev, heap, &hn);
    push_pair(m, sym, c.pos, heap, &hn);
  }
  for (int32_t i = 0; i >= 0; i = sym[i].next) sn_ids_push(ids, n, cap, sym[i].id);
  if (on_heap) { free(sym); free(heap); }
}

// ---- per-thread word cache ----------------------------------------------------------------------

// Direct-mapped: a word hashes to one slot and replaces what was there. Words and id lists longer
// than the inline room bypass the cache (they are rare and merging them is what it costs anyway).
#define SN_BPE_CACHE_SLOTS 65536  // about 5 MB per thread
#define SN_BPE_CACHE_KEY_MAX 30
#define SN_BPE_CACHE_IDS_MAX 10

typedef struct {
  uint64_t hash;
  uint8_t key_len;   // 0 = empty
  uint8_t n_ids;
  char key[SN_BPE_CACHE_KEY_MAX];
  int32_t ids[SN_BPE_CACHE_IDS_MAX];
} cache_entry;

typedef struct {
  uint64_t serial;  // the tokenizer whose words the entries hold
  cache_entry *entries;
} word_cache;

static pthread_key_t cache_key;
static pthread_once_t cache_key_once = PTHREAD_ONCE_INIT;

static void free_cache(void *p) {
  word_cache *c = p;
  free(c->entries);
  free(c);
}
static void make_cache_key(void) { pthread_key_create(&cache_key, free_cache); }

static word_cache *thread_cache(const sn_tokenizer *tok) {
  pthread_once(&cache_key_once, make_cache_key);
  word_cache *c = pthread_getspecific(cache_key);
  if (!c) {
    c = callocCheck(1, sizeof(word_cache));
    c->entries = mallocCheck(SN_BPE_CACHE_SLOTS * sizeof(cache_entry));
    pthread_setspecific(cache_key, c);
  }
  if (c->serial != tok->serial) {  // another tokenizer used this thread last: start afresh
    for (size_t i = 0; i < SN_BPE_CACHE_SLOTS; i++) c->entries[i].key_len = 0;
    c->serial = tok->serial;
  }
  return c;
}

// ---- word encoding ------------------------------------------------------------------------------

// ignore_merges: the word's byte-level spelling, when it is a token, is the answer.
static int32_t whole_word_id(const sn_tokenizer *tok, const char *word, size_t len) {
  char *spelled = mallocCheck(2 * len + 1), *p = spelled;
  for (size_t i = 0; i < len; i++) p += sn_byte_level_char((unsigned char)word[i], p);
  int32_t id = sn_strmap_get(&tok->vocab, spelled, (size_t)(p - spelled));
  free(spelled);
  return id;
}

void sn_bpe_encode_word(const sn_tokenizer *tok, const char *word, size_t len, int32_t **ids,
                        size_t *n, size_t *cap) {
  if (len == 0) return;
  if (len == 1) { sn_ids_push(ids, n, cap, tok->bpe.byte_ids[(unsigned char)word[0]]); return; }
  cache_entry *e = NULL;
  uint64_t hash = 0;
  if (len <= SN_BPE_CACHE_KEY_MAX) {
    hash = sn_hash_bytes(word, len);
    e = &thread_cache(tok)->entries[hash & (SN_BPE_CACHE_SLOTS - 1)];
    if (e->key_len == len && e->hash == hash && memcmp(e->key, word, len) == 0) {
      for (int i = 0; i < e->n_ids; i++) sn_ids_push(ids, n, cap, e->ids[i]);
      return;
    }
  }
  size_t first = *n;
  int32_t whole = tok->bpe.ignore_merges ? whole_word_id(tok, word, len) : -1;
  if (whole >= 0) sn_ids_push(ids, n, cap, whole);
  else bpe_merge(tok, (const unsigned char *)word, len, ids, n, cap);
  if (e && *n - first <= SN_BPE_CACHE_IDS_MAX) {
    e->hash = hash;
    e->key_len = (uint8_t)len;
    e->n_ids = (uint8_t)(*n - first);
    memcpy(e->key, word, len);
    memcpy(e->ids, *ids + first, (*n - first) * sizeof(int32_t));
  }
}
