// The Porter stemmer, written from its published description (M. F. Porter, "An algorithm for
// suffix stripping", Program 14(3), 1980), steps 1a to 5b as the paper states them, without the
// departures of later implementations (Lucene's and Porter's own C code leave words of one or two
// letters alone and use "bli" and "logi" in step 2; the paper has "abli" and no "logi").
//
// Terms of the paper: a consonant is a letter other than a, e, i, o, u, and other than y after a
// consonant; a word is [C](VC)^m[V] with C and V runs of consonants and vowels, m its measure.
// Conditions: *v* the stem holds a vowel, *d it ends in a double consonant, *o it ends
// consonant-vowel-consonant with the last not w, x or y. In each step's list only the rule with the
// longest matching suffix is considered; when its condition fails the step does nothing.
#include <string.h>

#include "bm25.h"

static int is_consonant(const char *w, int i) {
  switch (w[i]) {
    case 'a': case 'e': case 'i': case 'o': case 'u':
      return 0;
    case 'y':
      return i == 0 || !is_consonant(w, i - 1);
    default:
      return 1;
  }
}

// m of w[0, n).
static int measure(const char *w, int n) {
  int m = 0, i = 0;
  while (i < n && is_consonant(w, i)) i++;
  for (;;) {
    while (i < n && !is_consonant(w, i)) i++;
    if (i >= n) return m;
    while (i < n && is_consonant(w, i)) i++;
    m++;
  }
}

static int has_vowel(const char *w, int n) {
  for (int i = 0; i < n; i++)
    if (!is_consonant(w, i)) return 1;
  return 0;
}

static int ends_double_consonant(const char *w, int n) {
  return n >= 2 && w[n - 1] == w[n - 2] && is_consonant(w, n - 1);
}

static int ends_cvc(const char *w, int n) {
  return n >= 3 && is_consonant(w, n - 3) && !is_consonant(w, n - 2) && is_consonant(w, n - 1) &&
         w[n - 1] != 'w' && w[n - 1] != 'x' && w[n - 1] != 'y';
}

typedef enum { ALWAYS, M_ABOVE_0, M_ABOVE_1, HAS_VOWEL, M_ABOVE_1_AND_S_OR_T } condition;

typedef struct {
  const char *suffix, *replacement;
  int suffix_len, replacement_len;
  condition cond;
} rule;

#define R(suffix, replacement, cond) {suffix, replacement, sizeof(suffix) - 1, sizeof(replacement) - 1, cond}

static int holds(condition c, const char *w, int stem_len) {
  switch (c) {
    case ALWAYS: return 1;
    case M_ABOVE_0: return measure(w, stem_len) > 0;
    case M_ABOVE_1: return measure(w, stem_len) > 1;
    case HAS_VOWEL: return has_vowel(w, stem_len);
    case M_ABOVE_1_AND_S_OR_T:
      return stem_len > 0 && (w[stem_len - 1] == 's' || w[stem_len - 1] == 't') && measure(w, stem_len) > 1;
  }
  return 0;
}

// Where suffixes of a list overlap, the longer comes first, so the first match is the longest.
// Returns the index of the rule applied, or -1 (no suffix matched, or its condition failed).
static int apply_first(char *w, int *n, const rule *rules, int count) {
  if (*n == 0) return -1;
  const char last = w[*n - 1];
  for (int r = 0; r < count; r++) {
    const int len = rules[r].suffix_len;
    if (len > *n || rules[r].suffix[len - 1] != last || memcmp(w + *n - len, rules[r].suffix, (size_t)len) != 0)
      continue;
    const int stem = *n - len;
    if (!holds(rules[r].cond, w, stem)) return -1;
    const int rep = rules[r].replacement_len;
    memcpy(w + stem, rules[r].replacement, (size_t)rep);  // at most one byte longer (1b's tidy-up),
                                                         // after "ed"/"ing" left room
    *n = stem + rep;
    return r;
  }
  return -1;
}

#define RULES(list) list, (int)(sizeof(list) / sizeof(list[0]))

static const rule STEP_1A[] = {R("sses", "ss", ALWAYS), R("ies", "i", ALWAYS), R("ss", "ss", ALWAYS), R("s", "", ALWAYS)};
enum { STEP_1B_EED, STEP_1B_ED, STEP_1B_ING };
static const rule STEP_1B[] = {R("eed", "ee", M_ABOVE_0), R("ed", "", HAS_VOWEL), R("ing", "", HAS_VOWEL)};
static const rule STEP_1B_TIDY[] = {R("at", "ate", ALWAYS), R("bl", "ble", ALWAYS), R("iz", "ize", ALWAYS)};
static const rule STEP_1C[] = {R("y", "i", HAS_VOWEL)};
static const rule STEP_2[] = {
    R("ational", "ate", M_ABOVE_0), R("tional", "tion", M_ABOVE_0), R("enci", "ence", M_ABOVE_0),
    R("anci", "ance", M_ABOVE_0),   R("izer", "ize", M_ABOVE_0),    R("abli", "able", M_ABOVE_0),
    R("alli", "al", M_ABOVE_0),     R("entli", "ent", M_ABOVE_0),   R("eli", "e", M_ABOVE_0),
    R("ousli", "ous", M_ABOVE_0),   R("ization", "ize", M_ABOVE_0), R("ation", "ate", M_ABOVE_0),
    R("ator", "ate", M_ABOVE_0),    R("alism", "al", M_ABOVE_0),    R("iveness", "ive", M_ABOVE_0),
    R("fulness", "ful", M_ABOVE_0), R("ousness", "ous", M_ABOVE_0), R("aliti", "al", M_ABOVE_0),
    R("iviti", "ive", M_ABOVE_0),   R("biliti", "ble", M_ABOVE_0),
};
static const rule STEP_3[] = {
    R("icate", "ic", M_ABOVE_0), R("ative", "", M_ABOVE_0), R("alize", "al", M_ABOVE_0), R("iciti", "ic", M_ABOVE_0),
    R("ical", "ic", M_ABOVE_0),  R("ful", "", M_ABOVE_0),   R("ness", "", M_ABOVE_0),
};
static const rule STEP_4[] = {
    R("al", "", M_ABOVE_1),   R("ance", "", M_ABOVE_1), R("ence", "", M_ABOVE_1), R("er", "", M_ABOVE_1),
    R("ic", "", M_ABOVE_1),   R("able", "", M_ABOVE_1), R("ible", "", M_ABOVE_1), R("ant", "", M_ABOVE_1),
    R("ement", "", M_ABOVE_1), R("ment", "", M_ABOVE_1), R("ent", "", M_ABOVE_1),
    R("ion", "", M_ABOVE_1_AND_S_OR_T),                 R("ou", "", M_ABOVE_1),   R("ism", "", M_ABOVE_1),
    R("ate", "", M_ABOVE_1),  R("iti", "", M_ABOVE_1),  R("ous", "", M_ABOVE_1),  R("ive", "", M_ABOVE_1),
    R("ize", "", M_ABOVE_1),
};

static void step_1b(char *w, int *n) {
  const int r = apply_first(w, n, RULES(STEP_1B));
  if (r != STEP_1B_ED && r != STEP_1B_ING) return;
  if (apply_first(w, n, RULES(STEP_1B_TIDY)) >= 0) return;
  const char last = w[*n - 1];
  if (ends_double_consonant(w, *n) && last != 'l' && last != 's' && last != 'z') {
    (*n)--;
  } else if (measure(w, *n) == 1 && ends_cvc(w, *n)) {
    w[(*n)++] = 'e';  // the removed "ed"/"ing" left room for it
  }
}

static void step_5(char *w, int *n) {
  if (*n > 0 && w[*n - 1] == 'e') {  // 5a
    const int m = measure(w, *n - 1);
    if (m > 1 || (m == 1 && !ends_cvc(w, *n - 1))) (*n)--;
  }
  if (ends_double_consonant(w, *n) && w[*n - 1] == 'l' && measure(w, *n) > 1) (*n)--;  // 5b
}

int sn_porter_stem(char *w, int n) {
  apply_first(w, &n, RULES(STEP_1A));
  step_1b(w, &n);
  apply_first(w, &n, RULES(STEP_1C));
  apply_first(w, &n, RULES(STEP_2));
  apply_first(w, &n, RULES(STEP_3));
  apply_first(w, &n, RULES(STEP_4));
  step_5(w, &n);
  return n;
}
