// UTF-8, category lookups and canonical normalization over the generated tables.
#include "unicode.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"

// Tables generated into unicode_tables.c (see gen_unicode_tables.py for their layout).
extern const int sn_ucd_block_shift;
extern const uint16_t sn_ucd_category_stage1[];
extern const uint8_t sn_ucd_category_stage2[];
extern const uint16_t sn_ucd_ccc_stage1[];
extern const uint8_t sn_ucd_ccc_stage2[];
extern const uint32_t sn_ucd_white_space[][2];
extern const int sn_ucd_white_space_len;
extern const uint32_t sn_ucd_nfc_not_yes[][2];
extern const int sn_ucd_nfc_not_yes_len;
extern const uint32_t sn_ucd_decomp[][3];
extern const int sn_ucd_decomp_len;
extern const uint32_t sn_ucd_compose[][3];
extern const int sn_ucd_compose_len;
extern const uint32_t sn_ucd_lower[][4];
extern const int sn_ucd_lower_len;

// ---- UTF-8 --------------------------------------------------------------------------------------

size_t sn_utf8_decode(const unsigned char *s, size_t len, uint32_t *cp) {
  unsigned b = s[0];
  if (b < 0x80) { *cp = b; return 1; }
  size_t need;           // continuation bytes after the lead byte
  unsigned lo = 0x80, hi = 0xBF;  // the allowed range of the first continuation byte
  uint32_t value;
  if (b >= 0xC2 && b <= 0xDF) { need = 1; value = b & 0x1F; }
  else if (b >= 0xE0 && b <= 0xEF) {
    need = 2; value = b & 0x0F;
    if (b == 0xE0) lo = 0xA0;        // no overlong forms
    else if (b == 0xED) hi = 0x9F;   // no surrogates
  } else if (b >= 0xF0 && b <= 0xF4) {
    need = 3; value = b & 0x07;
    if (b == 0xF0) lo = 0x90;
    else if (b == 0xF4) hi = 0x8F;   // nothing past U+10FFFF
  } else { *cp = SN_UNICODE_REPLACEMENT; return 1; }
  for (size_t i = 1; i <= need; i++) {
    if (i >= len) { *cp = SN_UNICODE_REPLACEMENT; return i; }
    unsigned c = s[i];
    if (c < lo || c > hi) { *cp = SN_UNICODE_REPLACEMENT; return i; }  // maximal subpart ends
    value = (value << 6) | (c & 0x3F);
    lo = 0x80; hi = 0xBF;
  }
  *cp = value;
  return need + 1;
}

size_t sn_utf8_encode(uint32_t cp, char *out) {
  unsigned char *o = (unsigned char *)out;
  if (cp < 0x80) { o[0] = (unsigned char)cp; return 1; }
  if (cp < 0x800) { o[0] = 0xC0 | (cp >> 6); o[1] = 0x80 | (cp & 0x3F); return 2; }
  if (cp < 0x10000) {
    o[0] = 0xE0 | (cp >> 12); o[1] = 0x80 | ((cp >> 6) & 0x3F); o[2] = 0x80 | (cp & 0x3F);
    return 3;
  }
  o[0] = 0xF0 | (cp >> 18); o[1] = 0x80 | ((cp >> 12) & 0x3F);
  o[2] = 0x80 | ((cp >> 6) & 0x3F); o[3] = 0x80 | (cp & 0x3F);
  return 4;
}

void sn_utf8_to_cps(const char *s, size_t len, uint32_t **cps, size_t *n) {
  uint32_t *out = mallocCheck((len + 1) * sizeof(uint32_t));  // never more code points than bytes
  size_t count = 0;
  for (size_t i = 0; i < len;) i += sn_utf8_decode((const unsigned char *)s + i, len - i, &out[count++]);
  *cps = out;
  *n = count;
}

// ---- properties ---------------------------------------------------------------------------------

static unsigned two_stage_lookup(const uint16_t *stage1, const uint8_t *stage2, uint32_t cp) {
  if (cp > SN_UNICODE_MAX) return 0;
  uint32_t block = stage1[cp >> sn_ucd_block_shift];
  return stage2[(block << sn_ucd_block_shift) | (cp & ((1u << sn_ucd_block_shift) - 1))];
}

enum sn_ucat sn_unicode_category(uint32_t cp) {
  return (enum sn_ucat)two_stage_lookup(sn_ucd_category_stage1, sn_ucd_category_stage2, cp);
}
int sn_unicode_is_letter(uint32_t cp) {
  enum sn_ucat c = sn_unicode_category(cp);
  return c >= SN_UCAT_LU && c <= SN_UCAT_LO;
}
int sn_unicode_is_number(uint32_t cp) {
  enum sn_ucat c = sn_unicode_category(cp);
  return c >= SN_UCAT_ND && c <= SN_UCAT_NO;
}
int sn_unicode_is_punctuation(uint32_t cp) {
  enum sn_ucat c = sn_unicode_category(cp);
  return c >= SN_UCAT_PC && c <= SN_UCAT_PO;
}
int sn_unicode_is_mark_nonspacing(uint32_t cp) { return sn_unicode_category(cp) == SN_UCAT_MN; }
static int in_ranges(const uint32_t (*ranges)[2], int count, uint32_t cp) {
  int lo = 0, hi = count - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (cp < ranges[mid][0]) hi = mid - 1;
    else if (cp > ranges[mid][1]) lo = mid + 1;
    else return 1;
  }
  return 0;
}
int sn_unicode_is_white_space(uint32_t cp) {
  return in_ranges(sn_ucd_white_space, sn_ucd_white_space_len, cp);
}
int sn_unicode_combining_class(uint32_t cp) {
  return (int)two_stage_lookup(sn_ucd_ccc_stage1, sn_ucd_ccc_stage2, cp);
}

// ---- normalization ------------------------------------------------------------------------------

// Hangul syllables decompose and compose by arithmetic (Unicode §3.12), not by table.
enum {
  HANGUL_S_BASE = 0xAC00, HANGUL_L_BASE = 0x1100, HANGUL_V_BASE = 0x1161, HANGUL_T_BASE = 0x11A7,
  HANGUL_L_COUNT = 19, HANGUL_V_COUNT = 21, HANGUL_T_COUNT = 28,
  HANGUL_N_COUNT = HANGUL_V_COUNT * HANGUL_T_COUNT, HANGUL_S_COUNT = HANGUL_L_COUNT * HANGUL_N_COUNT,
};
// Longest full canonical decomposition of one code point (UAX #15 bounds it well below this).
#define SN_MAX_DECOMPOSITION 32

static const uint32_t *find_decomposition(uint32_t cp) {
  int lo = 0, hi = sn_ucd_decomp_len - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (sn_ucd_decomp[mid][0] == cp) return sn_ucd_decomp[mid];
    if (sn_ucd_decomp[mid][0] < cp) lo = mid + 1; else hi = mid - 1;
  }
  return NULL;
}

// Appends the full canonical decomposition of cp to out; returns the count written.
static int decompose(uint32_t cp, uint32_t *out) {
  if (cp >= HANGUL_S_BASE && cp < HANGUL_S_BASE + HANGUL_S_COUNT) {
    uint32_t s = cp - HANGUL_S_BASE;
    out[0] = HANGUL_L_BASE + s / HANGUL_N_COUNT;
    out[1] = HANGUL_V_BASE + (s % HANGUL_N_COUNT) / HANGUL_T_COUNT;
    if (s % HANGUL_T_COUNT == 0) return 2;
    out[2] = HANGUL_T_BASE + s % HANGUL_T_COUNT;
    return 3;
  }
  const uint32_t *d = find_decomposition(cp);
  if (!d) { out[0] = cp; return 1; }
  int n = decompose(d[1], out);
  if (d[2]) n += decompose(d[2], out + n);
  return n;
}

static uint32_t compose_pair(uint32_t a, uint32_t b) {
  if (a >= HANGUL_L_BASE && a < HANGUL_L_BASE + HANGUL_L_COUNT && b >= HANGUL_V_BASE &&
      b < HANGUL_V_BASE + HANGUL_V_COUNT)
    return HANGUL_S_BASE + ((a - HANGUL_L_BASE) * HANGUL_V_COUNT + (b - HANGUL_V_BASE)) * HANGUL_T_COUNT;
  if (a >= HANGUL_S_BASE && a < HANGUL_S_BASE + HANGUL_S_COUNT && (a - HANGUL_S_BASE) % HANGUL_T_COUNT == 0 &&
      b > HANGUL_T_BASE && b < HANGUL_T_BASE + HANGUL_T_COUNT)
    return a + (b - HANGUL_T_BASE);
  int lo = 0, hi = sn_ucd_compose_len - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    const uint32_t *e = sn_ucd_compose[mid];
    if (e[0] == a && e[1] == b) return e[2];
    if (e[0] < a || (e[0] == a && e[1] < b)) lo = mid + 1; else hi = mid - 1;
  }
  return 0;
}

void sn_unicode_nfd(uint32_t **cps, size_t *n, size_t *cap) {
  size_t out_cap = *n + SN_MAX_DECOMPOSITION, out_n = 0;
  uint32_t *out = mallocCheck(out_cap * sizeof(uint32_t));
  for (size_t i = 0; i < *n; i++) {
    if (out_n + SN_MAX_DECOMPOSITION > out_cap) {
      out_cap = out_cap * 2 + SN_MAX_DECOMPOSITION;
      out = reallocCheck(out, out_cap * sizeof(uint32_t));
    }
    uint32_t c = (*cps)[i];
    if (c < 0xC0) out[out_n++] = c;  // nothing below U+00C0 decomposes
    else out_n += (size_t)decompose(c, out + out_n);
  }
  // Canonical ordering: a stable insertion sort of each run of non-starters by combining class.
  for (size_t i = 1; i < out_n; i++) {
    int cc = sn_unicode_combining_class(out[i]);
    if (cc == 0) continue;
    uint32_t c = out[i];
    size_t j = i;
    while (j > 0) {
      int prev = sn_unicode_combining_class(out[j - 1]);
      if (prev == 0 || prev <= cc) break;
      out[j] = out[j - 1];
      j--;
    }
    out[j] = c;
  }
  free(*cps);
  *cps = out; *n = out_n; *cap = out_cap;
}

// Below this no code point has NFC_QC No/Maybe or a non-zero combining class.
#define NFC_QUICK_YES_BELOW 0x300

int sn_unicode_nfc_quick_yes(const uint32_t *cps, size_t n) {
  // UAX #15's quick check: no code point that NFC could change, marks in canonical order.
  int last_cc = 0;
  for (size_t i = 0; i < n; i++) {
    uint32_t c = cps[i];
    if (c < NFC_QUICK_YES_BELOW) { last_cc = 0; continue; }
    if (in_ranges(sn_ucd_nfc_not_yes, sn_ucd_nfc_not_yes_len, c)) return 0;
    int cc = sn_unicode_combining_class(c);
    if (cc != 0 && last_cc > cc) return 0;
    last_cc = cc;
  }
  return 1;
}

void sn_unicode_nfc(uint32_t **cps, size_t *n, size_t *cap) {
  if (sn_unicode_nfc_quick_yes(*cps, *n)) return;
  sn_unicode_nfd(cps, n, cap);
  uint32_t *s = *cps;
  size_t out_n = 0;
  long starter = -1;  // index in the output of the last starter, -1 before the first
  int last_cc = 0;    // combining class of the last code point written after that starter
  for (size_t i = 0; i < *n; i++) {
    uint32_t c = s[i];
    int cc = sn_unicode_combining_class(c);
    if (starter >= 0) {
      int adjacent = (size_t)starter == out_n - 1;
      int blocked = !adjacent && (last_cc == 0 || last_cc >= cc);
      uint32_t composite = blocked ? 0 : compose_pair(s[starter], c);
      if (composite) { s[starter] = composite; continue; }
    }
    if (cc == 0) starter = (long)out_n;
    last_cc = cc;
    s[out_n++] = c;
  }
  *n = out_n;
}

int sn_unicode_lower(uint32_t cp, uint32_t out[3]) {
  if (cp < 0x80) { out[0] = (cp >= 'A' && cp <= 'Z') ? cp + ('a' - 'A') : cp; return 1; }
  int lo = 0, hi = sn_ucd_lower_len - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    const uint32_t *e = sn_ucd_lower[mid];
    if (e[0] == cp) {
      int k = 0;
      for (; k < 3 && e[k + 1]; k++) out[k] = e[k + 1];
      return k;
    }
    if (e[0] < cp) lo = mid + 1; else hi = mid - 1;
  }
  out[0] = cp;
  return 1;
}
