// The encode pipeline: added tokens are cut out of the raw text first, each remaining segment is
// decoded (invalid UTF-8 → U+FFFD per maximal subpart, as Python's errors='replace'), normalized,
// pre-tokenized and handed to the model; add_special wraps the result in the post-processor's ids.
// Also the queries on a loaded tokenizer.
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "tokenizer_internal.h"
#include "unicode.h"

// ---- small helpers ------------------------------------------------------------------------------

void sn_ids_push(int32_t **ids, size_t *n, size_t *cap, int32_t id) {
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 64;
    *ids = reallocCheck(*ids, *cap * sizeof(int32_t));
  }
  (*ids)[(*n)++] = id;
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

// ---- normalizer ---------------------------------------------------------------------------------

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

// cps as a malloc'd UTF-8 string (*len bytes, NUL-terminated).
static char *cps_to_utf8(const uint32_t *cps, size_t n, size_t *len) {
  char *out = mallocCheck(4 * n + 1);
  size_t bytes = 0;
  for (size_t i = 0; i < n; i++) bytes += sn_utf8_encode(cps[i], out + bytes);
  out[bytes] = 0;
  *len = bytes;
  return out;
}

// ---- added tokens -------------------------------------------------------------------------------

static int added_token_longer(const void *a, const void *b) {
  size_t la = ((const sn_added_token *)a)->len, lb = ((const sn_added_token *)b)->len;
  return la < lb ? 1 : la > lb ? -1 : 0;
}

// Normalized tokens are matched by their normalized form (so "CoVid" finds "covid" when the
// normalizer lower-cases); without a normalizer both passes see the same text: all go raw. Then
// longest first, so the first token that matches at a position is the longest one there.
void sn_added_tokens_prepare(sn_tokenizer *tok) {
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

// ---- encoding -----------------------------------------------------------------------------------

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
