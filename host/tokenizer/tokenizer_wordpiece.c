// WordPiece (BERT): BERT's normalizer and the greedy longest-match-first split of a word into a
// first piece and "##" continuations; a word with no split, or longer than max_input_chars_per_word,
// is one [UNK].
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "tokenizer_internal.h"
#include "unicode.h"

// CJK Unified Ideographs blocks that BERT pads with spaces (what `tokenizers` tests, including its
// choice of 0x2B920 rather than 0x2B820 as the start of Extension E).
static int is_chinese_char(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// clean_text drops these: controls and format characters (tab and newlines excepted; they become
// spaces), private use, NUL and U+FFFD.
static int is_dropped_control(uint32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return 0;
  if (c == 0 || c == SN_UNICODE_REPLACEMENT) return 1;
  enum sn_ucat k = sn_unicode_category(c);
  return k == SN_UCAT_CC || k == SN_UCAT_CF || k == SN_UCAT_CO || k == SN_UCAT_CS;
}

// Each code point can become up to 3 (padding or lower-casing): grows the output for that.
#define SN_MAX_EXPANSION 3

void sn_bert_normalize(const sn_norm_step *step, uint32_t **cps, size_t *n, size_t *cap) {
  size_t out_cap = *n * SN_MAX_EXPANSION + 1, out_n = 0;
  uint32_t *out = mallocCheck(out_cap * sizeof(uint32_t));
  for (size_t i = 0; i < *n; i++) {
    uint32_t c = (*cps)[i];
    if (step->clean_text) {
      if (is_dropped_control(c)) continue;
      if (sn_unicode_is_white_space(c)) c = ' ';
    }
    if (step->handle_chinese_chars && is_chinese_char(c)) {
      out[out_n++] = ' '; out[out_n++] = c; out[out_n++] = ' ';
    } else {
      out[out_n++] = c;
    }
  }
  free(*cps);
  *cps = out; *n = out_n; *cap = out_cap;
  if (step->strip_accents) {
    sn_unicode_nfd(cps, n, cap);
    size_t k = 0;
    for (size_t i = 0; i < *n; i++) if (!sn_unicode_is_mark_nonspacing((*cps)[i])) (*cps)[k++] = (*cps)[i];
    *n = k;
  }
  if (step->lowercase) {
    size_t lower_cap = *n * SN_MAX_EXPANSION + 1, lower_n = 0;
    uint32_t *lower = mallocCheck(lower_cap * sizeof(uint32_t));
    for (size_t i = 0; i < *n; i++) lower_n += (size_t)sn_unicode_lower((*cps)[i], lower + lower_n);
    free(*cps);
    *cps = lower; *n = lower_n; *cap = lower_cap;
  }
}

void sn_wordpiece_encode_word(const sn_tokenizer *tok, const uint32_t *cps, size_t n_cps,
                              int32_t **ids, size_t *n, size_t *cap) {
  const sn_wordpiece *wp = &tok->wp;
  if (n_cps == 0) return;
  if (n_cps > (size_t)wp->max_chars) { sn_ids_push(ids, n, cap, wp->unk_id); return; }
  // The word as UTF-8 with each code point's byte offset, and a scratch buffer for "##" + rest.
  size_t *offset = mallocCheck((n_cps + 1) * sizeof(size_t));
  char *word = mallocCheck(4 * n_cps + 1), *piece = mallocCheck(wp->prefix_len + 4 * n_cps + 1);
  size_t bytes = 0;
  for (size_t i = 0; i < n_cps; i++) { offset[i] = bytes; bytes += sn_utf8_encode(cps[i], word + bytes); }
  offset[n_cps] = bytes;
  size_t first = *n, start = 0;
  while (start < n_cps) {
    // The first piece is looked up bare, the others behind the continuation prefix.
    size_t prefix = start > 0 ? wp->prefix_len : 0;
    memcpy(piece, wp->prefix, prefix);
    memcpy(piece + prefix, word + offset[start], bytes - offset[start]);
    int32_t id = -1;
    size_t end = n_cps;
    for (; end > start; end--) {
      id = sn_strmap_get(&tok->vocab, piece, prefix + offset[end] - offset[start]);
      if (id >= 0) break;
    }
    if (id < 0) {  // no piece fits: the whole word is unknown
      *n = first;
      sn_ids_push(ids, n, cap, wp->unk_id);
      break;
    }
    sn_ids_push(ids, n, cap, id);
    start = end;
  }
  free(offset);
  free(word);
  free(piece);
}
