// Pre-tokenizers written as hand-made matchers over code points, one per regex that real
// tokenizer.json files use. Each matcher returns the end of the match that the regex (leftmost,
// first alternative that matches, greedy with backtracking) would find starting at i; since every
// pattern's alternatives together match any character, matches tile the text and no gap is left.
#include <pthread.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "unicode.h"

// The patterns, exactly as tokenizer.json spells them (after JSON unescaping).
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char LLAMA3_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// Llama-3's digit grouping (\p{N}{1,3}) reads the longest of up to this many numbers.
#define LLAMA3_MAX_DIGITS 3

sn_split_kind sn_split_kind_from_regex(const char *pattern, int *known) {
  *known = 1;
  if (strcmp(pattern, GPT2_PATTERN) == 0) return SN_SPLIT_GPT2;
  if (strcmp(pattern, QWEN2_PATTERN) == 0) return SN_SPLIT_QWEN2;
  if (strcmp(pattern, LLAMA3_PATTERN) == 0) return SN_SPLIT_LLAMA3;
  *known = 0;
  return SN_SPLIT_NONE;
}

// ---- character classes --------------------------------------------------------------------------
enum { CLASS_LETTER = 1, CLASS_NUMBER = 2, CLASS_SPACE = 4, CLASS_PUNCT = 8 };

static unsigned char ascii_class[128];
static pthread_once_t ascii_class_once = PTHREAD_ONCE_INIT;

static void init_ascii_class(void) {
  for (uint32_t c = 0; c < 128; c++) {
    unsigned char k = 0;
    if (sn_unicode_is_letter(c)) k |= CLASS_LETTER;
    if (sn_unicode_is_number(c)) k |= CLASS_NUMBER;
    if (sn_unicode_is_white_space(c)) k |= CLASS_SPACE;
    // BERT counts every ASCII symbol ($, +, <, ^, `, |, ~ are not \p{P}) as punctuation.
    if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126))
      k |= CLASS_PUNCT;
    ascii_class[c] = k;
  }
}

static inline unsigned char char_class(uint32_t c) {
  if (c < 128) return ascii_class[c];
  unsigned char k = 0;
  switch (sn_unicode_category(c)) {
    case SN_UCAT_LU: case SN_UCAT_LL: case SN_UCAT_LT: case SN_UCAT_LM: case SN_UCAT_LO:
      return CLASS_LETTER;
    case SN_UCAT_ND: case SN_UCAT_NL: case SN_UCAT_NO: return CLASS_NUMBER;
    case SN_UCAT_PC: case SN_UCAT_PD: case SN_UCAT_PS: case SN_UCAT_PE: case SN_UCAT_PI:
    case SN_UCAT_PF: case SN_UCAT_PO: k = CLASS_PUNCT; break;
    default: break;
  }
  if (sn_unicode_is_white_space(c)) k |= CLASS_SPACE;
  return k;
}
static inline int is_letter(uint32_t c) { return char_class(c) & CLASS_LETTER; }
static inline int is_number(uint32_t c) { return char_class(c) & CLASS_NUMBER; }
static inline int is_space(uint32_t c) { return char_class(c) & CLASS_SPACE; }
// [^\s\p{L}\p{N}]
static inline int is_other(uint32_t c) {
  return !(char_class(c) & (CLASS_LETTER | CLASS_NUMBER | CLASS_SPACE));
}
static inline int is_newline(uint32_t c) { return c == '\r' || c == '\n'; }
static inline uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// ---- shared alternatives ------------------------------------------------------------------------

// 's|'t|'re|'ve|'m|'ll|'d (case-insensitively when asked: ASCII letters only, as Oniguruma's
// (?i:) does here). Returns the match length, 0 for none.
static size_t match_contraction(const uint32_t *s, size_t n, size_t i, int ignore_case) {
  if (s[i] != '\'' || i + 1 >= n) return 0;
  uint32_t a = ignore_case ? ascii_lower(s[i + 1]) : s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= n) return 0;
  uint32_t b = ignore_case ? ascii_lower(s[i + 2]) : s[i + 2];
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

static size_t run_end(const uint32_t *s, size_t n, size_t i, int (*in_class)(uint32_t)) {
  while (i < n && in_class(s[i])) i++;
  return i;
}

// \s+(?!\S) then \s+: the white-space run at i, less its last character when a non-space follows
// and the run is longer than one (so that the last space can start the next word).
static size_t match_trailing_space(const uint32_t *s, size_t n, size_t i) {
  size_t j = run_end(s, n, i, is_space);
  if (j < n && j - i > 1) return j - 1;
  return j;
}

// ---- the patterns -------------------------------------------------------------------------------

static size_t match_gpt2(const uint32_t *s, size_t n, size_t i) {
  size_t len = match_contraction(s, n, i, 0);
  if (len) return i + len;
  size_t k = (s[i] == ' ' && i + 1 < n) ? i + 1 : i;  // " ?" takes the space when the rest matches
  if (is_letter(s[k])) return run_end(s, n, k, is_letter);
  if (is_number(s[k])) return run_end(s, n, k, is_number);
  if (is_other(s[k])) return run_end(s, n, k, is_other);
  return match_trailing_space(s, n, i);  // s[i] is white space here
}

static size_t match_qwen2(const uint32_t *s, size_t n, size_t i, size_t max_digits) {
  size_t len = match_contraction(s, n, i, 1);
  if (len) return i + len;
  uint32_t c = s[i];
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (is_letter(c)) return run_end(s, n, i, is_letter);
  if (!is_newline(c) && !is_number(c) && i + 1 < n && is_letter(s[i + 1]))
    return run_end(s, n, i + 1, is_letter);
  // \p{N} or \p{N}{1,3}
  if (is_number(c)) {
    size_t j = i + 1;
    while (j < n && j - i < max_digits && is_number(s[j])) j++;
    return j;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t k = (c == ' ' && i + 1 < n && is_other(s[i + 1])) ? i + 1 : i;
  if (is_other(s[k])) return run_end(s, n, run_end(s, n, k, is_other), is_newline);
  // \s*[\r\n]+ : up to and including the last newline of the white-space run
  size_t j = run_end(s, n, i, is_space), last_newline = j;
  for (size_t p = i; p < j; p++) if (is_newline(s[p])) last_newline = p;
  if (last_newline < j) return last_newline + 1;
  return match_trailing_space(s, n, i);
}

// BertPreTokenizer: white space separates and is dropped; each punctuation character is a piece.
static int is_bert_punct(uint32_t c) { return char_class(c) & CLASS_PUNCT; }
static int is_bert_word(uint32_t c) { return !(char_class(c) & (CLASS_SPACE | CLASS_PUNCT)); }

int sn_pretok_next(sn_split_kind kind, const uint32_t *cps, size_t n, size_t *pos, size_t *start,
                   size_t *end) {
  pthread_once(&ascii_class_once, init_ascii_class);
  size_t i = *pos;
  if (kind == SN_SPLIT_BERT) i = run_end(cps, n, i, is_space);
  if (i >= n) return 0;
  size_t j;
  switch (kind) {
    case SN_SPLIT_GPT2: j = match_gpt2(cps, n, i); break;
    case SN_SPLIT_QWEN2: j = match_qwen2(cps, n, i, 1); break;
    case SN_SPLIT_LLAMA3: j = match_qwen2(cps, n, i, LLAMA3_MAX_DIGITS); break;
    case SN_SPLIT_BERT: j = is_bert_punct(cps[i]) ? i + 1 : run_end(cps, n, i, is_bert_word); break;
    default: j = n; break;
  }
  *start = i;
  *end = j;
  *pos = j;
  return 1;
}
