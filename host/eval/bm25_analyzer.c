// BM25's analyzer: UTF-8 text → words → (lower-case) → (stop words out) → (Porter stems).
//
// Words are maximal runs of word code points. ASCII: letters and digits. Above ASCII, every code
// point is a word code point except the punctuation and symbol blocks of SEPARATOR_RANGES (Latin-1
// punctuation, general punctuation, arithmetic and currency signs, arrows, box drawing, CJK
// punctuation, emoji, ...) and invalid UTF-8; so Greek, Cyrillic, accented Latin and CJK letters
// stay inside words (a tableless stand-in for Unicode's letter and digit classes). Lower-casing
// covers ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic capitals; other scripts stay as
// written. Only words of lower-case ASCII letters and digits are stemmed (the Porter rules are
// defined over English letters).
#include <stdlib.h>
#include <string.h>

#include "bm25.h"

#define INVALID_CODE_POINT 0xFFFFFFFFu
#define ASCII_END 0x80u

// Code points above ASCII that separate words (inclusive ranges, ascending).
static const uint32_t SEPARATOR_RANGES[][2] = {
    {0x0080, 0x00A9}, {0x00AB, 0x00B4}, {0x00B6, 0x00B9}, {0x00BB, 0x00BF},  // Latin-1 less ª µ º
    {0x00D7, 0x00D7}, {0x00F7, 0x00F7},                                      // × ÷
    {0x2000, 0x2BFF},   // general punctuation ... symbols and arrows
    {0x2E00, 0x2E7F},   // supplemental punctuation
    {0x3000, 0x303F},   // CJK symbols and punctuation
    {0xD800, 0xF8FF},   // surrogates, private use
    {0xFE00, 0xFE6F},   // variation selectors, vertical and small forms
    {0xFEFF, 0xFEFF},   // byte order mark
    {0xFF00, 0xFF0F}, {0xFF1A, 0xFF20}, {0xFF3B, 0xFF40}, {0xFF5B, 0xFF65},  // fullwidth punctuation
    {0xFFF0, 0xFFFF},   // specials
    {0x1F000, 0x1FAFF}, // mahjong ... emoji
    {0xE0000, 0xE007F}, // tags
};

static int is_word_code_point(uint32_t c) {
  if (c < ASCII_END) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  if (c == INVALID_CODE_POINT) return 0;
  for (size_t i = 0; i < sizeof SEPARATOR_RANGES / sizeof SEPARATOR_RANGES[0]; i++) {
    if (c < SEPARATOR_RANGES[i][0]) return 1;
    if (c <= SEPARATOR_RANGES[i][1]) return 0;
  }
  return 1;
}

static uint32_t to_lower(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + ('a' - 'A');
  if (c < ASCII_END) return c;
  if (c >= 0x00C0 && c <= 0x00DE && c != 0x00D7) return c + 0x20;  // Latin-1
  if (c >= 0x0100 && c <= 0x017F) {                                 // Latin Extended-A: case pairs
    if (c == 0x0130 || c == 0x0131 || c == 0x0138 || c == 0x0149 || c == 0x017F) return c;  // no simple pair
    if (c == 0x0178) return 0x00FF;
    const int upper_is_odd = (c >= 0x0139 && c <= 0x0148) || (c >= 0x0179 && c <= 0x017E);
    return ((c & 1u) == (upper_is_odd ? 1u : 0u)) ? c + 1 : c;
  }
  if (c >= 0x0391 && c <= 0x03A9 && c != 0x03A2) return c + 0x20;  // Greek
  if (c >= 0x0410 && c <= 0x042F) return c + 0x20;                  // Cyrillic
  if (c >= 0x0400 && c <= 0x040F) return c + 0x50;
  return c;
}

// The code point at s (NUL-terminated) and its byte count in *len; INVALID_CODE_POINT (one byte)
// for a malformed, overlong or surrogate sequence.
static uint32_t decode_utf8(const unsigned char *s, int *len) {
  static const uint32_t min_of_len[5] = {0, 0, 0x80, 0x800, 0x10000};
  *len = 1;
  if (s[0] < ASCII_END) return s[0];
  int n;
  uint32_t c;
  if ((s[0] & 0xE0) == 0xC0) n = 2, c = s[0] & 0x1Fu;
  else if ((s[0] & 0xF0) == 0xE0) n = 3, c = s[0] & 0x0Fu;
  else if ((s[0] & 0xF8) == 0xF0) n = 4, c = s[0] & 0x07u;
  else return INVALID_CODE_POINT;
  for (int i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return INVALID_CODE_POINT;  // also stops at the NUL
    c = (c << 6) | (s[i] & 0x3Fu);
  }
  if (c < min_of_len[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return INVALID_CODE_POINT;
  *len = n;
  return c;
}

static int encode_utf8(uint32_t c, char *out) {
  if (c < 0x80) {
    out[0] = (char)c;
    return 1;
  }
  if (c < 0x800) {
    out[0] = (char)(0xC0 | (c >> 6)), out[1] = (char)(0x80 | (c & 0x3F));
    return 2;
  }
  if (c < 0x10000) {
    out[0] = (char)(0xE0 | (c >> 12)), out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[2] = (char)(0x80 | (c & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (c >> 18)), out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((c >> 6) & 0x3F)), out[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

// Lucene's EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, in strcmp order.
static const char *const STOP_WORDS[] = {
    "a",    "an",   "and",   "are",  "as",    "at",    "be",   "but",  "by",   "for",  "if",
    "in",   "into", "is",    "it",   "no",    "not",   "of",   "on",   "or",   "such", "that",
    "the",  "their", "then", "there", "these", "they", "this", "to",   "was",  "will", "with",
};
#define STOP_WORD_MAX_LEN 5
#define STOP_WORD_FIRST_LETTERS "abfinostw"  // a quick no for most words

int sn_bm25_is_stopword(const char *word, int len) {
  if (len <= 0 || len > STOP_WORD_MAX_LEN || !strchr(STOP_WORD_FIRST_LETTERS, word[0])) return 0;
  int lo = 0, hi = (int)(sizeof STOP_WORDS / sizeof STOP_WORDS[0]) - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) / 2;
    const char *s = STOP_WORDS[mid];
    int c = strncmp(s, word, (size_t)len);
    if (c == 0) c = s[len] != '\0';  // s is longer than word: s sorts after it
    if (c == 0) return 1;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return 0;
}

static int is_ascii_lower_alnum(const char *w, int len) {
  for (int i = 0; i < len; i++)
    if (!((w[i] >= 'a' && w[i] <= 'z') || (w[i] >= '0' && w[i] <= '9'))) return 0;
  return 1;
}

// One word through the steps after splitting: stop words out, stemming, then emit.
static void finish_word(char *w, int len, const sn_bm25_opts *o, sn_bm25_term_fn emit, void *ctx) {
  if (len == 0) return;
  if (o->stopwords && sn_bm25_is_stopword(w, len)) return;
  if (o->stem && is_ascii_lower_alnum(w, len)) len = sn_porter_stem(w, len);
  if (len == 0) return;
  w[len] = '\0';
  emit(w, len, ctx);
}

void sn_bm25_analyze(const char *text, const sn_bm25_opts *o, sn_bm25_term_fn emit, void *ctx) {
  char word[SN_BM25_MAX_TERM_BYTES + 1];
  int len = 0;
  const unsigned char *s = (const unsigned char *)(text ? text : "");
  while (*s) {
    int n = 1;
    uint32_t c = *s < ASCII_END ? *s : decode_utf8(s, &n);
    s += n;
    if (!is_word_code_point(c)) {
      finish_word(word, len, o, emit, ctx);
      len = 0;
      continue;
    }
    if (o->lowercase) c = to_lower(c);
    char bytes[4];
    const int nb = c < ASCII_END ? (bytes[0] = (char)c, 1) : encode_utf8(c, bytes);
    if (len + nb > SN_BM25_MAX_TERM_BYTES) {  // an overlong word goes out in pieces
      finish_word(word, len, o, emit, ctx);
      len = 0;
    }
    memcpy(word + len, bytes, (size_t)nb);
    len += nb;
  }
  finish_word(word, len, o, emit, ctx);
}
